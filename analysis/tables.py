"""Table-I-style comparisons over seeds (n, mean, std, 95 % CI) with the difference to joint training, and the
per-trial helpers the summary and figures share: per-seed values, roles, the baseline, the ranking column."""
from __future__ import annotations

from typing import Any

import pandas as pd

from analysis.stats import MARGIN, Difference, SeedSummary, compare_to_baseline, metric_bounds, seed_summary
from study.ranking import rank_column, rank_trials


def study_margin(config: dict[str, Any]) -> float:
    """The study's TOST equivalence margin in accuracy units: its `equivalence_margin` (given in points), else
    the default (analysis.stats.MARGIN)."""
    points = config.get("equivalence_margin")
    return MARGIN if points is None else float(points) / 100


def modalities_of(trials: pd.DataFrame) -> list[str]:
    return sorted(c[len("best_test_acc_"):] for c in trials.columns
                  if c.startswith("best_test_acc_") and not c.endswith("_std") and "/" not in c)


def ranked(trials: pd.DataFrame, metric: str | list[str], mode: str | list[str]) -> pd.DataFrame:
    """`trials` best first by the study's one ranking rule (`study.ranking.rank_trials`), then the trials it
    cannot rank (no value of the metric), in their recorded order."""
    order = rank_trials(trials, metric, mode)
    return pd.concat([order, trials.drop(order.index)]) if len(order) < len(trials) else order


def roles(trials: pd.DataFrame) -> pd.Series:
    """Each trial's `mmstudy.role` (search | sensitivity | compare | baseline | confirm); '' before roles existed."""
    return trials["role"].fillna("") if "role" in trials else pd.Series("", index=trials.index)


def finished(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[trials["status"] == "finished"] if "status" in trials else trials.iloc[0:0]


RESULT_STATUSES = ("finished", "diverged", "failed")  # a confirmation that has ended: a result, or a failed one


def confirm_ranks(trials: pd.DataFrame) -> pd.Series:
    """Each trial's `mmstudy.confirm_rank` (1 = the confirmation of the search's rank-1 configuration) as a
    number; NaN for trials, and studies, that do not record it."""
    if "confirm_rank" not in trials:
        return pd.Series(float("nan"), index=trials.index)
    return pd.to_numeric(trials["confirm_rank"], errors="coerce")


def reported_confirmation(confirms: pd.DataFrame, search: pd.DataFrame, metric: str | list[str],
                          mode: str | list[str]) -> tuple[pd.Series | None, str]:
    """The one confirmation that is a method's (or a search study's) result; never chosen among the
    confirmations by their own numbers, since their test scores come from the same networks:
    - 'confirm_rank': the confirmation tagged `mmstudy.confirm_rank` 1 when the study records ranks (None while
      it has not ended, even if lower ranks have);
    - 'search_rank' (studies before the tag): the confirmation of the search's rank-1 trial by the study's one
      ranking rule over `search` (its finished and ASHA-stopped trials), which is what rank 1 means;
    - 'best_of_k': otherwise (nothing to rank, e.g. a fixed method, or the rank-1 trial was not confirmed) the
      best finished confirmation by the ranking rule on validation, the older rule (optimistic when k > 1).
    `confirms` are one method's confirmation trials, any status; the row may be a diverged or failed one (its
    `status` says so), never a running one. Several trials for one rank: finished first, then the smaller id."""
    pool = confirms[confirms["status"].isin(RESULT_STATUSES)] if "status" in confirms else confirms.iloc[0:0]

    def first(rows: pd.DataFrame) -> pd.Series | None:
        if rows.empty:
            return None
        order = rows.assign(_unfinished=rows["status"] != "finished", _id=rows["trial_id"].astype(str))
        return rows.loc[order.sort_values(["_unfinished", "_id"]).index[0]]

    ranks = confirm_ranks(confirms)
    if ranks.notna().any():
        return first(pool[confirm_ranks(pool) == 1]), "confirm_rank"
    if not search.empty and "confirms" in pool and "status" in search:
        top = rank_trials(search[search["status"].isin(["finished", "pruned"])], metric, mode)
        if not top.empty:
            row = first(pool[pool["confirms"] == top["trial_id"].iloc[0]])
            if row is not None:
                return row, "search_rank"
    done = pool[pool["status"] == "finished"] if not pool.empty else pool
    if not done.empty:
        return ranked(done, metric, mode).iloc[0], "best_of_k"
    return first(pool), "best_of_k"


def seed_values(row: pd.Series, key: str) -> list[float]:
    """Per-seed values at each seed's best validation epoch, e.g. key='test_acc' reads `best_test_acc/seed_<s>`.
    `<split>_gap` is derived per seed (trainables.metrics.modality_gap) for trials recorded before the trainable
    reported it."""
    prefix = f"best_{key}/seed_"
    cols = sorted((c for c in row.index if isinstance(c, str) and c.startswith(prefix) and pd.notna(row[c])),
                  key=lambda c: int(c[len(prefix):]) if c[len(prefix):].isdigit() else c)
    if not cols and key.endswith("_gap"):
        split = key[:-len("_gap")]
        per_mod = [v for m in _row_modalities(row, split) if (v := seed_values(row, f"{split}_acc_{m}"))]
        if len(per_mod) < 2 or len({len(v) for v in per_mod}) != 1:
            return []
        from trainables.metrics import modality_gap  # torch: imported only for such trials

        return [modality_gap(vals) for vals in zip(*per_mod)]
    values = [float(row[c]) for c in cols]
    if not values and row.get("num_seeds") == 1 and pd.notna(row.get(f"best_{key}")):
        values = [float(row[f"best_{key}"])]  # one seed: the trial's own value is the seed's
    return values


def seed_stats(row: pd.Series, key: str) -> SeedSummary:
    """n, mean, std and 95 % CI of `key` over the trial's seeds. Trials recorded before per-seed values
    existed fall back to their mean and std, without an interval."""
    values = seed_values(row, key)
    if values:
        return seed_summary(values).clipped(metric_bounds(key))
    mean = row.get(f"best_{key}")
    if (mean is None or pd.isna(mean)) and key.endswith("_gap"):
        split = key[:-len("_gap")]
        accs = [row[f"best_{split}_acc_{m}"] for m in _row_modalities(row, split) if pd.notna(row[f"best_{split}_acc_{m}"])]
        from trainables.metrics import modality_gap

        mean = modality_gap(accs)
        row = row.drop(labels=[f"best_{key}_std"], errors="ignore")  # the gap's spread was never recorded
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


def baseline_for(done: pd.DataFrame, loss_setting: Any = None) -> pd.Series | None:
    """The joint-training baseline among finished trials: a `baseline` trial (same loss setting preferred);
    in a study without baseline trials, a `none` trial (a comparison's joint-training variant) of the same
    loss setting."""
    role = roles(done)
    pool = done[role == "baseline"]
    if pool.empty and "balancer" in done:
        pool = done[(done["balancer"] == "none") & (role != "confirm")]
    if pool.empty:
        return None
    same = pool[pool["loss_setting"] == loss_setting] if "loss_setting" in pool else pool
    pick = same if not same.empty else pool
    return pick.loc[pick["num_seeds"].idxmax()] if "num_seeds" in pick else pick.iloc[0]


def quantities(trials: pd.DataFrame) -> dict[str, str]:
    """Table column -> per-seed key: accuracy, per-modality accuracies, the modality gap, and (when the
    trials logged them) the Shapley contribution per modality and the imbalance degree."""
    mods = modalities_of(trials)
    out = {"acc": "test_acc", **{f"acc_{m}": f"test_acc_{m}" for m in mods}}
    if len(mods) >= 2:
        out["gap"] = "test_gap"
    out.update({f"shapley_{m}": f"test_shapley_{m}" for m in mods if f"best_test_shapley_{m}" in trials})
    if "best_test_imbalance" in trials:
        out["imbalance"] = "test_imbalance"
    return out


def comparison_table(trials: pd.DataFrame, top: int = 12, order: list[str] | None = None,
                     metric: str | list[str] = "val_acc", mode: str | list[str] = "max") -> pd.DataFrame:
    """One row per finished trial: the baseline first, then confirmation trials, then the study's own trials
    (a search: its `top` best by the study's metric at the selected epoch; a grid: every point in the config's
    order). Every quantity is a test metric at each seed's best validation epoch: n, mean, sample std and
    95 % t-interval over the trial's seeds. `delta*` is the accuracy difference to joint training of the same
    loss setting (Welch), p Holm-corrected over `holm_family` (every trial compared with that baseline, shown or not)."""
    done = finished(trials).copy()
    if done.empty:
        return pd.DataFrame()
    col = rank_column(done, metric if isinstance(metric, str) else metric[0])
    done["_role"] = roles(done)
    head = done[done["_role"].isin(["baseline", "confirm"])]
    own = done[~done["_role"].isin(["baseline", "confirm"])]
    if own["sweep_param"].isna().all():  # a search: the best configurations by the study's metric
        own = ranked(own, metric, mode).head(top)
    else:  # a grid (sensitivity, comparison): every point, in the config's order within each loss setting
        rank = {name: i for i, name in enumerate(order or [])}
        own = own.assign(_rank=own["sweep_value"].map(lambda v: rank.get(v, len(rank))),
                         _num=pd.to_numeric(own["sweep_value"], errors="coerce"),
                         _txt=own["sweep_value"].astype(str))
        own = own.sort_values(["loss_setting", "sweep_param", "_rank", "_num", "_txt"])
    rows = pd.concat([head, own]) if not head.empty else own
    # Within each loss setting: its baseline, its confirmation trials, then the rest.
    settings = {s: i for i, s in enumerate(sorted(rows["loss_setting"].dropna().unique()))}  # multimodal first
    rows = rows.assign(_setting=rows["loss_setting"].map(settings),
                       _order=rows["_role"].map({"baseline": 0, "confirm": 1}).fillna(2), _pos=range(len(rows)))
    if not head.empty:  # confirmation trials best first
        best_first = {i: pos for pos, i in enumerate(ranked(rows[rows["_role"] == "confirm"], metric, mode).index)}
        rows["_pos"] = rows["_pos"].where(rows["_role"] != "confirm", rows.index.map(best_first))
    rows = rows.sort_values(["_setting", "_order", "_pos"], kind="stable")
    qty = quantities(done)
    records = []
    for _, row in rows.iterrows():
        rec: dict[str, Any] = {"trial_id": row.get("trial_id"), "method": trial_label(row), "role": row["_role"],
                               "loss_setting": row.get("loss_setting"), "rank_metric": col,
                               "rank_value": row.get(col)}
        for name, key in qty.items():
            s = seed_stats(row, key)
            rec.update({name: s.mean, f"{name}_std": s.std, f"{name}_ci_low": s.ci_low, f"{name}_ci_high": s.ci_high})
            if name == "acc":
                rec["n"] = s.n
        records.append(rec)
    out = pd.DataFrame(records)
    out.attrs["margin"] = study_margin(trials.attrs.get("config") or {})
    _add_deltas(out, done, out.attrs["margin"], trials)
    return out


def holm_family(done: pd.DataFrame, loss_setting: Any, key: str = "test_acc", margin: float = MARGIN,
                ended: pd.DataFrame | None = None) -> tuple[pd.Series | None, dict[Any, Difference]]:
    """The one Holm family, shared by the table and the summary: every finished trial of `loss_setting`
    compared with that setting's joint-training baseline -- the confirmations and the search's own trials,
    shown in the table or not -- Welch tests Holm-corrected together (only tested comparisons, two seeds or
    more a side, count). A row therefore shows one p-value wherever it appears, and a table cut to its top
    rows corrects for every comparison the study made, not only those shown. A planned comparison that ended
    without a result (a confirmation, comparison or grid point of `ended` that diverged or failed) counts as a
    failed test, p = 1 (stats.compare_to_baseline); a search trial that diverged is a proposal, like one ASHA
    stopped, not a comparison. Returns the baseline and {trial_id: Difference} (empty without a baseline)."""
    base = baseline_for(done, loss_setting)
    if base is None:
        return None, {}

    def of_setting(frame: pd.DataFrame) -> pd.Series:
        setting = frame["loss_setting"] if "loss_setting" in frame else pd.Series(None, index=frame.index, dtype=object)
        return setting.isna() if pd.isna(loss_setting) else setting == loss_setting

    members = done[of_setting(done) & (roles(done) != "baseline") & (done["trial_id"] != base.get("trial_id"))]
    lost = done.iloc[0:0] if ended is None or "status" not in ended else ended[
        of_setting(ended) & ended["status"].isin(["diverged", "failed"])
        & roles(ended).isin(["confirm", "compare", "sensitivity"])]
    diffs = compare_to_baseline([*(seed_values(r, key) for _, r in members.iterrows()), *([[]] * len(lost))],
                                seed_values(base, key), margin=margin,
                                failed=[None] * len(members) + list(lost["status"]))
    return base, dict(zip([*members["trial_id"], *lost["trial_id"]], diffs))


def _add_deltas(out: pd.DataFrame, done: pd.DataFrame, margin: float, ended: pd.DataFrame | None = None) -> None:
    for c in ("delta", "delta_ci_low", "delta_ci_high", "delta_p", "within_noise", "verdict"):
        out[c] = None
    out["is_baseline"] = False
    for setting in out["loss_setting"].drop_duplicates():
        base, family = holm_family(done, setting, margin=margin, ended=ended)
        if base is None:
            continue
        out.loc[out["trial_id"] == base.get("trial_id"), "is_baseline"] = True
        idx = [i for i in out.index if out.at[i, "loss_setting"] == setting and out.at[i, "trial_id"] in family]
        diffs = [family[out.at[i, "trial_id"]] for i in idx]
        base_acc = seed_stats(base, "test_acc").mean
        for i, d in zip(idx, diffs):
            out.at[i, "delta"] = d.diff if pd.notna(d.diff) else out.at[i, "acc"] - base_acc  # untested: means only
            if d.p is not None:
                out.loc[i, ["delta_ci_low", "delta_ci_high", "delta_p"]] = [d.ci_low, d.ci_high, d.p_adjusted]
                out.at[i, "within_noise"] = d.within_noise
                out.at[i, "verdict"] = d.verdict


HEADERS = {"acc": "Accuracy", "gap": "Gap (max − min)", "imbalance": "Imbalance"}


def _header(name: str) -> str:
    if name in HEADERS:
        return HEADERS[name]
    kind, mod = name.split("_", 1)
    return f"Acc {mod}" if kind == "acc" else f"Shapley {mod}"


def to_markdown(table: pd.DataFrame) -> str:
    """Percent, `mean ± std [95 % CI]` over seeds (one seed: the value alone, never "± 0.00"); the best
    accuracies and the smallest gap within each loss setting in bold; Δ vs joint with its CI, the Holm p and
    whether it is within noise; the TOST verdict at the study's margin (comparison_table's attrs["margin"])."""
    if table.empty:
        return "_no finished trial_\n"
    qty = [c for c in table.columns if c in HEADERS or c.startswith(("acc_", "shapley_"))
           if not c.endswith(("_std", "_ci_low", "_ci_high"))]
    show_role = table["role"].nunique() > 1
    headers = ["Method", *(["Role"] if show_role else []), "Loss", "n", *(_header(c) for c in qty),
               "Δ vs joint", "p (Holm)", f"Verdict (±{100 * table.attrs.get('margin', MARGIN):g} pt)"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    # Bold the best within each loss setting; once confirmation trials exist, among them and the baseline
    # only (a one-seed search trial's best epoch is the optimistic number confirmation replaces).
    eligible = table["role"] != "search" if (table["role"] == "confirm").any() else pd.Series(True, index=table.index)
    groups = table[eligible].groupby("loss_setting", dropna=False)
    best = {c: groups[c].transform("min" if c == "gap" else "max").reindex(table.index)
            for c in qty if c == "gap" or c.startswith("acc")}
    for i, row in table.iterrows():
        cells = [str(row["method"]), *([row["role"] or "–"] if show_role else []),
                 "MM+UM*" if row["loss_setting"] == "multimodal+unimodal" else "MM", str(int(row["n"]))]
        for c in qty:
            s = SeedSummary(int(row["n"]), row[c], _num(row[f"{c}_std"]), _num(row[f"{c}_ci_low"]), _num(row[f"{c}_ci_high"]))
            text = s.text() if pd.notna(row[c]) else "–"
            bold = c in best and row[c] == best[c][i]
            cells.append(f"**{text}**" if bold and pd.notna(row[c]) else text)
        cells += _delta_cells(row)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _delta_cells(row: pd.Series) -> list[str]:
    if row["delta"] is None or pd.isna(row["delta"]):
        return ["baseline" if row["is_baseline"] else "–", "–", "–"]
    text = f"{100 * row['delta']:+.2f}"
    if row["delta_p"] is None or pd.isna(row["delta_p"]):
        why = "one seed" if row["n"] < 2 else "per-seed values not recorded"
        return [f"{text} (no test: {why})", "–", "–"]
    noise = "within noise" if row["within_noise"] else "beyond noise"
    p = row["delta_p"]
    return [f"{text} [{100 * row['delta_ci_low']:+.2f}, {100 * row['delta_ci_high']:+.2f}] {noise}",
            "< 0.001" if p < 0.001 else f"{p:.3f}", str(row["verdict"])]


def _num(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)
