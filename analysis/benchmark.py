"""The benchmark report (`mode: benchmark`): Table I of every method's confirmed numbers against joint training,
the tests over test examples, the other confirmations (robustness), the tuning cost, and accuracy against gap.

- **Reported row.** Each method's rank-1 confirmation (the re-training of its search's best configuration on fresh
  seeds, `analysis.tables.reported_confirmation`), never the best of its k confirmations: their test scores come
  from the very networks such a choice would look at. The others are listed apart (`robustness_table`).
- **Reference.** The best of the tuned joint-training baselines (`mmstudy.joint_baseline` = 1, one per loss
  setting the methods use, tuned and confirmed like a method) by the study's metric on validation, each
  represented by its rank-1 confirmation; studies before those baselines: the untuned `none` baseline trial.
- **Tests.** Δ test accuracy vs the reference over seeds: Welch's t-interval; Welch's p and TOST's p at the
  study's `equivalence_margin`, each Holm-corrected over one family, every row compared with the reference (the
  methods and the other joint baselines; a diverged or failed confirmation counts as a failed test, p = 1).
  Over test examples, when the trials logged their predictions: a paired bootstrap interval stratified by seed
  and McNemar's exact test per seed and pooled (Holm over the same family) -- `analysis.stats`.
- **Tuning cost.** The method's search trials (start-up ones counted), epochs, and resource-hours = Σ over the
  trials' epochs of the per-epoch time the trainer measured × the trial's seeds (trained one after another) ×
  the trial's resources (GPUs when the study asked for any, else CPU cores).
Every quantity is a test metric at each seed's best validation epoch: n, mean, sample std, 95 % t-interval.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from analysis.load import load_histories, load_predictions
from analysis.stats import (FAILED, ExampleDifference, SeedSummary, compare_to_baseline, example_difference, holm,
                            welch)
from analysis.summary import StudySummary
from analysis.tables import (RESULT_STATUSES, baseline_for, confirm_ranks, finished, quantities, ranked,
                             reported_confirmation, roles, seed_stats, seed_values, study_margin)

TABLE_FILES = ("benchmark.csv", "benchmark.md", "robustness.csv", "mcnemar.csv", "tuning_cost.csv",
               "accuracy_vs_gap.png")
OLD_REFERENCE = "joint training (baseline)"  # the untuned baseline trial of studies before tuned joint baselines
NUMERIC = ("delta", "delta_ci_low", "delta_ci_high", "p", "p_holm", "p_equivalence", "p_equivalence_holm",
           "boot_diff", "boot_ci_low", "boot_ci_high", "p_mcnemar", "p_mcnemar_holm")
RULES = {"confirm_rank": "rank 1", "search_rank": "rank 1 (from the search's ranking)",
         "best_of_k": "best of the confirmations on validation (older study)"}


def benchmark_quantities(trials: pd.DataFrame) -> dict[str, str]:
    """Table column -> per-seed key: accuracy, macro-F1, then tables.quantities' per-modality columns."""
    qty = quantities(trials)
    return {"acc": qty.pop("acc"), "f1": "test_f1", **qty}


def method_order(trials: pd.DataFrame) -> list[str]:
    """The config's method labels in their order, then any other label the trials carry (the tuned joint
    baselines, one per loss setting, whether `none` was listed or not), sorted."""
    config = trials.attrs.get("config") or {}
    from study.methods import Method, label_of, parse_item

    listed = [Method(label_of(name, fixed), name, fixed) for name, fixed in map(parse_item, config.get("methods") or [])]
    labels = [m.label for m in listed if not m.joint_baseline]
    seen = [m for m in trials.get("method", pd.Series(dtype=object)).dropna().unique() if m not in labels]
    return labels + sorted(seen)


def joint_labels(trials: pd.DataFrame) -> list[str]:
    """Labels of the tuned joint-training baselines (`mmstudy.joint_baseline` = 1), in method order."""
    if "joint_baseline" not in trials or "method" not in trials:
        return []
    flagged = set(trials.loc[trials["joint_baseline"].fillna(False).astype(bool), "method"].dropna())
    return [m for m in method_order(trials) if m in flagged]


def reported_rows(trials: pd.DataFrame, metric: str | list[str], mode: str | list[str]
                  ) -> dict[str, tuple[pd.Series | None, str]]:
    """Each label's reported confirmation and the rule that chose it (analysis.tables.reported_confirmation,
    among that label's trials only)."""
    out: dict[str, tuple[pd.Series | None, str]] = {}
    if "method" not in trials:
        return out
    for label in method_order(trials):
        mine = trials[trials["method"] == label]
        out[label] = reported_confirmation(mine[roles(mine) == "confirm"], mine[roles(mine) == "search"], metric, mode)
    return out


@dataclass
class Reference:
    label: str
    row: pd.Series
    why: str  # one sentence for the report


def choose_reference(trials: pd.DataFrame, reported: dict[str, tuple[pd.Series | None, str]],
                     metric: str | list[str], mode: str | list[str]) -> Reference | None:
    """The best tuned joint-training baseline by the study's ranking rule on validation (each by its reported
    confirmation); in a study without finished tuned baselines, its untuned `none` baseline trial."""
    joints = joint_labels(trials)
    done = [reported[j][0] for j in joints if reported[j][0] is not None and reported[j][0]["status"] == "finished"]
    if done:
        best = ranked(pd.DataFrame(done), metric, mode).iloc[0]
        names = ", ".join(f"`{j}`" for j in joints)
        why = (f"the best of the {len(joints)} tuned joint-training baselines ({names}) by the study's metric on "
               "validation" if len(joints) > 1 else "the study's one tuned joint-training baseline")
        return Reference(best["method"], best, why)
    pool = finished(trials)
    pool = pool[roles(pool) == "baseline"]
    base = baseline_for(pool) if not pool.empty else None
    if base is None:
        return None
    why = ("untuned joint training (`none` at the study's trial settings, multimodal loss): the study has no "
           "tuned joint-training baselines" + (" that finished" if joints else ""))
    return Reference(OLD_REFERENCE, base, why)


def adds_unimodal_supervision(trials: pd.DataFrame, label: str | None, row: pd.Series | None) -> bool | None:
    """Whether the method trains each modality with its own supervised loss: the balancer's declared
    `adds_unimodal_supervision`, or `loss_setting: multimodal+unimodal` (every method then does). Only the
    built-in balancers are looked up (a name from the trials is never imported)."""
    from trainables.balancers.registry import balancer_class, balancer_names

    if row is None:
        mine = trials[trials["method"] == label] if label is not None and "method" in trials else trials.iloc[0:0]
        if mine.empty:  # nothing ran: the label says the balancer (study.methods.label_of: "name (fixed=...)")
            name = (label or "").split(" ")[0]
            if "loss_setting=multimodal+unimodal" in (label or ""):
                return True
            return bool(balancer_class(name).adds_unimodal_supervision) if name in balancer_names() else None
        row = mine.iloc[0]
    if row.get("loss_setting") == "multimodal+unimodal":
        return True
    name = row.get("balancer")
    return bool(balancer_class(name).adds_unimodal_supervision) if name in balancer_names() else None


def startup_of(trials: pd.DataFrame, search_id: Any) -> bool | None:
    """Whether the search trial a confirmation re-trains was a random start-up trial (None: not recorded)."""
    if search_id is None or "startup" not in trials:
        return None
    match = trials.loc[trials["trial_id"] == search_id, "startup"]
    return None if match.empty or match.iloc[0] is None or pd.isna(match.iloc[0]) else bool(match.iloc[0])


def paired_predictions(a: pd.DataFrame, b: pd.DataFrame) -> tuple[dict[Any, tuple[Any, Any]], list[str]]:
    """Per seed both trials predicted, (a correct?, b correct?) on the examples both predicted, joined on (seed,
    example). A seed whose labels disagree is not the same test set: left out and named in the notes."""
    merged = a.merge(b, on=["seed", "example"], suffixes=("_a", "_b"))
    pairs: dict[Any, tuple[Any, Any]] = {}
    notes: list[str] = []
    for seed, g in merged.groupby("seed", sort=True):
        if (g["label_a"] != g["label_b"]).any():
            notes.append(f"seed {seed}: labels differ, not the same test set (left out)")
            continue
        sizes = (int((a["seed"] == seed).sum()), int((b["seed"] == seed).sum()))
        if len(g) < max(sizes):
            notes.append(f"seed {seed}: {len(g)} of {max(sizes)} examples predicted by both")
        pairs[seed] = ((g["prediction_a"] == g["label_a"]).to_numpy(), (g["prediction_b"] == g["label_b"]).to_numpy())
    return pairs, notes


def _ended_confirmations(trials: pd.DataFrame, label: str) -> int:
    if "method" not in trials or "status" not in trials:
        return 0
    return int(((trials["method"] == label) & (roles(trials) == "confirm") & trials["status"].isin(RESULT_STATUSES)).sum())


@dataclass
class Entry:
    """One row of Table I before it becomes a record."""
    label: str
    role: str  # baseline (the reference) | joint (another joint-training baseline) | confirm (a method)
    row: pd.Series | None
    rule: str = ""
    examples: ExampleDifference | None = None
    notes: list[str] = field(default_factory=list)
    lost: str | None = None  # 'failed' when the method has no confirmation because every search trial failed

    @property
    def status(self) -> str | None:
        return self.lost if self.row is None else self.row.get("status")


def _entries(trials: pd.DataFrame, metric: str | list[str], mode: str | list[str]
             ) -> tuple[list[Entry], Reference | None, dict[str, tuple[pd.Series | None, str]]]:
    reported = reported_rows(trials, metric, mode)
    ref = choose_reference(trials, reported, metric, mode)
    joints = joint_labels(trials)
    entries = [Entry(ref.label, "baseline", ref.row, reported.get(ref.label, (None, ""))[1])] if ref else []
    done = finished(trials)
    untuned = done[roles(done) == "baseline"]
    if ref is not None and ref.label != OLD_REFERENCE and not untuned.empty:  # an untuned baseline next to tuned ones
        entries.append(Entry(OLD_REFERENCE, "joint", baseline_for(untuned)))
    entries += [Entry(j, "joint", *reported[j]) for j in joints if ref is None or j != ref.label]
    entries += [Entry(m, "confirm", *reported[m], lost=search_lost(trials, m)) for m in method_order(trials)
                if m not in joints]
    return entries, ref, reported


def search_lost(trials: pd.DataFrame, label: str) -> str | None:
    """'failed' when every search trial of the method ended without a result (diverged or failed), so nothing
    could be confirmed: a row that counts in the Holm family as a failed test, never a method left out."""
    if "method" not in trials or "status" not in trials:
        return None
    search = trials[(trials["method"] == label) & (roles(trials) == "search")]
    return "failed" if not search.empty and search["status"].isin(["diverged", "failed"]).all() else None


def _example_tests(entries: list[Entry], predictions: dict[str, pd.DataFrame]) -> None:
    """Each finished row's paired bootstrap and McNemar against the reference, where both logged predictions."""
    ref = entries[0] if entries and entries[0].role == "baseline" else None
    ref_pred = predictions.get(ref.row.get("trial_id")) if ref is not None else None
    if ref_pred is None:
        return
    for e in entries[1:]:
        pred = predictions.get(e.row.get("trial_id")) if e.row is not None and e.status == "finished" else None
        if pred is None:
            continue
        pairs, e.notes = paired_predictions(pred, ref_pred)
        if pairs:
            e.examples = example_difference(pairs)


def benchmark_table(trials: pd.DataFrame, metric: str | list[str] = "val_acc", mode: str | list[str] = "max",
                    predictions: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """Table I: the reference first, the other joint-training baselines, then one row per method (its rank-1
    confirmation), with Δ vs the reference over seeds and, given `predictions` (trial id -> the trial's
    `seed,example,label,prediction`; read from MLflow when None and the trials came from a study), over test
    examples. attrs: `reference_why`, `prediction_problems`."""
    margin = study_margin(trials.attrs.get("config") or {})
    qty = benchmark_quantities(trials)
    entries, ref, _ = _entries(trials, metric, mode)
    problems: dict[str, str] = {}
    if predictions is None and "tracking_uri" in trials.attrs and entries:
        wanted = [e.row.get("trial_id") for e in entries if e.row is not None and e.status == "finished"]
        predictions, problems = load_predictions(trials[trials["trial_id"].isin(wanted)])
    _example_tests(entries, predictions or {})

    records = []
    for e in entries:
        row, ended = e.row, e.row is not None and e.status == "finished"
        confirms = None if row is None else row.get("confirms")
        rec: dict[str, Any] = {
            "method": e.label, "role": e.role, "trial_id": None if row is None else row.get("trial_id"),
            "status": e.status, "loss_setting": None if row is None else row.get("loss_setting"),
            "unimodal_supervision": adds_unimodal_supervision(trials, e.label if e.label != OLD_REFERENCE else None, row),
            "confirms": confirms, "confirm_rank": None if row is None else _int(pd.to_numeric(row.get("confirm_rank"),
                                                                                        errors="coerce")),
            "rule": e.rule, "confirmations": _ended_confirmations(trials, e.label),
            "from_startup": startup_of(trials, confirms)}
        for name, key in qty.items():
            s = seed_stats(row, key) if ended else SeedSummary(0, math.nan, None, None, None)
            rec.update({name: s.mean, f"{name}_std": s.std, f"{name}_ci_low": s.ci_low, f"{name}_ci_high": s.ci_high})
            if name == "acc":
                rec["n"] = s.n
        ex = e.examples
        rec.update({"boot_diff": ex.diff if ex else None, "boot_ci_low": ex.ci_low if ex else None,
                    "boot_ci_high": ex.ci_high if ex else None, "boot_seeds": len(ex.seeds) if ex else None,
                    "boot_examples": ex.n_examples if ex else None,
                    "mcnemar_b": sum(s.b for s in ex.per_seed) if ex else None,
                    "mcnemar_c": sum(s.c for s in ex.per_seed) if ex else None,
                    "p_mcnemar": ex.p_mcnemar if ex else None, "prediction_notes": "; ".join(e.notes) or None})
        records.append(rec)

    for c in ("delta", "delta_ci_low", "delta_ci_high", "p", "p_holm", "p_equivalence", "p_equivalence_holm",
              "within_noise", "verdict", "p_mcnemar_holm"):
        for rec in records:
            rec[c] = None
    if ref is not None:
        idx = [i for i, e in enumerate(entries) if e.role != "baseline" and (e.row is not None or e.status in FAILED)]
        diffs = compare_to_baseline(
            [seed_values(entries[i].row, "test_acc") if entries[i].status == "finished" else [] for i in idx],
            seed_values(ref.row, "test_acc"), margin=margin,
            failed=[entries[i].status if entries[i].status in FAILED else None for i in idx])
        for i, d in zip(idx, diffs):
            records[i].update({"delta": None if math.isnan(d.diff) else d.diff, "delta_ci_low": d.ci_low,
                               "delta_ci_high": d.ci_high, "p": d.p, "p_holm": d.p_adjusted,
                               "p_equivalence": d.p_equivalence, "p_equivalence_holm": d.p_equivalence_adjusted,
                               "within_noise": d.within_noise,
                               "verdict": d.verdict if d.p is not None else "not testable"})
        # McNemar: one Holm family over the same rows (a failed confirmation counts, p = 1)
        mc = [records[i]["p_mcnemar"] if entries[i].status == "finished" else 1.0 for i in idx]
        if any(records[i]["p_mcnemar"] is not None for i in idx):
            for i, p in zip(idx, holm(mc)):
                records[i]["p_mcnemar_holm"] = p
    table = pd.DataFrame(records)
    for c in NUMERIC:
        table[c] = pd.to_numeric(table[c], errors="coerce") if c in table else float("nan")
    table.attrs.update(reference_why=ref.why if ref else None, prediction_problems=problems)
    return table


def robustness_table(trials: pd.DataFrame, metric: str | list[str] = "val_acc", mode: str | list[str] = "max"
                     ) -> pd.DataFrame:
    """Every method's other ended confirmations (ranks 2..k, and any the rule did not report), never chosen
    among: each one's test accuracy and its Δ vs the reference with Welch's 95 % interval, uncorrected and
    descriptive (they are not in Table I's Holm family)."""
    entries, ref, reported = _entries(trials, metric, mode)
    base = seed_values(ref.row, "test_acc") if ref is not None else []
    rows = []
    for label, (picked, _) in reported.items():
        mine = trials[(trials["method"] == label) & (roles(trials) == "confirm")]
        mine = mine[mine["status"].isin(RESULT_STATUSES)]
        others = mine[mine["trial_id"] != (None if picked is None else picked.get("trial_id"))]
        others = others.assign(_rank=confirm_ranks(others)).sort_values(["_rank", "trial_id"], na_position="last")
        for _, r in others.iterrows():
            ok = r["status"] == "finished"
            s = seed_stats(r, "test_acc") if ok else SeedSummary(0, math.nan, None, None, None)
            d = welch(seed_values(r, "test_acc"), base, margin=study_margin(trials.attrs.get("config") or {})) \
                if ok and base else None
            rows.append({"method": label, "trial_id": r["trial_id"], "confirm_rank": _int(r["_rank"]),
                         "confirms": r.get("confirms"), "status": r["status"], "n": s.n, "acc": s.mean,
                         "acc_std": s.std, "acc_ci_low": s.ci_low, "acc_ci_high": s.ci_high,
                         "delta": None if d is None else d.diff, "delta_ci_low": None if d is None else d.ci_low,
                         "delta_ci_high": None if d is None else d.ci_high})
    return pd.DataFrame(rows, columns=["method", "trial_id", "confirm_rank", "confirms", "status", "n", "acc",
                                       "acc_std", "acc_ci_low", "acc_ci_high", "delta", "delta_ci_low",
                                       "delta_ci_high"])


def mcnemar_table(trials: pd.DataFrame, metric: str | list[str] = "val_acc", mode: str | list[str] = "max",
                  predictions: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """McNemar per seed for every row with predictions: b = examples only the row's network gets right, c =
    only the reference's; exact p, uncorrected (Table I carries the pooled, Holm-corrected one)."""
    entries, ref, _ = _entries(trials, metric, mode)
    if predictions is None and "tracking_uri" in trials.attrs and entries:
        wanted = [e.row.get("trial_id") for e in entries if e.row is not None and e.status == "finished"]
        predictions, _ = load_predictions(trials[trials["trial_id"].isin(wanted)])
    _example_tests(entries, predictions or {})
    rows = [{"method": e.label, "seed": s.seed, "n": s.n, "only_method_right": s.b, "only_reference_right": s.c,
             "p_exact": s.p} for e in entries if e.examples for s in e.examples.per_seed]
    return pd.DataFrame(rows, columns=["method", "seed", "n", "only_method_right", "only_reference_right", "p_exact"])


def tuning_cost(trials: pd.DataFrame) -> pd.DataFrame:
    """Per method and role (search, confirm): trials, trial-epochs, seed-epochs and resource-hours; the search's
    random start-up trials (None where the study did not record them)."""
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
    joints = set(joint_labels(trials))
    rows = []
    for label in method_order(trials):
        rec: dict[str, Any] = {"method": label, "joint_baseline": label in joints, "unit": unit}
        for role in ("search", "confirm"):
            mine = ran[(ran["method"] == label) & (roles(ran) == role)]
            epochs = mine["epochs_run"].fillna(0).astype(int)
            seeds = mine["num_seeds"].fillna(1).astype(int)
            secs = [seconds.get(t, math.nan) * n for t, n in zip(mine["trial_id"], seeds)]
            rec.update({f"{role}_trials": len(mine), f"{role}_trial_epochs": int(epochs.sum()),
                        f"{role}_seed_epochs": int((epochs * seeds).sum()),
                        f"{role}_hours": per_trial * sum(s for s in secs if s == s) / 3600 if secs else 0.0,
                        f"{role}_pruned": int((mine["status"] == "pruned").sum())})
            if role == "search":
                flags = mine["startup"] if "startup" in mine else pd.Series(dtype=object)
                known = flags.dropna()
                rec["search_startup"] = (int(known.astype(bool).sum()) if len(known) == len(mine) else None)
        rows.append(rec)
    return pd.DataFrame(rows)


def answer(table: pd.DataFrame, margin: float) -> str:
    """The report's first paragraph: which methods beat the reference beyond noise, or that none do."""
    if table.empty or table[table["role"] == "baseline"].empty:
        return "**Result.** No joint-training baseline finished, so no method can be compared with joint training."
    rows = table[table["role"] == "confirm"]
    tested = rows[rows["p_holm"].notna()]
    if tested.empty:
        return ("**Result.** No method has a confirmed result with at least 2 seeds yet, so none can be compared "
                "with joint training.")
    ok = tested[~tested["verdict"].isin(FAILED)]
    better = ok[(ok["within_noise"] == False) & (ok["delta"] > 0)]  # noqa: E712 -- object column
    worse = ok[(ok["within_noise"] == False) & (ok["delta"] < 0)]  # noqa: E712
    equivalent = ok[ok["verdict"] == "equivalent"]
    failed = tested[tested["verdict"].isin(FAILED)]
    base = table[table["role"] == "baseline"].iloc[0]
    base_acc = SeedSummary(int(base["n"]), base["acc"], _num(base["acc_std"]), _num(base["acc_ci_low"]),
                           _num(base["acc_ci_high"]))
    base_um = base.get("unimodal_supervision") is True

    def listed(frame: pd.DataFrame) -> str:
        def one(r: pd.Series) -> str:
            um = ("; adds unimodal supervision, the reference does not" if r.get("unimodal_supervision") is True
                  and not base_um else "")
            return (f"`{r['method']}` ({100 * r['delta']:+.2f} points [{100 * r['delta_ci_low']:+.2f}, "
                    f"{100 * r['delta_ci_high']:+.2f}], p (Holm) {_p(r['p_holm'])}{um})")
        return ", ".join(one(r) for _, r in frame.iterrows())

    lead = (f"**Result.** {len(better)} of the {_count(len(tested), 'method')} beat joint training beyond noise: "
            f"{listed(better)}." if not better.empty else
            f"**Result.** None of the {_count(len(tested), 'method')} beats joint training beyond noise.")
    reference = ("Joint training (`none`, the same trial settings)" if base["method"] == OLD_REFERENCE else
                 f"Joint training, the reference `{base['method']}` ({table.attrs.get('reference_why') or 'best by validation'})")
    parts = [lead, f"{reference}: test accuracy {base_acc.text()} % (n = {base_acc.n})."]
    if not worse.empty:
        parts.append(f"Worse beyond noise: {listed(worse)}.")
    if not equivalent.empty:
        parts.append(f"Equivalent to joint training within {_points(margin)} (TOST, Holm): "
                     + ", ".join(f"`{m}`" for m in equivalent["method"]) + ".")
    if not failed.empty:
        parts.append("Diverged or failed on confirmation, counted as failed tests: "
                     + ", ".join(f"`{r['method']}` ({r['verdict']})" for _, r in failed.iterrows()) + ".")
    family = int(table["p_holm"].notna().sum())
    parts.append(f"Each method was tuned with the same budget and is reported by its rank-1 confirmation on fresh "
                 f"seeds; Δ is test accuracy against the reference, Welch's test and TOST each Holm-corrected over "
                 f"the {_count(family, 'comparison')} with it.")
    untested = rows[rows["p_holm"].isna()]
    if not untested.empty:
        parts.append("Not testable (no confirmed result with 2+ seeds): "
                     + ", ".join(f"`{m}`" for m in untested["method"]) + ".")
    return " ".join(parts)


def benchmark_summary(trials: pd.DataFrame, table: pd.DataFrame | None = None) -> StudySummary:
    """The answer paragraph and the parent run's metrics (runner.summarize for a benchmark)."""
    from analysis.report import study_metric

    config = trials.attrs.get("config") or {}
    metrics, modes = study_metric(config)
    table = benchmark_table(trials, metrics, modes) if table is None else table
    out: dict[str, float] = {}
    if table.empty:
        return StudySummary(answer(table, study_margin(config)), out)
    confirm = table[(table["role"] == "confirm")]
    ok = confirm[~confirm["verdict"].isin(FAILED)]
    out["benchmark_methods_better"] = float(((ok["within_noise"] == False) & (ok["delta"] > 0)).sum())  # noqa: E712
    base = table[table["role"] == "baseline"]
    if not base.empty and pd.notna(base.iloc[0]["acc"]):
        out["baseline_test_acc"] = float(base.iloc[0]["acc"])
    return StudySummary(answer(table, study_margin(config)), out,
                        baseline_trial_id=None if base.empty else base.iloc[0]["trial_id"],
                        confirmed=bool((confirm["n"] > 0).any()))


# ----------------------------------------------------------------------------- markdown and figure


HEADERS = {"acc": "Accuracy", "f1": "Macro-F1", "gap": "Gap (max − min)", "imbalance": "Imbalance"}


def _header(name: str) -> str:
    if name in HEADERS:
        return HEADERS[name]
    kind, mod = name.split("_", 1)
    return f"Acc {mod}" if kind == "acc" else f"Shapley {mod}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _points(margin: float) -> str:
    return f"±{100 * margin:g} point" + ("" if 100 * margin == 1 else "s")


def _num(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _int(value) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def _p(p) -> str:
    return "–" if p is None or pd.isna(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def _text(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) or value == "" else str(value)


def _yes(value) -> str:
    return "–" if value is None or pd.isna(value) else ("yes" if value else "no")


def _interval(low, high) -> str:
    return f"[{100 * low:+.2f}, {100 * high:+.2f}]"


def table_markdown(table: pd.DataFrame, margin: float) -> str:
    """Percent, mean ± std [95 % CI] over seeds; Δ vs the reference with Welch's interval, the paired bootstrap
    interval over test examples, McNemar pooled (Holm), Welch's p (Holm), TOST's p (Holm) and the verdict."""
    if table.empty:
        return "_no joint-training baseline and no method has a result_\n"
    qty = [c for c in table.columns if c in HEADERS or c.startswith(("acc_", "shapley_"))
           if not c.endswith(("_std", "_ci_low", "_ci_high"))]
    headers = ["Method", "Unimodal sup.", "n", *(_header(c) for c in qty), "Δ acc [95 % t-CI, seeds]",
               "Δ [95 % bootstrap, test examples]", "McNemar p (pooled, Holm)", "p (Holm)", "TOST p (Holm)",
               f"Verdict (±{100 * margin:g} pt)"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for _, row in table.iterrows():
        name = f"**{row['method']}** (reference)" if row["role"] == "baseline" else str(row["method"])
        name += " (joint)" if row["role"] == "joint" else ""
        cells = [name, _yes(row["unimodal_supervision"]), str(int(row["n"]))]
        for c in qty:
            s = SeedSummary(int(row["n"]), row[c], _num(row[f"{c}_std"]), _num(row[f"{c}_ci_low"]),
                            _num(row[f"{c}_ci_high"]))
            cells.append(s.text() if pd.notna(row[c]) else "–")
        boot = (f"{100 * row['boot_diff']:+.2f} {_interval(row['boot_ci_low'], row['boot_ci_high'])}"
                if _num(row["boot_diff"]) is not None else "–")
        mcn = _p(row["p_mcnemar_holm"])
        if row["role"] == "baseline":
            cells += ["reference", "–", "–", "–", "–", "–"]
        elif row["verdict"] in FAILED:
            cells += [f"– ({row['verdict']})", "–", mcn, _p(row["p_holm"]), _p(row["p_equivalence_holm"]),
                      f"**{row['verdict']}**"]
        elif _num(row["delta"]) is None:
            cells += ["– (no confirmed result)" if row["n"] == 0 else "–", boot, mcn, "–", "–", _text(row["verdict"])]
        else:
            delta = f"{100 * row['delta']:+.2f}"
            if _num(row["delta_ci_low"]) is not None:
                delta += (f" {_interval(row['delta_ci_low'], row['delta_ci_high'])} "
                          f"{'within noise' if row['within_noise'] else 'beyond noise'}")
            cells += [delta, boot, mcn, _p(row["p_holm"]), _p(row["p_equivalence_holm"]), str(row["verdict"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def provenance_markdown(table: pd.DataFrame) -> str:
    """Which trial each row reports: the confirmation, its rank and rule, the search trial it re-trains and
    whether that was a random start-up trial."""
    lines = ["| Method | Loss setting | Confirmation trial | Status | Rank / rule | Re-trains search trial | "
             "Start-up trial? |", "|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        if _text(r["trial_id"]) == "–":
            rule = "rank 1 has not ended" if r["rule"] == "confirm_rank" else "–"
        elif r["rule"] == "best_of_k" and r["confirmations"] <= 1:
            rule = "the only confirmation"
        else:
            rule = RULES.get(r["rule"]) or ("the study's baseline trial" if r["role"] != "confirm" else "–")
        lines.append(f"| {r['method']} | {_text(r['loss_setting'])} | {_text(r['trial_id'])} | {_text(r['status'])} | "
                     f"{rule} | {_text(r['confirms'])} | {_yes(r['from_startup'])} |")
    return "\n".join(lines) + "\n"


def robustness_markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return "_no other confirmation (confirm.top_k = 1)_\n"
    lines = ["| Method | Confirmation trial | Rank | Status | n | Accuracy | Δ vs reference [Welch 95 %, uncorrected] |",
             "|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        s = SeedSummary(int(r["n"]), r["acc"], _num(r["acc_std"]), _num(r["acc_ci_low"]), _num(r["acc_ci_high"]))
        delta = "–" if _num(r["delta"]) is None else f"{100 * r['delta']:+.2f}" + (
            f" {_interval(r['delta_ci_low'], r['delta_ci_high'])}" if _num(r["delta_ci_low"]) is not None else "")
        lines.append(f"| {r['method']} | {r['trial_id']} | {_int(r['confirm_rank']) or '–'} | {r['status']} | {r['n']} | "
                     f"{s.text() if pd.notna(r['acc']) else '–'} | {delta} |")
    return "\n".join(lines) + "\n"


def mcnemar_markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return "_no per-example test predictions were logged for the reference and a method_\n"
    lines = ["| Method | Seed | Test examples | Only method right | Only reference right | Exact p (uncorrected) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['seed']} | {r['n']} | {r['only_method_right']} | {r['only_reference_right']} | "
              f"{_p(r['p_exact'])} |" for _, r in table.iterrows()]
    return "\n".join(lines) + "\n"


def cost_markdown(cost: pd.DataFrame) -> str:
    if cost.empty:
        return "_no method ran_\n"
    unit = cost["unit"].iloc[0]
    headers = ["Method", "search trials (pruned; start-up)", "trial-epochs", "seed-epochs", f"search {unit}",
               "confirm trials", f"confirm {unit}"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for _, r in cost.iterrows():
        startup = "start-up not recorded" if _num(r["search_startup"]) is None else f"{int(r['search_startup'])} start-up"
        name = f"{r['method']} (joint)" if r["joint_baseline"] else r["method"]
        lines.append(f"| {name} | {r['search_trials']} ({r['search_pruned']} pruned; {startup}) | "
                     f"{r['search_trial_epochs']} | {r['search_seed_epochs']} | {r['search_hours']:.3g} | "
                     f"{r['confirm_trials']} | {r['confirm_hours']:.3g} |")
    return "\n".join(lines) + "\n"


def accuracy_gap_figure(table: pd.DataFrame, title: str):
    """Test accuracy against modality gap per row (95 % CI error bars on both); the reference in black, the
    other joint-training baselines in grey."""
    rows = table[table["acc"].notna() & table.get("gap", pd.Series(index=table.index, dtype=float)).notna()] \
        if "gap" in table and not table.empty else table.iloc[0:0]
    if rows.empty:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    for i, (_, r) in enumerate(rows.iterrows()):
        def err(name):
            low, high = _num(r[f"{name}_ci_low"]), _num(r[f"{name}_ci_high"])
            return None if low is None else [[100 * (r[name] - low)], [100 * (high - r[name])]]

        color = {"baseline": "black", "joint": "grey"}.get(r["role"], plt.cm.tab20(i % 20))
        ax.errorbar(100 * r["gap"], 100 * r["acc"], xerr=err("gap"), yerr=err("acc"),
                    fmt="o" if r["role"] == "confirm" else "s", color=color, capsize=3, label=r["method"])
    ax.set_xlabel("modality gap: max − min unimodal test accuracy (points)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", ncol=2)
    fig.tight_layout()
    return fig


def write_benchmark(trials: pd.DataFrame, out: Path, metric: str | list[str], mode: str | list[str],
                    predictions: dict[str, pd.DataFrame] | None = None) -> dict[str, Any]:
    """Table I, the McNemar and robustness tables, the tuning cost and the figure into `out`; returns what
    report.md shows."""
    config = trials.attrs.get("config") or {}
    margin = study_margin(config)
    if predictions is None and "tracking_uri" in trials.attrs:
        entries, _, _ = _entries(trials, metric, mode)
        wanted = [e.row.get("trial_id") for e in entries if e.row is not None and e.status == "finished"]
        predictions, problems = load_predictions(trials[trials["trial_id"].isin(wanted)])
    else:
        problems = {}
    table = benchmark_table(trials, metric, mode, predictions=predictions or {})
    table.attrs["prediction_problems"] = problems
    robust = robustness_table(trials, metric, mode)
    per_seed = mcnemar_table(trials, metric, mode, predictions=predictions or {})
    cost = tuning_cost(trials)
    table.to_csv(out / "benchmark.csv", index=False)
    (out / "benchmark.md").write_text(table_markdown(table, margin))
    robust.to_csv(out / "robustness.csv", index=False)
    per_seed.to_csv(out / "mcnemar.csv", index=False)
    cost.to_csv(out / "tuning_cost.csv", index=False)
    files = ["benchmark.csv", "benchmark.md", "robustness.csv", "mcnemar.csv", "tuning_cost.csv"]
    fig = accuracy_gap_figure(table, f"{trials.attrs.get('study', '')}: confirmed accuracy vs modality gap (95 % CI)")
    if fig is not None:
        fig.savefig(out / "accuracy_vs_gap.png", dpi=130)
        plt.close(fig)
        files.append("accuracy_vs_gap.png")
    return {"table": table, "robustness": robust, "mcnemar": per_seed, "cost": cost, "files": files,
            "answer": answer(table, margin), "margin": margin}


def shared_knobs(attrs: dict[str, Any]) -> list[str] | None:
    """The parent run's `mmstudy.shared_knobs` (a JSON list of dotted keys); None when absent or not that."""
    raw = (attrs.get("parent_tags") or {}).get("mmstudy.shared_knobs")
    try:
        knobs = json.loads(raw) if raw is not None else None
    except (json.JSONDecodeError, TypeError):
        return None
    return knobs if isinstance(knobs, list) and all(isinstance(k, str) for k in knobs) else None


def _tag_text(value: Any, limit: int = 200) -> str:
    """An untrusted tag shown in markdown: one line, no backticks, bounded length."""
    return " ".join(str(value).replace("`", "'").split())[:limit]


def coverage_text(table: pd.DataFrame, attrs: dict[str, Any], config: dict[str, Any], margin: float) -> str:
    """What each interval covers, and the binomial spread of one accuracy on the study's test set."""
    noise = (attrs.get("parent_tags") or {}).get("mmstudy.noise_sources")
    seeds = (f"what varies with the seed in this study ({_tag_text(noise)})" if noise else
             "what varies with the seed (training-seed noise; the study did not record whether the data draw varies "
             "too)")
    out = (f"**What the intervals cover.** The 95 % t-intervals and Welch's interval are over seeds: they cover {seeds}. "
           "The paired bootstrap interval resamples the test examples within each seed (stratified, percentile, "
           "fixed generator) for the trained networks: it covers test-example sampling, not training noise; "
           "McNemar tests the same pairs example by example.")
    ref = table[table["role"] == "baseline"]
    n_test = None
    if "boot_examples" in table and table["boot_examples"].notna().any():
        r = table[table["boot_examples"].notna()].iloc[0]
        n_test = int(r["boot_examples"]) // max(int(r["boot_seeds"]), 1)
    elif isinstance((config.get("trial") or {}).get("dataset"), dict):
        n_test = (config["trial"]["dataset"]).get("n_test")
    if not ref.empty and pd.notna(ref.iloc[0]["acc"]) and isinstance(n_test, int) and n_test > 0:
        p = float(ref.iloc[0]["acc"])
        se = 100 * math.sqrt(p * (1 - p) / n_test)
        out += (f" One accuracy on {n_test} test examples has a binomial standard error of about {se:.2f} points "
                f"(at the reference's {100 * p:.1f} %), next to the equivalence margin of {_points(margin)}.")
    return out


def benchmark_markdown(name: str, config: dict[str, Any], counts: dict[str, int], parts: dict[str, Any],
                       command: str, attrs: dict[str, Any], metric: str | list[str], mode: str | list[str]) -> str:
    import yaml

    margin = parts["margin"]
    table = parts["table"]
    metrics, modes = ([metric], [mode]) if isinstance(metric, str) else (metric, mode)
    objective = ", ".join(f"`{m}` ({o})" for m, o in zip(metrics, modes))
    knobs = shared_knobs(attrs)
    knobs_text = ("Knobs sampled for every method (shared): " + ", ".join(f"`{_tag_text(k, 80)}`" for k in knobs) + "."
                  if knobs else "Shared knobs: " + ("none." if knobs == [] else "not recorded by this study."))
    reference = table.attrs.get("reference_why")
    lines = [f"# Benchmark report: {name}", "", parts["answer"], "", f"Produced by: `{command}`", "",
             f"Every method searched its own space with the same budget ({config.get('num_samples')} trials, "
             f"{(config.get('trial') or {}).get('epochs', '?')} epochs, the same ASHA settings, compared within "
             f"the method), ranked by {objective} on validation; its best configuration was re-trained "
             f"on the confirmation seeds {(config.get('confirm') or {}).get('seeds')} and that rank-1 confirmation is "
             "its row (the other confirmations are in the robustness table, never chosen among). "
             f"Reference: {reference or 'none'}. Numbers are test metrics in percent at each seed's best validation "
             "epoch: mean ± sample std [95 % t-interval, an accuracy's cut at 0 and 100] (n seeds). Δ vs the "
             "reference: Welch's 95 % interval; p Holm-corrected over every row compared with the reference (a "
             "diverged or failed confirmation counts as a failed test, p = 1); \"within noise\" when the interval "
             "covers 0 or p (Holm) ≥ 0.05. Verdict: TOST at "
             f"{_points(margin)} with its p Holm-corrected over the same rows first (equivalent), then the sign of a "
             "significant difference (better / worse), else inconclusive. \"Unimodal sup.\": the method trains each "
             "modality with its own supervised loss (its own design, or `loss_setting: multimodal+unimodal`).", "",
             coverage_text(table, attrs, config, margin), "", knobs_text, "",
             "Trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) +
             (" — the study is still running; this report covers what has finished." if counts.get("running") else ""),
             "", "## Table I: confirmed results against joint training", "", table_markdown(table, margin), ""]
    if not table.empty:
        lines += ["Reported trials:", "", provenance_markdown(table), ""]
    problems = table.attrs.get("prediction_problems") or {}
    if problems:
        lines += ["Unreadable prediction files (no test-example statistics for these trials): "
                  + "; ".join(f"{t}: {_tag_text(why)}" for t, why in problems.items()), ""]
    lines += ["## McNemar per seed", "", mcnemar_markdown(parts["mcnemar"]), "",
              "## Robustness: the other confirmations", "",
              "Each method's confirmations of its rank-2..k configurations (`confirm.top_k`), for how much the result "
              "depends on the one configuration; descriptive, not in Table I's tests.", "",
              robustness_markdown(parts["robustness"]), "", "## Tuning cost per method", "",
              "Resource-hours: Σ over each trial's epochs of the trainer's measured epoch time × its seeds × its "
              "resources (`resources` in the config). Start-up: the search's start-up trials (before the sampler "
              "models the results: the shared knobs at the stratified values every method gets, its own at random).",
              "",
              cost_markdown(parts["cost"]), ""]
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
    return parts["files"] + ["report.md"], benchmark_summary(trials, parts["table"])
