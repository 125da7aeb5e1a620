"""The benchmark report (`mode: benchmark`): Table I of every method's CONFIRMED numbers against joint training,
the tuning cost each method used, and accuracy against modality gap.

Each method's row is its confirmation trial (fresh seeds) -- the best of them by the study's metric on
validation when `confirm.top_k` > 1 -- never its search trials' own best epochs. Every quantity is a test
metric at each seed's best validation epoch: n, mean, sample std, 95 % t-interval over seeds
(analysis.stats). Δ vs joint: the difference of test accuracy to the study's joint-training baseline
(`none`, the same trial, the confirmation seeds), Welch's test with Holm's correction across the methods,
and TOST equivalence at the study's `equivalence_margin` (better / worse / equivalent / inconclusive).
Tuning cost: the method's search trials, their epochs, and resource-hours = Σ over the trials' epochs of the
per-epoch time the trainer measured × the trial's seeds (trained one after another) × the trial's
resources (GPUs when the study asked for any, else CPU cores).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from analysis.load import load_histories
from analysis.stats import SeedSummary, compare_to_baseline
from analysis.summary import StudySummary
from analysis.tables import baseline_for, finished, quantities, ranked, roles, seed_stats, seed_values, study_margin

TABLE_FILES = ("benchmark.csv", "benchmark.md", "tuning_cost.csv", "accuracy_vs_gap.png")


def benchmark_quantities(trials: pd.DataFrame) -> dict[str, str]:
    """Table column -> per-seed key: accuracy, macro-F1, then tables.quantities' per-modality columns."""
    qty = quantities(trials)
    return {"acc": qty.pop("acc"), "f1": "test_f1", **qty}


def method_order(trials: pd.DataFrame) -> list[str]:
    config = trials.attrs.get("config") or {}
    from study.methods import label_of, parse_item

    labels = [label_of(*parse_item(item)) for item in config.get("methods") or []]
    seen = [m for m in trials.get("method", pd.Series(dtype=object)).dropna().unique() if m not in labels]
    return labels + sorted(seen)


def confirmed_rows(trials: pd.DataFrame, metric: str | list[str], mode: str | list[str]
                   ) -> dict[str, pd.Series | None]:
    """Each method's confirmed trial: the best of its finished confirmations by the study's one ranking rule
    (analysis.tables.ranked, the study's metric(s) on validation; None when none finished)."""
    done = finished(trials)
    confirm = done[(roles(done) == "confirm") & done["method"].notna()] if "method" in done else done.iloc[0:0]
    out: dict[str, pd.Series | None] = {}
    for label in method_order(trials):
        mine = confirm[confirm["method"] == label]
        out[label] = None if mine.empty else ranked(mine, metric, mode).iloc[0]
    return out


def tuning_cost(trials: pd.DataFrame) -> pd.DataFrame:
    """Per method and role (search, confirm): trials, trial-epochs, seed-epochs and resource-hours."""
    config = trials.attrs.get("config") or {}
    resources = config.get("resources") or {}
    gpu = float(resources.get("gpu") or 0)
    unit, per_trial = ("GPU-h", gpu) if gpu > 0 else ("CPU-h", float(resources.get("cpu") or 1))
    ran = trials[trials["method"].notna() & roles(trials).isin(["search", "confirm"])] if "method" in trials \
        else trials.iloc[0:0]
    seconds: dict[str, float] = {}
    if not ran.empty and "tracking_uri" in trials.attrs:
        history = load_histories(ran, ["epoch_time_s"])
        seconds = history.groupby("trial_id")["epoch_time_s"].sum().to_dict() if not history.empty else {}
    rows = []
    for label in method_order(trials):
        rec: dict[str, Any] = {"method": label, "unit": unit}
        for role in ("search", "confirm"):
            mine = ran[(ran["method"] == label) & (roles(ran) == role)]
            epochs = mine["epochs_run"].fillna(0).astype(int)
            seeds = mine["num_seeds"].fillna(1).astype(int)
            secs = [seconds.get(t, math.nan) * n for t, n in zip(mine["trial_id"], seeds)]
            rec.update({f"{role}_trials": len(mine), f"{role}_trial_epochs": int(epochs.sum()),
                        f"{role}_seed_epochs": int((epochs * seeds).sum()),
                        f"{role}_hours": per_trial * sum(s for s in secs if s == s) / 3600 if secs else 0.0,
                        f"{role}_pruned": int((mine["status"] == "pruned").sum())})
        rows.append(rec)
    return pd.DataFrame(rows)


def benchmark_table(trials: pd.DataFrame, metric: str | list[str] = "val_acc", mode: str | list[str] = "max"
                    ) -> pd.DataFrame:
    """Table I: joint training first, then one row per method (its confirmed trial), with Δ vs joint."""
    done = finished(trials)
    margin = study_margin(trials.attrs.get("config") or {})
    qty = benchmark_quantities(trials)
    picked = confirmed_rows(trials, metric, mode)
    base = baseline_for(done[roles(done) == "baseline"]) if (roles(done) == "baseline").any() else None
    entries = ([("joint training (baseline)", base, "baseline")] if base is not None else [])
    entries += [(label, row, "confirm") for label, row in picked.items()]
    records = []
    for label, row, role in entries:
        rec: dict[str, Any] = {"method": label, "role": role, "trial_id": None if row is None else row["trial_id"],
                               "confirms": None if row is None else row.get("confirms")}
        for name, key in qty.items():
            s = seed_stats(row, key) if row is not None else SeedSummary(0, math.nan, None, None, None)
            rec.update({name: s.mean, f"{name}_std": s.std, f"{name}_ci_low": s.ci_low, f"{name}_ci_high": s.ci_high})
            if name == "acc":
                rec["n"] = s.n
        records.append(rec)
    table = pd.DataFrame(records)
    for c in ("delta", "delta_ci_low", "delta_ci_high", "p_holm", "p_equivalence", "within_noise", "verdict"):
        table[c] = None
    if base is None:
        return table
    idx = [i for i in table.index if table.at[i, "role"] == "confirm" and picked.get(table.at[i, "method"]) is not None]
    diffs = compare_to_baseline([seed_values(picked[table.at[i, "method"]], "test_acc") for i in idx],
                                seed_values(base, "test_acc"), margin=margin)
    for i, d in zip(idx, diffs):
        table.at[i, "delta"] = d.diff
        table.loc[i, ["delta_ci_low", "delta_ci_high", "p_holm", "p_equivalence"]] = \
            [d.ci_low, d.ci_high, d.p_adjusted, d.p_equivalence]
        table.at[i, "within_noise"] = d.within_noise
        table.at[i, "verdict"] = d.verdict if d.p is not None else "not testable"
    return table


def answer(table: pd.DataFrame, margin: float) -> str:
    """The report's first paragraph: which methods beat joint training beyond noise, or that none do."""
    rows = table[table["role"] == "confirm"]
    tested = rows[rows["p_holm"].notna()]
    if table[table["role"] == "baseline"].empty:
        return "**Result.** No joint-training baseline finished, so no method can be compared with joint training."
    if tested.empty:
        return ("**Result.** No method has a confirmed result with at least 2 seeds yet, so none can be compared "
                "with joint training.")
    better = tested[(tested["within_noise"] == False) & (tested["delta"] > 0)]  # noqa: E712 -- object column
    worse = tested[(tested["within_noise"] == False) & (tested["delta"] < 0)]  # noqa: E712
    equivalent = tested[tested["verdict"] == "equivalent"]
    base = table[table["role"] == "baseline"].iloc[0]
    base_acc = SeedSummary(int(base["n"]), base["acc"], _num(base["acc_std"]), _num(base["acc_ci_low"]),
                           _num(base["acc_ci_high"]))

    def listed(frame: pd.DataFrame) -> str:
        return ", ".join(f"`{r['method']}` ({100 * r['delta']:+.2f} points [{100 * r['delta_ci_low']:+.2f}, "
                         f"{100 * r['delta_ci_high']:+.2f}], p (Holm) {_p(r['p_holm'])})" for _, r in frame.iterrows())

    lead = (f"**Result.** {len(better)} of the {len(tested)} methods beat joint training beyond noise: {listed(better)}."
            if not better.empty else
            f"**Result.** None of the {len(tested)} methods beats joint training beyond noise.")
    parts = [lead, f"Joint training (`none`, the same trial settings): test accuracy {base_acc.text()} % "
                   f"(n = {base_acc.n})."]
    if not worse.empty:
        parts.append(f"Worse beyond noise: {listed(worse)}.")
    if not equivalent.empty:
        parts.append(f"Equivalent to joint training within {_points(margin)} (TOST): "
                     + ", ".join(f"`{m}`" for m in equivalent["method"]) + ".")
    parts.append(f"Each method was tuned with the same budget and is reported on fresh seeds; Δ is test accuracy "
                 f"against joint training, Welch's test Holm-corrected over the {len(tested)} methods.")
    untested = rows[rows["p_holm"].isna()]
    if not untested.empty:
        parts.append("Not testable (no confirmed result with 2+ seeds): "
                     + ", ".join(f"`{m}`" for m in untested["method"]) + ".")
    return " ".join(parts)


def benchmark_summary(trials: pd.DataFrame) -> StudySummary:
    """The answer paragraph and the parent run's metrics (runner.summarize for a benchmark)."""
    from analysis.report import study_metric

    config = trials.attrs.get("config") or {}
    metrics, modes = study_metric(config)
    table = benchmark_table(trials, metrics, modes)
    out: dict[str, float] = {}
    confirm = table[(table["role"] == "confirm")]
    out["benchmark_methods_better"] = float(((confirm["within_noise"] == False) & (confirm["delta"] > 0)).sum())  # noqa: E712
    base = table[table["role"] == "baseline"]
    if not base.empty and pd.notna(base.iloc[0]["acc"]):
        out["baseline_test_acc"] = float(base.iloc[0]["acc"])
    return StudySummary(answer(table, study_margin(config)), out,
                        baseline_trial_id=None if base.empty else base.iloc[0]["trial_id"],
                        confirmed=not confirm.empty)


# ----------------------------------------------------------------------------- markdown and figure


HEADERS = {"acc": "Accuracy", "f1": "Macro-F1", "gap": "Gap (max − min)", "imbalance": "Imbalance"}


def _header(name: str) -> str:
    if name in HEADERS:
        return HEADERS[name]
    kind, mod = name.split("_", 1)
    return f"Acc {mod}" if kind == "acc" else f"Shapley {mod}"


def _points(margin: float) -> str:
    return f"±{100 * margin:g} point" + ("" if 100 * margin == 1 else "s")


def _num(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _p(p) -> str:
    return "–" if p is None or pd.isna(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def table_markdown(table: pd.DataFrame, margin: float) -> str:
    """Percent, mean ± std [95 % CI] over seeds; Δ vs joint with its Welch interval, Holm p, the verdict."""
    qty = [c for c in table.columns if c in HEADERS or c.startswith(("acc_", "shapley_"))
           if not c.endswith(("_std", "_ci_low", "_ci_high"))]
    headers = ["Method", "n", *(_header(c) for c in qty), "Δ acc vs joint [95 % CI]", "p (Holm)",
               f"Equivalence (±{100 * margin:g} pt)"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for _, row in table.iterrows():
        cells = [str(row["method"]), str(int(row["n"]))]
        for c in qty:
            s = SeedSummary(int(row["n"]), row[c], _num(row[f"{c}_std"]), _num(row[f"{c}_ci_low"]),
                            _num(row[f"{c}_ci_high"]))
            cells.append(s.text() if pd.notna(row[c]) else "–")
        if row["role"] == "baseline":
            cells += ["baseline", "–", "–"]
        elif row["delta"] is None or pd.isna(row["delta"]):
            cells += ["– (no confirmed result)" if row["n"] == 0 else "–", "–", str(row["verdict"] or "–")]
        else:
            delta = f"{100 * row['delta']:+.2f}"
            if _num(row["delta_ci_low"]) is not None:
                delta += (f" [{100 * row['delta_ci_low']:+.2f}, {100 * row['delta_ci_high']:+.2f}] "
                          f"{'within noise' if row['within_noise'] else 'beyond noise'}")
            cells += [delta, _p(row["p_holm"]), str(row["verdict"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def cost_markdown(cost: pd.DataFrame) -> str:
    if cost.empty:
        return "_no method ran_\n"
    unit = cost["unit"].iloc[0]
    headers = ["Method", "search trials (pruned)", "trial-epochs", "seed-epochs", f"search {unit}",
               "confirm trials", f"confirm {unit}"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for _, r in cost.iterrows():
        lines.append(f"| {r['method']} | {r['search_trials']} ({r['search_pruned']}) | {r['search_trial_epochs']} | "
                     f"{r['search_seed_epochs']} | {r['search_hours']:.3g} | {r['confirm_trials']} | "
                     f"{r['confirm_hours']:.3g} |")
    return "\n".join(lines) + "\n"


def accuracy_gap_figure(table: pd.DataFrame, title: str):
    """Test accuracy against modality gap per method (95 % CI error bars on both); the baseline in black."""
    rows = table[table["acc"].notna() & table.get("gap", pd.Series(index=table.index, dtype=float)).notna()] \
        if "gap" in table else table.iloc[0:0]
    if rows.empty:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    for i, (_, r) in enumerate(rows.iterrows()):
        def err(name):
            low, high = _num(r[f"{name}_ci_low"]), _num(r[f"{name}_ci_high"])
            return None if low is None else [[100 * (r[name] - low)], [100 * (high - r[name])]]

        is_base = r["role"] == "baseline"
        ax.errorbar(100 * r["gap"], 100 * r["acc"], xerr=err("gap"), yerr=err("acc"), fmt="s" if is_base else "o",
                    color="black" if is_base else plt.cm.tab20(i % 20), capsize=3, label=r["method"])
    ax.set_xlabel("modality gap: max − min unimodal test accuracy (points)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", ncol=2)
    fig.tight_layout()
    return fig


def write_benchmark(trials: pd.DataFrame, out: Path, metric: str | list[str], mode: str | list[str]) -> dict[str, Any]:
    """Table I, the tuning cost and the figure into `out`; returns what report.md shows."""
    config = trials.attrs.get("config") or {}
    margin = study_margin(config)
    table = benchmark_table(trials, metric, mode)
    cost = tuning_cost(trials)
    table.to_csv(out / "benchmark.csv", index=False)
    (out / "benchmark.md").write_text(table_markdown(table, margin))
    cost.to_csv(out / "tuning_cost.csv", index=False)
    files = ["benchmark.csv", "benchmark.md", "tuning_cost.csv"]
    fig = accuracy_gap_figure(table, f"{trials.attrs.get('study', '')}: confirmed accuracy vs modality gap (95 % CI)")
    if fig is not None:
        fig.savefig(out / "accuracy_vs_gap.png", dpi=130)
        plt.close(fig)
        files.append("accuracy_vs_gap.png")
    return {"table": table, "cost": cost, "files": files, "answer": answer(table, margin), "margin": margin}


def benchmark_markdown(name: str, config: dict[str, Any], counts: dict[str, int], parts: dict[str, Any],
                       command: str, attrs: dict[str, Any], metric: str | list[str], mode: str | list[str]) -> str:
    import yaml

    margin = parts["margin"]
    metrics, modes = ([metric], [mode]) if isinstance(metric, str) else (metric, mode)
    objective = ", ".join(f"`{m}` ({o})" for m, o in zip(metrics, modes))
    lines = [f"# Benchmark report: {name}", "", parts["answer"], "", f"Produced by: `{command}`", "",
             f"Every method searched its own space with the same budget ({config.get('num_samples')} trials, "
             f"{(config.get('trial') or {}).get('epochs', '?')} epochs, the same ASHA settings, compared within "
             f"the method), ranked by {objective} on validation; its best configuration was re-trained "
             f"on the confirmation seeds {(config.get('confirm') or {}).get('seeds')}. Numbers are test metrics "
             "in percent at each seed's best validation epoch: mean ± sample std [95 % t-interval] (n seeds). "
             "Δ vs joint: Welch's 95 % interval; p Holm-corrected across the methods; \"within noise\" when the "
             f"interval covers 0 or p (Holm) ≥ 0.05. Equivalence: TOST at {_points(margin)} first "
             "(equivalent), then the sign of a significant difference (better / worse), else inconclusive.", "",
             "Trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) +
             (" — the study is still running; this report covers what has finished." if counts.get("running") else ""),
             "", "## Table I: confirmed results against joint training", "",
             table_markdown(parts["table"], margin), "", "## Tuning cost per method", "",
             "Resource-hours: Σ over each trial's epochs of the trainer's measured epoch time × its seeds × its "
             "resources (`resources` in the config).", "", cost_markdown(parts["cost"]), ""]
    if "accuracy_vs_gap.png" in parts["files"]:
        lines += ["## Accuracy against modality gap", "", "![accuracy vs gap](accuracy_vs_gap.png)", ""]
    lines += ["## Study config", "", "```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(), "```", "",
              f"MLflow: tracking URI `{attrs['tracking_uri']}`, parent run `{attrs['parent_run_id']}`. Optuna: one "
              f"study per method (`{name}/<method>`) in the study folder's optuna.journal.", ""]
    return "\n".join(lines)


def benchmark_report(trials: pd.DataFrame, out: Path, counts: dict[str, int], command: str, metric: str | list[str],
                     mode: str | list[str]) -> tuple[list[str], StudySummary]:
    """`mmstudy report` on a benchmark study: the files above and report.md (the answer first)."""
    attrs = trials.attrs
    parts = write_benchmark(trials, out, metric, mode)
    (out / "report.md").write_text(benchmark_markdown(attrs["study"], attrs["config"], counts, parts, command, attrs,
                                                      metric, mode))
    return parts["files"] + ["report.md"], benchmark_summary(trials)
