"""Table-I-style comparisons: accuracy, per-modality accuracy and the modality gap, mean +- std over seeds."""
from __future__ import annotations

import pandas as pd


def modalities_of(trials: pd.DataFrame) -> list[str]:
    return sorted(c[len("best_test_acc_"):] for c in trials.columns
                  if c.startswith("best_test_acc_") and not c.endswith("_std"))


def trial_label(row: pd.Series) -> str:
    if isinstance(row.get("sweep_param"), str) and row["sweep_param"]:
        if row["sweep_param"] == "variant":
            return str(row["sweep_value"])
        return f"{row['sweep_param'].replace('balancer.', '')}={row['sweep_value']}"
    point = row.get("point") or {}
    shown = ", ".join(f"{k.replace('balancer.', '')}={_short(v)}" for k, v in point.items() if k != "loss_setting")
    return f"{row['balancer']} ({shown})" if shown else str(row["balancer"])


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def comparison_table(trials: pd.DataFrame, top: int = 12, order: list[str] | None = None) -> pd.DataFrame:
    """One row per finished trial (best validation first): numbers are test metrics at the best validation
    epoch, averaged over the trial's seeds, with their std."""
    done = trials[trials["status"] == "finished"].copy()
    if done.empty:
        return pd.DataFrame()
    mods = modalities_of(done)
    if done["sweep_param"].isna().all():  # a search: the best configurations by validation accuracy
        done = done.sort_values("best_val_acc", ascending=False).head(top)
    else:  # a grid (sensitivity, comparison): every point, in the config's order within each loss setting
        rank = {name: i for i, name in enumerate(order or [])}
        done = done.assign(_rank=done["sweep_value"].map(lambda v: rank.get(v, len(rank))),
                           _num=pd.to_numeric(done["sweep_value"], errors="coerce"),
                           _txt=done["sweep_value"].astype(str))
        done = done.sort_values(["loss_setting", "sweep_param", "_rank", "_num", "_txt"])
    out = pd.DataFrame({"method": done.apply(trial_label, axis=1), "loss_setting": done["loss_setting"],
                        "seeds": done["num_seeds"], "val_acc": done["best_val_acc"],
                        "acc": done["best_test_acc"], "acc_std": done.get("best_test_acc_std", 0.0)})
    for m in mods:
        out[f"acc_{m}"] = done[f"best_test_acc_{m}"]
        out[f"acc_{m}_std"] = done.get(f"best_test_acc_{m}_std", 0.0)
    if len(mods) == 2:
        out["gap"] = out[f"acc_{mods[0]}"] - out[f"acc_{mods[1]}"]
    return out.reset_index(drop=True)


def to_markdown(table: pd.DataFrame) -> str:
    """Markdown with mean +- std in percent; the best value of each column within each loss setting in
    bold (for the gap: the smallest |gap|)."""
    if table.empty:
        return "_no finished trial_\n"
    metric_cols = ["acc"] + [c for c in table.columns if c.startswith("acc_") and not c.endswith("_std")]
    headers = ["Method", "Loss", "Seeds", "Accuracy"] + [f"Acc {c[4:]}" for c in metric_cols[1:]]
    if "gap" in table:
        headers.append("Gap (abs. a − v)")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    groups = table.groupby("loss_setting")
    best = {c: groups[c].transform("max") for c in metric_cols}
    best_gap = groups["gap"].transform(lambda g: g.abs().min()) if "gap" in table else None
    for i, row in table.iterrows():
        cells = [str(row["method"]), "MM+UM*" if row["loss_setting"] == "multimodal+unimodal" else "MM",
                 str(int(row["seeds"]))]
        for c in metric_cols:
            text = f"{100 * row[c]:.2f} ± {100 * float(row.get(f'{c}_std', 0.0) or 0.0):.2f}"
            cells.append(f"**{text}**" if row[c] == best[c][i] else text)
        if "gap" in table:
            text = f"{100 * abs(row['gap']):.2f}"
            cells.append(f"**{text}**" if abs(row["gap"]) == best_gap[i] else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
