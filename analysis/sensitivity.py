"""How much each hyperparameter moves a study's result (RedReg Fig. 4/5), from any study, with every trial.

- A one-at-a-time grid (mode: sensitivity): each point's test accuracy at its seeds' best validation epochs,
  as in the papers, with a 95 % interval on the sweep's pooled within-point variance (at 2 seeds a point's own
  t-interval has 1 df), and a one-way ANOVA per sweep: does moving this parameter change the result beyond
  seed noise?
- A search (Optuna, maybe ASHA): every trial -- ASHA-stopped ones too -- at one common fidelity, the largest
  ASHA rung every compared trial reached, on the study's own metric (validation: what the search selected
  on), and the full-budget values of the trials that ran every epoch; a Gaussian-process surrogate's partial
  dependence per parameter with its 95 % credible band, and fANOVA importance and Optuna's slice/contour
  plots on an in-memory Optuna study of the same values (analysis.importance).
Joint training (each loss setting's baseline trial) is taken at the same fidelity.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd
from scipy import stats

from analysis.importance import SETTING, optuna_study, param_importances
from analysis.stats import CONFIDENCE, SeedSummary, holm, pooled_intervals, seed_summary
from analysis.tables import baseline_for, finished, roles, seed_stats, seed_values
from search_spaces import SearchSpace
from study.ranking import rank_column

SHORT_SETTING = {"multimodal": "MM", "multimodal+unimodal": "MM+UM*"}
ENDED = ("finished", "pruned")  # a search's compared trials: ran every epoch, or stopped by ASHA at a rung
MIN_SURROGATE = 6  # fewer trials: only the trials are drawn, no partial dependence
GRID_POINTS = 40
MAX_BACKGROUND = 200  # trials the partial dependence averages over (a fixed random subset of a larger study)


def param_name(param: str) -> str:
    """A parameter as figures and words show it: `balancer.gamma` -> `gamma`."""
    return param.replace("balancer.", "")


def is_fraction(metric: str) -> bool:
    """Accuracy-type metrics (accuracy, F1, the modality gap) lie in [0, 1] and are shown in percent."""
    return any(part in metric for part in ("acc", "f1", "gap"))


def t_summary(n: int, mean: float, std: float | None, confidence: float = CONFIDENCE) -> SeedSummary:
    """n, mean, std and the t-interval from summary statistics (a per-epoch value logged as mean and std)."""
    if n < 2 or std is None or not np.isfinite(std):
        return SeedSummary(n, mean, None, None, None)
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=std / math.sqrt(n)) if std > 0 else (mean, mean)
    return SeedSummary(n, mean, std, float(low), float(high))


# ----------------------------------------------------------------------------- the common fidelity


def fidelities(config: dict[str, Any], budget: int) -> list[int]:
    """The epochs at which the study's ASHA compared trials, then the full budget: Ray Tune's ASHAScheduler
    (one bracket, as study.search.scheduler_for builds it) puts rung k at grace_period * reduction_factor**k
    for int(log(max_t / grace_period) / log(reduction_factor) + 1) rungs and judges a trial at the first epoch
    at or past it. A study without ASHA has one fidelity, the full budget."""
    from study.config import AshaConfig, StudyConfig
    from study.search import asha_rungs

    default = {k: StudyConfig.model_fields[k].default for k in ("mode", "searcher", "scheduler")}
    mode, searcher, scheduler = (config.get(k, d) for k, d in default.items())
    if scheduler != "asha" or mode != "search" or searcher == "grid":
        return [budget]
    asha = AshaConfig(**(config.get("asha") or {}))
    return [*asha_rungs(budget, asha.grace_period, asha.reduction_factor), budget]


@dataclass
class Fidelity:
    """Every compared trial's value at `epoch`, the largest rung they all reached (`budget` when all finished)."""
    epoch: int
    budget: int
    values: pd.Series  # trial_id -> the metric at `epoch`
    full: pd.Series  # trial_id -> the metric at the full budget, for the trials that ran every epoch
    reached: dict[int, int]  # each fidelity (rungs, budget) -> how many compared trials reached it
    left_out: list[str] = field(default_factory=list)  # compared trials without a value at `epoch`

    def text(self) -> str:
        n = len(self.values)
        if self.epoch >= self.budget:
            return f"the full budget ({self.budget} epochs), which all {n} trials ran"
        return f"epoch {self.epoch} of {self.budget}, the largest ASHA rung all {n} trials reached"


def common_fidelity(trials: pd.DataFrame, history: pd.DataFrame | None, column: str, rungs: list[int], budget: int,
                    epoch: int | None = None) -> Fidelity:
    """The search's ended trials (finished, or stopped by ASHA) compared at one epoch: `epoch`, else the largest of
    `rungs` (and `budget`) that every one of them reached. A trial's value there is `column` in its per-epoch
    `history` (long: trial_id, epoch, column) at that epoch -- for `best_<metric>`, its metric at the best
    validation epoch up to then, the study's ranking rule at that budget; at the full budget, the trial's own
    final `column`. Diverged, failed and running trials are not compared."""
    ended = trials[trials["status"].isin(ENDED)]
    complete = ended["status"] == "finished"
    full = ended.loc[complete].set_index("trial_id")[column].astype(float).dropna()
    h = (history.dropna(subset=[column]).set_index(["trial_id", "epoch"])[column]
         if history is not None and not history.empty and column in history else pd.Series(dtype=float))
    reached = {}
    for (_, row), done in zip(ended.iterrows(), complete):
        tid = row["trial_id"]
        steps = h.loc[tid].index if tid in h.index.get_level_values(0) else []
        reached[tid] = budget if done else int(max(steps, default=row.get("epochs_run") or 0))
    levels = sorted(set(rungs) | {budget})
    if epoch is None:
        low = min(reached.values(), default=budget)
        epoch = max((r for r in levels if r <= low), default=low)
    values = {}
    for (_, row), done in zip(ended.iterrows(), complete):
        tid = row["trial_id"]
        values[tid] = full.get(tid, np.nan) if done and epoch >= budget else h.get((tid, epoch), np.nan)
    values = pd.Series(values, dtype=float)
    return Fidelity(int(epoch), int(budget), values.dropna(), full,
                    {r: sum(v >= r for v in reached.values()) for r in levels}, list(values.index[values.isna()]))


def baseline_at(row: pd.Series, history: pd.DataFrame | None, column: str, epoch: int, budget: int,
                bounds: tuple[float, float] | None = None) -> SeedSummary:
    """Joint training's `column` at `epoch`: over its seeds' own values at the full budget, else from its
    per-epoch mean and std over seeds (`<column>_std`) at that epoch, with the t-interval; clipped to `bounds`."""
    if epoch >= budget:
        if column.startswith("best_"):
            return seed_stats(row, column[len("best_"):]).clipped(bounds)
        std = row.get(f"{column}_std")
        return t_summary(int(row.get("num_seeds") or 1), float(row[column]), None if pd.isna(std) else std).clipped(bounds)
    if history is None or history.empty:
        return SeedSummary(0, math.nan, None, None, None)
    at = history[(history["trial_id"] == row["trial_id"]) & (history["epoch"] == epoch)]
    if at.empty or pd.isna(at.iloc[0][column]):
        return SeedSummary(0, math.nan, None, None, None)
    std = at.iloc[0].get(f"{column}_std")
    return t_summary(int(row.get("num_seeds") or 1), float(at.iloc[0][column]),
                     None if std is None or pd.isna(std) else float(std)).clipped(bounds)


# ----------------------------------------------------------------------------- the surrogate's partial dependence


@dataclass
class Curve:
    """The surrogate's partial dependence on one parameter within one loss setting, over the values the trials
    tried: `frame` (x, mean, low, high: the 95 % credible band of the mean function), how far it moves
    (`spread`, from its lowest at `x_worst` to its highest at `x_best`) and the 95 % credible interval of that
    change (`change_low`, `change_high`): beyond noise when it excludes 0 (the surrogate's noise is at least the
    seed noise, `partial_dependence`)."""
    param: str
    setting: str | None
    frame: pd.DataFrame
    spread: float
    x_best: float
    x_worst: float
    change_low: float
    change_high: float

    @property
    def beyond_noise(self) -> bool:
        return self.change_low > 0


class _Design:
    """Trials as a surrogate's inputs: numeric parameters on [0, 1] over the searched range (log10 first for a
    log-scale parameter), categorical ones (the loss setting among them) one-hot."""

    def __init__(self, points: pd.DataFrame, numeric: list[str], categorical: dict[str, list[str]], space: SearchSpace):
        self.numeric, self.categorical, self.space = numeric, categorical, space
        self.range = {}
        for name in numeric:
            spec, values = space.params.get(name), self.raw(points, name)
            low = min(values.min(), spec.low) if spec is not None and spec.low is not None else values.min()
            high = max(values.max(), spec.high) if spec is not None and spec.high is not None else values.max()
            self.range[name] = (self.warp(name, low), self.warp(name, high))

    @staticmethod
    def column(name: str) -> str:
        return SETTING if name == SETTING else f"param.{name}"

    def raw(self, frame: pd.DataFrame, name: str) -> np.ndarray:
        return frame[self.column(name)].to_numpy(dtype=float)

    def log(self, name: str) -> bool:
        spec = self.space.params.get(name)
        return bool(spec is not None and spec.log)

    def warp(self, name: str, values):
        return np.log10(values) if self.log(name) else np.asarray(values, dtype=float)

    def scaled(self, name: str, values) -> np.ndarray:
        low, high = self.range[name]
        return (self.warp(name, values) - low) / ((high - low) or 1.0)

    def matrix(self, frame: pd.DataFrame) -> np.ndarray:
        cols = [self.scaled(n, self.raw(frame, n)) for n in self.numeric]
        cols += [(frame[self.column(n)].astype(str) == level).to_numpy(dtype=float)
                 for n, levels in self.categorical.items() for level in levels]
        return np.column_stack(cols)

    def index(self, name: str) -> int:
        return self.numeric.index(name)

    def set_category(self, x: np.ndarray, name: str, level: str) -> None:
        """Every row of the design `x` at `level` of the categorical parameter `name`."""
        start = len(self.numeric)
        for other, levels in self.categorical.items():
            if other == name:
                x[:, start:start + len(levels)] = [float(v == level) for v in levels]
                return
            start += len(levels)


def fit_surrogate(x: np.ndarray, y: np.ndarray, noise_floor: float | None = None):
    """scikit-learn's Gaussian process (Matern 5/2 with one length scale per input, plus a learned white-noise
    term for the trial-to-trial noise, at least `noise_floor` (a std in y's units)), refitted without the noise
    term on the same posterior so that its predictions are the latent mean function's. Length scales stay <= 2
    (the inputs span [0, 1]) and the signal variance >= 0.1 of y's: the fit cannot declare a parameter exactly
    flat, so a flat curve keeps a band. The bands are conditional on these fitted hyperparameters (maximum
    marginal likelihood), not integrated over them. Returns (latent model, noise std in y's units)."""
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    spread = float(np.std(y)) or 1.0
    low = max(1e-5, (noise_floor / spread) ** 2 if noise_floor else 0.0)  # normalize_y: noise in units of y's variance
    kernel = (ConstantKernel(1.0, (0.1, 10.0)) * Matern(np.ones(x.shape[1]), (0.05, 2.0), nu=2.5)
              + WhiteKernel(max(0.1, 2 * low), (low, max(10.0, 10 * low))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning when a length scale sits at its bound
        gp = GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=4, random_state=0).fit(x, y)
        noise = float(gp.kernel_.k2.noise_level)
        latent = GaussianProcessRegressor(gp.kernel_.k1, alpha=noise, optimizer=None, normalize_y=True).fit(x, y)
    return latent, math.sqrt(noise) * spread


def _average(model, blocks: list[np.ndarray], weights: list[float]) -> tuple[float, float]:
    """Mean and posterior std of sum_b w_b * mean over block b's rows of the latent function."""
    x = np.vstack(blocks)
    mean, cov = model.predict(x, return_cov=True)
    w = np.concatenate([np.full(len(b), wb / len(b)) for b, wb in zip(blocks, weights)])
    return float(w @ mean), math.sqrt(max(float(w @ cov @ w), 0.0))


def _block_averages(model, blocks: list[np.ndarray], rows: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Each block's own `_average` (weight 1), several blocks per prediction (up to `rows` rows at a time)."""
    means, sds = [], []
    step = max(1, rows // len(blocks[0]))
    for start in range(0, len(blocks), step):
        chunk = blocks[start:start + step]
        mean, cov = model.predict(np.vstack(chunk), return_cov=True)
        for i, block in enumerate(chunk):
            part = slice(i * len(block), (i + 1) * len(block))
            means.append(float(mean[part].mean()))
            sds.append(math.sqrt(max(float(cov[part, part].sum()), 0.0)) / len(block))
    return np.array(means), np.array(sds)


def partial_dependence(points: pd.DataFrame, params: list[str], space: SearchSpace, settings: list[str],
                       bounds: tuple[float, float] | None = None, confidence: float = CONFIDENCE,
                       noise_floor: float | None = None) -> tuple[list[Curve], float | None]:
    """The surrogate's partial dependence on each of `params`, per loss setting: at each value v, the mean over
    every trial of the latent function with the parameter set to v (and the loss setting to that setting) --
    what sklearn.inspection.partial_dependence computes, with the posterior std of that average from the
    Gaussian process's covariance. The change's interval is for the curve's own lowest and highest points, so
    it is a little optimistic for a flat curve (the extremes are picked from it).

    `noise_floor`: the least noise std of one trial. Trials of a search usually share their seed(s), so their
    scatter holds the seed fixed and the fitted noise can be near 0 (the surrogate then threads every trial and
    calls tiny differences certain); with the floor at the seed-to-seed std, the bands include what other seeds
    would move. Returns the curves and the surrogate's noise std (one trial)."""
    categorical = {n: sorted(points[_Design.column(n)].astype(str).unique()) for n in
                   [k for k, p in space.params.items() if p.type == "categorical" and f"param.{k}" in points]
                   + ([SETTING] if SETTING in points and points[SETTING].nunique() > 1 else [])}
    numeric = [n for n in space.sampled_names() if n not in categorical and f"param.{n}" in points
               and points[f"param.{n}"].notna().all() and points[f"param.{n}"].nunique() > 1]
    design = _Design(points, numeric, categorical, space)
    x_all = design.matrix(points)
    model, noise = fit_surrogate(x_all, points["value"].to_numpy(dtype=float), noise_floor)
    keep = np.sort(np.random.default_rng(0).choice(len(points), min(len(points), MAX_BACKGROUND), replace=False))
    base = x_all[keep]
    z = stats.norm.ppf(0.5 + confidence / 2)
    curves = []
    for name in (p for p in params if p in numeric):
        raw = design.raw(points, name)
        xs = (np.geomspace(raw.min(), raw.max(), GRID_POINTS) if design.log(name)
              else np.linspace(raw.min(), raw.max(), GRID_POINTS))
        for setting in settings or [None]:
            own = base.copy()
            if SETTING in categorical and setting is not None:
                design.set_category(own, SETTING, setting)

            def at(value: float) -> np.ndarray:
                x = own.copy()
                x[:, design.index(name)] = design.scaled(name, [value])[0]
                return x

            mean, sd = _block_averages(model, [at(v) for v in xs])
            low, high = mean - z * sd, mean + z * sd
            if bounds is not None:
                low, high = np.clip(low, *bounds), np.clip(high, *bounds)
            best, worst = xs[int(np.argmax(mean))], xs[int(np.argmin(mean))]
            change, change_sd = _average(model, [at(best), at(worst)], [1.0, -1.0])
            curves.append(Curve(name, setting, pd.DataFrame({"x": xs, "mean": mean, "low": low, "high": high}),
                                float(mean.max() - mean.min()), float(best), float(worst),
                                change - z * change_sd, change + z * change_sd))
    return curves, noise


# ----------------------------------------------------------------------------- one-at-a-time grids


@dataclass
class Sweep:
    """One parameter's one-at-a-time sweep within one loss setting: `frame` has, per grid point, x, n, mean,
    std, the pooled 95 % interval (low, high) and the point's own t-interval (point_low, point_high); `sd` and
    `df` the pooled within-point std and its degrees of freedom; `f`, `p` the one-way ANOVA over the points
    (H0: the parameter changes nothing), `p_holm` Holm-corrected over every sweep of the study."""
    param: str
    setting: str | None
    frame: pd.DataFrame
    sd: float | None
    df: int
    f: float | None = None
    p: float | None = None
    p_holm: float | None = None

    @property
    def beyond_noise(self) -> bool | None:
        return None if self.p_holm is None else self.p_holm < 0.05


def grid_sweeps(trials: pd.DataFrame, key: str = "test_acc", bounds: tuple[float, float] | None = (0.0, 1.0),
                confidence: float = CONFIDENCE) -> list[Sweep]:
    """Each numeric parameter's sweep per loss setting from a one-at-a-time grid's finished trials."""
    done = finished(trials)
    done = done[done["sweep_param"].notna() & (done["sweep_param"] != "variant")]
    sweeps = []
    for (param, setting), group in done.groupby(["sweep_param", "loss_setting"], dropna=False):
        g = group.assign(x=pd.to_numeric(group["sweep_value"], errors="coerce")).dropna(subset=["x"]).sort_values("x")
        if g.empty:
            continue
        groups = [seed_values(row, key) for _, row in g.iterrows()]
        pooled = pooled_intervals(groups, confidence, bounds)
        own = [seed_summary(v, confidence).clipped(bounds) for v in groups]
        frame = pd.DataFrame({"x": g["x"].to_numpy(), "n": [s.n for s in pooled.summaries],
                              "mean": [s.mean for s in pooled.summaries], "std": [s.std for s in pooled.summaries],
                              "low": [s.ci_low for s in pooled.summaries], "high": [s.ci_high for s in pooled.summaries],
                              "point_low": [s.ci_low for s in own], "point_high": [s.ci_high for s in own]})
        sweep = Sweep(str(param), setting, frame, pooled.sd, pooled.df)
        tested = [v for v in groups if len(v)]
        if len(tested) > 1 and pooled.df > 0 and pooled.sd:
            res = stats.f_oneway(*tested)
            sweep.f, sweep.p = float(res.statistic), float(res.pvalue)
        sweeps.append(sweep)
    for sweep, p in zip(sweeps, holm([s.p for s in sweeps])):
        sweep.p_holm = p
    return sweeps


# ----------------------------------------------------------------------------- one study's sensitivity


@dataclass
class Sensitivity:
    """Everything the sensitivity figures and the report's words use, for one study."""
    kind: str  # "grid" (one-at-a-time) or "search"
    column: str  # the value drawn: test_acc over seeds (grid) or the study's metric column (search)
    scale: float  # 100 for accuracy-type values (shown in percent)
    bounds: tuple[float, float] | None
    settings: list[str]
    params: list[str]  # the panels, in the space's order
    baselines: dict[str, SeedSummary]  # per loss setting, at the fidelity shown
    interval: str = "pooled"  # grid: "pooled" or "per_point" intervals drawn
    sweeps: list[Sweep] = field(default_factory=list)
    points: pd.DataFrame | None = None  # search: one row per compared trial (trial_id, loss_setting, param.*, value, full)
    fidelity: Fidelity | None = None
    baselines_full: dict[str, SeedSummary] = field(default_factory=dict)  # search below the full budget
    curves: list[Curve] = field(default_factory=list)
    noise_sd: float | None = None  # the surrogate's noise std of one trial
    noise_floor: float | None = None  # its least value: joint training's seed std at the fidelity / sqrt(seeds per trial)
    study: Any = None  # the in-memory optuna.Study of `points`
    importances: dict[str, float] = field(default_factory=dict)
    direction: str = "maximize"
    excluded: dict[str, int] = field(default_factory=dict)  # search trials not compared, by status

    @property
    def label(self) -> str:
        unit = " (%)" if self.scale == 100 else ""
        if self.kind == "grid":
            return f"test accuracy{unit} at best val epoch"
        return f"{self.column}{unit} at epoch {self.fidelity.epoch}"


def trial_budget(trials: pd.DataFrame, config: dict[str, Any]) -> int:
    """The epochs a trial runs in full: its resolved `epochs`, else the study config's, else the trial default."""
    epochs = pd.to_numeric(trials["param.epochs"], errors="coerce").max() if "param.epochs" in trials else math.nan
    if pd.isna(epochs):
        from trainables.config import TrialConfig

        epochs = (config.get("trial") or {}).get("epochs") or TrialConfig.model_fields["epochs"].default
    return int(epochs)


def analyse(trials: pd.DataFrame, config: dict[str, Any], space: SearchSpace, metric: str = "val_acc",
            mode: str = "max", history: Callable[[pd.DataFrame, list[str]], pd.DataFrame] | None = None,
            epoch: int | None = None, interval: str = "pooled") -> Sensitivity | None:
    """A study's sensitivity: a one-at-a-time grid's sweeps, or a search's trials at their common fidelity with
    the surrogate's partial dependence and fANOVA importance. `history(trials, metrics)` loads per-epoch values
    (analysis.load.load_histories); it is called only when some compared trial stopped before the full budget.
    `epoch` forces the search's fidelity (trials that did not reach it are left out); `interval` is what a grid's
    figure draws ("pooled" or "per_point"). None: no parameter to draw (e.g. a comparison of named variants)."""
    own = trials[~roles(trials).isin(["baseline", "confirm"])]
    swept = own["sweep_param"] if "sweep_param" in own else pd.Series(None, index=own.index, dtype=object)
    if (swept.notna() & (swept != "variant")).any():
        return _grid_sensitivity(trials, own, space, interval)
    if swept.notna().any():
        return None
    return _search_sensitivity(trials, own, config, space, metric, mode, history, epoch)


def _settings(frame: pd.DataFrame) -> list[str]:
    return sorted(frame["loss_setting"].dropna().unique()) if "loss_setting" in frame else []


def _baseline_rows(trials: pd.DataFrame, settings: list[str]) -> dict[str, pd.Series]:
    """Each loss setting's own joint-training baseline trial (none for a setting without one)."""
    done = finished(trials)
    return {s: b for s in settings if (b := baseline_for(done, s)) is not None and b.get("loss_setting") == s}


def _grid_sensitivity(trials: pd.DataFrame, own: pd.DataFrame, space: SearchSpace, interval: str) -> Sensitivity | None:
    sweeps = grid_sweeps(own)
    if not sweeps:
        return None
    settings = _settings(own)
    baselines = {s: seed_stats(b, "test_acc").clipped((0.0, 1.0)) for s, b in _baseline_rows(trials, settings).items()}
    swept = list(dict.fromkeys(s.param for s in sweeps))
    params = [p for p in space.params if p in swept] + [p for p in swept if p not in space.params]
    return Sensitivity("grid", "test_acc", 100.0, (0.0, 1.0), settings, params, baselines, interval, sweeps)


def _search_sensitivity(trials: pd.DataFrame, own: pd.DataFrame, config: dict[str, Any], space: SearchSpace,
                        metric: str, mode: str, history, epoch: int | None) -> Sensitivity | None:
    column = rank_column(trials, metric)
    if column not in trials:
        return None
    compared = own[own["status"].isin(ENDED) & own[column].notna()]
    if compared.empty:
        return None
    excluded = own[~own.index.isin(compared.index)]["status"].value_counts().to_dict()
    budget = trial_budget(trials, config)
    bounds = (0.0, 1.0) if is_fraction(column) else None
    bases = _baseline_rows(trials, _settings(own))
    hist = None
    if history is not None and ((epoch is not None and epoch < budget) or (compared["status"] != "finished").any()):
        pool = pd.concat([compared, *(b.to_frame().T for b in bases.values())])
        pool.attrs = trials.attrs
        hist = history(pool, [column, f"{column}_std"])
    fid = common_fidelity(compared, hist, column, fidelities(config, budget), budget, epoch)
    if fid.left_out:
        excluded["without a value at this epoch"] = len(fid.left_out)
    points = compared[compared["trial_id"].isin(fid.values.index)].copy()
    points["value"] = points["trial_id"].map(fid.values)
    points["full"] = points["trial_id"].map(fid.full) if fid.epoch < budget else np.nan
    settings = _settings(points)
    direction = "minimize" if mode == "min" else "maximize"
    study = optuna_study(points, space, direction)
    params = [n for n in space.sampled_names() if f"param.{n}" in points
              and pd.api.types.is_numeric_dtype(points[f"param.{n}"]) and points[f"param.{n}"].nunique() > 1]
    sens = Sensitivity(
        "search", column, 100.0 if bounds else 1.0, bounds, settings, params,
        {s: baseline_at(b, hist, column, fid.epoch, budget, bounds) for s, b in bases.items()},
        points=points, fidelity=fid, study=study, importances=param_importances(study), direction=direction,
        excluded=excluded,
        baselines_full=({s: baseline_at(b, hist, column, budget, budget, bounds) for s, b in bases.items()}
                        if fid.epoch < budget else {}))
    drawable = [p for p in params if points[f"param.{p}"].nunique() >= 3]
    if len(points) >= MIN_SURROGATE and points["value"].nunique() > 1 and drawable:
        sens.noise_floor = seed_floor(sens.baselines, points)
        sens.curves, sens.noise_sd = partial_dependence(
            points, drawable, space, [s for s in settings if (points["loss_setting"] == s).sum() >= 3] or settings,
            bounds, noise_floor=sens.noise_floor)
    return sens


def seed_floor(baselines: dict[str, SeedSummary], points: pd.DataFrame) -> float | None:
    """One trial's seed noise: joint training's seed-to-seed std at the same epoch (root mean square over the
    loss settings) over the root of the seeds a trial averages; None without a multi-seed baseline."""
    stds = [b.std for b in baselines.values() if b.std is not None]
    if not stds:
        return None
    seeds = float(points["num_seeds"].median()) if "num_seeds" in points else 1.0
    return math.sqrt(float(np.mean(np.square(stds))) / max(seeds, 1.0))


# ----------------------------------------------------------------------------- the report's table and words


def _pts(value: float | None, scale: float) -> str:
    return "–" if value is None or pd.isna(value) else f"{scale * value:.1f}"


def _x(value: float) -> str:
    return f"{value:.3g}"


def _setting(setting) -> str:
    return SHORT_SETTING.get(setting, str(setting))


def sensitivity_table(sens: Sensitivity | None) -> pd.DataFrame:
    """What the figure draws, as numbers: a grid's points (mean, pooled and per-point 95 % intervals, the
    sweep's ANOVA), or a search's trials at the common fidelity (and at the full budget)."""
    if sens is None:
        return pd.DataFrame()
    if sens.kind == "grid":
        return pd.concat([s.frame.rename(columns={"low": "pooled_low", "high": "pooled_high"}).assign(
            param=s.param, loss_setting=s.setting, pooled_sd=s.sd, pooled_df=s.df, anova_f=s.f, anova_p=s.p,
            anova_p_holm=s.p_holm) for s in sens.sweeps], ignore_index=True)
    cols = ["trial_id", "status", "loss_setting", *(f"param.{p}" for p in sens.params), "value", "full"]
    return sens.points[[c for c in cols if c in sens.points]].assign(epoch=sens.fidelity.epoch,
                                                                     budget=sens.fidelity.budget)


def findings(sens: Sensitivity | None) -> list[str]:
    """The report's sensitivity paragraph: which parameters matter, by how much, and whether beyond noise."""
    if sens is None:
        return []
    return _grid_findings(sens) if sens.kind == "grid" else _search_findings(sens)


def _baseline_words(sens: Sensitivity, at: str) -> str:
    parts = [f"{_setting(s)} {b.text(sens.scale, 1)} (n={b.n})" for s, b in sens.baselines.items() if b.n]
    return f"Joint training{at}: " + "; ".join(parts) + "." if parts else "No joint-training baseline finished."


def _grid_findings(sens: Sensitivity) -> list[str]:
    k = sens.scale
    lines = [f"One-at-a-time grid: test accuracy at each seed's best validation epoch, in points. Each sweep's "
             f"interval is a 95 % t-interval on its pooled within-point seed variance (one-way ANOVA residual); "
             f"a parameter matters **beyond noise** when its sweep's one-way ANOVA (H0: moving it changes "
             f"nothing) has p < 0.05 after Holm's correction over the study's {len(sens.sweeps)} sweeps.", ""]
    beyond = [f"{param_name(s.param)} ({_setting(s.setting)})" for s in sens.sweeps if s.beyond_noise]
    lines.append("Beyond noise: " + (", ".join(beyond) if beyond else "none") + ".")
    lines.append("")
    for s in sorted(sens.sweeps, key=lambda s: -(s.f or 0)):
        f = s.frame
        hi, lo = f.loc[f["mean"].idxmax()], f.loc[f["mean"].idxmin()]
        text = (f"- `{param_name(s.param)}`, {_setting(s.setting)}: point means span {k * (hi['mean'] - lo['mean']):.1f} "
                f"points ({_pts(lo['mean'], k)} at {_x(lo['x'])} to {_pts(hi['mean'], k)} at {_x(hi['x'])})")
        if s.p is not None:
            n_points = int((f["n"] > 0).sum())
            text += (f"; ANOVA F({n_points - 1}, {s.df}) = {s.f:.2f}, p = {s.p:.3g}, Holm {s.p_holm:.3g}: "
                     + ("**beyond noise**" if s.beyond_noise else "within noise")
                     + f"; pooled seed sd {k * s.sd:.1f} points (df {s.df})")
        else:
            text += "; no test (one seed per point)"
        lines.append(text + ".")
    lines += ["", _baseline_words(sens, " (mean ± std [95 % CI] over its seeds)")]
    return lines


def _search_findings(sens: Sensitivity) -> list[str]:
    fid, k, pts = sens.fidelity, sens.scale, sens.points
    stopped = int((pts["status"] != "finished").sum())
    intro = (f"Search: {len(pts)} trials compared at {fid.text()}, on `{sens.column}` (the study's metric, on "
             f"validation)" + (f"; the {stopped} trials ASHA stopped count with their value there" if stopped else "")
             + ".")
    if sens.excluded:
        intro += " Not compared: " + ", ".join(f"{n} {s}" for s, n in sorted(sens.excluded.items())) + "."
    if not sens.curves:
        return [intro + f" Too few trials for a surrogate (fewer than {MIN_SURROGATE}): no curves, fANOVA "
                "importance only.", "", *_importance_lines(sens), "", *_joint_lines(sens)]
    intro += (" Curves: a Gaussian-process surrogate's partial dependence (the surrogate averaged over every trial "
              f"with one parameter moved) with 95 % credible intervals (given its fitted length scales); one trial's noise: sd {k * sens.noise_sd:.1f} "
              "points")
    if sens.noise_floor is not None:
        seeds = {json_seeds(v) for v in pts["seeds"]} if "seeds" in pts else set()
        shared = f"every trial ran seed(s) {next(iter(seeds))}, so their scatter holds the seed fixed; " if len(seeds) == 1 else ""
        intro += (f", at least {k * sens.noise_floor:.1f} ({shared}the floor is joint training's seed-to-seed std at "
                  "the same epoch, over the root of a trial's seeds)")
    else:
        intro += " (no multi-seed joint training to put a floor under it: the bands leave seed noise out)"
    intro += (". A parameter matters **beyond noise** when the credible interval of its curve's change (lowest to "
              "highest) excludes 0.")
    beyond = [f"{param_name(c.param)} ({_setting(c.setting)})" for c in sens.curves if c.beyond_noise]
    lines = [intro, "", "Beyond noise: " + (", ".join(beyond) if beyond else "none") + ".", ""]
    for param in _ordered(sens):
        imp = sens.importances.get(param)
        head = f"- `{param_name(param)}`" + (f" (fANOVA importance {imp:.2f})" if imp is not None else "")
        parts = []
        for c in (c for c in sens.curves if c.param == param):
            part = (f"{_setting(c.setting)}: moves {k * c.spread:.1f} points, from {_pts(c.frame['mean'].min(), k)} at "
                    f"{_x(c.x_worst)} to {_pts(c.frame['mean'].max(), k)} at {_x(c.x_best)}, credible interval of the "
                    f"change [{k * c.change_low:+.1f}, {k * c.change_high:+.1f}]")
            parts.append(f"{part}: {'**beyond noise**' if c.beyond_noise else 'within noise'}")
        lines.append(head + (": " + "; ".join(parts) if parts else "") + ".")
    return lines + ["", *_joint_lines(sens)]


def json_seeds(value) -> str:
    return ", ".join(str(s) for s in value) if isinstance(value, (list, tuple)) else str(value)


def _ordered(sens: Sensitivity) -> list[str]:
    order = [p for p in sens.importances if p in sens.params or p == SETTING]
    return order + [p for p in sens.params if p not in order]


def _importance_lines(sens: Sensitivity) -> list[str]:
    if not sens.importances:
        return ["fANOVA importance: not computed (needs 3 trials with some spread in their values)."]
    return ["fANOVA importance: " + ", ".join(f"`{param_name(p)}` {v:.2f}" for p, v in sens.importances.items()) + "."]


def _joint_lines(sens: Sensitivity) -> list[str]:
    fid, k = sens.fidelity, sens.scale
    lines = [_baseline_words(sens, f" at epoch {fid.epoch} (mean ± std [95 % CI] over its seeds)")]
    if sens.baselines_full:
        full = "; ".join(f"{_setting(s)} {b.text(k, 1)}" for s, b in sens.baselines_full.items() if b.n)
        n_full = int(sens.points["full"].notna().sum())
        lines.append(f"At the full budget ({fid.budget} epochs): joint training {full}; the {n_full} trials that ran "
                     "every epoch are drawn there (lower panels).")
    return lines
