"""Benchmark mode in one Tune run: every method's Optuna search interleaved by one searcher, ASHA per method,
then each method's best configurations re-trained with the confirmation seeds.

One Tuner, one searcher (`BenchmarkSearcher`): it holds one OptunaSearch per method (one Optuna study per
method, `<study>/<label>`, all in the study folder's optuna.journal) and hands out their proposals in
round-robin order, so Ray runs every method's trials side by side across the cluster instead of one method
after another. Each method gets exactly `num_samples` search trials; ASHA compares a trial only with trials of
its own method (`MethodASHA`), so a method that learns slowly early is not cut by another method's rungs.
The joint-training baseline (`none`, the study's trial, confirmation seeds) and the fixed methods (nothing
to sample) are planned trials; a searched method's confirmation starts as soon as its own search has ended.
The searcher's whole state is checkpointed with Tune's experiment, so a resume neither repeats nor loses
a trial of any method.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import Searcher

from study.config import StudyConfig
from study.search import (OPTUNA_FILE, CheckpointedSearcher, StudyASHA, already_recorded_in_optuna,
                          close_orphaned_proposals, complete_in_optuna, confirmable_values, optuna_searcher,
                          planned_trials, top_trials, trial_spec)

METHOD_KEY = "method"  # in a trial's Tune config, next to point / role / seeds; MLflow tag mmstudy.method


def optuna_study_name(study_name: str, label: str) -> str:
    """The Optuna study of one method in the study's journal (optuna-dashboard lists one per method)."""
    return f"{study_name}/{label}"


def method_spec(point: dict[str, Any], role: str, seeds: list[int], label: str,
                confirms: str | None = None) -> dict[str, Any]:
    return {**trial_spec(point, role, seeds, confirms), METHOD_KEY: label}


class BenchmarkSearcher(CheckpointedSearcher):
    """Planned trials first (baseline, fixed methods), then the confirmations of methods whose search has
    ended, then the methods' Optuna proposals in turn until each has had `num_samples`."""

    def __init__(self, planned: list[dict[str, Any]], optuna: dict[str, Any], points: dict[str, dict[str, Any]],
                 num_samples: int, seeds: list[int], top_k: int, confirm_seeds: list[int], metric: str | list[str],
                 mode: str | list[str], epochs: int | None = None):
        self.metrics = [metric] if isinstance(metric, str) else list(metric)
        self.modes = [mode] if isinstance(mode, str) else list(mode)
        self.epochs = epochs  # the trial budget: trials ASHA stopped before it rank after those that ran it
        super().__init__(metric=self.metrics[0], mode=self.modes[0])
        self.planned, self.optuna, self.points = list(planned), optuna, points
        self.remaining = {label: num_samples for label in optuna}
        self.seeds, self.top_k, self.confirm_seeds = list(seeds), top_k, list(confirm_seeds)
        self.turn = 0
        self.owner: dict[str, str] = {}  # search trial id -> method label
        self.open_search: dict[str, dict[str, Any]] = {}
        self.ended_search: dict[str, tuple[dict[str, float], dict[str, Any]]] = {}  # id -> (ranking values, point)
        self.confirmed: set[str] = set()
        self.confirmations: list[dict[str, Any]] = []
        self.planned_total = len(self.planned) + len(optuna) * (num_samples + min(top_k, num_samples))

    @staticmethod
    def for_study(cfg: StudyConfig, study_dir: Path) -> "BenchmarkSearcher":
        base, methods = cfg.base_trial(), cfg.methods_resolved()
        planned = planned_trials(cfg)  # the baseline
        planned += [method_spec(m.point, "confirm", cfg.confirm.seeds, m.label) for m in methods if not m.searched]
        searched = [m for m in methods if m.searched]
        optuna = {m.label: optuna_searcher(cfg, study_dir, m.space, m.base(base), optuna_study_name(cfg.name, m.label))
                  for m in searched}
        return BenchmarkSearcher(planned, optuna, {m.label: m.point for m in searched}, cfg.num_samples, cfg.seeds,
                                 cfg.confirm.top_k, cfg.confirm.seeds, cfg.metric.names, cfg.metric.modes,
                                 cfg.trial_config().epochs)

    def total(self) -> int:
        """Trials the study runs (Tune's num_samples): the planned ones, num_samples per searched method and
        min(top_k, num_samples) confirmations of each (fewer only when a method's every trial failed)."""
        return self.planned_total

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # metric, mode and spaces were given when the study was built

    def suggest(self, trial_id: str):
        if self.planned:
            return self.planned.pop(0)
        self._confirm_ended_methods()
        if self.confirmations:
            return self.confirmations.pop(0)
        label = self._next_method()
        if label is not None:
            point = {**self.points[label], **self.optuna[label].suggest(trial_id)}
            self.remaining[label] -= 1
            self.owner[trial_id] = label
            self.open_search[trial_id] = point
            return method_spec(point, "search", self.seeds, label)
        if len(self.confirmed) == len(self.optuna):
            return Searcher.FINISHED
        return None  # a method's search is still running: its confirmation waits for it

    def _next_method(self) -> str | None:
        labels = list(self.optuna)
        for step in range(len(labels)):
            label = labels[(self.turn + step) % len(labels)]
            if self.remaining[label] > 0:
                self.turn = (self.turn + step + 1) % len(labels)
                return label
        return None

    def _confirm_ended_methods(self) -> None:
        for label in self.optuna:
            if label in self.confirmed or self.remaining[label] > 0:
                continue
            if any(self.owner[t] == label for t in self.open_search):
                continue
            self.confirmed.add(label)
            if self.top_k:
                self.confirmations += self.top_configurations(label)

    def top_configurations(self, label: str) -> list[dict[str, Any]]:
        """A method's top-k ended search trials by the study's ranking rule (study.search.top_trials, the
        same rule as a search study's confirmation), among that method's trials only."""
        ended = {t: values for t, (values, _) in self.ended_search.items() if self.owner.get(t) == label}
        return [method_spec(self.ended_search[t][1], "confirm", self.confirm_seeds, label, confirms=t)
                for t in top_trials(ended, self.metrics, self.modes, self.epochs, self.top_k)]

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.owner and not result.get("diverged"):
            with already_recorded_in_optuna():
                self.optuna[self.owner[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.owner:
            return
        complete_in_optuna(self.optuna[self.owner[trial_id]], trial_id, result, error)
        point = self.open_search.pop(trial_id, None)
        values = confirmable_values(result, self.metrics, error)
        if point is not None and values is not None:
            self.ended_search[trial_id] = (values, point)


class MethodASHA(FIFOScheduler):
    """ASHA with the study's settings, one instance per method: a search trial is compared only with the
    trials of its own method. Baseline and confirmation trials run their full budget (StudyASHA)."""

    def __init__(self, **asha: Any):
        super().__init__()
        self.asha, self.by_method, self.properties = asha, {}, {}

    def _for(self, trial) -> StudyASHA:
        label = trial.config.get(METHOD_KEY, "")
        if label not in self.by_method:
            scheduler = StudyASHA(**self.asha)
            if self.properties:
                scheduler.set_search_properties(**self.properties)
            self.by_method[label] = scheduler
        return self.by_method[label]

    def set_search_properties(self, metric, mode, **spec) -> bool:
        self.properties = {"metric": metric, "mode": mode, **spec}
        for scheduler in self.by_method.values():
            scheduler.set_search_properties(metric, mode, **spec)
        return True

    def on_trial_add(self, tune_controller, trial):
        self._for(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        return self._for(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        self._for(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial):
        self._for(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "\n".join(f"{label or 'planned'}: {s.debug_string()}" for label, s in self.by_method.items())


def scheduler_for(cfg: StudyConfig):
    if cfg.scheduler != "asha":
        return None
    epochs = cfg.trial_config().epochs
    return MethodASHA(time_attr="training_iteration", max_t=epochs, grace_period=min(cfg.asha.grace_period, epochs),
                      reduction_factor=cfg.asha.reduction_factor)


def close_orphans(cfg: StudyConfig, study_dir: Path) -> int:
    """Every method's Optuna proposals a killed driver never trained (see study.search)."""
    if not (Path(study_dir) / OPTUNA_FILE).is_file():
        return 0
    closed = 0
    for method in cfg.methods_resolved():
        try:
            closed += close_orphaned_proposals(study_dir, optuna_study_name(cfg.name, method.label))
        except KeyError:  # this method's study was never created (the driver died before its first trial)
            pass
    return closed
