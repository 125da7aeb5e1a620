"""The live view of `mmstudy run`: a Tune callback that prints what a researcher watches, and nothing else.

Tune's own tables show every reported column every 30 s; a study needs the counts, the best trial by the
study's own metric and mode, an ETA, and one line per trial that ends. Tune's tables come back with `-v`.

The ETA counts work, not trials: a study's trials differ by a factor of ten in cost (a 1-seed search trial
that ASHA stops at epoch 2 against a 3-seed confirmation of every epoch), so the console gets the study's
plan (`study_plan`, from the config alone) and divides the seed-epochs still to train by the seed-epochs per
second trained so far.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, TextIO

from ray.tune import Callback

from study.config import OWN_ROLES, StudyConfig
from study.status import trial_status
from trainables.tune_trainable import trial_point


def short_names(keys: list[str]) -> dict[str, str]:
    """`balancer.gamma` -> `gamma`; a last part two keys share keeps its parent (`optim.lr`)."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else ".".join(k.split(".")[-2:])) for k, s in zip(keys, last)}


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


@dataclass(frozen=True)
class StudyPlan:
    """What a study will train: per role, how many trials and how many seeds each, the epoch budget, and
    ASHA's rungs (milestones below the budget) for the study's own trials when ASHA stops them early."""
    epochs: int
    trials: dict[str, int]  # role -> trials planned
    seeds: dict[str, int]  # role -> seeds each of those trials trains (in lockstep)
    rungs: tuple[int, ...] = ()  # empty: every trial runs every epoch
    reduction_factor: float = 1.0

    @property
    def total(self) -> int:
        return sum(self.trials.values())

    def expected_epochs(self, role: str, reached: int = 0) -> float:
        """Epochs a trial of `role` is expected to run in all, given it is still running after `reached`.

        Baseline, confirmation, grid, sensitivity and comparison trials run the whole budget. A search trial
        under ASHA runs surely to the next rung above `reached`; each rung then lets on 1 / reduction_factor of
        the trials that reach it (ASHA's cut-off is that quantile of the rung's recorded values), so a trial
        not yet started is expected to run r0 + (r1 - r0)/f + (r2 - r1)/f^2 + ... + (epochs - rK)/f^(K+1)
        epochs (quickstart: rungs 2, 6 of 12 with f = 3: 2 + 4/3 + 6/9 = 4 epochs)."""
        if role not in OWN_ROLES or not self.rungs:
            return float(self.epochs)
        ahead = [r for r in self.rungs if r > reached]
        if not ahead:
            return float(self.epochs)
        stops = [*ahead, self.epochs]
        return stops[0] + sum((b - a) / self.reduction_factor ** (k + 1)
                              for k, (a, b) in enumerate(zip(stops, stops[1:])))

    def seed_epochs(self) -> float:
        """The study's whole expected work in seed-epochs (before any trial has run)."""
        return sum(n * self.seeds.get(role, 1) * self.expected_epochs(role) for role, n in self.trials.items())


def study_plan(cfg: StudyConfig) -> StudyPlan:
    """The plan of a study from its config: the baseline (one trial per loss setting, its own seeds), the
    study's own trials (grid / sensitivity / comparison points, `num_samples` sampled search trials, or in a
    benchmark `num_samples` per searched method), and the confirmations (min(top_k, search trials) with the
    confirmation seeds; a benchmark confirms each searched method, and trains each fixed method once with
    them). Fewer confirmations happen only when search trials fail."""
    from study.search import asha_rungs, planned_trials

    epochs = cfg.trial_config().epochs
    trials: dict[str, int] = {}
    seeds: dict[str, int] = {}
    for spec in planned_trials(cfg):  # the baseline and every grid, sensitivity or comparison point
        trials[spec["role"]] = trials.get(spec["role"], 0) + 1
        seeds[spec["role"]] = len(spec["seeds"])
    own = "search"
    if cfg.mode == "benchmark":
        methods = cfg.methods_resolved()
        searched = sum(m.searched for m in methods)
        trials[own] = searched * cfg.num_samples
        trials["confirm"] = searched * min(cfg.confirm.top_k, cfg.num_samples) + (len(methods) - searched)
    elif cfg.mode == "search":
        if cfg.searcher != "grid":
            trials[own] = cfg.num_samples
        if cfg.confirming():
            trials["confirm"] = min(cfg.confirm.top_k, trials.get(own, 0))
    seeds.setdefault(own, len(cfg.seeds))
    seeds["confirm"] = len(cfg.confirm.seeds)
    trials = {role: n for role, n in trials.items() if n}
    sampled = cfg.mode == "benchmark" or (cfg.mode == "search" and cfg.searcher != "grid")
    if cfg.scheduler == "asha" and sampled:
        return StudyPlan(epochs, trials, seeds, asha_rungs(epochs, cfg.asha.grace_period, cfg.asha.reduction_factor),
                         cfg.asha.reduction_factor)
    return StudyPlan(epochs, trials, seeds)


class StudyConsole(Callback):
    """Counts of done (ended: finished, pruned, diverged or failed) / running / pruned / failed trials, the best
    so far with its short parameter names, elapsed time and an ETA every `every_s` seconds, and one line per
    finished, pruned or failed trial.

    The ETA is the seed-epochs still to train divided by the seed-epochs per second trained since the first
    trial started: an ended trial counts the epochs it ran, a running one is expected to run
    `plan.expected_epochs(role, reached)`, and the plan's trials not yet started their expected epochs. Without
    a plan (a bare Tune run) every trial is expected to run `epochs` epochs with the seeds it names."""

    def __init__(self, study_name: str, metric: str, mode: str, total: int | None = None,
                 short_names: dict[str, str] | None = None, out: TextIO | None = None, epochs: int | None = None,
                 every_s: float = 30.0, plan: StudyPlan | None = None, clock: Callable[[], float] = time.monotonic):
        self.study_name, self.metric, self.mode = study_name, metric, mode
        self.plan, self.clock = plan, clock
        self.total = total if total is not None else (plan.total if plan else None)
        self.epochs = epochs if epochs is not None else (plan.epochs if plan else None)
        self.names, self.every_s = dict(short_names or {}), every_s
        self.out = out
        self.start = clock()
        self.first_start: float | None = None  # when the first trial started: the rate's clock
        self.work_before = 0.0  # seed-epochs trained before a resume (not by this process, not in its rate)
        self.last_print = -math.inf
        self.running: set[str] = set()
        self.ended: dict[str, str] = {}  # trial id -> finished | pruned | diverged | failed
        self.progress: dict[str, tuple[str, int, int]] = {}  # trial id -> (role, seeds, epochs reported)
        self.experiment_ended = False
        self.seen: dict[str, tuple[dict[str, float], dict[str, Any]]] = {}  # own trial -> (ranking values, point)

    def __getstate__(self):  # Tune pickles callbacks with its experiment state; a stream is not state
        state = dict(self.__dict__)
        state["out"] = None
        return state

    def __setstate__(self, state):  # a resumed study: another process, another monotonic clock
        self.__dict__.update(state)
        self.start, self.first_start, self.last_print = self.clock(), None, -math.inf
        self.work_before = self.work()[0]

    # ------------------------------------------------------------------ what is printed
    def _print(self, line: str) -> None:
        print(line, file=self.out or sys.stdout, flush=True)

    def _point_text(self, point: dict[str, Any]) -> str:
        names = self.names or short_names(list(point))
        return " ".join(f"{names.get(k, k)}={format_value(v)}" for k, v in point.items())

    def best(self) -> tuple[str, str, float, dict[str, Any]] | None:
        """(trial, column, value, point) of the best own trial so far by the study's one ranking rule
        (`study.ranking.rank_trials`: the metric at its best validation epoch, trials that ran every epoch first)."""
        import pandas as pd

        from study.ranking import rank_column, rank_trials

        ranked = rank_trials(pd.DataFrame([{"trial": name, **values} for name, (values, _) in self.seen.items()]),
                             self.metric, self.mode, self.epochs)
        if ranked.empty:
            return None
        top, col = ranked.iloc[0], rank_column(ranked, self.metric)
        return top["trial"], col, float(top[col]), self.seen[top["trial"]][1]

    def work(self) -> tuple[float, float]:
        """(seed-epochs trained so far, seed-epochs expected still to train): see the class docstring."""
        done = float(sum(seeds * epochs for _, seeds, epochs in self.progress.values()))
        if self.experiment_ended:
            return done, 0.0
        left, started = 0.0, {}
        for trial_id, (role, seeds, epochs) in self.progress.items():
            started[role] = started.get(role, 0) + 1
            if trial_id not in self.ended:
                expected = self.plan.expected_epochs(role, epochs) if self.plan else float(self.epochs or epochs)
                left += seeds * max(expected - epochs, 0.0)
        if self.plan is not None:
            for role, planned in self.plan.trials.items():
                waiting = max(planned - started.get(role, 0), 0)
                left += waiting * self.plan.seeds.get(role, 1) * self.plan.expected_epochs(role)
        return done, left

    def eta(self) -> float | None:
        """Seconds left: the work still to train at the rate measured so far (None before the first epoch)."""
        done, left = self.work()
        done -= self.work_before
        if self.first_start is None or done <= 0:
            return None
        rate = done / max(self.clock() - self.first_start, 1e-9)
        return left / rate

    def summary_line(self) -> str:
        counts = {s: list(self.ended.values()).count(s) for s in ("finished", "pruned", "diverged", "failed")}
        elapsed = self.clock() - self.start
        parts = [f"[{self.study_name}] {format_duration(elapsed)}",
                 f"done {len(self.ended)}" + (f"/{self.total}" if self.total else ""),
                 f"running {len(self.running)}", f"pruned {counts['pruned']}",
                 f"failed {counts['failed'] + counts['diverged']}"]
        best = self.best()
        if best is not None:
            name, col, value, point = best
            parts.append(f"best {col} {value:.4f} ({name}: {self._point_text(point)})")
        eta = self.eta()
        if eta is not None:
            done, left = self.work()
            parts.append(f"ETA ~{format_duration(eta)} ({done:.0f}/{done + left:.0f} seed-epochs)")
        return " | ".join(parts)

    # ------------------------------------------------------------------ Tune events
    def _adopt(self, trial) -> None:
        """A trial this process did not start from scratch (a resume restored it, ended or from its checkpoint):
        counted with the epochs it had run, which were trained before this process and stay out of its rate."""
        last = trial.last_result or {}
        epochs = last.get("training_iteration")
        epochs = epochs if isinstance(epochs, int) else 0
        seeds = len(trial.config.get("seeds") or [0])
        self.progress[trial.trial_id] = (trial.config.get("role", "search"), seeds, epochs)
        self.work_before += seeds * epochs
        self._remember(trial, last)

    def _remember(self, trial, result: dict) -> None:
        """An own trial's latest values, a candidate for "best" (the baseline and confirmations are not)."""
        if trial.config.get("role", "search") not in OWN_ROLES or not result:
            return
        keys = (self.metric, f"best_{self.metric}", "training_iteration")
        values = {k: float(result[k]) for k in keys if isinstance(result.get(k), (int, float))}
        self.seen[str(trial)] = (values, trial_point(trial.config))

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)
        if self.first_start is None:
            self.first_start = self.clock()
            self.work_before = self.work()[0]
        if trial.trial_id not in self.progress:
            self._adopt(trial)  # a new trial has no result yet: 0 epochs

    def on_trial_result(self, iteration, trials, trial, result, **info):
        role = trial.config.get("role", "search")
        if isinstance(result.get("training_iteration"), int):
            self.progress[trial.trial_id] = (role, len(trial.config.get("seeds") or [0]), result["training_iteration"])
        self._remember(trial, result)

    def _completed_status(self, trial) -> tuple[str, str]:
        """(status, reason) of a trial that ended without an error: finished, pruned or diverged."""
        last = trial.last_result or {}
        return trial_status(last, self.epochs or int(last.get("training_iteration", 0)))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trial, *self._completed_status(trial))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial, "failed", "see the trial's error.txt (mmstudy list shows the reason)")

    def _ended(self, trial, status: str, reason: str) -> None:
        self.running.discard(trial.trial_id)
        self.ended[trial.trial_id] = status
        last = trial.last_result or {}
        value = last.get(self.metric)
        shown = f"{self.metric} {value:.4f}" if isinstance(value, (int, float)) and not math.isnan(value) else ""
        epochs = f"epoch {last.get('training_iteration', 0)}" + (f"/{self.epochs}" if self.epochs else "")
        point = self._point_text(trial_point(trial.config))
        self._print("  ".join(p for p in (f"{status:>8} {trial}", shown, epochs, point,
                                            reason if status != "finished" else "") if p))

    def _count_restored(self, trials) -> None:
        """The trials a resumed study had already ended: Tune restores them without an event, so `done`, `best`
        and the ETA would otherwise start from nothing after `mmstudy resume`."""
        for trial in trials:
            if trial.trial_id not in self.progress and trial.status in ("TERMINATED", "ERROR"):
                self._adopt(trial)
                self.ended[trial.trial_id] = "failed" if trial.status == "ERROR" else self._completed_status(trial)[0]

    def on_step_end(self, iteration, trials, **info):
        self._count_restored(trials)
        now = self.clock()
        if now - self.last_print >= self.every_s:
            self.last_print = now
            self._print(self.summary_line())

    def on_experiment_end(self, trials, **info):
        self._count_restored(trials)
        self.experiment_ended = True
        self._print(self.summary_line())

