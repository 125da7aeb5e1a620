"""Figures in the papers' styles: sensitivity (RedReg Fig. 4/5), training dynamics (Fig. 1/3), importance."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullFormatter  # noqa: E402
import pandas as pd  # noqa: E402

from search_spaces import SearchSpace  # noqa: E402

SETTING_STYLE = {"multimodal": ("tab:blue", "o", "multimodal loss"),
                 "multimodal+unimodal": ("tab:red", "s", "multimodal + unimodal loss (*)")}


def _finished(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[(trials["status"] == "finished") & trials["best_test_acc"].notna()]


def sensitivity_curves(trials: pd.DataFrame, space: SearchSpace, bins: int = 6) -> tuple[dict, str]:
    """{param: {loss_setting: DataFrame(x, mean, std, n)}} and 'exact' (one-at-a-time grid) or 'binned'."""
    done = _finished(trials)
    curves: dict[str, dict[str, pd.DataFrame]] = {}
    if done["sweep_param"].notna().any() and (done["sweep_param"] != "variant").any():
        for (param, setting), group in done[done["sweep_param"].notna()].groupby(["sweep_param", "loss_setting"]):
            g = group.assign(x=pd.to_numeric(group["sweep_value"], errors="coerce")).sort_values("x")
            curves.setdefault(param, {})[setting] = pd.DataFrame({
                "x": g["x"].to_numpy(), "mean": g["best_test_acc"].to_numpy(),
                "std": g.get("best_test_acc_std", pd.Series(0.0, index=g.index)).fillna(0).to_numpy(),
                "n": g["num_seeds"].to_numpy()})
        return curves, "exact"
    for param in space.sampled_names():
        col = f"param.{param}"
        if col not in done or done[col].nunique() < 2 or not np.issubdtype(done[col].dtype, np.number):
            continue
        spec = space.params[param]
        values = done[col].astype(float)
        edges = (np.geomspace(values.min(), values.max(), bins + 1) if spec.log and values.min() > 0
                 else np.linspace(values.min(), values.max(), bins + 1))
        for setting, group in done.groupby("loss_setting"):
            idx = np.clip(np.digitize(group[col].astype(float), edges[1:-1]), 0, bins - 1)
            stats = group.assign(bin=idx).groupby("bin")["best_test_acc"].agg(["mean", "std", "count"])
            centres = (np.sqrt(edges[:-1] * edges[1:]) if spec.log and values.min() > 0 else (edges[:-1] + edges[1:]) / 2)
            curves.setdefault(param, {})[setting] = pd.DataFrame({
                "x": centres[stats.index.to_numpy()], "mean": stats["mean"].to_numpy(),
                "std": stats["std"].fillna(0).to_numpy(), "n": stats["count"].to_numpy()})
    return curves, "binned"


def sensitivity_figure(trials: pd.DataFrame, space: SearchSpace, study: str):
    curves, kind = sensitivity_curves(trials, space)
    if not curves:
        return None
    n = len(curves)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.5 * rows + 0.6), squeeze=False)
    flat = axes.ravel()
    for ax in flat[n:]:
        ax.set_visible(False)
    for ax, (param, by_setting) in zip(flat, curves.items()):
        for setting, c in by_setting.items():
            color, marker, label = SETTING_STYLE.get(setting, ("tab:gray", "^", setting))
            ax.plot(c["x"], 100 * c["mean"], marker=marker, color=color, label=label)
            ax.fill_between(c["x"], 100 * (c["mean"] - c["std"]), 100 * (c["mean"] + c["std"]), color=color, alpha=0.2)
        spec = space.params.get(param)
        if spec is not None and spec.log:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(param.replace("balancer.", ""))
        ax.set_ylabel("test accuracy (%) at best val epoch")
        ax.grid(alpha=0.3)
    flat[0].legend(fontsize=8)
    n_done = len(_finished(trials))
    how = ("one-at-a-time grid, band = ±1 std over seeds" if kind == "exact"
           else "binned marginal over a global search, band = ±1 std over trials in a bin")
    fig.suptitle(f"{study}: sensitivity ({how}; {n_done} finished trials)", fontsize=10)
    fig.tight_layout()
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
    ax.set_xlabel("importance for test accuracy at best val epoch (fANOVA, normalised)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig
