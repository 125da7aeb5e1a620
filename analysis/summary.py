"""The study's answer in one paragraph: is the best configuration better than joint training, beyond noise?

`study_summary` leads the report, is printed when `mmstudy run` ends and goes on the parent MLflow run
(metrics + description). The result is the rank-1 confirmation's numbers (fresh seeds: the re-training of the
search's best configuration, `analysis.tables.reported_confirmation`) when the study has one, never the best of
the k confirmations by their own numbers nor the search's own best epoch (winner's curse); the baseline is the
study's joint-training trial (`mmstudy.role=baseline`, or in a comparison the `none` variant of the same loss
setting).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from analysis.stats import Difference, SeedSummary, compare_to_baseline
from analysis.tables import (finished, holm_family, ranked, reported_confirmation, roles, seed_stats, seed_values,
                             study_margin, trial_label)
from study.ranking import rank_column

LOSS_NAMES = {"multimodal": "multimodal loss", "multimodal+unimodal": "multimodal + unimodal loss (*)"}


@dataclass
class StudySummary:
    text: str  # a markdown paragraph
    metrics: dict[str, float] = field(default_factory=dict)  # finite numbers only, for the parent MLflow run
    best_trial_id: str | None = None
    baseline_trial_id: str | None = None
    confirmed: bool = False


def candidates(done: pd.DataFrame) -> pd.DataFrame:
    """The rows an unconfirmed result is chosen from: every finished trial that is neither a baseline nor a
    confirmation (in a comparison, not its joint-training `none` variant either)."""
    role = roles(done)
    pool = done[~role.isin(["baseline", "confirm"])]
    if not (role == "baseline").any() and "balancer" in pool:  # a comparison's `none` variant is the baseline:
        methods = pool[pool["balancer"] != "none"]              # never the answer compared with itself
        pool = methods if not methods.empty else pool
    return pool


def study_summary(trials: pd.DataFrame, metric: str | list[str], mode: str | list[str]) -> StudySummary:
    """The report's first paragraph and the parent run's metrics (see the module docstring). The result is the
    rank-1 confirmation (`reported_confirmation`); without one, the top of the study's one ranking
    (`study.ranking.rank_trials`) over its own trials, labelled unconfirmed; with several metrics that is the
    best by the first (primary) metric."""
    config = trials.attrs.get("config") or {}
    done = finished(trials)
    role = roles(trials)
    confirms = trials[role == "confirm"]
    best, rule = (reported_confirmation(confirms, trials[~role.isin(["baseline", "confirm"])], metric, mode)
                  if not confirms.empty else (None, ""))
    confirmed = best is not None
    pool = confirms[confirms["status"] == "finished"] if confirmed else candidates(done)
    if best is not None and best.get("status") != "finished":
        balancer = best.get("balancer") or "the study's method"
        return StudySummary(f"**Result ({balancer}).** The search's best configuration `{trial_label(best)}` "
                            f"{best.get('status')} when re-trained with fresh seeds (confirmation trial "
                            f"{best.get('trial_id')}): there is no confirmed result.",
                            {"best_confirmed": 0.0}, best_trial_id=best.get("trial_id"))
    if pool.empty:
        return StudySummary("**Result.** No trial has finished yet; nothing to compare.")
    first_metric = metric if isinstance(metric, str) else metric[0]
    first_mode = mode if isinstance(mode, str) else mode[0]
    col = rank_column(pool, first_metric)
    best = best if confirmed else ranked(pool, metric, mode).iloc[0]
    margin = study_margin(config)
    base, family = holm_family(done, best.get("loss_setting"), margin=margin, ended=trials)

    acc, gap = seed_stats(best, "test_acc"), seed_stats(best, "test_gap")
    balancer = best.get("balancer") or "the study's method"
    seeds = best.get("seeds") if isinstance(best.get("seeds"), list) else None
    seeds_text = f"seeds {', '.join(map(str, seeds))}" if seeds else f"{acc.n} seed(s)"
    loss = LOSS_NAMES.get(best.get("loss_setting"), str(best.get("loss_setting")))
    if confirmed and rule == "best_of_k" and len(pool) > 1:  # a study that recorded neither ranks nor its search
        which = (f"The best of the {len(pool)} configurations re-trained with fresh {seeds_text} (ranked by `{col}`, "
                 f"{first_mode}, on validation; optimistic: chosen among the confirmations themselves)")
    elif confirmed:
        which = (f"The search's best configuration (by `{col}`, {first_mode}, on validation), re-trained with fresh "
                 f"{seeds_text},")
    else:
        which = (f"The best configuration by `{col}` ({first_mode}), **not confirmed with fresh seeds** (the search's own "
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
        d_acc = _difference(family, best, base, "test_acc", margin)
        d_gap = _difference(holm_family(done, best.get("loss_setting"), "test_gap", margin, trials)[1], best, base, "test_gap",
                            margin)
        lines[0] += (f" against {_pct(b_acc)} for joint training (`none`, same trial settings): "
                     f"Δ = {d_acc.text()}{_verdict(d_acc)}. Modality gap (max − min unimodal test accuracy): "
                     f"{_pct(gap)} against {_pct(b_gap)}: Δ = {d_gap.text()}.")
        tested = sum(d.p is not None for d in family.values())
        if tested > 1 and d_acc.p is not None:
            lines.append(f"p-values are Holm-corrected over the {tested} trials compared with this baseline (every "
                         f"finished trial of its loss setting with two or more seeds, as in the comparison table).")
        _put(metrics, "baseline_test_acc", b_acc)
        _put(metrics, "baseline_test_gap", b_gap)
        _put_diff(metrics, "best_minus_baseline", d_acc)
        _put_diff(metrics, "best_minus_baseline_gap", d_gap)
    lines.append("Values are percent: mean ± std [95 % t-interval, cut at 0 and 100] over seeds (n given), test metrics "
                 "at each seed's best validation epoch.")
    summary.text = " ".join(lines)
    return summary


def _difference(family: dict, best: pd.Series, base: pd.Series, key: str, margin: float) -> Difference:
    """The best's difference to the baseline from the study's Holm family (`analysis.tables.holm_family`);
    uncorrected only when the best is not in it (a comparison whose only method is joint training itself)."""
    if best.get("trial_id") in family:
        return family[best.get("trial_id")]
    return compare_to_baseline([seed_values(best, key)], seed_values(base, key), margin=margin)[0]


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
