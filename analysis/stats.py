"""Statistics over seeds, all on scipy.stats: a t-interval per configuration, Welch's test and its
Welch–Satterthwaite interval for the difference to a baseline, Holm's correction across configurations,
TOST equivalence at a margin, and the smallest difference a study with n seeds can detect.

Everything here works on plain per-seed values (one number per seed), so it can be checked against scipy
on fixed numbers. One seed has no spread: no std, no interval, no test (never "± 0.00").
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from scipy import optimize, stats

from study.config import EQUIVALENCE_MARGIN

CONFIDENCE = 0.95
ALPHA = 0.05
MARGIN = EQUIVALENCE_MARGIN / 100  # TOST equivalence margin in accuracy units (the study config's default)


@dataclass(frozen=True)
class SeedSummary:
    """n, mean, sample std (ddof=1) and a t-interval over seeds; std/CI are None for one seed."""
    n: int
    mean: float
    std: float | None
    ci_low: float | None
    ci_high: float | None

    @property
    def half_width(self) -> float | None:
        return None if self.ci_high is None else (self.ci_high - self.ci_low) / 2

    def text(self, scale: float = 100.0, digits: int = 2) -> str:
        """'93.00 ± 1.20 [91.10, 94.90]' (mean ± std [95 % CI]); one seed: '93.00' with no spread."""
        if self.n == 0:
            return "–"
        out = f"{scale * self.mean:.{digits}f}"
        if self.std is not None:
            out += f" ± {scale * self.std:.{digits}f}"
        if self.ci_low is not None:
            out += f" [{scale * self.ci_low:.{digits}f}, {scale * self.ci_high:.{digits}f}]"
        return out


def seed_summary(values: Iterable[float], confidence: float = CONFIDENCE) -> SeedSummary:
    """Summary of one configuration's per-seed values (NaNs dropped)."""
    x = _clean(values)
    n = len(x)
    if n == 0:
        return SeedSummary(0, math.nan, None, None, None)
    mean = float(np.mean(x))
    if n == 1:
        return SeedSummary(1, mean, None, None, None)
    std = float(np.std(x, ddof=1))
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=stats.sem(x)) if std > 0 else (mean, mean)
    return SeedSummary(n, mean, std, float(low), float(high))


@dataclass(frozen=True)
class Difference:
    """mean(a) - mean(b) with Welch's test. `p_adjusted` is Holm's when several configurations were compared
    (else the raw p). `within_noise`: the CI covers 0 or the (Holm) p is not below alpha. `verdict` (TOST at `margin` first, then Welch):
    'equivalent' | 'better' | 'worse' | 'inconclusive'. Untestable (a side has < 2 seeds): p, CI, noise None."""
    n_a: int
    n_b: int
    diff: float
    ci_low: float | None
    ci_high: float | None
    df: float | None
    p: float | None
    p_adjusted: float | None
    p_equivalence: float | None
    margin: float
    within_noise: bool | None
    verdict: str

    def text(self, scale: float = 100.0, digits: int = 2, unit: str = " points") -> str:
        """'+1.20 points [−0.40, +2.80], p = 0.130 — within noise'."""
        out = f"{scale * self.diff:+.{digits}f}{unit}"
        if self.ci_low is None:
            return out + " (not testable: fewer than 2 seeds on a side)"
        p_name = "p (Holm)" if self.p_adjusted != self.p else "p"
        out += (f" [{scale * self.ci_low:+.{digits}f}, {scale * self.ci_high:+.{digits}f}], {p_name} "
                f"{_p_text(self.p_adjusted)} — {'within noise' if self.within_noise else 'beyond noise'}")
        return out


def welch(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE, margin: float = MARGIN,
          alpha: float = ALPHA, p_adjusted: float | None = None) -> Difference:
    """mean(a) - mean(b): Welch's t-test (scipy.stats.ttest_ind, equal_var=False), its Welch–Satterthwaite
    confidence interval, and TOST equivalence at ±margin (two one-sided Welch tests, p = the larger)."""
    x, y = _clean(a), _clean(b)
    diff = float(np.mean(x) - np.mean(y)) if len(x) and len(y) else math.nan
    if len(x) < 2 or len(y) < 2 or (np.std(x) == 0 and np.std(y) == 0):
        return Difference(len(x), len(y), diff, None, None, None, None, None, None, margin, None, "inconclusive")
    res = stats.ttest_ind(x, y, equal_var=False)
    ci = res.confidence_interval(confidence)
    p_eq = equivalence_p(x, y, margin)
    p_adj = float(res.pvalue) if p_adjusted is None else p_adjusted
    # Within noise: the CI covers 0 (for one comparison the same as p >= alpha); after Holm, also when the
    # corrected p is not below alpha, so that a 95 % CI excluding 0 never contradicts the corrected test.
    within = bool(ci.low <= 0 <= ci.high or p_adj >= alpha)
    return Difference(len(x), len(y), diff, float(ci.low), float(ci.high), float(res.df), float(res.pvalue), p_adj,
                      p_eq, margin, within, verdict(diff, p_adj, p_eq, alpha))


def equivalence_p(a: Sequence[float], b: Sequence[float], margin: float = MARGIN) -> float:
    """TOST: H0 |mean(a) - mean(b)| >= margin; p = max of the two one-sided Welch tests."""
    x, y = _clean(a), _clean(b)
    lower = stats.ttest_ind(x + margin, y, equal_var=False, alternative="greater").pvalue  # diff > -margin
    upper = stats.ttest_ind(x - margin, y, equal_var=False, alternative="less").pvalue  # diff < +margin
    return float(max(lower, upper))


def verdict(diff: float, p: float | None, p_equivalence: float | None, alpha: float = ALPHA) -> str:
    """Equivalence first (the margin is the size the user calls irrelevant), then a significant
    difference's sign, else inconclusive."""
    if p_equivalence is not None and p_equivalence < alpha:
        return "equivalent"
    if p is not None and p < alpha:
        return "better" if diff > 0 else "worse"
    return "inconclusive"


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values (step-down, monotone, capped at 1); None entries stay None and do
    not count as tests. scipy has no Holm (only false_discovery_control), so it is these few lines."""
    idx = [i for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    m = len(idx)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda j: pvalues[j])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def compare_to_baseline(candidates: Sequence[Sequence[float]], baseline: Sequence[float],
                        confidence: float = CONFIDENCE, margin: float = MARGIN, alpha: float = ALPHA) -> list[Difference]:
    """Each candidate against the same baseline, p-values Holm-corrected across the candidates."""
    raw = [welch(c, baseline, confidence, margin, alpha) for c in candidates]
    adjusted = holm([d.p for d in raw])
    return [d if d.p is None else welch(c, baseline, confidence, margin, alpha, p_adjusted=p)
            for c, d, p in zip(candidates, raw, adjusted)]


def detectable_difference(std: float, n_a: int, n_b: int | None = None, alpha: float = ALPHA,
                          power: float = 0.8) -> float:
    """The smallest true difference a two-sided two-sample t-test at `alpha` detects with `power`, for
    per-seed std `std` and n_a, n_b seeds (noncentral t, scipy.stats.nct; equal variances assumed)."""
    n_b = n_a if n_b is None else n_b
    if n_a < 2 or n_b < 2 or not std > 0:
        return math.nan
    df = n_a + n_b - 2
    se = std * math.sqrt(1 / n_a + 1 / n_b)
    crit = stats.t.ppf(1 - alpha / 2, df)

    def shortfall(delta: float) -> float:
        nc = delta / se
        return stats.nct.sf(crit, df, nc) + stats.nct.sf(crit, df, -nc) - power  # both tails (cdf(-c) is nan far out)

    return float(optimize.brentq(shortfall, 0.0, 15 * se))  # nc = 15: power > 0.99 for any df >= 2


def _clean(values: Iterable[float]) -> np.ndarray:
    x = np.asarray([float(v) for v in values if v is not None], dtype=float)
    return x[~np.isnan(x)]


def _p_text(p: float | None) -> str:
    if p is None:
        return "–"
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


@dataclass(frozen=True)
class PooledIntervals:
    """Group means with t-intervals on the groups' pooled within-group variance (`pooled_intervals`): each
    summary keeps its group's own n, mean and sample std; `sd` is the pooled within-group std (the root of
    the one-way ANOVA residual mean square) on `df` = N - k degrees of freedom, the same for every group."""
    summaries: list[SeedSummary]
    sd: float | None
    df: int


def pooled_intervals(groups: Sequence[Sequence[float]], confidence: float = CONFIDENCE,
                     bounds: tuple[float, float] | None = None) -> PooledIntervals:
    """Each group's mean ± t(df) * s_pooled / sqrt(n_group), s_pooled² = the one-way ANOVA residual mean square
    over all groups (sum of squared deviations from each group's mean / (N - k)). Why: the points of a
    one-at-a-time sweep are one trial with one parameter moved, so they share one seed-noise level; at 2 seeds
    a point's own t-interval has 1 df (t = 12.7) and spans tens of points, the pooled one has k df. It assumes
    equal noise across the points (ANOVA's assumption). `bounds` clips each interval to the metric's range
    (an accuracy lies in [0, 1]). No interval without a pooled df (every group a single value)."""
    xs = [_clean(g) for g in groups]
    df = sum(len(x) - 1 for x in xs if len(x))
    ss = sum(float(np.sum((x - x.mean()) ** 2)) for x in xs if len(x))
    sd = math.sqrt(ss / df) if df > 0 else None
    crit = float(stats.t.ppf(0.5 + confidence / 2, df)) if df > 0 else None
    out = []
    for x in xs:
        own = seed_summary(x, confidence)
        if sd is None or own.n == 0:
            out.append(SeedSummary(own.n, own.mean, own.std, None, None))
            continue
        low, high = own.mean - crit * sd / math.sqrt(own.n), own.mean + crit * sd / math.sqrt(own.n)
        if bounds is not None:
            low, high = max(low, bounds[0]), min(high, bounds[1])
        out.append(SeedSummary(own.n, own.mean, own.std, low, high))
    return PooledIntervals(out, sd, df)
