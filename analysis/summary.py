"""The study's answer in one paragraph: is the best configuration better than joint training, beyond noise?

`study_summary` leads the report, is printed when `mmstudy run` ends and goes on the parent MLflow run
(metrics + description). The result is the confirmation trials' numbers (fresh seeds) when the study has
them, not the search's own best epoch (winner's curse); the baseline is the study's joint-training trial
(`mmstudy.role=baseline`, or in a comparison the `none` variant of the same loss setting).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from analysis.stats import Difference, SeedSummary, compare_to_baseline
from analysis.tables import baseline_for, finished, rank_column, roles, seed_stats, seed_values, trial_label

LOSS_NAMES = {"multimodal": "multimodal loss", "multimodal+unimodal": "multimodal + unimodal loss (*)"}


@dataclass
class StudySummary:
    text: str  # a markdown paragraph
    metrics: dict[str, float] = field(default_factory=dict)  # finite numbers only, for the parent MLflow run
    best_trial_id: str | None = None
    baseline_trial_id: str | None = None
    confirmed: bool = False


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, (list, tuple)) else value


def candidates(done: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """The rows the result is chosen from: the confirmation trials when any finished, else every
    non-baseline trial (then the result is not confirmed)."""
    role = roles(done)
    confirmed = done[role == "confirm"]
    if not confirmed.empty:
        return confirmed, True
    pool = done[~role.isin(["baseline", "confirm"])]
    if not (role == "baseline").any() and "balancer" in pool:  # a comparison's `none` variant is the baseline:
        methods = pool[pool["balancer"] != "none"]              # never the answer compared with itself
        pool = methods if not methods.empty else pool
    return pool, False


def rank(frame: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """Trials best first by the study's metric at their selected epoch (NaN last)."""
    col = rank_column(frame, metric)
    if col not in frame:
        return frame
    return frame.sort_values(col, ascending=(mode == "min"), na_position="last")


def study_summary(trials: pd.DataFrame, metric: str, mode: str) -> StudySummary:
    """The report's first paragraph and the parent run's metrics (see the module docstring)."""
    metric, mode = _first(metric), _first(mode)
    config = trials.attrs.get("config") or {}
    done = finished(trials)
    pool, confirmed = candidates(done)
    if pool.empty:
        return StudySummary("**Result.** No trial has finished yet; nothing to compare.")
    col = rank_column(pool, metric)
    ranked = rank(pool, metric, mode)
    best = ranked.iloc[0]
    base = baseline_for(done, best.get("loss_setting"))

    acc, gap = seed_stats(best, "test_acc"), seed_stats(best, "test_gap")
    balancer = best.get("balancer") or "the study's method"
    seeds = best.get("seeds") if isinstance(best.get("seeds"), list) else None
    seeds_text = f"seeds {', '.join(map(str, seeds))}" if seeds else f"{acc.n} seed(s)"
    loss = LOSS_NAMES.get(best.get("loss_setting"), str(best.get("loss_setting")))
    if confirmed:
        which = (f"The best of the {len(pool)} configurations re-trained with fresh {seeds_text} (ranked by `{col}`, "
                 f"{mode}, on validation)")
    else:
        which = (f"The best configuration by `{col}` ({mode}), **not confirmed with fresh seeds** (the search's own "
                 f"best epoch, an optimistic estimate),")
    lines = [f"**Result ({balancer}).** {which} is `{trial_label(best)}` with the {loss}: test accuracy {_pct(acc)}"]
    metrics: dict[str, float] = {"best_confirmed": float(confirmed)}
    _put(metrics, "best_test_acc", acc)
    _put(metrics, "best_test_gap", gap)
    summary = StudySummary("", metrics, best_trial_id=best.get("trial_id"), confirmed=confirmed)

    if base is None:
        enabled = (config.get("baseline") or {}).get("enabled", True)
        why = ("no baseline: `baseline: {enabled: false}` in the study config" if enabled is False
               else "no baseline trial finished")
        lines[0] += f", modality gap {_pct(gap)}. There is {why}, so nothing here says whether it beats joint training."
    else:
        summary.baseline_trial_id = base.get("trial_id")
        b_acc, b_gap = seed_stats(base, "test_acc"), seed_stats(base, "test_gap")
        same_pool = pool[pool["loss_setting"] == best.get("loss_setting")] if "loss_setting" in pool else pool
        d_acc = _holm_for(same_pool, best, base, "test_acc")
        d_gap = _holm_for(same_pool, best, base, "test_gap")
        lines[0] += (f" against {_pct(b_acc)} for joint training (`none`, same trial settings): "
                     f"Δ = {d_acc.text()}{_verdict(d_acc)}. Modality gap (max − min unimodal test accuracy): "
                     f"{_pct(gap)} against {_pct(b_gap)}: Δ = {d_gap.text()}.")
        if len(same_pool) > 1 and d_acc.p is not None:
            lines.append(f"p-values are Holm-corrected over the {len(same_pool)} configurations compared with the baseline.")
        _put(metrics, "baseline_test_acc", b_acc)
        _put(metrics, "baseline_test_gap", b_gap)
        _put_diff(metrics, "best_minus_baseline", d_acc)
        _put_diff(metrics, "best_minus_baseline_gap", d_gap)
    lines.append("Values are percent: mean ± std [95 % t-interval] over seeds (n given), test metrics at each "
                 "seed's best validation epoch.")
    summary.text = " ".join(lines)
    return summary


def _holm_for(pool: pd.DataFrame, best: pd.Series, base: pd.Series, key: str) -> Difference:
    """The best's difference to the baseline, its p Holm-corrected over every candidate compared with it."""
    others = [r for _, r in pool.iterrows() if r.get("trial_id") != base.get("trial_id")]
    diffs = compare_to_baseline([seed_values(r, key) for r in others], seed_values(base, key))
    for r, d in zip(others, diffs):
        if r.get("trial_id") == best.get("trial_id"):
            return d
    return compare_to_baseline([seed_values(best, key)], seed_values(base, key))[0]


def _pct(s: SeedSummary) -> str:
    if s.n == 0:
        return "(not recorded)"
    return f"{s.text()} % (n = {s.n})" if s.std is not None else f"{s.text()} % (n = {s.n}, no spread)"


def _verdict(d: Difference) -> str:
    if d.p is None:
        return ""
    return f"; at a ±{100 * d.margin:g}-point margin: {d.verdict}"


def _put(metrics: dict[str, float], name: str, s: SeedSummary) -> None:
    for suffix, value in (("", s.mean), ("_ci_low", s.ci_low), ("_ci_high", s.ci_high), ("_n", s.n)):
        if value is not None and math.isfinite(value):
            metrics[name + suffix] = float(value)


def _put_diff(metrics: dict[str, float], name: str, d: Difference) -> None:
    for suffix, value in (("", d.diff), ("_ci_low", d.ci_low), ("_ci_high", d.ci_high), ("_p", d.p_adjusted)):
        if value is not None and math.isfinite(value):
            metrics[name + suffix] = float(value)
    if d.within_noise is not None:
        metrics[f"{name}_within_noise"] = float(d.within_noise)
