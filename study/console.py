"""The live view of `mmstudy run`: a Tune callback that prints what a researcher watches, and nothing else.

Tune's own tables show every reported column every 30 s; a study needs the counts, the best trial by the
study's own metric and mode, and one line per trial that ends. Tune's tables come back with `-v`.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

from ray.tune import Callback

from study.config import OWN_ROLES
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


class StudyConsole(Callback):
    """Counts of done / running / pruned / failed trials, the best so far with its short parameter names,
    elapsed time and an ETA every `every_s` seconds, and one line per finished, pruned or failed trial."""

    def __init__(self, study_name: str, metric: str, mode: str, total: int | None = None,
                 short_names: dict[str, str] | None = None, out: TextIO | None = None, epochs: int | None = None,
                 every_s: float = 30.0):
        self.study_name, self.metric, self.mode = study_name, metric, mode
        self.total, self.names, self.epochs, self.every_s = total, dict(short_names or {}), epochs, every_s
        self.out = out
        self.start = time.monotonic()
        self.last_print = 0.0
        self.running: set[str] = set()
        self.ended: dict[str, str] = {}  # trial id -> finished | pruned | diverged | failed
        self.seen: dict[str, tuple[dict[str, float], dict[str, Any]]] = {}  # own trial -> (ranking values, point)

    def __getstate__(self):  # Tune pickles callbacks with its experiment state; a stream is not state
        state = dict(self.__dict__)
        state["out"] = None
        return state

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

    def summary_line(self) -> str:
        counts = {s: list(self.ended.values()).count(s) for s in ("finished", "pruned", "diverged", "failed")}
        done = sum(counts.values())
        elapsed = time.monotonic() - self.start
        parts = [f"[{self.study_name}] {format_duration(elapsed)}",
                 f"done {counts['finished']}" + (f"/{self.total}" if self.total else ""),
                 f"running {len(self.running)}", f"pruned {counts['pruned']}",
                 f"failed {counts['failed'] + counts['diverged']}"]
        best = self.best()
        if best is not None:
            name, col, value, point = best
            parts.append(f"best {col} {value:.4f} ({name}: {self._point_text(point)})")
        if self.total and done:
            parts.append(f"ETA ~{format_duration(elapsed * max(self.total - done, 0) / done)}")
        return " | ".join(parts)

    # ------------------------------------------------------------------ Tune events
    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if trial.config.get("role", "search") not in OWN_ROLES:  # the baseline and confirmations are not candidates
            return
        keys = (self.metric, f"best_{self.metric}", "training_iteration")
        values = {k: float(result[k]) for k in keys if isinstance(result.get(k), (int, float))}
        self.seen[str(trial)] = (values, trial_point(trial.config))

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        status, reason = trial_status(last, self.epochs or int(last.get("training_iteration", 0)))
        self._ended(trial, status, reason)

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

    def on_step_end(self, iteration, trials, **info):
        now = time.monotonic()
        if now - self.last_print >= self.every_s:
            self.last_print = now
            self._print(self.summary_line())

    def on_experiment_end(self, trials, **info):
        self._print(self.summary_line())

