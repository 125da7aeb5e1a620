"""Statistics over seeds against scipy on fixed numbers, Holm against a hand computation, and the study
summary on hand-built trial frames (with and without baseline / confirmation trials)."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.stats import (compare_to_baseline, detectable_difference, equivalence_p, holm, seed_summary, verdict,
                            welch)
from analysis.summary import study_summary

A = [0.912, 0.934, 0.921, 0.905]
B = [0.881, 0.902, 0.874]


def test_seed_summary_is_the_t_interval():
    s = seed_summary(A)
    assert s.n == 4 and s.mean == pytest.approx(np.mean(A))
    assert s.std == pytest.approx(np.std(A, ddof=1))
    # by hand: mean ± t_{0.975, 3} * std / sqrt(4), t_{0.975, 3} = 3.182446
    half = 3.182446305284263 * np.std(A, ddof=1) / 2
    assert (s.ci_low, s.ci_high) == pytest.approx((np.mean(A) - half, np.mean(A) + half), rel=1e-9)
    assert s.text() == f"{100 * np.mean(A):.2f} ± {100 * np.std(A, ddof=1):.2f} [{100 * s.ci_low:.2f}, {100 * s.ci_high:.2f}]"


def test_one_seed_has_no_spread_and_never_prints_zero_std():
    s = seed_summary([0.93])
    assert (s.n, s.std, s.ci_low, s.ci_high) == (1, None, None, None)
    assert s.text() == "93.00" and "±" not in s.text()
    assert seed_summary([float("nan"), 0.5]).n == 1  # NaNs (a seed without the value) are dropped
    d = welch([0.93], B)
    assert d.p is None and d.ci_low is None and d.within_noise is None and d.verdict == "inconclusive"
    assert "not testable" in d.text()


def test_welch_difference_matches_scipy_and_welch_satterthwaite_by_hand():
    d = welch(A, B)
    ref = stats.ttest_ind(A, B, equal_var=False)
    assert d.p == pytest.approx(ref.pvalue) and d.df == pytest.approx(ref.df)
    va, vb = np.var(A, ddof=1) / 4, np.var(B, ddof=1) / 3
    df = (va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 2)  # Welch–Satterthwaite by hand
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert d.df == pytest.approx(df)
    assert d.diff == pytest.approx(np.mean(A) - np.mean(B))
    assert (d.ci_low, d.ci_high) == pytest.approx((d.diff - half, d.diff + half))
    assert d.within_noise is False and d.p < 0.05 and d.verdict == "better"
    assert welch(B, A).verdict == "worse"


def test_within_noise_when_the_interval_covers_zero():
    d = welch([0.90, 0.95, 0.85], [0.91, 0.86, 0.93])
    assert d.ci_low < 0 < d.ci_high and d.within_noise is True and d.verdict == "inconclusive"
    assert "within noise" in d.text()


def test_tost_equivalence_against_two_one_sided_scipy_tests():
    a, b = [0.900, 0.902, 0.901, 0.899], [0.898, 0.901, 0.900, 0.899]
    lower = stats.ttest_ind(np.array(a) + 0.01, b, equal_var=False, alternative="greater").pvalue
    upper = stats.ttest_ind(np.array(a) - 0.01, b, equal_var=False, alternative="less").pvalue
    assert equivalence_p(a, b, 0.01) == pytest.approx(max(lower, upper))
    assert welch(a, b, margin=0.01).verdict == "equivalent"
    assert welch(a, b, margin=0.0005).verdict != "equivalent"  # a margin this small cannot be shown
    assert verdict(0.02, 0.01, 0.5) == "better" and verdict(-0.02, 0.01, 0.5) == "worse"
    assert verdict(0.02, 0.01, 0.01) == "equivalent" and verdict(0.02, 0.2, 0.2) == "inconclusive"


def test_holm_by_hand():
    # sorted p: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06 -> monotone 0.06), 0.04 (x1 = 0.04 -> 0.06)
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, None, 0.4]) == [pytest.approx(0.8), None, pytest.approx(0.8)]
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_compare_to_baseline_holm_corrects_across_configurations():
    c1, c2 = A, [0.90, 0.93, 0.88]
    diffs = compare_to_baseline([c1, c2, [0.95]], B)
    raw = [stats.ttest_ind(c, B, equal_var=False).pvalue for c in (c1, c2)]
    assert [d.p for d in diffs[:2]] == pytest.approx(raw)
    assert [d.p_adjusted for d in diffs[:2]] == pytest.approx(holm(raw))
    assert diffs[2].p is None  # one seed: not a test, and not counted by Holm
    assert "p (Holm)" in diffs[0].text()


def test_after_holm_a_ci_excluding_zero_is_still_within_noise():
    c = [0.92, 0.94, 0.91]  # alone: p = 0.037, its 95 % CI excludes 0
    alone = welch(c, B)
    assert alone.p < 0.05 and alone.ci_low > 0 and alone.within_noise is False
    both = compare_to_baseline([c, [0.90, 0.92, 0.89]], B)  # two comparisons: Holm p = 2 * 0.037 > 0.05
    assert both[0].p_adjusted == pytest.approx(2 * alone.p) and both[0].ci_low > 0
    assert both[0].within_noise is True and both[0].verdict == "inconclusive"


def test_detectable_difference_has_the_requested_power():
    delta = detectable_difference(0.01, 3)
    df, se = 4, 0.01 * math.sqrt(2 / 3)
    crit = stats.t.ppf(0.975, df)
    power = stats.nct.sf(crit, df, delta / se) + stats.nct.cdf(-crit, df, delta / se)
    assert power == pytest.approx(0.8, abs=1e-6)
    assert detectable_difference(0.01, 10) < delta  # more seeds, smaller detectable difference
    assert math.isnan(detectable_difference(0.01, 1))


def _row(tid, role, balancer, accs, audio, visual, val, loss="multimodal"):
    row = {"trial_id": tid, "role": role, "status": "finished", "balancer": balancer, "loss_setting": loss,
           "num_seeds": len(accs), "seeds": list(range(len(accs))), "point": {"balancer.gamma": 0.5},
           "sweep_param": None, "sweep_value": None, "best_val_acc": float(np.mean(val)),
           "best_test_acc": float(np.mean(accs))}
    for i, values in enumerate(zip(accs, audio, visual, val)):
        for key, v in zip(("test_acc", "test_acc_audio", "test_acc_visual", "val_acc"), values):
            row[f"best_{key}/seed_{i}"] = v
    return row


def _frame(rows, config=None):
    frame = pd.DataFrame(rows)
    frame.attrs["config"] = config or {}
    return frame


BASE = _row("b", "baseline", "none", [0.90, 0.92, 0.91], [0.85, 0.86, 0.84], [0.40, 0.42, 0.41], [0.9, 0.92, 0.91])
SEARCH = _row("s", "search", "redreg", [0.97], [0.8], [0.6], [0.99])
CONF_1 = _row("c1", "confirm", "redreg", [0.93, 0.94, 0.92], [0.82, 0.83, 0.81], [0.6, 0.62, 0.61], [0.93, 0.94, 0.92])
CONF_2 = _row("c2", "confirm", "redreg", [0.99, 0.99, 0.98], [0.82, 0.83, 0.81], [0.6, 0.62, 0.61], [0.80, 0.81, 0.79])


def test_summary_uses_confirmation_selected_on_validation_against_the_baseline():
    s = study_summary(_frame([BASE, SEARCH, CONF_1, CONF_2]), "val_acc", "max")
    assert s.best_trial_id == "c1" and s.baseline_trial_id == "b" and s.confirmed  # c2 has better test, worse val
    d = stats.ttest_ind([0.93, 0.94, 0.92], [0.90, 0.92, 0.91], equal_var=False)
    d2 = stats.ttest_ind([0.99, 0.99, 0.98], [0.90, 0.92, 0.91], equal_var=False)
    assert s.metrics["best_test_acc"] == pytest.approx(0.93) and s.metrics["baseline_test_acc"] == pytest.approx(0.91)
    assert s.metrics["best_minus_baseline"] == pytest.approx(0.02)
    ci = d.confidence_interval(0.95)
    assert (s.metrics["best_minus_baseline_ci_low"], s.metrics["best_minus_baseline_ci_high"]) == pytest.approx((ci.low, ci.high))
    assert s.metrics["best_minus_baseline_p"] == pytest.approx(holm([d.pvalue, d2.pvalue])[0])
    assert s.metrics["best_minus_baseline_gap"] == pytest.approx(0.21 - 0.44)
    assert "re-trained with fresh seeds" in s.text and "within noise" in s.text and "Holm" in s.text
    assert s.text.startswith("**Result (redreg).**")


def test_summary_without_confirmation_falls_back_to_the_search_labelled_as_such():
    s = study_summary(_frame([BASE, SEARCH]), "val_acc", "max")
    assert s.best_trial_id == "s" and not s.confirmed
    assert "not confirmed" in s.text and "no spread" in s.text and "± 0.00" not in s.text
    assert "best_minus_baseline_ci_low" not in s.metrics and s.metrics["best_minus_baseline"] == pytest.approx(0.06)


def test_summary_without_baseline_says_why():
    off = study_summary(_frame([SEARCH, CONF_1], {"baseline": {"enabled": False}}), "val_acc", "max")
    assert "enabled: false" in off.text and "baseline_test_acc" not in off.metrics
    missing = study_summary(_frame([SEARCH, CONF_1, dict(BASE, status="failed")]), "val_acc", "max")
    assert "no baseline trial finished" in missing.text
    assert "No trial has finished" in study_summary(_frame([dict(SEARCH, status="running")]), "val_acc", "max").text


def test_summary_ranks_by_the_studys_metric_and_mode():
    low_gap = dict(CONF_2, **{"best_val_gap": 0.05})
    high_gap = dict(CONF_1, **{"best_val_gap": 0.30})
    assert study_summary(_frame([BASE, high_gap, low_gap]), "val_gap", "min").best_trial_id == "c2"
    assert study_summary(_frame([BASE, high_gap, low_gap]), ["val_acc", "val_gap"], ["max", "min"]).best_trial_id == "c1"


def test_a_comparisons_joint_training_variant_is_never_its_own_answer():
    # compare mode: no baseline trials, the `none` variant is the baseline; it ranks first on validation here
    joint = dict(BASE, trial_id="n", role="compare", best_val_acc=0.99)
    method = dict(CONF_1, trial_id="m", role="compare")
    s = study_summary(_frame([joint, method]), "best_val_acc", "max")
    assert s.best_trial_id == "m" and s.metrics["best_minus_baseline"] == pytest.approx(0.93 - 0.91)


@pytest.mark.parametrize("points, verdict", [(None, "inconclusive"), (1.0, "inconclusive"), (5.0, "equivalent")])
def test_the_studys_equivalence_margin_decides_every_verdict_and_its_wording(points, verdict):
    """c1 is 2 points above joint training (sd 1 point, n 3): equivalent within ±5 points, inconclusive at ±1. The
    summary, the comparison table and its markdown all use the study's `equivalence_margin` (default: the
    config's, ±1 point)."""
    from analysis.tables import comparison_table, to_markdown

    config = {} if points is None else {"equivalence_margin": points}
    shown = 1 if points is None else points
    trials = _frame([BASE, dict(CONF_1, role="search")], config)
    s = study_summary(trials, "val_acc", "max")
    assert f"at a ±{shown:g}-point margin: {verdict}" in s.text, s.text
    table = comparison_table(trials)
    assert table.loc[table["trial_id"] == "c1", "verdict"].item() == verdict
    assert f"Verdict (±{shown:g} pt)" in to_markdown(table)


def test_an_accuracy_interval_is_cut_at_its_range_and_a_difference_is_not():
    """At few seeds a t-interval of an accuracy passes 100 % (the quickstart's collapsed seed: [54, 110]); the
    tables cut it at the metric's range. The difference to the baseline keeps its full Welch interval."""
    from analysis.stats import metric_bounds, welch
    from analysis.tables import seed_stats

    accs = [0.88, 0.89, 0.60]
    raw = seed_summary(accs)
    assert raw.ci_high > 1 and raw.ci_low > 0
    row = pd.Series({f"best_test_acc/seed_{s}": a for s, a in enumerate(accs)})
    cut = seed_stats(row, "test_acc")
    assert (cut.mean, cut.std, cut.ci_low, cut.ci_high) == (raw.mean, raw.std, raw.ci_low, 1.0)
    assert metric_bounds("test_acc_visual") == metric_bounds("best_val_f1") == metric_bounds("test_gap") == (0.0, 1.0)
    assert metric_bounds("test_imbalance")[0] == 0.0 and metric_bounds("test_shapley_audio") is None
    d = welch(accs, [0.86, 0.87, 0.86])
    assert d.ci_high > 0.2 and d.ci_low < -0.3  # a difference spans [-1, 1]: not cut
