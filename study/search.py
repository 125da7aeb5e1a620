"""What a study trains and in which order: one Tune config shape for every mode, the searcher that proposes
the trials (baseline and grid points, then Optuna's samples, then the confirmation of the best), and ASHA.

Every trial's Tune config is `{"point": {dotted key: value}, "role": ..., "seeds": [...]}` (plus `confirms`,
the search trial a confirmation re-trains), so the trainable, the MLflow writer and the console read one shape.
Roles: search | sensitivity | compare (the study's own trials), baseline (joint training, `none`, same trial
config and budget), confirm (a top-k search configuration re-trained with seeds the search never saw).
"""
from __future__ import annotations

import contextlib

import math
import pickle
from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import Searcher

from search_spaces import define_by_run, grid_points, sensitivity_points
from study.config import OWN_ROLES, StudyConfig, compare_points

OPTUNA_FILE = "optuna.journal"


def trial_spec(point: dict[str, Any], role: str, seeds: list[int], confirms: str | None = None) -> dict[str, Any]:
    """The Tune config of one trial (the one shape)."""
    spec = {"point": dict(point), "role": role, "seeds": list(seeds)}
    if confirms is not None:
        spec["confirms"] = confirms
    return spec


def train(config: dict[str, Any], **kwargs) -> None:
    """The trial function: the trainable adapter with this trial's own seeds (a confirmation's are fresh)."""
    import logging

    from trainables.tune_trainable import run_trial

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # no "Checkpoint successfully created" per epoch
    run_trial(config, seeds=config["seeds"], **kwargs)


def planned_trials(cfg: StudyConfig) -> list[dict[str, Any]]:
    """The trials known before the study starts: the baseline (one per loss setting) and every grid point."""
    base, space, seeds = cfg.base_trial(), cfg.space(), list(cfg.seeds)
    planned = [trial_spec({"balancer.name": "none", "loss_setting": setting}, "baseline", cfg.baseline_seeds())
               for setting in cfg.loss_settings] if cfg.has_baseline() else []
    if cfg.mode == "compare":
        planned += [trial_spec(p, "compare", seeds) for p in compare_points(cfg)]
    elif cfg.mode == "sensitivity":
        points = sensitivity_points(space, base, cfg.sensitivity.params, cfg.loss_settings)
        planned += [trial_spec(p, "sensitivity", seeds) for p in points]
    elif cfg.searcher == "grid":
        planned += [trial_spec(dict(p, loss_setting=s), "search", seeds)
                    for p in grid_points(space, base) for s in cfg.loss_settings]
    return planned


def optuna_searcher(cfg: StudyConfig, study_dir: Path, space=None, base=None, study_name: str | None = None):
    """Ray's OptunaSearch on a journal file in the study folder (`optuna.load_study` and optuna-dashboard open
    it); several loss settings in one search become one more categorical. A benchmark gives each method its
    own `space`, `base` trial and `study_name` (one Optuna study per method in the same journal)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from ray.tune.search.optuna import OptunaSearch

    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=cfg.sampler_seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=cfg.sampler_seed),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=cfg.sampler_seed, warn_independent_sampling=False),
    }
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    extra = {"loss_setting": list(cfg.loss_settings)} if len(cfg.loss_settings) > 1 else None
    storage = JournalStorage(JournalFileBackend(str(study_dir / OPTUNA_FILE)))
    return OptunaSearch(space=define_by_run(space or cfg.space(), base or cfg.base_trial(), extra),
                        # several metrics: Optuna's multi-objective study (one direction per metric)
                        metric=cfg.metric.names if len(cfg.metric.names) > 1 else cfg.metric.name,
                        mode=cfg.metric.modes if len(cfg.metric.modes) > 1 else cfg.metric.mode,
                        sampler=samplers[cfg.searcher](),
                        storage=storage, study_name=study_name or cfg.name)


def confirmable_values(result: dict | None, metrics: list[str], error: bool = False) -> dict[str, float] | None:
    """An ended search trial's values for the ranking rule (each metric, its best_ value, the epochs it ran),
    or None when the trial is no confirmation candidate: it errored, diverged (study.status), or reported no
    finite value of the first metric. A diverged trial's best_ values are finite, but its configuration is
    not one to re-train."""
    from study.status import trial_status

    if error or not result or trial_status(result, 0)[0] == "diverged":
        return None
    keys = {*metrics, *(f"best_{m}" for m in metrics), "training_iteration"}
    values = {k: float(v) for k, v in result.items() if k in keys and isinstance(v, (int, float)) and math.isfinite(v)}
    return values if metrics[0] in values else None


def top_trials(ended: dict[str, dict[str, float]], metrics: list[str], modes: list[str], epochs: int | None,
               top_k: int) -> list[str]:
    """The ids of the top-k ended search trials by the study's one ranking rule (`study.ranking.rank_trials`:
    the metric(s) at each trial's best validation epoch; complete trials before ASHA-stopped ones)."""
    import pandas as pd

    from study.ranking import rank_trials

    if not ended:
        return []
    rows = pd.DataFrame([{"trial_id": trial_id, **values} for trial_id, values in ended.items()])
    return list(rank_trials(rows, metrics, modes, epochs)["trial_id"].head(top_k))


def complete_in_optuna(optuna, trial_id: str, result: dict | None, error: bool) -> None:
    """Tell the trial's Optuna searcher it ended; a diverged trial is a failed Optuna trial (its NaN is no
    objective value)."""
    diverged = bool(result and result.get("diverged"))
    with already_recorded_in_optuna():
        optuna.on_trial_complete(trial_id, result=None if diverged else result, error=error or diverged)


class CheckpointedSearcher(Searcher):
    """A searcher whose whole state travels in Tune's experiment checkpoint (so a resume neither repeats nor
    loses a planned or confirmation trial)."""

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self.__dict__.copy(), fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as fh:
            self.__dict__.update(pickle.load(fh))


class StudySearcher(CheckpointedSearcher):
    """Planned trials first (baseline, grid points), then `num_samples` proposals from Optuna, then -- once every
    search trial has ended -- the top-k search configurations by the study's metric and mode, re-trained with
    the confirmation seeds. Its whole state is checkpointed with Tune's experiment, so a resume neither repeats
    nor loses a baseline or a confirmation.

    Optuna hears only about its own trials; a diverged trial (it reports NaN and ends cleanly) is told as
    failed, since Optuna refuses a NaN told as complete and would leave the trial RUNNING in its study.
    """

    def __init__(self, planned: list[dict[str, Any]], optuna=None, num_samples: int = 0, seeds: list[int] = (),
                 top_k: int = 0, confirm_seeds: list[int] = (), metric: str | list[str] = "val_acc",
                 mode: str | list[str] = "max", epochs: int | None = None):
        self.metrics = [metric] if isinstance(metric, str) else list(metric)
        self.modes = [mode] if isinstance(mode, str) else list(mode)
        self.epochs = epochs  # the trial budget: trials ASHA stopped before it rank after those that ran it
        super().__init__(metric=self.metrics[0], mode=self.modes[0])
        self.planned, self.optuna, self.to_sample, self.seeds = list(planned), optuna, num_samples, list(seeds)
        self.top_k, self.confirm_seeds = top_k, list(confirm_seeds)
        self.from_optuna: set[str] = set()
        self.open_search: dict[str, dict[str, Any]] = {}  # search trial id -> its point, until it ends
        self.ended_search: dict[str, tuple[dict[str, float], dict[str, Any]]] = {}  # id -> (ranking values, point)
        self.confirmations: list[dict[str, Any]] | None = None

    @staticmethod
    def for_study(cfg: StudyConfig, study_dir: Path) -> "StudySearcher":
        planned = planned_trials(cfg)
        sampled = cfg.mode == "search" and cfg.searcher != "grid"
        return StudySearcher(planned, optuna_searcher(cfg, study_dir) if sampled else None,
                             cfg.num_samples if sampled else 0, cfg.seeds,
                             cfg.confirm.top_k if cfg.confirming() else 0, cfg.confirm.seeds, cfg.metric.names,
                             cfg.metric.modes, cfg.trial_config().epochs)

    def total(self) -> int:
        searched = self.to_sample + sum(p["role"] == "search" for p in self.planned)
        return len(self.planned) + self.to_sample + min(self.top_k, searched)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # metric, mode and space were given when the study was built

    def suggest(self, trial_id: str):
        if self.planned:
            spec = self.planned.pop(0)
        elif self.to_sample > 0:
            spec = trial_spec(self.optuna.suggest(trial_id), "search", self.seeds)
            self.to_sample -= 1
            self.from_optuna.add(trial_id)
        elif self.top_k and self.confirmations is None:
            if self.open_search:
                return None  # confirm only once every search trial has ended
            self.confirmations = self.top_configurations()
            return self.suggest(trial_id)
        elif self.confirmations:
            spec = self.confirmations.pop(0)
        else:
            return Searcher.FINISHED
        if spec["role"] == "search":
            self.open_search[trial_id] = spec["point"]
        return spec

    def top_configurations(self) -> list[dict[str, Any]]:
        """The top-k ended search trials (`top_trials`), re-trained with the confirmation seeds."""
        ended = {trial_id: values for trial_id, (values, _) in self.ended_search.items()}
        return [trial_spec(self.ended_search[trial_id][1], "confirm", self.confirm_seeds, confirms=trial_id)
                for trial_id in top_trials(ended, self.metrics, self.modes, self.epochs, self.top_k)]

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.from_optuna and not result.get("diverged"):
            with already_recorded_in_optuna():
                self.optuna.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.from_optuna:
            complete_in_optuna(self.optuna, trial_id, result, error)
        if trial_id in self.open_search:
            point = self.open_search.pop(trial_id)
            values = confirmable_values(result, self.metrics, error)
            if values is not None:
                self.ended_search[trial_id] = (values, point)


@contextlib.contextmanager
def already_recorded_in_optuna():
    """The Optuna journal is written as trials report, Tune's experiment snapshot a moment later: a driver
    killed in between leaves a trial that Optuna holds as finished and Tune resumes from its checkpoint. Its
    repeated reports are already in Optuna, which refuses them; the trial itself goes on under Tune."""
    from optuna.exceptions import UpdateFinishedTrialError

    try:
        yield
    except UpdateFinishedTrialError:
        pass


def close_orphaned_proposals(study_dir: Path, study_name: str) -> int:
    """Optuna proposals still RUNNING once Tune's run has ended were never trained: proposals made after the
    searcher state a killed driver had saved. Marked failed here, at the end of the (resumed) run, and not on
    restore: there, the journal can hold trials newer than the restored searcher state that Tune still resumes,
    and failing them would make Optuna refuse their results. Returns how many were closed."""
    path = Path(study_dir) / OPTUNA_FILE
    if not path.is_file():
        return 0
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name=study_name, storage=JournalStorage(JournalFileBackend(str(path))))
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in running:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    return len(running)


class StudyASHA(ASHAScheduler):
    """ASHA over the search's own trials; baseline and confirmation trials always run their full budget and
    never move a rung's cut-off."""

    def on_trial_result(self, tune_controller, trial, result):
        if trial.config.get("role") not in OWN_ROLES:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        if trial.config.get("role") in OWN_ROLES:
            super().on_trial_complete(tune_controller, trial, result)


def scheduler_for(cfg: StudyConfig):
    """ASHA for a sampled search (grids, sensitivity sweeps and comparisons run every point fully)."""
    if cfg.scheduler != "asha" or cfg.mode != "search" or cfg.searcher == "grid":
        return None
    epochs = cfg.trial_config().epochs
    return StudyASHA(time_attr="training_iteration", max_t=epochs, grace_period=min(cfg.asha.grace_period, epochs),
                     reduction_factor=cfg.asha.reduction_factor)


class TrialName:
    """Trial names and folders that carry the study's name and the trial's role (picklable for Tune)."""

    def __init__(self, study_name: str, sep: str = "-"):
        self.study_name, self.sep = study_name, sep

    def __call__(self, trial) -> str:
        return self.sep.join((self.study_name, trial.config.get("role", "trial"), trial.trial_id))
