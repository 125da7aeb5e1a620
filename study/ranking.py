"""The one ranking rule of a study's trials: the searcher's confirmation choice, the study's "best" (study.json,
the parent run, `mmstudy list`, the console's top table) and the report all call `rank_trials`.

The rule, and why:
- Each trial is ranked by the study's metric(s) at its **selected (best validation) epoch**: `best_<metric>`
  when the trials report it, else the metric as reported (`rank_column`). A trial's last epoch is whatever
  epoch training happened to stop at; its best epoch is the one the study selects and reports test numbers for.
- Trials that **ran their full epoch budget come first**; trials ASHA stopped early follow, ranked among
  themselves by the same rule. A stopped trial's best epoch is the best of fewer epochs -- a value from a
  different budget, not comparable -- and ASHA already found it behind its rung's peers. It stays a
  legitimate configuration, so it still fills the confirmation's top-k when fewer trials completed (the
  confirmation re-trains it with the full budget).
- **Several objectives**: Pareto fronts first (the non-dominated trials, then the trials only they dominate,
  ...), each front in the order of the first metric (ties: the next metrics). The top of the ranking is then
  always the best trial by the first metric -- the study's "best" -- and the top-k confirmed are the
  Pareto-optimal configurations, best first metric first.
- Exact ties go to the smaller trial id, so every caller picks the same trial whatever order its rows are in.
- Trials without a finite value of every objective are not ranked (a diverged or failed trial).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

COMPLETE = "_complete"


def rank_column(trials: pd.DataFrame | dict, metric: str) -> str:
    """The column that ranks trials by `metric`: its value at each trial's selected (best validation) epoch,
    `best_<metric>`, when the trials report it; else the metric as reported."""
    if not metric.startswith("best_") and f"best_{metric}" in trials:
        return f"best_{metric}"
    return metric


def pareto_front(points: np.ndarray, modes: Sequence[str]) -> np.ndarray:
    """Indices of the non-dominated rows of `points` (one column per objective, each maximised or minimised)."""
    signed = np.asarray(points, dtype=float) * np.array([1.0 if m == "max" else -1.0 for m in modes])
    keep = [i for i, p in enumerate(signed)
            if not any(np.all(q >= p) and np.any(q > p) for j, q in enumerate(signed) if j != i)]
    return np.array(keep, dtype=int)


def pareto_layers(points: np.ndarray, modes: Sequence[str]) -> np.ndarray:
    """Each row's Pareto front: 0 for the non-dominated rows, 1 for those only front 0 dominates, ..."""
    layer = np.full(len(points), -1)
    left = np.arange(len(points))
    depth = 0
    while left.size:
        front = left[pareto_front(points[left], modes)]
        layer[front] = depth
        left = np.setdiff1d(left, front)
        depth += 1
    return layer


def completed(trials: pd.DataFrame, epochs: int | None = None) -> pd.Series:
    """Whether each trial ran its full epoch budget: MLflow rows by their `status` (`finished`; ASHA's stops are
    `pruned`, study.status decides), Tune rows by `training_iteration` against `epochs` (default: the most
    any trial ran, which a finished study's complete trials did). Without either, every trial counts."""
    if "status" in trials:
        return trials["status"] == "finished"
    if "training_iteration" in trials:
        done = pd.to_numeric(trials["training_iteration"], errors="coerce")
        budget = epochs if epochs is not None else done.max()
        return done >= budget
    return pd.Series(True, index=trials.index)


def rank_trials(trials: pd.DataFrame, metrics: str | Sequence[str], modes: str | Sequence[str],
                epochs: int | None = None) -> pd.DataFrame:
    """`trials` (one row per trial) best first by the module's rule; rows without a finite value of every
    objective are dropped. The caller chooses the pool (the search's own trials, the confirmations, ...)."""
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    modes = [modes] if isinstance(modes, str) else list(modes)
    cols = [rank_column(trials, m) for m in metrics]
    if trials.empty or any(c not in trials for c in cols):
        return trials.iloc[0:0]
    values = trials[cols].apply(pd.to_numeric, errors="coerce")
    ok = np.isfinite(values.to_numpy(dtype=float)).all(axis=1)
    pool, values = trials[ok], values[ok]
    signed = values.to_numpy(dtype=float) * np.array([-1.0 if m == "max" else 1.0 for m in modes])  # lower: better
    complete = completed(pool, epochs).to_numpy(dtype=bool)
    layer = np.zeros(len(pool), dtype=int)
    if len(cols) > 1:
        for group in (complete, ~complete):  # fronts among the complete trials, then among the stopped ones
            idx = np.flatnonzero(group)
            layer[idx] = pareto_layers(values.to_numpy(dtype=float)[idx], modes)
    ids = pool["trial_id"].astype(str).to_numpy() if "trial_id" in pool else np.arange(len(pool))
    keys = [ids, *(signed[:, i] for i in reversed(range(len(cols)))), layer, ~complete]
    order = np.lexsort(keys)  # the last key is the primary one: complete, front, first metric, ..., trial id
    return pool.iloc[order]
