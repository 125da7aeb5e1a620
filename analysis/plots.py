"""Figures in the papers' styles: sensitivity (RedReg Fig. 4/5), training dynamics (Fig. 1/3), importance."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullFormatter  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.stats import SeedSummary, seed_summary  # noqa: E402
from analysis.tables import baseline_for, finished, roles, seed_stats  # noqa: E402
from search_spaces import SearchSpace  # noqa: E402
from study.ranking import pareto_front, rank_column  # noqa: E402

SETTING_STYLE = {"multimodal": ("tab:blue", "o", "multimodal loss"),
                 "multimodal+unimodal": ("tab:red", "s", "multimodal + unimodal loss (*)")}


def _finished(trials: pd.DataFrame) -> pd.DataFrame:
    """The study's own finished trials (not its baseline or confirmation trials)."""
    done = finished(trials)
    done = done[~roles(done).isin(["baseline", "confirm"])]
    return done[done["best_test_acc"].notna()] if "best_test_acc" in done else done


def _curve(xs, stats_: list[SeedSummary]) -> pd.DataFrame:
    return pd.DataFrame({"x": xs, "mean": [s.mean for s in stats_],
                         "low": [s.ci_low if s.ci_low is not None else s.mean for s in stats_],
                         "high": [s.ci_high if s.ci_high is not None else s.mean for s in stats_],
                         "n": [s.n for s in stats_]})


def sensitivity_curves(trials: pd.DataFrame, space: SearchSpace, bins: int = 6) -> tuple[dict, str]:
    """{param: {loss_setting: DataFrame(x, mean, low, high, n)}} and 'exact' (one-at-a-time grid: the 95 %
    t-interval over each point's seeds) or 'binned' (a search: over the trials in a bin)."""
    done = _finished(trials)
    curves: dict[str, dict[str, pd.DataFrame]] = {}
    if done["sweep_param"].notna().any() and (done["sweep_param"] != "variant").any():
        for (param, setting), group in done[done["sweep_param"].notna()].groupby(["sweep_param", "loss_setting"]):
            g = group.assign(x=pd.to_numeric(group["sweep_value"], errors="coerce")).sort_values("x")
            curves.setdefault(param, {})[setting] = _curve(g["x"].to_numpy(), [seed_stats(r, "test_acc") for _, r in g.iterrows()])
        return curves, "exact"
    for param in space.sampled_names():
        col = f"param.{param}"
        if col not in done or done[col].nunique() < 2 or not np.issubdtype(done[col].dtype, np.number):
            continue
        spec = space.params[param]
        values = done[col].astype(float)
        edges = (np.geomspace(values.min(), values.max(), bins + 1) if spec.log and values.min() > 0
                 else np.linspace(values.min(), values.max(), bins + 1))
        centres = (np.sqrt(edges[:-1] * edges[1:]) if spec.log and values.min() > 0 else (edges[:-1] + edges[1:]) / 2)
        for setting, group in done.groupby("loss_setting"):
            idx = np.clip(np.digitize(group[col].astype(float), edges[1:-1]), 0, bins - 1)
            by_bin = group.assign(bin=idx).groupby("bin")["best_test_acc"]
            pairs = [(b, seed_summary(v)) for b, v in by_bin]
            curves.setdefault(param, {})[setting] = _curve(centres[[b for b, _ in pairs]], [p for _, p in pairs])
    return curves, "binned"


def sensitivity_figure(trials: pd.DataFrame, space: SearchSpace, study: str):
    """Test accuracy against each swept parameter, per loss setting, with joint training (the study's
    baseline trial of that loss setting) as a horizontal band: its mean and 95 % CI over seeds."""
    curves, kind = sensitivity_curves(trials, space)
    if not curves:
        return None
    done = finished(trials)
    baselines = {setting: seed_stats(b, "test_acc") for setting in done["loss_setting"].dropna().unique()
                 if (b := baseline_for(done, setting)) is not None and b.get("loss_setting") == setting}
    n = len(curves)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.5 * rows + 0.9), squeeze=False)
    flat = axes.ravel()
    for ax in flat[n:]:
        ax.set_visible(False)
    for ax, (param, by_setting) in zip(flat, curves.items()):
        for setting, c in by_setting.items():
            color, marker, label = SETTING_STYLE.get(setting, ("tab:gray", "^", setting))
            ax.plot(c["x"], 100 * c["mean"], marker=marker, color=color, label=label)
            ax.fill_between(c["x"], 100 * c["low"], 100 * c["high"], color=color, alpha=0.15, linewidth=0)
            base = baselines.get(setting)
            if base is not None and base.n:
                ax.axhline(100 * base.mean, color=color, linestyle="--", linewidth=1,
                           label=f"joint training ({label.split(' loss')[0]}), n={base.n}")
                if base.ci_low is not None:
                    ax.axhspan(100 * base.ci_low, 100 * base.ci_high, facecolor=to_rgba(color, 0.10), hatch="///",
                               edgecolor=to_rgba(color, 0.45), linewidth=0)
        spec = space.params.get(param)
        if spec is not None and spec.log:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(param.replace("balancer.", ""))
        ax.set_ylabel("test accuracy (%) at best val epoch")
        ax.grid(alpha=0.3)
    handles, names = flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(4, len(names)), fontsize=8, frameon=False)
    n_done = len(_finished(trials))
    how = ("one-at-a-time grid, band = 95 % CI over seeds" if kind == "exact"
           else "binned marginal over a global search, band = 95 % CI over the trials in a bin")
    base_note = ("dashed line + hatched band: joint-training baseline, mean and 95 % CI over its seeds" if baselines
                 else "no finished joint-training baseline in this study")
    fig.suptitle(f"{study}: sensitivity ({how}; {n_done} finished trials)\n{base_note}", fontsize=9)
    fig.tight_layout(rect=(0, 0.09 if rows == 1 else 0.05, 1, 1))
    return fig


DYNAMICS = [("rlc", "RLC (representation-logit coupling)"), ("dgr", "DGR (effective-gain growth rate)"),
            ("rs", "RS (redundancy score)")]


def dynamics_figure(history: pd.DataFrame, labels: dict[str, str], modalities: list[str], title: str):
    """RLC, DGR and RS per modality against epoch; one line style per trial (best vs baseline)."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    for ax, (key, name) in zip(axes, DYNAMICS):
        for t_idx, (trial_id, label) in enumerate(labels.items()):
            h = history[history["trial_id"] == trial_id]
            for m_idx, m in enumerate(modalities):
                col = f"{key}_{m}"
                if col in h and h[col].notna().any():
                    ax.plot(h["epoch"], h[col], styles[t_idx % 4], color=colors[m_idx % len(colors)],
                            marker="o", markersize=3, label=f"{m}, {label.split(':')[0]}")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=max(1, len(names)), fontsize=8, frameon=False)
    legend = "; ".join(labels.values())
    fig.suptitle(f"{title}\n{legend}", fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def importance_figure(importances: dict[str, float], title: str):
    if not importances:
        return None
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(names) + 1.5))
    ax.barh([n.replace("balancer.", "") for n in names], [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (fANOVA, normalised)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def pareto_figure(trials: pd.DataFrame, metrics: list[str], modes: list[str], study: str):
    """A two-objective study: every finished trial at its selected epoch, the Pareto front, and joint
    training (the baseline) marked with its 95 % CIs."""
    done = finished(trials)
    cols = [rank_column(done, m) for m in metrics[:2]]
    if len(cols) < 2 or any(c not in done for c in cols):
        return None
    role = roles(done)
    own = done[role != "baseline"].dropna(subset=cols)
    if own.empty:
        return None
    pts = own[cols].to_numpy(dtype=float)
    front = pareto_front(pts, modes[:2])
    front = front[np.argsort(pts[front, 0])]
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    confirmed = (role.loc[own.index] == "confirm").to_numpy()
    ax.scatter(100 * pts[~confirmed, 0], 100 * pts[~confirmed, 1], color="tab:gray", alpha=0.6, label="trials")
    if confirmed.any():
        ax.scatter(100 * pts[confirmed, 0], 100 * pts[confirmed, 1], color="tab:blue", marker="D", label="confirmed (fresh seeds)")
    ax.plot(100 * pts[front, 0], 100 * pts[front, 1], "-o", color="tab:red", label="Pareto front")
    base = baseline_for(done, None)
    if base is not None:
        sx, sy = (seed_stats(base, c[len("best_"):] if c.startswith("best_") else c) for c in cols)
        xerr = None if sx.ci_low is None else [[100 * (sx.mean - sx.ci_low)], [100 * (sx.ci_high - sx.mean)]]
        yerr = None if sy.ci_low is None else [[100 * (sy.mean - sy.ci_low)], [100 * (sy.ci_high - sy.mean)]]
        ax.errorbar([100 * sx.mean], [100 * sy.mean], xerr=xerr, yerr=yerr, fmt="*", color="black", markersize=14,
                    capsize=4, label=f"joint training (baseline, n={sx.n}, 95 % CI)")
    ax.set_xlabel(f"{cols[0]} (%), {modes[0]}imise")
    ax.set_ylabel(f"{cols[1]} (%), {modes[1]}imise")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{study}: multi-objective search, values at each trial's selected epoch", fontsize=9)
    fig.tight_layout()
    return fig
