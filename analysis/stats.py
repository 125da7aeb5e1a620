"""Statistics on scipy.stats and statsmodels: over seeds, a t-interval per configuration, Welch's test and its
Welch–Satterthwaite interval for the difference to a baseline, TOST equivalence at a margin, Holm's correction
across configurations (of the difference p-values and of the TOST p-values alike), and the smallest difference
a study with n seeds can detect; over test examples, a paired bootstrap interval of the accuracy difference
and McNemar's exact test.

Everything here works on plain per-seed values (one number per seed) or per-example 0/1 correctness arrays, so
it can be checked against scipy on fixed numbers. One seed has no spread: no std, no interval, no test (never
"± 0.00"). A comparison whose candidate diverged or failed is a test it failed (`failed_difference`: p = 1,
never equivalent), so it counts in the Holm family instead of silently leaving it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy import optimize, stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from study.config import EQUIVALENCE_MARGIN

CONFIDENCE = 0.95
ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 4999
BOOTSTRAP_SEED = 0  # fixed: the same predictions always give the same interval
FAILED = ("diverged", "failed")  # verdicts of a comparison whose candidate has no usable result
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

    def clipped(self, bounds: tuple[float, float] | None) -> "SeedSummary":
        """The interval cut to the metric's range (`metric_bounds`): at few seeds a t-interval of an accuracy
        passes 100 % or 0; the cut says nothing new, it only keeps the interval a possible value."""
        if bounds is None or self.ci_low is None:
            return self
        return replace(self, ci_low=max(self.ci_low, bounds[0]), ci_high=min(self.ci_high, bounds[1]))

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


def metric_bounds(key: str) -> tuple[float, float] | None:
    """The range a per-seed quantity can take, for `SeedSummary.clipped`: accuracies, F1 and the modality gap
    (a difference of two accuracies, max minus min) in [0, 1]; the imbalance degree >= 0; else unbounded."""
    name = key.removeprefix("best_")
    if "_acc" in name or name.endswith("_f1") or "_f1_" in name or name.endswith("_gap"):
        return (0.0, 1.0)
    if "imbalance" in name:
        return (0.0, math.inf)
    return None


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
    """mean(a) - mean(b) with Welch's test. `p_adjusted` / `p_equivalence_adjusted` are Holm's when several
    configurations were compared (else the raw p). `within_noise`: the CI covers 0 or the (Holm) p is not below
    alpha. `verdict` (TOST at `margin` first, then Welch, both on the Holm p): 'equivalent' | 'better' | 'worse' |
    'inconclusive', or 'diverged' | 'failed' for a candidate without a result (p = 1: a failed test).
    Untestable (a side has < 2 seeds): p, CI, noise None."""
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
    p_equivalence_adjusted: float | None = None

    def text(self, scale: float = 100.0, digits: int = 2, unit: str = " points") -> str:
        """'+1.20 points [−0.40, +2.80], p = 0.130 — within noise'."""
        if self.verdict in FAILED:
            return f"{self.verdict} (no result: counted as a failed test, p = 1)"
        out = f"{scale * self.diff:+.{digits}f}{unit}"
        if self.ci_low is None:
            return out + " (not testable: fewer than 2 seeds on a side)"
        p_name = "p (Holm)" if self.p_adjusted != self.p else "p"
        out += (f" [{scale * self.ci_low:+.{digits}f}, {scale * self.ci_high:+.{digits}f}], {p_name} "
                f"{_p_text(self.p_adjusted)} — {'within noise' if self.within_noise else 'beyond noise'}")
        return out


def welch(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE, margin: float = MARGIN,
          alpha: float = ALPHA, p_adjusted: float | None = None, p_equivalence_adjusted: float | None = None
          ) -> Difference:
    """mean(a) - mean(b): Welch's t-test (scipy.stats.ttest_ind, equal_var=False), its Welch–Satterthwaite
    confidence interval, and TOST equivalence at ±margin (two one-sided Welch tests, p = the larger). The
    verdict reads the adjusted p-values when given (Holm, `compare_to_baseline`)."""
    x, y = _clean(a), _clean(b)
    diff = float(np.mean(x) - np.mean(y)) if len(x) and len(y) else math.nan
    if len(x) < 2 or len(y) < 2 or (np.std(x) == 0 and np.std(y) == 0):
        return Difference(len(x), len(y), diff, None, None, None, None, None, None, margin, None, "inconclusive")
    res = stats.ttest_ind(x, y, equal_var=False)
    ci = res.confidence_interval(confidence)
    p_eq = equivalence_p(x, y, margin)
    p_adj = float(res.pvalue) if p_adjusted is None else p_adjusted
    p_eq_adj = p_eq if p_equivalence_adjusted is None else p_equivalence_adjusted
    # Within noise: the CI covers 0 (for one comparison the same as p >= alpha); after Holm, also when the
    # corrected p is not below alpha, so that a 95 % CI excluding 0 never contradicts the corrected test.
    within = bool(ci.low <= 0 <= ci.high or p_adj >= alpha)
    return Difference(len(x), len(y), diff, float(ci.low), float(ci.high), float(res.df), float(res.pvalue), p_adj,
                      p_eq, margin, within, verdict(diff, p_adj, p_eq_adj, alpha), p_eq_adj)


def failed_difference(n_baseline: int, margin: float = MARGIN, why: str = "diverged") -> Difference:
    """A candidate that diverged (or failed) on its confirmation: a test it failed, p = 1 for a difference and
    for equivalence, so it stays in the Holm family (m counts it) and is never called equivalent."""
    if why not in FAILED:
        raise ValueError(f"why: {why!r} (allowed: {', '.join(FAILED)})")
    return Difference(0, n_baseline, math.nan, None, None, None, 1.0, 1.0, 1.0, margin, None, why, 1.0)


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
    """Holm–Bonferroni adjusted p-values (statsmodels' multipletests, method 'holm': step-down, monotone,
    capped at 1); None / NaN entries stay None and do not count as tests."""
    idx = [i for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    out: list[float | None] = [None] * len(pvalues)
    if idx:
        adjusted = multipletests([float(pvalues[i]) for i in idx], method="holm")[1]
        for i, p in zip(idx, adjusted):
            out[i] = float(p)
    return out


def compare_to_baseline(candidates: Sequence[Sequence[float]], baseline: Sequence[float],
                        confidence: float = CONFIDENCE, margin: float = MARGIN, alpha: float = ALPHA,
                        failed: Sequence[str | None] | None = None) -> list[Difference]:
    """Each candidate against the same baseline; the difference p-values and the TOST p-values each
    Holm-corrected across the candidates (one family, one correction for each kind of test). `failed[i]`
    ('diverged' | 'failed') marks a candidate without a result: it counts in both families as p = 1."""
    failed = list(failed) if failed is not None else [None] * len(candidates)
    n_base = len(_clean(baseline))
    raw = [failed_difference(n_base, margin, why) if why else welch(c, baseline, confidence, margin, alpha)
           for c, why in zip(candidates, failed)]
    adjusted = holm([d.p for d in raw])
    eq_adjusted = holm([d.p_equivalence for d in raw])
    return [d if d.p is None or d.verdict in FAILED else
            welch(c, baseline, confidence, margin, alpha, p_adjusted=p, p_equivalence_adjusted=q)
            for c, d, p, q in zip(candidates, raw, adjusted, eq_adjusted)]


@dataclass(frozen=True)
class SeedMcNemar:
    """One seed's pair (candidate and baseline trained with that seed, tested on the same examples): `b` examples
    only the candidate gets right, `c` only the baseline; McNemar's exact p (binomial on b of b + c)."""
    seed: Any
    n: int
    b: int
    c: int
    p: float


@dataclass(frozen=True)
class ExampleDifference:
    """Candidate minus baseline accuracy over test examples, paired by example within each seed's pair: the mean
    over seeds of each seed's difference, its bootstrap interval (`example_difference`), McNemar per seed and
    pooled over seeds. It covers test-example sampling for these trained networks, not training-seed noise."""
    seeds: list
    n_examples: int
    diff: float
    ci_low: float
    ci_high: float
    per_seed: list[SeedMcNemar]
    p_mcnemar: float  # exact, on the discordant counts pooled over the seeds


def mcnemar_table(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> list[list[int]]:
    """2x2 table of paired outcomes: [[both right, only a right], [only b right, both wrong]]."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    return [[int(np.sum(a & b)), int(np.sum(a & ~b))], [int(np.sum(~a & b)), int(np.sum(~a & ~b))]]


def example_difference(pairs: Mapping[Any, tuple[Sequence[bool], Sequence[bool]]], confidence: float = CONFIDENCE,
                       n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> ExampleDifference:
    """`pairs`: seed -> (candidate correct?, baseline correct?) per test example, in the same example order.

    Bootstrap stratified by seed (scipy.stats.bootstrap, one sample per seed, each resampled on its own,
    percentile interval, fixed generator): each seed's pair is its own test set (per-seed data draws) or its
    own pair of networks, so examples are exchangeable only within a seed; resampling within seeds keeps every
    seed's weight and estimates exactly the table's quantity, the mean over seeds of the per-seed difference.
    The statistic is a mean of ~10^3 bounded differences per seed, close to normal, where percentile and BCa
    agree; percentile also has no degenerate case (identical predictions give [0, 0]).
    McNemar (statsmodels, exact) per seed, and pooled: under H0 each seed's discordant wins are Binomial(b + c,
    1/2), so their sum over seeds is Binomial(sum of b + c, 1/2) and the exact test on pooled counts is exact."""
    seeds = list(pairs)
    if not seeds:
        raise ValueError("pairs: no seed with paired predictions")
    diffs, per_seed, pooled = [], [], np.zeros((2, 2), dtype=int)
    for s in seeds:
        a, b = (np.asarray(x, dtype=bool) for x in pairs[s])
        if len(a) != len(b) or len(a) < 2:
            raise ValueError(f"pairs[{s!r}]: candidate and baseline need the same 2+ examples ({len(a)}, {len(b)})")
        table = mcnemar_table(a, b)
        pooled += np.asarray(table)
        per_seed.append(SeedMcNemar(s, len(a), table[0][1], table[1][0], float(mcnemar(table, exact=True).pvalue)))
        diffs.append(a.astype(float) - b.astype(float))

    def mean_over_seeds(*samples, axis=-1):
        return np.mean([x.mean(axis=axis) for x in samples], axis=0)

    diff = float(mean_over_seeds(*diffs))
    if all(np.all(d == d[0]) for d in diffs):  # nothing to resample: every resample gives the same mean
        low, high = diff, diff
    else:
        res = stats.bootstrap(tuple(diffs), mean_over_seeds, n_resamples=n_resamples, vectorized=True, paired=False,
                              confidence_level=confidence, method="percentile", batch=500,
                              rng=np.random.default_rng(seed))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return ExampleDifference(seeds, int(sum(len(d) for d in diffs)), diff, low, high, per_seed,
                             float(mcnemar(pooled.tolist(), exact=True).pvalue))


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
        out.append(SeedSummary(own.n, own.mean, own.std, low, high).clipped(bounds))
    return PooledIntervals(out, sd, df)
