"""One ranking rule (study.ranking.rank_trials) for the searcher's confirmation choice, the study's best
(records, console) and the report; one Holm family (analysis.tables.holm_family) for the table and the summary."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.stats import holm
from analysis.summary import study_summary
from analysis.tables import comparison_table, holm_family
from study.ranking import pareto_layers, rank_trials

# Three search trials whose LAST epoch and BEST epoch disagree, and one ASHA stopped after 1 of 3 epochs with
# the best value of all (a lucky first epoch):
#   a: last val_acc 0.90, best 0.91      b: last 0.50, best 0.95      c: last 0.80, best 0.85
#   s: stopped after epoch 1, best 0.99
LAST = {"a": 0.90, "b": 0.50, "c": 0.80, "s": 0.99}
BEST = {"a": 0.91, "b": 0.95, "c": 0.85, "s": 0.99}
EPOCHS = {"a": 3, "b": 3, "c": 3, "s": 1}


def test_rank_trials_uses_the_best_epoch_and_puts_complete_trials_first():
    tune_rows = pd.DataFrame({"trial_id": list(LAST), "val_acc": list(LAST.values()),
                              "best_val_acc": list(BEST.values()), "training_iteration": list(EPOCHS.values())})
    assert list(rank_trials(tune_rows, "val_acc", "max", epochs=3)["trial_id"]) == ["b", "a", "c", "s"]
    assert list(rank_trials(tune_rows, "val_acc", "min", epochs=3)["trial_id"]) == ["c", "a", "b", "s"]
    # MLflow rows: the writer's status says the same (ASHA's stop is `pruned`)
    mlflow_rows = tune_rows.drop(columns="training_iteration").assign(
        status=["finished", "finished", "finished", "pruned"])
    assert list(rank_trials(mlflow_rows, "val_acc", "max")["trial_id"]) == ["b", "a", "c", "s"]
    # a trial without a finite value is not ranked
    nan = tune_rows.assign(best_val_acc=[0.91, np.nan, 0.85, 0.99])
    assert list(rank_trials(nan, "val_acc", "max", epochs=3)["trial_id"]) == ["a", "c", "s"]


def test_the_searcher_confirms_by_the_best_epoch_not_the_last():
    from study.search import MethodSearch, StudySearcher

    searcher = StudySearcher([MethodSearch("")], top_k=2, confirm_seeds=[9], metric="val_acc", mode="max", epochs=3)
    for tid in LAST:
        searcher._opened(tid, "", {"balancer.gamma": BEST[tid]})
        searcher.on_trial_complete(tid, {"val_acc": LAST[tid], "best_val_acc": BEST[tid],
                                         "training_iteration": EPOCHS[tid]})
    confirms = [searcher.suggest("x"), searcher.suggest("y")]
    assert [c["confirms"] for c in confirms] == ["b", "a"]  # by last value it was s, a; s was stopped early
    assert [c["confirm_rank"] for c in confirms] == [1, 2]
    assert confirms[0]["point"] == {"balancer.gamma": 0.95} and confirms[0]["seeds"] == [9]


@pytest.mark.parametrize("method", ["", "m"])
def test_a_diverged_search_trial_is_never_confirmed(method):
    """A trial that diverged at its last epoch still carries a finite best_val_acc from before; the searcher
    leaves it out of the confirmation candidates (study.search.confirmable_values), for a search study's one
    method and a benchmark's methods alike."""
    from study.search import MethodSearch, StudySearcher

    searcher = StudySearcher([MethodSearch(method)], top_k=2, confirm_seeds=[9], metric="val_acc", mode="max",
                             epochs=3)
    searcher._opened("good", method, {"balancer.gamma": 0.5})
    searcher._opened("nan", method, {"balancer.gamma": 2.0})
    results = {"good": {"val_acc": 0.80, "best_val_acc": 0.80, "training_iteration": 3},
               "nan": {"val_acc": 0.90, "best_val_acc": 0.99, "training_iteration": 3, "diverged": True,
                       "status_reason": "loss is nan at epoch 3"}}
    for tid, result in results.items():
        searcher.on_trial_complete(tid, result)
    picked = [spec["confirms"] for spec in searcher.top_configurations(method)]
    assert picked == ["good"]


def test_records_best_is_the_same_trial():
    from study.records import best_of, rank

    frame = pd.DataFrame({"trial_id": [*LAST, "base"], "config/role": ["search"] * 4 + ["baseline"],
                          "val_acc": [*LAST.values(), 1.0], "best_val_acc": [*BEST.values(), 1.0],
                          "training_iteration": [*EPOCHS.values(), 3]})
    assert list(rank(frame, "val_acc", "max", epochs=3)["trial_id"]) == ["b", "a", "c", "s"]
    best = best_of(frame, "val_acc", "max", epochs=3)
    assert best["trial_id"] == "b" and best["best_val_acc"] == 0.95 and best["val_acc"] == 0.50


def _row(tid, role, val_last, val_best, accs, gap=0.1, status="finished", balancer="redreg"):
    row = {"trial_id": tid, "role": role, "status": status, "balancer": balancer, "loss_setting": "multimodal",
           "num_seeds": len(accs), "seeds": list(range(len(accs))), "point": {"balancer.gamma": val_best},
           "sweep_param": None, "sweep_value": None, "val_acc": val_last, "best_val_acc": val_best,
           "best_val_gap": gap, "best_test_acc": float(np.mean(accs))}
    for i, acc in enumerate(accs):
        row[f"best_test_acc/seed_{i}"] = acc
        row[f"best_val_acc/seed_{i}"] = val_best
    return row


def _frame(rows):
    frame = pd.DataFrame(rows)
    frame.attrs["config"] = {}
    return frame


BASE = _row("base", "baseline", 0.8, 0.8, [0.80, 0.82, 0.81], balancer="none")
A = _row("a", "search", 0.90, 0.91, [0.84, 0.86, 0.85])
B = _row("b", "search", 0.50, 0.95, [0.91, 0.92, 0.90])
C = _row("c", "search", 0.80, 0.85, [0.83, 0.85, 0.84])
S = _row("s", "search", 0.99, 0.99, [0.95, 0.96, 0.97], status="pruned")


def test_the_report_ranks_by_the_same_rule():
    trials = _frame([BASE, A, B, C, S])
    assert study_summary(trials, "val_acc", "max").best_trial_id == "b"  # last value would say a
    table = comparison_table(trials, metric="val_acc", mode="max")
    assert list(table["trial_id"]) == ["base", "b", "a", "c"]  # the pruned trial is not a finished one


def test_table_and_summary_share_one_holm_family_whatever_the_table_shows():
    """The table cut to its top row still corrects over every trial compared with the baseline, as the
    summary does: the same row shows the same p-value in both."""
    trials = _frame([BASE, A, B, C])
    base = [0.80, 0.82, 0.81]
    raw = [stats.ttest_ind(x, base, equal_var=False).pvalue for x in ([0.84, 0.86, 0.85], [0.91, 0.92, 0.90],
                                                                       [0.83, 0.85, 0.84])]
    expected = holm(raw)
    assert expected[1] == pytest.approx(3 * raw[1])  # b is the smallest p: corrected over 3, not over 1 shown
    summary = study_summary(trials, "val_acc", "max")
    table = comparison_table(trials, top=1, metric="val_acc", mode="max")
    assert list(table["trial_id"]) == ["base", "b"]
    row_p = table.loc[table["trial_id"] == "b", "delta_p"].item()
    assert row_p == pytest.approx(expected[1]) and summary.metrics["best_minus_baseline_p"] == pytest.approx(row_p)
    assert "Holm-corrected over the 3 trials" in summary.text
    base_row, family = holm_family(trials[trials["status"] == "finished"], "multimodal")
    assert base_row["trial_id"] == "base" and sorted(family) == ["a", "b", "c"]
    assert [family[t].p_adjusted for t in "abc"] == pytest.approx(expected)


def test_a_confirmation_that_diverged_counts_in_the_holm_family_as_a_failed_test():
    """A planned comparison without a result is a test that failed (p = 1), never one left out: the family of a
    search with a diverged confirmation is one larger; a diverged search trial (a proposal) does not count."""
    lost = _row("lost", "confirm", float("nan"), float("nan"), [], status="diverged")
    proposal = _row("prop", "search", float("nan"), float("nan"), [], status="diverged")
    trials = _frame([BASE, A, B, C, lost, proposal])
    base = [0.80, 0.82, 0.81]
    raw = [stats.ttest_ind(x, base, equal_var=False).pvalue for x in ([0.84, 0.86, 0.85], [0.91, 0.92, 0.90],
                                                                       [0.83, 0.85, 0.84])]
    expected = holm([*raw, 1.0])
    assert expected[1] == pytest.approx(4 * raw[1])  # corrected over 4 tests: the diverged one counts
    _, family = holm_family(trials[trials["status"] == "finished"], "multimodal", ended=trials)
    assert sorted(family) == ["a", "b", "c", "lost"] and family["lost"].verdict == "diverged"
    assert [family[t].p_adjusted for t in "abc"] == pytest.approx(expected[:3])
    table = comparison_table(trials, metric="val_acc", mode="max")
    assert table.loc[table["trial_id"] == "b", "delta_p"].item() == pytest.approx(expected[1])


def test_several_objectives_rank_pareto_fronts_in_the_order_of_the_first_metric():
    #          acc   gap   front
    points = {"p": (0.90, 0.30),  # 0 (best accuracy)
              "q": (0.80, 0.05),  # 0 (smallest gap)
              "r": (0.85, 0.10),  # 0
              "d": (0.84, 0.20),  # 1: r dominates it
              "e": (0.95, 0.40),  # stopped early: after every complete trial, whatever its values
              }
    frame = pd.DataFrame({"trial_id": list(points), "best_val_acc": [v[0] for v in points.values()],
                          "best_val_gap": [v[1] for v in points.values()],
                          "status": ["finished"] * 4 + ["pruned"]})
    ranked = rank_trials(frame, ["val_acc", "val_gap"], ["max", "min"])
    assert list(ranked["trial_id"]) == ["p", "r", "q", "d", "e"]
    # the top is the best by the first metric: what the summary and the console call the best
    assert ranked["trial_id"].iloc[0] == rank_trials(frame, "val_acc", "max")["trial_id"].iloc[0]
    assert list(pareto_layers(np.array([[1, 1], [2, 2], [3, 3]]), ["max", "max"])) == [2, 1, 0]
    trials = _frame([BASE, dict(A, best_val_gap=0.30), dict(B, best_val_gap=0.35), dict(C, best_val_gap=0.01)])
    # the report's table: b (best accuracy), a (a smaller gap than b) and c (the smallest gap) are all optimal
    table = comparison_table(trials, metric=["val_acc", "val_gap"], mode=["max", "min"])
    assert list(table["trial_id"]) == ["base", "b", "a", "c"]


def test_metric_lists_are_validated_in_one_line():
    from study.config import load_study_config
    from trainables.errors import ConfigError

    base = {"name": "mo", "trial": {"epochs": 2, "dataset": {"name": "synthetic", "size": "tiny"}},
            "search_space": "redreg"}
    two = [{"name": "val_acc", "mode": "max"}, {"name": "val_gap", "mode": "min"}]
    cfg = load_study_config(None, raw=dict(base, metric=two))
    assert (cfg.metric.name, cfg.metric.mode, cfg.metric.names, cfg.metric.modes) == \
        ("val_acc", "max", ["val_acc", "val_gap"], ["max", "min"])
    assert cfg.snapshot()["metric"] == two and load_study_config(None, raw=cfg.snapshot()).metric.names == cfg.metric.names
    single = load_study_config(None, raw=dict(base, metric={"name": "best_val_acc"}))
    assert single.snapshot()["metric"] == {"name": "best_val_acc", "mode": "max"}  # the mapping form is kept
    cases = [([], "metric: expected"), ([two[0], two[0]], "metric: each metric once"),
             ([two[0], {"name": "test_acc"}], "metric[1].name: unknown metric 'test_acc' (allowed: val_acc"),
             ([two[0], {"name": "val_gap", "mode": "down"}], "metric[1].mode: 'down' is not one of max, min"),
             ({"name": "val_acc", "mode": "up"}, "metric.mode:")]
    for metric, message in cases:
        with pytest.raises(ConfigError) as err:
            load_study_config(None, raw=dict(base, metric=metric))
        assert str(err.value).startswith(message) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="^searcher: cmaes searches one metric only"):
        load_study_config(None, raw=dict(base, metric=two, searcher="cmaes"))
    for searcher in ("grid", "random", "tpe"):
        assert load_study_config(None, raw=dict(base, metric=two, searcher=searcher)).metric.names == ["val_acc", "val_gap"]


def test_the_trainable_reports_the_validation_gap_per_seed_and_at_the_best_epoch():
    from trainables.tune_trainable import summarize

    head = {"test_acc": 0.7, "val_f1": 0.7, "test_f1": 0.7}
    records = [{**head, "val_acc": 0.8, "val_acc_audio": 0.7, "val_acc_visual": 0.4, "test_acc_audio": 0.6,
                "test_acc_visual": 0.5},
               {**head, "val_acc": 0.9, "val_acc_audio": 0.5, "val_acc_visual": 0.8, "test_acc_audio": 0.6,
                "test_acc_visual": 0.6}]
    bests = [{"epoch": 2, "val_acc": 0.8, "val_acc_audio": 0.9, "val_acc_visual": 0.3},
             {"epoch": 3, "val_acc": 0.9, "val_acc_audio": 0.6, "val_acc_visual": 0.7}]
    out = summarize(records, bests, [0, 1])
    assert out["val_gap"] == pytest.approx((0.3 + 0.3) / 2) and out["test_gap"] == pytest.approx((0.1 + 0.0) / 2)
    assert out["best_val_gap"] == pytest.approx((0.6 + 0.1) / 2)  # |difference| per seed, then the mean
    assert out["best_val_gap/seed_0"] == pytest.approx(0.6) and out["best_val_gap/seed_1"] == pytest.approx(0.1)
    assert "val_gap" not in records[0]  # the trainer's own history is not changed


def test_the_end_of_run_summary_ranks_by_every_metric_of_the_study(monkeypatch):
    """runner.summarize hands study_summary the study's full metric/mode lists, as the report does: y and z tie
    on validation accuracy, z has the smaller gap, so with [val_acc max, val_gap min] z is the best (by the
    first metric alone the tie would go to the smaller trial id, y)."""
    from types import SimpleNamespace

    import analysis.load
    from study.config import load_study_config
    from study.runner import summarize

    cfg = load_study_config(None, raw={"name": "mo", "search_space": "redreg",
                                       "trial": {"epochs": 2, "dataset": {"name": "synthetic", "size": "tiny"}},
                                       "metric": [{"name": "val_acc", "mode": "max"}, {"name": "val_gap", "mode": "min"}]})
    trials = _frame([BASE, dict(A, trial_id="y", best_val_acc=0.9, best_val_gap=0.30),
                     dict(C, trial_id="z", best_val_acc=0.9, best_val_gap=0.05)])
    monkeypatch.setattr(analysis.load, "load_study", lambda study, tracking_uri=None: trials)  # the records, read
    summary = summarize(SimpleNamespace(config=cfg, dir="unused"))
    assert summary is not None and summary.best_trial_id == "z"


def test_the_trainable_and_the_report_share_one_modality_gap_rule():
    """trainables.metrics.modality_gap (max - min of the unimodal accuracies) is what the trainable reports and
    what the report derives for a trial recorded without per-seed gaps, here with three modalities."""
    from analysis.tables import seed_stats, seed_values
    from trainables.metrics import modality_gap
    from trainables.tune_trainable import with_gaps

    seeds = [{"audio": 0.7, "visual": 0.4, "text": 0.9}, {"audio": 0.5, "visual": 0.8, "text": 0.6}]
    gaps = [with_gaps({f"test_acc_{m}": v for m, v in s.items()})["test_gap"] for s in seeds]
    assert gaps == [modality_gap(s.values()) for s in seeds] and gaps == pytest.approx([0.5, 0.3])
    row = pd.Series({f"best_test_acc_{m}/seed_{i}": s[m] for i, s in enumerate(seeds) for m in s})
    assert seed_values(row, "test_gap") == pytest.approx(gaps)
    means = pd.Series({"num_seeds": 2, **{f"best_test_acc_{m}": np.mean([s[m] for s in seeds]) for m in seeds[0]}})
    assert seed_stats(means, "test_gap").mean == pytest.approx(modality_gap(means[1:]))
    assert modality_gap([0.9]) is None
