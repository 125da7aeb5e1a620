"""Figures in the papers' styles: sensitivity (RedReg Fig. 4/5, analysis.sensitivity) with Optuna's slice, contour
and importance plots, training dynamics (Fig. 1/3), the Pareto front of a multi-objective study."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullFormatter  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.sensitivity import MIN_SURROGATE, SHORT_SETTING, Sensitivity, param_name  # noqa: E402
from analysis.stats import SeedSummary  # noqa: E402
from analysis.tables import baseline_for, finished, roles, seed_stats  # noqa: E402
from search_spaces import SearchSpace  # noqa: E402
from study.ranking import pareto_front, rank_column  # noqa: E402

SETTING_STYLE = {"multimodal": ("tab:blue", "o", "multimodal loss"),
                 "multimodal+unimodal": ("tab:red", "s", "multimodal + unimodal loss (*)")}


def _style(setting) -> tuple[str, str, str]:
    return SETTING_STYLE.get(setting, ("tab:gray", "^", str(setting) if setting is not None else "trials"))


def _baseline_band(ax, base: SeedSummary | None, scale: float, color: str, label: str) -> None:
    """Joint training as a dashed line at its mean and a hatched band over its 95 % CI."""
    if base is None or not base.n or pd.isna(base.mean):
        return
    ax.axhline(scale * base.mean, color=color, linestyle="--", linewidth=1, label=label)
    if base.ci_low is not None:
        ax.axhspan(scale * base.ci_low, scale * base.ci_high, facecolor=to_rgba(color, 0.10), hatch="///",
                   edgecolor=to_rgba(color, 0.45), linewidth=0)


def _param_axis(ax, space: SearchSpace, param: str) -> None:
    spec = space.params.get(param)
    if spec is not None and spec.log:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(param_name(param))
    ax.grid(alpha=0.3)


def _draw_sweeps(ax, sens: Sensitivity, param: str) -> str:
    """A one-at-a-time sweep per loss setting: point means, the chosen interval, joint training's band."""
    notes = []
    for sweep in (s for s in sens.sweeps if s.param == param):
        color, marker, label = _style(sweep.setting)
        f = sweep.frame
        low, high = (f["low"], f["high"]) if sens.interval == "pooled" else (f["point_low"], f["point_high"])
        band = f"pooled df {sweep.df}" if sens.interval == "pooled" else "per-point t"
        ax.plot(f["x"], 100 * f["mean"], marker=marker, color=color, label=f"{label} ({band})")
        ok = low.notna() & high.notna()
        ax.fill_between(f["x"][ok], 100 * low[ok].astype(float), 100 * high[ok].astype(float), color=color,
                        alpha=0.15, linewidth=0)
        _baseline_band(ax, sens.baselines.get(sweep.setting), 100, color,
                       f"joint training ({SHORT_SETTING.get(sweep.setting, sweep.setting)}), "
                       f"n={sens.baselines[sweep.setting].n}" if sweep.setting in sens.baselines else "")
        if sweep.p_holm is not None:
            notes.append(f"{SHORT_SETTING.get(sweep.setting, sweep.setting)}: ANOVA p(Holm) "
                         f"{'< 0.001' if sweep.p_holm < 0.001 else f'{sweep.p_holm:.2g}'}")
    return "; ".join(notes)


def _draw_search(axes, sens: Sensitivity, param: str) -> str:
    """Every compared trial at the common fidelity with the surrogate's partial dependence and its band, and joint
    training at that epoch (first axes); below the full budget, the trials that ran every epoch at the full budget
    with joint training there (second axes, hollow diamonds)."""
    fid, pts, col, k = sens.fidelity, sens.points, f"param.{param}", sens.scale
    top, bottom = axes[0], (axes[1] if len(axes) > 1 else None)
    for setting in sens.settings or [None]:
        color, marker, label = _style(setting)
        short = SHORT_SETTING.get(setting, setting)
        mine = pts if setting is None else pts[pts["loss_setting"] == setting]
        curve = next((c for c in sens.curves if c.param == param and c.setting == setting), None)
        if curve is not None:
            c = curve.frame
            top.plot(c["x"], k * c["mean"], color=color, linewidth=1.6, label=f"{label}: partial dependence")
            top.fill_between(c["x"], k * c["low"], k * c["high"], color=color, alpha=0.15, linewidth=0)
        top.scatter(mine[col], k * mine["value"], color=color, marker=marker, s=24, alpha=0.85, zorder=3,
                    label=f"{label}: every trial at epoch {fid.epoch}")
        base = sens.baselines.get(setting)
        _baseline_band(top, base, k, color, f"joint training ({short}), n={base.n}" if base else "")
        if bottom is not None:
            full = mine.dropna(subset=["full"])
            bottom.scatter(full[col], k * full["full"], facecolors="none", edgecolors=color, marker="D", s=34,
                           zorder=3, label=f"{label}: trials that ran all {fid.budget} epochs")
            _baseline_band(bottom, sens.baselines_full.get(setting), k, color,
                           f"joint training ({short}), n={base.n}" if base else "")
    notes = [] if (imp := sens.importances.get(param)) is None else [f"fANOVA {imp:.2f}"]
    for curve in (c for c in sens.curves if c.param == param):
        verdict = "beyond noise" if curve.beyond_noise else "within noise"
        notes.append(f"{SHORT_SETTING.get(curve.setting, curve.setting or 'PD')}: {k * curve.spread:.1f}, {verdict}")
    return "; ".join(notes)


def sensitivity_figure(sens: Sensitivity | None, space: SearchSpace, study: str):
    """One panel per parameter (RedReg Fig. 4/5), both loss settings in one colour each, joint training of each
    setting as a dashed line and hatched band (mean, 95 % CI over its seeds). A grid draws its point means
    with the pooled (or per-point) interval; a search every trial at the common fidelity with the surrogate's
    partial dependence (analysis.sensitivity) and, when that is below the full budget, a lower panel with the
    full-budget values of the trials that ran every epoch."""
    if sens is None or not sens.params:
        return None
    n = len(sens.params)
    cols = min(n, 3)
    rows = -(-n // cols)
    spare = rows * cols - n
    stacked = sens.kind == "search" and sens.fidelity.epoch < sens.fidelity.budget
    fig = plt.figure(figsize=(max(4.8 * cols, 9.6), (5.2 if stacked else 3.6) * rows + 1.8), layout="constrained")
    cells = fig.add_gridspec(rows, cols)
    panels = []
    for i, param in enumerate(sens.params):
        r, c = divmod(i, cols)
        if stacked:
            pair = cells[r, c].subgridspec(2, 1, height_ratios=[1, 0.55], hspace=0.05)
            top = fig.add_subplot(pair[0])
            axes = [top, fig.add_subplot(pair[1], sharex=top)]
        else:
            axes = [top := fig.add_subplot(cells[r, c])]
        note = _draw_sweeps(top, sens, param) if sens.kind == "grid" else _draw_search(axes, sens, param)
        for ax in axes:
            _param_axis(ax, space, param)
        if stacked:
            top.set_xlabel("")
            top.tick_params(labelbottom=False)
        top.set_title(f"{param_name(param)}" + (f"\n{note}" if note else ""), fontsize=9)
        if c == 0:
            top.set_ylabel(sens.label, fontsize=9)
            if stacked:
                axes[1].set_ylabel(f"at epoch {sens.fidelity.budget}", fontsize=9)
        panels += axes
    legend = {}
    for ax in panels:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    if spare:
        slot = fig.add_subplot(cells[rows - 1, cols - spare:])
        slot.axis("off")
        slot.legend(list(legend.values()), list(legend), loc="center", fontsize=8, frameon=False)
    else:
        fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncol=min(3, len(legend)),
                   fontsize=8, frameon=False)
    fig.suptitle(_sensitivity_title(sens, study), fontsize=9)
    return fig


def _sensitivity_title(sens: Sensitivity, study: str) -> str:
    if sens.kind == "grid":
        band = ("95 % t-interval on the sweep's pooled within-point seed variance\n(one-way ANOVA residual, "
                "df = points x (seeds - 1) in the legend)" if sens.interval == "pooled"
                else "95 % t-interval over each point's own seeds")
        return (f"{study}: one-at-a-time sensitivity, test accuracy at each seed's best validation epoch\n"
                f"line: mean over seeds per grid point; band: {band}\n"
                "dashed line + hatched band: joint training, mean and 95 % CI over its seeds")
    fid = sens.fidelity
    lines = [f"{study}: sensitivity of {sens.column} (the study's metric) at {fid.text()}"]
    if sens.curves:
        lines.append("curve + band: Gaussian-process partial dependence, 95 % credible band of its mean given the fitted "
                     "length scales"
                     + (f" (one trial's noise: sd {sens.scale * sens.noise_sd:.1f}"
                        + (", floored at joint training's seed noise)" if sens.noise_floor is not None else ")")
                        if sens.noise_sd is not None else ""))
    else:
        lines.append(f"too few trials for a surrogate (fewer than {MIN_SURROGATE}): the trials alone")
    lines.append(f"dashed + hatched: joint training at the same epoch, mean and 95 % CI over its seeds"
                 + (f"; lower panels: the trials that ran all {fid.budget} epochs, at epoch {fid.budget}"
                    if fid.epoch < fid.budget else ""))
    if sens.excluded:
        lines.append("not shown: " + ", ".join(f"{n} {s}" for s, n in sorted(sens.excluded.items())))
    return "\n".join(lines)


def _optuna_plot(fn, *args, **kwargs):
    """An Optuna matplotlib plot, its style sheet (ggplot) kept from leaking into the other figures."""
    import warnings

    with plt.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's ExperimentalWarning
        return fn(*args, **kwargs)


def slice_figure(sens: Sensitivity | None, study: str):
    """Optuna's slice plot of every compared trial at the common fidelity, joint training's band in each panel."""
    if sens is None or sens.kind != "search" or sens.study is None:
        return None
    from optuna.visualization.matplotlib import plot_slice

    axes = np.atleast_1d(_optuna_plot(plot_slice, sens.study, target=lambda t: sens.scale * t.value,
                                      target_name=sens.label))
    fig = axes[0].figure
    for ax in axes:
        for setting, base in sens.baselines.items():
            color, _, _ = _style(setting)
            _baseline_band(ax, base, sens.scale, color, f"joint training ({SHORT_SETTING.get(setting, setting)})")
        ax.set_xlabel(param_name(ax.get_xlabel()), fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        if ax.get_xlabel() == "loss_setting":
            ax.set_xticks(ax.get_xticks(), [SHORT_SETTING.get(t.get_text().strip("'"), t.get_text())
                                            for t in ax.get_xticklabels()])
    handles, labels = axes[0].get_legend_handles_labels()
    mine = [(h, lab) for h, lab in zip(handles, labels) if lab.startswith("joint training")]
    if mine:
        axes[0].legend(*zip(*mine), loc="best", fontsize=7, framealpha=0.8)
    fig.set_size_inches(2.7 * len(axes) + 2.0, 4.8)
    fig.suptitle(f"{study}: every trial at {sens.fidelity.text()}\n(Optuna slice plot, colour: trial number; "
                 "dashed + hatched: joint training at the same epoch, mean and 95 % CI)", fontsize=9)
    return fig


def contour_figure(sens: Sensitivity, space: SearchSpace, pair: tuple[str, str], study: str,
                   setting: str | None = None):
    """Optuna's contour plot of two parameters over the trials at the common fidelity (of one loss setting)."""
    from optuna.visualization.matplotlib import plot_contour

    from analysis.importance import optuna_study

    points = sens.points if setting is None else sens.points[sens.points["loss_setting"] == setting]
    sub = optuna_study(points, space, sens.direction) if setting is not None else sens.study
    if (sub is None or len(points) < 3 or points["value"].nunique() < 2
            or any(p not in sub.trials[0].distributions for p in pair)):
        return None
    ax = _optuna_plot(plot_contour, sub, params=list(pair), target=lambda t: sens.scale * t.value,
                      target_name=sens.label)
    ax.set_xlabel(param_name(ax.get_xlabel()))
    ax.set_ylabel(param_name(ax.get_ylabel()))
    where = f", {SETTING_STYLE[setting][2]}" if setting in SETTING_STYLE else ""
    ax.set_title(f"{study}: {param_name(pair[0])} x {param_name(pair[1])}{where}, {len(points)} trials at epoch "
                 f"{sens.fidelity.epoch}\n(Optuna contour: interpolated between the trials, dots)", fontsize=9)
    ax.figure.tight_layout()
    return ax.figure


def contour_pairs(sens: Sensitivity | None, space: SearchSpace) -> list[tuple[str, str]]:
    """The two most important numeric parameters (fANOVA), then every pair the space ties by a constraint
    (`a < b`: their joint region is what the constraint shapes), each pair once."""
    if sens is None or sens.kind != "search" or sens.study is None:
        return []
    ranked = [p for p in sens.importances if p in sens.params] or list(sens.params)
    pairs = [tuple(ranked[:2])] if len(ranked) >= 2 else []
    pairs += [(a, b) for a, b in space.parsed_constraints() if a in sens.params and b in sens.params]
    out: list[tuple[str, str]] = []
    for pair in pairs:
        if set(pair) not in [set(p) for p in out]:
            out.append(pair)
    return out

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


def importance_figure(sens: Sensitivity | None, study: str):
    """Optuna's fANOVA importance plot of the in-memory study (values at the common fidelity)."""
    if sens is None or not sens.importances:
        return None
    import optuna
    from optuna.visualization.matplotlib import plot_param_importances

    ax = _optuna_plot(plot_param_importances, sens.study,
                      evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), target_name=sens.label)
    ax.set_yticks(ax.get_yticks(), [param_name(t.get_text()) for t in ax.get_yticklabels()])
    for loc in ("left", "right"):
        ax.set_title("", loc=loc)  # Optuna's own title
    ax.set_title(f"{study}: fANOVA importance for {sens.column} at epoch {sens.fidelity.epoch} "
                 f"({len(sens.points)} trials)", fontsize=9)
    ax.figure.tight_layout()
    return ax.figure

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
