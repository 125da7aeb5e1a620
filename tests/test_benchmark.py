"""Benchmark mode: config validation, the interleaving searcher (real Optuna), and one tiny real study
(Ray Tune + Optuna + MLflow) with its report."""
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study.config import load_study_config
from trainables.errors import ConfigError

TINY_TRIAL = {"epochs": 3, "dataset": {"name": "synthetic", "size": "tiny", "n_train": 96, "n_val": 48, "n_test": 48},
              "model": {"feature_dim": 8}, "optim": {"batch_size": 32}}


def bench_raw(tmp_path, name="bench", **extra):
    raw = {"name": name, "mode": "benchmark", "methods": ["none", "ogm_ge"], "trial": TINY_TRIAL,
           "storage_path": str(tmp_path / "runs"), "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
           "num_samples": 2, "max_concurrent": 2, "seeds": [0], "asha": {"grace_period": 1, "reduction_factor": 2},
           "confirm": {"top_k": 1, "seeds": [7, 8]}}
    raw.update(extra)
    return raw


# ----------------------------------------------------------------------------- validation


def test_methods_resolve_to_labels_points_and_their_own_spaces(tmp_path):
    cfg = load_study_config(None, raw=bench_raw(tmp_path, methods=[
        "none", {"redreg": {"variant": "code", "gamma": 0.6}}, {"none": {"optim.lr": 0.05}}]))
    methods = {m.label: m for m in cfg.methods_resolved()}
    assert list(methods) == ["none", "redreg (variant=code, gamma=0.6)", "none (optim.lr=0.05)"]
    redreg = methods["redreg (variant=code, gamma=0.6)"]
    assert redreg.point == {"balancer.name": "redreg", "balancer.variant": "code", "balancer.gamma": 0.6}
    assert "balancer.gamma" not in redreg.space.params and "balancer.tau_min" in redreg.space.params  # pinned
    assert methods["none"].searched and list(methods["none"].space.params) == ["optim.lr"]
    assert not methods["none (optim.lr=0.05)"].searched  # nothing left to sample: a fixed configuration
    assert cfg.confirming() and cfg.has_baseline() and cfg.baseline_seeds() == [7, 8, 9]
    assert cfg.equivalence_margin == 1.0


@pytest.mark.parametrize("extra, expected", [
    ({"methods": ["nope"]}, "methods: unknown method 'nope'; allowed: agm, arl, "),
    ({"methods": []}, "methods: benchmark mode needs at least one method; allowed: "),
    ({"methods": ["none", "none"]}, "methods: 'none' is listed twice"),
    ({"methods": [{"redreg": {"variant": "code"}}, {"redreg": {"variant": "code"}}]},
     "methods: 'redreg (variant=code)' is listed twice"),
    ({"methods": [{"redreg": {"gama": 1}}]}, "methods.redreg (gama=1): balancer.gama: unknown key; did you mean"),
    ({"methods": [{"a": {}, "b": {}}]}, "methods: each item is a balancer name or a one-key mapping"),
    ({"search_space": "redreg"}, "search_space: benchmark mode searches each method's own space"),
    ({"trial": dict(TINY_TRIAL, balancer={"name": "redreg"})}, "trial.balancer: benchmark mode sets the balancer"),
    ({"searcher": "grid"}, "searcher: benchmark mode samples with Optuna"),
    ({"loss_settings": ["multimodal", "multimodal+unimodal"]}, "loss_settings: benchmark mode takes one"),
    ({"mode": "search", "search_space": "redreg"}, "methods: only for mode: benchmark"),
    ({"confirm": {"top_k": 1, "seeds": [0, 7]}}, "confirm.seeds: must be seeds the search never saw"),
    ({"equivalence_margin": 0}, "equivalence_margin: Input should be greater than 0"),
    ({"confirm": {"top_k": 0}}, "confirm.top_k: benchmark mode reports each method's confirmed best"),
    ({"methods": ["none", {"ogm_ge": {"dataset.n_test": 64, "optim.batch_size": 8}}]},
     "methods.ogm_ge (dataset.n_test=64, optim.batch_size=8): 'dataset.n_test' cannot be fixed per method"),
    ({"searcher": "cmaes", "metric": [{"name": "best_val_acc", "mode": "max"}, {"name": "val_gap", "mode": "min"}]},
     "searcher: cmaes"),
])
def test_bad_benchmark_config_is_one_line_naming_the_field(tmp_path, extra, expected):
    with pytest.raises(ConfigError) as err:
        load_study_config(None, raw=bench_raw(tmp_path, **extra))
    assert str(err.value).startswith(expected), str(err.value)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- the searcher (real Optuna)


def _drive(searcher, ids, value_of, start=0, stop=None):
    """Suggest and complete trials one at a time (as Tune does with max_concurrent 1); returns the specs."""
    from ray.tune.search import Searcher

    specs = []
    for n in range(start, stop or 10_000):
        spec = searcher.suggest(f"t{n}")
        if spec == Searcher.FINISHED:
            break
        assert spec is not None, "nothing running, yet the searcher waits"
        specs.append(spec)
        ids.append(f"t{n}")
        result = {"val_acc": value_of(spec), "training_iteration": 3}
        searcher.on_trial_result(f"t{n}", result)
        searcher.on_trial_complete(f"t{n}", result)
    return specs


def test_searcher_interleaves_methods_with_exact_budgets_and_survives_a_restore(tmp_path):
    """3 trials per searched method handed out in turn, each method's best confirmed once, a fixed method
    planned with the confirmation seeds; saving and restoring the searcher halfway changes nothing."""
    import optuna

    from study.benchmark import BenchmarkSearcher, optuna_study_name
    from study.search import OPTUNA_FILE

    cfg = load_study_config(None, raw=bench_raw(tmp_path, num_samples=3, methods=[
        "none", "ogm_ge", {"none": {"optim.lr": 0.05}}]))
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    searcher = BenchmarkSearcher.for_study(cfg, study_dir)
    assert searcher.total() == 1 + 1 + 2 * (3 + 1)
    value_of = lambda spec: float(spec["point"].get("optim.lr", spec["point"].get("balancer.alpha", 0)))  # noqa: E731
    ids: list[str] = []
    first = _drive(searcher, ids, value_of, 0, 5)
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = BenchmarkSearcher.for_study(cfg, study_dir)
    restored.restore(str(tmp_path / "searcher.pkl"))
    specs = first + _drive(restored, ids, value_of, 5)
    assert len(specs) == searcher.total()
    roles = [(s["role"], s.get("method")) for s in specs]
    assert roles[:2] == [("baseline", None), ("confirm", "none (optim.lr=0.05)")]
    assert specs[0]["seeds"] == [7, 8, 9] and specs[1]["seeds"] == [7, 8]
    search = [s for s in specs if s["role"] == "search"]
    assert [s["method"] for s in search] == ["none", "ogm_ge"] * 3  # interleaved, not one method after another
    assert Counter(s["method"] for s in search) == {"none": 3, "ogm_ge": 3}
    for s in search:
        assert s["point"]["balancer.name"] == s["method"] and s["seeds"] == [0]
    confirms = [s for s in specs if s["role"] == "confirm" and "confirms" in s]
    assert sorted(s["method"] for s in confirms) == ["none", "ogm_ge"]
    for c in confirms:  # the method's best by the study metric (here: its sampled value), fresh seeds
        mine = [(value_of(s), i) for s, i in zip(specs, ids) if s["role"] == "search" and s["method"] == c["method"]]
        assert c["confirms"] == max(mine)[1] and c["seeds"] == [7, 8]
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(study_dir / OPTUNA_FILE)))
    for label in ("none", "ogm_ge"):
        trials = optuna.load_study(study_name=optuna_study_name(cfg.name, label), storage=storage).trials
        assert [t.state.name for t in trials] == ["COMPLETE"] * 3


def test_method_asha_compares_a_trial_only_with_its_own_method(tmp_path):
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from study.benchmark import MethodASHA

    asha = MethodASHA(time_attr="training_iteration", max_t=4, grace_period=1, reduction_factor=2)
    asha.set_search_properties("val_acc", "max")

    def trial(tid, method):
        return SimpleNamespace(trial_id=tid, config={"role": "search", "method": method})

    good_a, weak_b = trial("a1", "a"), trial("b1", "b")
    for t in (good_a, weak_b):
        asha.on_trial_add(None, t)
    assert asha.on_trial_result(None, good_a, {"training_iteration": 1, "val_acc": 0.9}) == TrialScheduler.CONTINUE
    # b's first trial at its first rung meets no rival of its own method, however weak it is next to a's
    assert asha.on_trial_result(None, weak_b, {"training_iteration": 1, "val_acc": 0.1}) == TrialScheduler.CONTINUE
    weak_a = trial("a2", "a")
    asha.on_trial_add(None, weak_a)
    assert asha.on_trial_result(None, weak_a, {"training_iteration": 1, "val_acc": 0.1}) == TrialScheduler.STOP
    assert set(asha.by_method) == {"a", "b"}


# ----------------------------------------------------------------------------- one real study


@pytest.mark.integration
def test_two_method_benchmark_runs_as_one_study_with_equal_budgets(tmp_path, ray_local):
    """none + ogm_ge, 2 search trials each, in one Tune run: the same budget per method, one baseline, one
    confirmation per method with fresh seeds, every run tagged with its method, the report's files; a resume
    of the finished study adds no trial."""
    import optuna

    import pandas as pd

    from analysis.report import build_report
    from study.benchmark import optuna_study_name
    from study.ranking import rank_trials
    from study.runner import resume_study, run_study

    cfg = load_study_config(None, raw=bench_raw(tmp_path))
    outcome = run_study(cfg)
    assert len(outcome.results) == 1 + 2 * 2 + 2 and not outcome.results.errors
    client = MlflowClient(cfg.resolved_tracking_uri())
    info = json.loads((cfg.study_dir() / "study.json").read_text())
    parent = client.get_run(info["parent_run_id"])
    assert parent.data.tags["mmstudy.mode"] == "benchmark"
    assert parent.data.tags["mlflow.note.content"] == outcome.summary.text
    # the answer's first sentence, as analysis.benchmark.answer words it for the 2 tested methods
    lead = r"\*\*Result\.\*\* (None of the 2 methods beats|[12] of the 2 methods beat) joint training beyond noise[.:]"
    assert re.match(lead, outcome.summary.text), outcome.summary.text

    def runs():
        return client.search_runs([info["experiment_id"]],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{info['parent_run_id']}'")

    counted = Counter((r.data.tags["mmstudy.role"], r.data.tags.get("mmstudy.method")) for r in runs())
    assert counted == {("baseline", None): 1, ("search", "none"): 2, ("search", "ogm_ge"): 2,
                       ("confirm", "none"): 1, ("confirm", "ogm_ge"): 1}
    by_id = {r.data.tags["mmstudy.trial_id"]: r for r in runs()}
    for run in by_id.values():
        tags, params = run.data.tags, run.data.params
        if tags["mmstudy.role"] == "baseline":
            assert params["balancer.name"] == "none" and json.loads(tags["mmstudy.seeds"]) == [7, 8, 9]
            continue
        assert params["balancer.name"] == tags["mmstudy.method"]
        if tags["mmstudy.role"] == "confirm":
            twin = by_id[tags["mmstudy.confirms"]]
            assert twin.data.tags["mmstudy.method"] == tags["mmstudy.method"]
            assert json.loads(tags["mmstudy.point"]) == json.loads(twin.data.tags["mmstudy.point"])
            assert json.loads(tags["mmstudy.seeds"]) == [7, 8]
            rivals = [r for r in by_id.values() if r.data.tags.get("mmstudy.method") == tags["mmstudy.method"]
                      and r.data.tags["mmstudy.role"] == "search"]
            ranked = rank_trials(pd.DataFrame([{"trial_id": r.data.tags["mmstudy.trial_id"],
                                                "status": r.data.tags["mmstudy.status"], **r.data.metrics}
                                               for r in rivals]), "val_acc", "max", 3)
            assert twin.data.tags["mmstudy.trial_id"] == ranked["trial_id"].iloc[0]  # the study's ranking rule
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(cfg.study_dir() / "optuna.journal")))
    for label in ("none", "ogm_ge"):
        study = optuna.load_study(study_name=optuna_study_name("bench", label), storage=storage)
        assert len(study.trials) == 2 and "RUNNING" not in {t.state.name for t in study.trials}

    out = build_report(str(cfg.study_dir()), str(tmp_path / "report"), command="mmstudy report bench")
    for name in ("report.md", "benchmark.md", "benchmark.csv", "tuning_cost.csv", "accuracy_vs_gap.png"):
        assert name in out["files"] and (tmp_path / "report" / name).is_file()
    report = (tmp_path / "report" / "report.md").read_text()
    assert report.splitlines()[2] == out["summary"].text
    table = pd.read_csv(tmp_path / "report" / "benchmark.csv")
    assert list(table["method"]) == ["joint training (baseline)", "none", "ogm_ge"]
    assert list(table["n"]) == [3, 2, 2] and table["f1"].notna().all() and table["gap"].notna().all()
    assert {"shapley_audio", "shapley_visual", "p_holm", "verdict"} <= set(table.columns)
    cost = pd.read_csv(tmp_path / "report" / "tuning_cost.csv")
    assert list(cost["search_trials"]) == [2, 2] and (cost["search_hours"] > 0).all() and (cost["unit"] == "CPU-h").all()
    assert (cost["search_trial_epochs"] <= 2 * 3).all() and list(cost["confirm_seed_epochs"]) == [6, 6]

    again = resume_study(cfg.study_dir())
    assert len(again.results) == 7
    assert Counter((r.data.tags["mmstudy.role"], r.data.tags.get("mmstudy.method")) for r in runs()) == counted


@pytest.mark.integration
def test_a_killed_benchmark_resumes_with_exact_budgets(tmp_path):
    """SIGKILL the driver once two trials have finished, resume: every method still has exactly num_samples
    search trials and one confirmation, one baseline, no trial ran twice, each Optuna study holds its
    method's trials once (none left RUNNING). One fresh retry, reported as a warning, as for the search
    study's kill-and-resume test (tests/test_study_integration.py: the same known race with Tune's snapshot)."""
    import warnings

    try:
        kill_and_resume_benchmark(tmp_path / "first")
    except AssertionError as first:
        warnings.warn(f"benchmark kill-and-resume failed once, retrying in a fresh folder: {str(first)[:2000]}")
        kill_and_resume_benchmark(tmp_path / "retry")


def kill_and_resume_benchmark(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    import optuna

    from study.benchmark import optuna_study_name

    tmp_path.mkdir(parents=True)
    raw = bench_raw(tmp_path, name="killedbench", max_concurrent=1, scheduler="none")
    config = tmp_path / "killedbench.yaml"
    config.write_text(json.dumps(raw))
    tune_dir = tmp_path / "runs" / "killedbench" / "tune"

    def finished_trials() -> dict[str, int]:
        out = {}
        for result in tune_dir.glob("*/result.json"):
            lines = [json.loads(x) for x in result.read_text().splitlines() if x.strip().endswith("}")]
            if lines and lines[-1].get("training_iteration") == 3:
                out[result.parent.name] = len(lines)
        return out

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen([sys.executable, "-m", "study.cli", "run", str(config)], stdout=log,
                                  stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline and len(finished_trials()) < 2:
            time.sleep(0.5)
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-2000:]
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    time.sleep(2)
    try:
        os.killpg(driver.pid, signal.SIGKILL)  # the local Ray it had started
    except ProcessLookupError:
        pass
    before = finished_trials()
    assert 2 <= len(before) < 7
    resume = subprocess.run([sys.executable, "-m", "study.cli", "resume", str(tmp_path / "runs" / "killedbench")],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=400)
    assert resume.returncode == 0, resume.stdout[-3000:] + resume.stderr[-3000:]
    after = finished_trials()
    assert len(after) == 7 and all(after[t] == n for t, n in before.items()), (before, after)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    info = json.loads((tmp_path / "runs" / "killedbench" / "study.json").read_text())
    runs = client.search_runs([info["experiment_id"]],
                              filter_string=f"tags.`mlflow.parentRunId` = '{info['parent_run_id']}'")
    assert Counter((r.data.tags["mmstudy.role"], r.data.tags.get("mmstudy.method")) for r in runs) == {
        ("baseline", None): 1, ("search", "none"): 2, ("search", "ogm_ge"): 2, ("confirm", "none"): 1,
        ("confirm", "ogm_ge"): 1}
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(tmp_path / "runs" / "killedbench" / "optuna.journal")))
    for label in ("none", "ogm_ge"):
        states = [t.state.name for t in optuna.load_study(study_name=optuna_study_name("killedbench", label),
                                                          storage=storage).trials]
        assert states.count("COMPLETE") == 2 and "RUNNING" not in states, (label, states)


# ----------------------------------------------------------------------------- the report's statistics


def _row(trial_id, role, method, accs, val=None, **extra):
    row = {"trial_id": trial_id, "role": role, "method": method, "status": "finished", "num_seeds": len(accs),
           "seeds": list(range(len(accs))), "balancer": method or "none", "loss_setting": "multimodal",
           "epochs_run": 3, "best_val_acc": val if val is not None else sum(accs) / len(accs)}
    row.update({f"best_test_acc/seed_{s}": a for s, a in enumerate(accs)})
    row.update({f"best_test_f1/seed_{s}": a - 0.01 for s, a in enumerate(accs)})
    row.update({f"best_test_acc_audio/seed_{s}": 0.8 for s in range(len(accs))})
    row.update({f"best_test_acc_visual/seed_{s}": 0.5 + 0.01 * s for s in range(len(accs))})
    row.update({"best_test_acc_audio": 0.8, "best_test_acc_visual": 0.51}, **extra)
    return row


def test_table_one_is_welch_holm_and_tost_on_each_methods_confirmed_seeds():
    """Fixed per-seed numbers: the table's Δ, CI and Holm p are scipy's Welch test Holm-corrected across the
    methods, TOST decides 'equivalent' at the study's margin, and the answer names the method that is better."""
    import pandas as pd
    from scipy import stats

    from analysis.benchmark import answer, benchmark_table
    from analysis.stats import holm

    base = [0.800, 0.802, 0.798, 0.800]
    better = [0.90, 0.91, 0.89, 0.905]
    same = [0.8001, 0.8022, 0.7983, 0.8004]
    rows = [_row("b", "baseline", None, base),
            _row("s1", "search", "ogm_ge", [0.95], val=0.95), _row("c1", "confirm", "ogm_ge", better, confirms="s1"),
            _row("c1x", "confirm", "ogm_ge", [0.1, 0.1, 0.1, 0.1], val=0.1, confirms="s1"),  # worse on validation
            _row("c2", "confirm", "mm", same, confirms="s2")]
    trials = pd.DataFrame(rows)
    trials.attrs.update(study="t", config={"methods": ["ogm_ge", "mm", "none"], "equivalence_margin": 1.0})
    table = benchmark_table(trials, "val_acc", "max")
    assert list(table["method"]) == ["joint training (baseline)", "ogm_ge", "mm", "none"]
    assert list(table["trial_id"][:3]) == ["b", "c1", "c2"]  # c1 re-trains the search's best (s1), c2 the only one
    assert pd.isna(table.at[3, "trial_id"]) and table.at[3, "n"] == 0  # none: listed, no confirmed trial
    raw = [stats.ttest_ind(x, base, equal_var=False) for x in (better, same)]
    for i, (res, p) in enumerate(zip(raw, holm([r.pvalue for r in raw])), start=1):
        assert table.at[i, "delta"] == pytest.approx(table.at[i, "acc"] - table.at[0, "acc"])
        assert table.at[i, "delta_ci_low"] == pytest.approx(res.confidence_interval(0.95).low)
        assert table.at[i, "p_holm"] == pytest.approx(p)
    assert list(table["verdict"][1:3]) == ["better", "equivalent"]
    assert table.at[1, "f1"] == pytest.approx(sum(better) / 4 - 0.01) and table.at[1, "gap"] == pytest.approx(0.285)
    text = answer(table, 0.01)
    assert text.startswith("**Result.** 1 of the 2 methods beat joint training beyond noise: `ogm_ge`")
    assert "Equivalent to joint training within ±1 point (TOST, Holm): `mm`." in text
    assert text.endswith("Not testable (no confirmed result with 2+ seeds): `none`.")
    trials.attrs["config"]["equivalence_margin"] = 0.001  # ±0.001 points: mm can no longer be shown equivalent
    assert benchmark_table(trials, "val_acc", "max").at[2, "verdict"] == "inconclusive"


def test_each_methods_confirmed_row_follows_the_studys_ranking_rule_with_all_its_metrics():
    """An older study (no confirm_rank, no search trials to rank): two confirmations of one method tie on
    best_val_acc; with the study's metrics [val_acc max, val_gap min] the ranking rule (Pareto front first) picks
    the one with the smaller gap, whichever row comes first."""
    import pandas as pd

    from analysis.benchmark import benchmark_table

    metric = [{"name": "val_acc", "mode": "max"}, {"name": "val_gap", "mode": "min"}]
    rows = [_row("b", "baseline", None, [0.8, 0.81, 0.79]),
            _row("c_wide", "confirm", "ogm_ge", [0.70, 0.71, 0.69], val=0.9, best_val_gap=0.30, confirms="s1"),
            _row("c_narrow", "confirm", "ogm_ge", [0.85, 0.86, 0.84], val=0.9, best_val_gap=0.10, confirms="s2")]
    for order in (rows, rows[::-1]):
        trials = pd.DataFrame(order)
        trials.attrs.update(study="t", config={"methods": ["ogm_ge"], "metric": metric})
        table = benchmark_table(trials, ["val_acc", "val_gap"], ["max", "min"])
        assert table.loc[table["method"] == "ogm_ge", "trial_id"].item() == "c_narrow"


@pytest.mark.parametrize("name", ["crema_d_benchmark", "kinetics_sounds_benchmark"])
def test_paper_scale_benchmarks_validate_and_list_every_balancer(name):
    """Every registered balancer is benchmarked at paper scale (OGM without GE is covered by ogm_ge)."""
    from trainables.balancers.registry import balancer_names

    cfg = load_study_config(str(Path(__file__).parent.parent / "study" / "configs" / f"{name}.yaml"))
    assert set(balancer_names()) - {m.name for m in cfg.methods_resolved()} == {"ogm"}
