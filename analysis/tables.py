"""Table-I-style comparisons: accuracy, per-modality accuracy and the modality gap, mean +- std over seeds."""
from __future__ import annotations

import pandas as pd

from analysis.stats import SeedSummary, seed_summary


def modalities_of(trials: pd.DataFrame) -> list[str]:
    return sorted(c[len("best_test_acc_"):] for c in trials.columns
                  if c.startswith("best_test_acc_") and not c.endswith("_std") and "/" not in c)


def rank_column(trials: pd.DataFrame, metric: str) -> str:
    """The column that ranks trials by the study's metric: its value at each trial's selected (best
    validation) epoch, `best_<metric>`, when the trials report it; else the metric as reported."""
    if not metric.startswith("best_") and f"best_{metric}" in trials:
        return f"best_{metric}"
    return metric


def roles(trials: pd.DataFrame) -> pd.Series:
    """Each trial's `mmstudy.role` (search | sensitivity | compare | baseline | confirm); '' before roles existed."""
    return trials["role"].fillna("") if "role" in trials else pd.Series("", index=trials.index)


def finished(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[trials["status"] == "finished"] if "status" in trials else trials.iloc[0:0]


def seed_values(row: pd.Series, key: str) -> list[float]:
    """Per-seed values at each seed's best validation epoch, e.g. key='test_acc' reads `best_test_acc/seed_<s>`.
    `<split>_gap` is derived per seed: max minus min of the unimodal accuracies (|audio - visual| for two)."""
    prefix = f"best_{key}/seed_"
    cols = sorted((c for c in row.index if isinstance(c, str) and c.startswith(prefix) and pd.notna(row[c])),
                  key=lambda c: int(c[len(prefix):]) if c[len(prefix):].isdigit() else c)
    if not cols and key.endswith("_gap"):
        split = key[:-len("_gap")]
        per_mod = [v for m in _row_modalities(row, split) if (v := seed_values(row, f"{split}_acc_{m}"))]
        if len(per_mod) < 2 or len({len(v) for v in per_mod}) != 1:
            return []
        return [max(vals) - min(vals) for vals in zip(*per_mod)]
    values = [float(row[c]) for c in cols]
    if not values and row.get("num_seeds") == 1 and pd.notna(row.get(f"best_{key}")):
        values = [float(row[f"best_{key}"])]  # one seed: the trial's own value is the seed's
    return values


def seed_stats(row: pd.Series, key: str) -> SeedSummary:
    """n, mean, std and 95 % CI of `key` over the trial's seeds. Trials recorded before per-seed values
    existed fall back to their mean and std, without an interval."""
    values = seed_values(row, key)
    if values:
        return seed_summary(values)
    mean = row.get(f"best_{key}")
    if mean is None or pd.isna(mean):
        return seed_summary([])
    std = row.get(f"best_{key}_std")
    n = int(row.get("num_seeds") or 1)
    return SeedSummary(n, float(mean), float(std) if n > 1 and std is not None and pd.notna(std) else None, None, None)


def _row_modalities(row: pd.Series, split: str) -> list[str]:
    prefix = f"best_{split}_acc_"
    return sorted({c[len(prefix):].split("/")[0] for c in row.index if isinstance(c, str) and c.startswith(prefix)
                   and not c.endswith("_std")})


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
