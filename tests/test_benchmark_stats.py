"""The benchmark report's statistics and rules on fixed numbers, each checked against scipy computed here on its
own: the paired bootstrap over test examples, McNemar, Holm over TOST as over Welch, the diverged row, the rank-1
rule and the robustness table, the reference (best tuned joint baseline by validation), the search-mode summary,
the ranking across studies (Friedman, Nemenyi's critical difference), and the whole path through a real MLflow
store and the `mmstudy report A B` command."""
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.benchmark import (answer, benchmark_markdown, benchmark_table, mcnemar_table, robustness_table,
                                tuning_cost)
from analysis.load import read_predictions

SEEDS = [1000, 1001, 1002, 1003]
MM, UM = "none (loss_setting=multimodal)", "none (loss_setting=multimodal+unimodal)"


def trial(tid, role, method, accs=(), val=None, status="finished", balancer=None, loss="multimodal", **extra):
    """One trial row as analysis.load.load_study makes it: per-seed test accuracies at the best validation epoch."""
    seeds = SEEDS[:len(accs)] if accs else SEEDS
    row = {"trial_id": tid, "run_id": f"run-{tid}", "role": role, "method": method, "status": status,
           "balancer": balancer or (method.split(" ")[0] if method else "none"), "loss_setting": loss,
           "seeds": seeds, "num_seeds": len(seeds), "epochs_run": 3, "point": {}, "sweep_param": None,
           "sweep_value": None, "best_val_acc": val if val is not None else (float(np.mean(accs)) if accs else None)}
    row.update({f"best_test_acc/seed_{s}": a for s, a in zip(seeds, accs)})
    row.update(extra)
    return row


def frame(rows, **config):
    out = pd.DataFrame(rows)
    out.attrs.update(study="bench", config={"mode": "benchmark", "equivalence_margin": 1.0, **config})
    return out


def holm_by_hand(p):
    """Holm's step-down adjustment written out (sorted p_(i) * (m - i), running maximum, capped at 1)."""
    order = np.argsort(p)
    out, running = np.empty(len(p)), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        out[i] = running
    return out


def tost_by_hand(a, b, margin):
    lower = stats.ttest_ind(np.asarray(a) + margin, b, equal_var=False, alternative="greater").pvalue
    upper = stats.ttest_ind(np.asarray(a) - margin, b, equal_var=False, alternative="less").pvalue
    return max(lower, upper)


# ----------------------------------------------------------------------------- per-seed tests and the family

BASE = [0.800, 0.806, 0.794, 0.800]
CLOSE = [0.803, 0.795, 0.808, 0.799]  # alone: TOST p = 0.028, equivalent at ±1 point
BETTER = [0.83, 0.85, 0.84, 0.845]
NOISY = [0.78, 0.82, 0.80, 0.79]


def _family_rows(with_diverged):
    rows = [trial("b", "baseline", None, BASE),
            trial("c_mm", "confirm", "mm", CLOSE, confirm_rank=1),
            trial("c_ogm", "confirm", "ogm_ge", BETTER, confirm_rank=1),
            trial("c_bmm", "confirm", "bmm", NOISY, confirm_rank=1)]
    if with_diverged:
        rows.append(trial("c_agm", "confirm", "agm", status="diverged", confirm_rank=1))
    return rows


@pytest.mark.parametrize("with_diverged", [False, True])
def test_tost_is_holm_corrected_like_welch_and_a_diverged_row_counts_as_a_failed_test(with_diverged):
    """mm alone would be 'equivalent' (TOST p 0.028); over the family its Holm p is >= 0.05, so it is not. A
    diverged confirmation is a row with verdict 'diverged' and p = 1 that enlarges both families."""
    methods = ["mm", "ogm_ge", "bmm"] + (["agm"] if with_diverged else [])
    table = benchmark_table(frame(_family_rows(with_diverged), methods=methods), "val_acc", "max", predictions={})
    assert list(table["method"]) == ["joint training (baseline)", *methods]
    welch_p = [stats.ttest_ind(x, BASE, equal_var=False).pvalue for x in (CLOSE, BETTER, NOISY)]
    tost_p = [tost_by_hand(x, BASE, 0.01) for x in (CLOSE, BETTER, NOISY)]
    assert tost_p[0] < 0.05  # equivalent when tested alone
    failed = [1.0] if with_diverged else []
    rows = table.iloc[1:4]
    assert list(rows["p"]) == pytest.approx(welch_p)
    assert list(rows["p_holm"]) == pytest.approx(list(holm_by_hand(welch_p + failed)[:3]))
    assert list(rows["p_equivalence"]) == pytest.approx(tost_p)
    assert list(rows["p_equivalence_holm"]) == pytest.approx(list(holm_by_hand(tost_p + failed)[:3]))
    assert table.at[1, "p_equivalence_holm"] >= 0.05 and table.at[1, "verdict"] == "inconclusive"
    assert table.at[2, "verdict"] == "better"
    text = answer(table, 0.01)
    assert "Equivalent" not in text and "Holm-corrected over the " + str(len(methods)) + " comparisons" in text
    if with_diverged:
        agm = table.iloc[4]
        assert (agm["verdict"], agm["p_holm"], agm["p_equivalence_holm"]) == ("diverged", 1.0, 1.0)
        assert text.startswith("**Result.** 1 of the 4 methods beat joint training beyond noise: `ogm_ge`")
        assert "counted as failed tests: `agm` (diverged)." in text
    alone = benchmark_table(frame(_family_rows(False)[:2], methods=["mm"]), "val_acc", "max", predictions={})
    assert alone.at[1, "verdict"] == "equivalent"  # the same numbers, one comparison


def test_a_method_whose_every_search_trial_failed_is_a_failed_row_not_a_missing_one():
    """Nothing could be confirmed, so there is no confirmation trial at all: still a row, counted in the family."""
    rows = _family_rows(False) + [trial("s1", "search", "agm", status="failed"),
                                  trial("s2", "search", "agm", status="diverged")]
    table = benchmark_table(frame(rows, methods=["mm", "ogm_ge", "bmm", "agm"]), "val_acc", "max", predictions={})
    agm = table[table["method"] == "agm"].iloc[0]
    assert (agm["status"], agm["verdict"], agm["p_holm"]) == ("failed", "failed", 1.0)
    welch_p = [stats.ttest_ind(x, BASE, equal_var=False).pvalue for x in (CLOSE, BETTER, NOISY)]
    assert list(table.iloc[1:4]["p_holm"]) == pytest.approx(list(holm_by_hand(welch_p + [1.0])[:3]))


# ----------------------------------------------------------------------------- over test examples


def _prediction_files(tmp_path):
    """Fixed per-example predictions of the reference and two methods on three seeds' test sets (written as the
    trials log them, read back through analysis.load.read_predictions), and each seed's accuracy."""
    rng = np.random.default_rng(7)
    n, files, accs, correct = 300, {}, {}, {}
    labels = {s: rng.integers(0, 4, n) for s in SEEDS}
    for tid, p_right in (("ref", 0.78), ("good", 0.84), ("same", 0.78)):
        rows, correct[tid] = [], {}
        for s in SEEDS:
            right = rng.random(n) < p_right
            if tid == "same":  # the reference's network on most examples: few discordant pairs
                right = np.where(rng.random(n) < 0.9, correct["ref"][s], right)
            correct[tid][s] = right
            pred = np.where(right, labels[s], (labels[s] + 1) % 4)
            rows += [(s, i, int(labels[s][i]), int(pred[i])) for i in range(n)]
        path = tmp_path / f"{tid}.csv"
        pd.DataFrame(rows, columns=["seed", "example", "label", "prediction"]).sample(frac=1, random_state=1).to_csv(
            path, index=False)  # rows in any order: the pairing is by (seed, example)
        files[tid] = read_predictions(path)
        accs[tid] = [float(correct[tid][s].mean()) for s in SEEDS]
    return files, accs, correct


def test_paired_bootstrap_and_mcnemar_over_test_examples_match_independent_computations(tmp_path):
    files, accs, correct = _prediction_files(tmp_path)
    rows = [trial("ref", "confirm", UM, accs["ref"], val=0.9, loss="multimodal+unimodal", joint_baseline=True,
                  confirm_rank=1),
            trial("good", "confirm", "arl", accs["good"], confirm_rank=1),
            trial("same", "confirm", "ogm_ge", accs["same"], confirm_rank=1)]
    trials = frame(rows, methods=["arl", "ogm_ge"])
    table = benchmark_table(trials, "val_acc", "max", predictions=files)
    assert list(table["method"]) == [UM, "arl", "ogm_ge"] and table.at[0, "role"] == "baseline"
    family_mcnemar = []
    for i, tid in ((1, "good"), (2, "same")):
        d = [correct[tid][s].astype(float) - correct["ref"][s].astype(float) for s in SEEDS]
        assert table.at[i, "boot_diff"] == pytest.approx(np.mean(accs[tid]) - np.mean(accs["ref"]))
        assert table.at[i, "boot_diff"] == pytest.approx(table.at[i, "delta"])  # same seeds, same numbers
        # independent stratified percentile bootstrap: resample each seed's examples, average the seeds' means
        rng = np.random.default_rng(12345)
        boots = np.mean([x[rng.integers(0, len(x), (20000, len(x)))].mean(axis=1) for x in d], axis=0)
        low, high = np.percentile(boots, [2.5, 97.5])
        assert (table.at[i, "boot_ci_low"], table.at[i, "boot_ci_high"]) == pytest.approx((low, high), abs=0.002)
        assert table.at[i, "boot_ci_low"] < table.at[i, "boot_diff"] < table.at[i, "boot_ci_high"]
        b = [int(np.sum(correct[tid][s] & ~correct["ref"][s])) for s in SEEDS]
        c = [int(np.sum(~correct[tid][s] & correct["ref"][s])) for s in SEEDS]
        assert (table.at[i, "mcnemar_b"], table.at[i, "mcnemar_c"]) == (sum(b), sum(c))
        pooled = stats.binomtest(sum(b), sum(b) + sum(c), 0.5).pvalue  # exact McNemar = binomial on discordant
        assert table.at[i, "p_mcnemar"] == pytest.approx(pooled)
        family_mcnemar.append(pooled)
        per_seed = mcnemar_table(trials, "val_acc", "max", predictions=files)
        mine = per_seed[per_seed["method"] == table.at[i, "method"]]
        assert list(mine["seed"]) == SEEDS and list(mine["only_method_right"]) == b
        assert list(mine["p_exact"]) == pytest.approx([stats.binomtest(x, x + y, 0.5).pvalue for x, y in zip(b, c)])
    assert list(table["p_mcnemar_holm"][1:]) == pytest.approx(list(holm_by_hand(family_mcnemar)))
    assert table.at[1, "boot_ci_low"] > 0  # +6 points on 900 examples: clear of zero
    assert list(table["unimodal_supervision"]) == [True, True, False]  # MM+UM reference; ARL's own unimodal CEs
    text = answer(table, 0.01)
    assert f"reference `{UM}`" in text


def test_predictions_that_are_not_the_same_test_set_are_not_paired(tmp_path):
    files, accs, _ = _prediction_files(tmp_path)
    other = files["good"].copy()
    other.loc[other["seed"] == 1001, "label"] = (other.loc[other["seed"] == 1001, "label"] + 1) % 4
    rows = [trial("ref", "baseline", None, accs["ref"]), trial("good", "confirm", "arl", accs["good"], confirm_rank=1)]
    table = benchmark_table(frame(rows, methods=["arl"]), "val_acc", "max", predictions={"ref": files["ref"],
                                                                                         "good": other})
    assert table.at[1, "boot_seeds"] == 3 and "seed 1001: labels differ" in table.at[1, "prediction_notes"]


@pytest.mark.parametrize("content, why", [
    ("seed,example,label\n1,0,1\n", "missing column(s) prediction"),
    ("seed,example,label,prediction\n1,0,1,x\n", "every value must be an integer"),
    ("seed,example,label,prediction\n1,0,1,1\n1,0,1,2\n", "appears twice"),
])
def test_a_malformed_predictions_file_is_refused(tmp_path, content, why):
    (tmp_path / "p.csv").write_text(content)
    with pytest.raises(ValueError, match=why.replace("(", r"\(").replace(")", r"\)")):
        read_predictions(tmp_path / "p.csv")


# ----------------------------------------------------------------------------- which rows are reported


def _ranked_rows():
    return [
        trial("b", "baseline", None, [0.80, 0.81, 0.79]),
        trial("s1", "search", "ogm_ge", [0.90], val=0.90, startup=True),
        trial("s2", "search", "ogm_ge", [0.86], val=0.86, startup=False),
        trial("s3", "search", "ogm_ge", [0.10], val=0.99, status="pruned", startup=False),  # ASHA-stopped: behind
        trial("c1", "confirm", "ogm_ge", [0.82, 0.83, 0.81], val=0.80, confirms="s1", confirm_rank=1),
        trial("c2", "confirm", "ogm_ge", [0.90, 0.91, 0.92], val=0.95, confirms="s2", confirm_rank=2),  # looks best
        trial("c3", "confirm", "ogm_ge", status="diverged", confirms="s3", confirm_rank=3),
        trial("m1", "confirm", "mm", status="running", confirms="t1", confirm_rank=1),
        trial("m2", "confirm", "mm", [0.95, 0.95, 0.96], val=0.99, confirms="t2", confirm_rank=2),
    ]


def test_the_reported_row_is_the_rank_1_confirmation_and_the_others_are_only_in_the_robustness_table():
    trials = frame(_ranked_rows(), methods=["ogm_ge", "mm"], num_samples=3)
    table = benchmark_table(trials, "val_acc", "max", predictions={})
    ogm, mm = table.iloc[1], table.iloc[2]
    assert (ogm["trial_id"], ogm["confirm_rank"], ogm["rule"], ogm["from_startup"]) == ("c1", 1, "confirm_rank", True)
    assert ogm["acc"] == pytest.approx(0.82)  # not c2's 0.91, though c2 is better on validation and test
    assert pd.isna(mm["trial_id"]) and mm["n"] == 0  # rank 1 still running: no result, rank 2 is not promoted
    robust = robustness_table(trials, "val_acc", "max")
    assert list(zip(robust["method"], robust["trial_id"], robust["confirm_rank"], robust["status"])) == [
        ("ogm_ge", "c2", 2, "finished"), ("ogm_ge", "c3", 3, "diverged"), ("mm", "m2", 2, "finished")]
    ref = [0.80, 0.81, 0.79]
    welch = stats.ttest_ind([0.90, 0.91, 0.92], ref, equal_var=False)
    assert robust.at[0, "delta"] == pytest.approx(0.11)
    assert robust.at[0, "delta_ci_low"] == pytest.approx(welch.confidence_interval(0.95).low)
    cost = tuning_cost(trials)
    assert cost.set_index("method").at["ogm_ge", "search_startup"] == 1
    assert cost.set_index("method").at["mm", "search_startup"] == 0  # no search trial at all
    older = tuning_cost(frame([dict(r, startup=None) for r in _ranked_rows()], methods=["ogm_ge", "mm"]))
    assert pd.isna(older.set_index("method").at["ogm_ge", "search_startup"])  # not recorded: unknown, not 0


def test_older_studies_report_the_confirmation_of_the_searchs_rank_1_trial():
    """No confirm_rank tags: the confirmation that re-trains the search's best trial by the ranking rule, not
    the confirmation that is best on validation."""
    rows = [dict(r, confirm_rank=None) for r in _ranked_rows()[:6]]
    table = benchmark_table(frame(rows, methods=["ogm_ge"]), "val_acc", "max", predictions={})
    assert (table.at[1, "trial_id"], table.at[1, "rule"]) == ("c1", "search_rank")


def test_the_reference_is_the_best_tuned_joint_baseline_by_validation():
    """Two tuned joint baselines: the multimodal one is better on test, the multimodal+unimodal one on validation,
    so the latter is the reference; the former and the old untuned baseline are rows compared with it (in the
    family)."""
    rows = [trial("b", "baseline", None, [0.70, 0.71, 0.69]),
            trial("j1s", "search", MM, [0.80], joint_baseline=True),
            trial("j1", "confirm", MM, [0.84, 0.85, 0.86], val=0.80, confirms="j1s", confirm_rank=1, joint_baseline=True),
            trial("j2s", "search", UM, [0.80], loss="multimodal+unimodal", joint_baseline=True),
            trial("j2", "confirm", UM, [0.80, 0.81, 0.79], val=0.85, confirms="j2s", confirm_rank=1,
                  loss="multimodal+unimodal", joint_baseline=True),
            trial("a", "confirm", "arl", [0.83, 0.84, 0.82], confirm_rank=1),
            trial("o", "confirm", "ogm_ge", [0.80, 0.80, 0.81], confirm_rank=1)]
    trials = frame(rows, methods=["arl", "ogm_ge"])
    table = benchmark_table(trials, "val_acc", "max", predictions={})
    assert list(zip(table["method"], table["role"])) == [
        (UM, "baseline"), ("joint training (baseline)", "joint"), (MM, "joint"), ("arl", "confirm"),
        ("ogm_ge", "confirm")]
    assert "best of the 2 tuned joint-training baselines" in table.attrs["reference_why"]
    raw = [stats.ttest_ind(x, [0.80, 0.81, 0.79], equal_var=False).pvalue
           for x in ([0.70, 0.71, 0.69], [0.84, 0.85, 0.86], [0.83, 0.84, 0.82], [0.80, 0.80, 0.81])]
    assert list(table["p_holm"][1:]) == pytest.approx(list(holm_by_hand(raw)))  # joint rows count in the family
    assert list(table["unimodal_supervision"]) == [True, False, False, True, False]
    md = benchmark_markdown("bench", trials.attrs["config"], {"finished": 7},
                            {"margin": 0.01, "table": table, "answer": answer(table, 0.01), "files": [],
                             "robustness": robustness_table(trials), "mcnemar": mcnemar_table(trials, predictions={}),
                             "cost": tuning_cost(trials)}, "mmstudy report bench",
                            {"tracking_uri": "sqlite:///x.db", "parent_run_id": "p", "parent_tags": {
                                "mmstudy.shared_knobs": json.dumps(["optim.lr", "optim.weight_decay"]),
                                "mmstudy.noise_sources": "training seed, data draw"}}, "val_acc", "max")
    assert f"| **{UM}** (reference) | yes | 3 |" in md
    assert "Knobs sampled for every method (shared): `optim.lr`, `optim.weight_decay`." in md
    assert "they cover what varies with the seed in this study (training seed, data draw)" in md
    assert "| arl | multimodal | a | finished | rank 1 |" in md


def test_search_mode_summary_reports_the_rank_1_confirmation():
    from analysis.summary import study_summary

    rows = [dict(r, method=None, balancer="redreg") for r in _ranked_rows()[1:6]]
    rows[3:5] = [dict(rows[3], role="confirm"), dict(rows[4], role="confirm")]
    trials = frame([trial("b", "baseline", None, [0.80, 0.81, 0.79]), *rows], mode="search")
    s = study_summary(trials, "val_acc", "max")
    assert s.best_trial_id == "c1" and s.confirmed and "re-trained with fresh seeds" in s.text
    untagged = frame([dict(r, confirm_rank=None) for r in trials.to_dict("records")], mode="search")
    assert study_summary(untagged, "val_acc", "max").best_trial_id == "c1"  # the search's rank 1, not c2
    diverged = frame([dict(r, status="diverged") if r["trial_id"] == "c1" else r for r in trials.to_dict("records")])
    s = study_summary(diverged, "val_acc", "max")
    assert "diverged when re-trained" in s.text and not s.confirmed


# ----------------------------------------------------------------------------- across studies


def test_methods_are_ranked_across_studies_with_friedmans_test_and_nemenyis_critical_difference(tmp_path):
    from analysis.ranking_across import REFERENCE, cd_figure, rank_across, ranking_markdown

    acc = {"crema": {REFERENCE: 0.60, "ogm_ge": 0.63, "arl": 0.66, "mm": 0.59, "pmr": 0.61},
           "ks": {REFERENCE: 0.70, "ogm_ge": 0.72, "arl": 0.71, "mm": 0.69},
           "avmnist": {REFERENCE: 0.80, "ogm_ge": 0.79, "arl": 0.84, "mm": -math.inf},  # mm diverged: last
           "synthetic": {REFERENCE: 0.90, "ogm_ge": 0.93, "arl": 0.95, "mm": 0.91, "pmr": 0.94}}
    result = rank_across({s: pd.Series(v) for s, v in acc.items()})
    ranked = [REFERENCE, "ogm_ge", "arl", "mm"]
    expected = stats.friedmanchisquare(*[[acc[s][m] for s in acc] for m in ranked])
    assert result.friedman_p == pytest.approx(expected.pvalue)
    assert result.friedman_statistic == pytest.approx(expected.statistic)
    assert list(result.ranks.index) == ["arl", "ogm_ge", REFERENCE, "mm"]  # best mean rank first
    assert list(result.ranks.loc["arl"]) == [1, 2, 1, 1, 1.25] and result.ranks.at["mm", "avmnist"] == 4
    assert result.missing == {"pmr": ["ks", "avmnist"]}  # listed, never imputed
    # Demšar's table: q_0.05 = 2.569 for 4 methods; CD = q * sqrt(k (k + 1) / (6 N))
    assert result.critical_difference == pytest.approx(2.569 * math.sqrt(4 * 5 / (6 * 4)), abs=1e-3)
    assert result.nemenyi.shape == (4, 4)
    md = ranking_markdown(result, list(acc), {s: "none" for s in acc}, "mmstudy report a b c d")
    assert f"p = {result.friedman_p:.4g}" in md and "- `pmr`: missing from ks, avmnist" in md
    assert "| arl | 1 (66.00) | 2 (71.00) | 1 (84.00) | 1 (95.00) | 1.25 |" in md
    fig = cd_figure(result, "t")
    fig.savefig(tmp_path / "cd.png")
    assert (tmp_path / "cd.png").stat().st_size > 1000
    assert "protocols differ" not in md
    two = rank_across({"a": pd.Series({"x": 0.5, "y": 0.6}), "b": pd.Series({"x": 0.4, "y": 0.7})})
    assert two.friedman_p is None and "3 or more methods" in two.note


def test_a_ranking_of_studies_with_different_budgets_says_which_fields_differ():
    from analysis.ranking_across import protocol_differences, rank_across, ranking_markdown

    base = {"mode": "benchmark", "num_samples": 4, "trial": {"epochs": 10, "dataset": {"name": "synthetic"}},
            "confirm": {"top_k": 1, "seeds": [1000, 1001, 1002]}}
    other = {**base, "num_samples": 3, "trial": {"epochs": 10, "dataset": {"name": "crema_d"}}}
    assert protocol_differences({"a": base, "b": dict(base)}) == []  # the datasets may differ; nothing else did
    assert protocol_differences({"a": base, "b": other}) == ["`num_samples`: 4 (a); 3 (b)"]
    result = rank_across({"a": pd.Series({"x": 0.5, "y": 0.6, "z": 0.7}),
                          "b": pd.Series({"x": 0.4, "y": 0.7, "z": 0.8})})
    md = ranking_markdown(result, ["a", "b"], {"a": "none", "b": "none"}, "mmstudy report a b",
                          protocol_differences({"a": base, "b": other}))
    assert "**The studies' protocols differ**" in md and "- `num_samples`: 4 (a); 3 (b)" in md


# ----------------------------------------------------------------------------- through MLflow and the CLI


def _mlflow_study(uri, name, accs_by_method, tmp_path, with_new_tags=True):
    """A benchmark study as the runner records it: a parent run (with its config snapshot and tags) and child
    runs with the report's tags, per-seed metrics and per-example predictions."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.create_experiment(f"mmstudy/{name}")
    methods = [m for m in accs_by_method if m != MM]
    parent = client.create_run(exp, tags={"mmstudy.kind": "study", "mmstudy.study": name,
                                          "mmstudy.shared_knobs": json.dumps(["optim.lr"]),
                                          "mmstudy.noise_sources": "training seed; fixed split"}).info.run_id
    client.log_text(parent, json.dumps({"name": name, "mode": "benchmark", "methods": methods}), "study.yaml")
    rng = np.random.default_rng(len(name))
    labels = rng.integers(0, 3, 50)
    for i, (method, p_right) in enumerate(accs_by_method.items()):
        right = {s: rng.random(50) < p_right for s in SEEDS}
        tags = {"mlflow.parentRunId": parent, "mmstudy.trial_id": f"t{i}", "mmstudy.method": method,
                "mmstudy.role": "confirm", "mmstudy.status": "finished", "mmstudy.seeds": json.dumps(SEEDS),
                "mmstudy.trial_config": json.dumps({"balancer": {"name": method.split(" ")[0]},
                                                    "loss_setting": "multimodal"}),
                "mmstudy.per_seed": json.dumps({f"best_test_acc/seed_{s}": float(right[s].mean()) for s in SEEDS})}
        if with_new_tags:
            tags.update({"mmstudy.confirm_rank": "1", **({"mmstudy.joint_baseline": "1"} if method == MM else {})})
        elif method == MM:  # an older study: one untuned joint-training baseline trial, no method label
            tags.update({"mmstudy.role": "baseline"})
            del tags["mmstudy.method"]
        run = client.create_run(exp, tags=tags).info.run_id
        client.log_metric(run, "best_val_acc", float(np.mean([r.mean() for r in right.values()])))
        pred = pd.DataFrame([(s, j, int(labels[j]), int(labels[j] if right[s][j] else (labels[j] + 1) % 3))
                             for s in SEEDS for j in range(50)], columns=["seed", "example", "label", "prediction"])
        path = tmp_path / f"{name}-{i}" / "test_predictions.csv"
        path.parent.mkdir()
        pred.to_csv(path, index=False)
        client.log_artifact(run, str(path), "predictions")
        client.set_terminated(run)
    return name


def test_report_of_one_and_of_several_benchmark_studies_through_mlflow(tmp_path, monkeypatch, capsys):
    from analysis.load import load_study
    from study.cli import main

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = _mlflow_study(uri, "first", {MM: 0.6, "ogm_ge": 0.7, "arl": 0.8, "mm": 0.5}, tmp_path)
    second = _mlflow_study(uri, "second", {MM: 0.7, "ogm_ge": 0.6, "arl": 0.9, "mm": 0.65}, tmp_path)
    third = _mlflow_study(uri, "third", {MM: 0.5, "ogm_ge": 0.55, "arl": 0.6}, tmp_path, with_new_tags=False)
    trials = load_study(first, uri)
    assert trials.attrs["parent_tags"]["mmstudy.noise_sources"] == "training seed; fixed split"
    assert set(trials["confirm_rank"]) == {1} and trials["joint_baseline"].tolist().count(True) == 1
    assert trials["startup"].isna().all()  # no search trials carry the tag here

    assert main(["report", first, "--tracking-uri", uri, "--out", str(tmp_path / "one"), "--no-mlflow"]) == 0
    table = pd.read_csv(tmp_path / "one" / "benchmark.csv")
    assert table.at[0, "method"] == MM and table["boot_ci_low"][1:].notna().all()
    assert table["p_mcnemar_holm"][1:].notna().all()
    report = (tmp_path / "one" / "report.md").read_text()
    assert "covers test-example sampling" in report and "## McNemar per seed" in report

    assert main(["report", first, second, third, "--tracking-uri", uri]) == 0
    out = tmp_path / "report" / "first-and-2-more"
    assert {"ranks.csv", "ranking.md", "critical_difference.png"} <= {p.name for p in out.iterdir()}
    ranks = pd.read_csv(out / "ranks.csv").set_index("method")
    assert ranks.at["arl", "mean rank"] == 1.0 and pd.isna(ranks.at["mm", "mean rank"])  # mm: not in third
    ranking = (out / "ranking.md").read_text()
    assert "- `mm`: missing from third" in ranking and "Friedman's test over 3 studies and 3 methods" in ranking
    assert "third: `joint training (baseline)`" in ranking  # the older study's untuned reference, named
    capsys.readouterr()
    assert main(["report", first, first, "--tracking-uri", uri, "--out", str(tmp_path / "twice")]) == 2
    assert "is given twice" in capsys.readouterr().err and not (tmp_path / "twice").exists()


def test_the_methods_that_train_a_modality_on_its_own_label_say_so():
    """Table I's "Unimodal sup." column comes from each balancer's flag: these six train a modality with its own
    supervised loss by design (ARL, MLA, PMR, ReconBoost; UME's unimodal models, UMT's teachers)."""
    from trainables.balancers.registry import balancer_class, balancer_names

    flagged = {name for name in balancer_names() if balancer_class(name).adds_unimodal_supervision}
    assert flagged == {"arl", "mla", "pmr", "reconboost", "ume", "umt"}
