"""Report from real MLflow stores: one built by a tiny real study, one written with MlflowClient."""
import json

import matplotlib.image as mpimg
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from analysis import load_histories, load_study
from analysis.report import build_report
from analysis.tables import comparison_table, to_markdown
from study.config import load_study_config
from study.runner import run_study
from trainables.errors import ConfigError
from trainables.tune_trainable import summarize

TINY = {"epochs": 3, "dataset": {"name": "synthetic", "size": "tiny", "n_train": 256, "n_val": 48, "n_test": 48},
        "model": {"feature_dim": 8}, "optim": {"batch_size": 32}}


def assert_real_png(path, min_w=400, min_h=250):
    img = mpimg.imread(path)
    assert img.shape[0] >= min_h and img.shape[1] >= min_w, img.shape
    assert float(np.std(img[..., :3])) > 0.02, "image is blank"


@pytest.fixture(scope="module")
def search_study(tmp_path_factory, ray_local):
    tmp = tmp_path_factory.mktemp("report")
    raw = {"name": "rep", "trial": dict(TINY, balancer={"name": "redreg", "variant": "code"}), "storage_path": str(tmp / "runs"), "tracking_uri": f"sqlite:///{tmp}/mlflow.db",
           "search_space": {"balancer": "redreg", "params": {
               "gamma": {"low": 0.0, "high": 2.0}, "beta": {"low": 0.1, "high": 2.0, "log": True},
               "optim.lr": {"low": 0.005, "high": 0.2, "log": True}}},
           "num_samples": 4, "scheduler": "none", "seeds": [0, 1], "baseline": {"enabled": False}, "confirm": {"top_k": 0},
           "loss_settings": ["multimodal", "multimodal+unimodal"]}
    cfg = load_study_config(None, raw=raw)
    run_study(cfg, verbose=0)
    return cfg


def test_load_study_matches_the_tune_results(search_study):
    trials = load_study(str(search_study.study_dir()))
    assert len(trials) == 4 and set(trials["status"]) == {"finished"}
    assert set(trials["loss_setting"]) <= {"multimodal", "multimodal+unimodal"}
    tune_dir = search_study.study_dir() / "tune"
    for _, row in trials.iterrows():
        result = next(tune_dir.glob(f"*{row['trial_id']}*/result.json"))
        last = json.loads(result.read_text().splitlines()[-1])
        assert row["best_test_acc"] == pytest.approx(last["best_test_acc"])
        assert row["param.balancer.gamma"] == pytest.approx(last["config"]["point"]["balancer.gamma"])
        assert row["seeds"] == [0, 1] and row["epochs_run"] == 3
    history = load_histories(trials, ["val_acc", "rlc_audio"])
    assert len(history) == 12 and set(history["epoch"]) == {1, 2, 3}


def test_report_writes_real_figures_tables_and_logs_them(search_study, tmp_path):
    result = build_report(str(search_study.study_dir()), str(tmp_path / "out"), command="mmstudy report rep")
    out = tmp_path / "out"
    for name in ("sensitivity.png", "dynamics.png", "importance.png"):
        assert_real_png(out / name)
    assert (out / "sensitivity.pdf").stat().st_size > 1000
    md = (out / "report.md").read_text()
    assert "mmstudy report rep" in md and "![sensitivity](sensitivity.png)" in md and "name: rep" in md
    table_md = (out / "comparison.md").read_text()
    assert "| n | Accuracy |" in table_md and "| Shapley audio |" in table_md and "| Δ vs joint |" in table_md
    assert md.split("\n\n")[1].startswith("**Result (redreg).**")  # the report leads with the summary
    client = MlflowClient(search_study.resolved_tracking_uri())
    trials = load_study(str(search_study.study_dir()))
    logged = {a.path for a in client.list_artifacts(trials.attrs["parent_run_id"], "report")}
    assert {"report/report.md", "report/sensitivity.png", "report/comparison.csv"} <= logged
    assert result["counts"] == {"finished": 4}


def test_seed_summary_by_hand():
    records = [{"val_acc": 0.5, "test_acc": 0.4, "val_f1": 0.5, "test_f1": 0.3, "dominant": "audio"},
               {"val_acc": 0.7, "test_acc": 0.6, "val_f1": 0.5, "test_f1": 0.5, "dominant": "audio"}]
    bests = [{"epoch": 2, "val_acc": 0.5, "test_acc": 0.4, "test_f1": 0.3}, {"epoch": 4, "val_acc": 0.7, "test_acc": 0.8, "test_f1": 0.5}]
    out = summarize(records, bests)
    assert out["val_acc"] == pytest.approx(0.6) and out["val_acc_std"] == pytest.approx(0.1 * 2 ** 0.5)
    assert out["best_test_acc"] == pytest.approx(0.6) and out["best_test_acc_std"] == pytest.approx(0.2 * 2 ** 0.5)
    assert out["best_epoch"] == 3 and out["dominant"] == "audio"
    assert out["best_test_acc/seed_0"] == 0.4 and out["best_test_acc/seed_1"] == 0.8
    one = summarize(records[:1], bests[:1])
    assert "best_test_acc_std" not in one and "val_acc_std" not in one  # one seed: no spread, never "± 0.00"


def _fake_study(tmp_path, children):
    """A study written with MlflowClient: parent + children carrying the tags mmstudy writes."""
    uri = f"sqlite:///{tmp_path}/fake.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("mmstudy/fake")
    parent = client.create_run(exp, tags={"mmstudy.kind": "study", "mmstudy.study": "fake"})
    client.log_param(parent.info.run_id, "mode", "compare")
    for i, (name, setting, status, metrics) in enumerate(children):
        run = client.create_run(exp, tags={
            "mlflow.parentRunId": parent.info.run_id, "mmstudy.trial_id": f"t{i}", "mmstudy.status": status,
            "mmstudy.sweep_param": "variant", "mmstudy.sweep_value": name, "mmstudy.seeds": "[0, 1, 2]",
            "mmstudy.trial_config": json.dumps({"balancer": {"name": name}, "loss_setting": setting})})
        for step, (key, value) in enumerate(metrics.items()):
            client.log_metric(run.info.run_id, key, value, step=1)
        client.log_metric(run.info.run_id, "epoch", 1, step=1)
    return uri


def test_comparison_table_numbers_and_bold_by_hand(tmp_path):
    def m(acc, a, v):
        return {"best_val_acc": acc, "best_test_acc": acc, "best_test_acc_std": 0.01, "best_test_acc_audio": a,
                "best_test_acc_audio_std": 0.02, "best_test_acc_visual": v, "best_test_acc_visual_std": 0.03}
    uri = _fake_study(tmp_path, [("none", "multimodal", "finished", m(0.70, 0.65, 0.30)),
                                 ("redreg", "multimodal", "finished", m(0.75, 0.60, 0.45)),
                                 ("bmm", "multimodal", "running", m(0.99, 0.99, 0.99))])
    trials = load_study("fake", tracking_uri=uri)
    table = comparison_table(trials)
    assert list(table["method"]) == ["none", "redreg"]  # the running trial is not reported
    assert list(table["gap"]) == pytest.approx([0.35, 0.15])
    md = to_markdown(table)
    # Runs without per-seed values (recorded before they existed): mean ± std, no interval, no test.
    assert ("| redreg | MM | 3 | **75.00 ± 1.00** | 60.00 ± 2.00 | **45.00 ± 3.00** | **15.00** | "
            "+5.00 (no test: per-seed values not recorded) | – | – |") in md
    assert "| none | MM | 3 | 70.00 ± 1.00 | **65.00 ± 2.00** | 30.00 ± 3.00 | 35.00 | baseline | – | – |" in md


def test_report_on_a_running_study_covers_what_finished(tmp_path):
    def m(acc):
        return {"best_val_acc": acc, "best_test_acc": acc, "best_test_acc_audio": acc, "best_test_acc_visual": acc / 2,
                "rlc_audio": 1.0, "rlc_visual": 0.5, "dgr_audio": 0.1, "dgr_visual": 0.2, "rs_audio": 1e-3,
                "rs_visual": 2e-3}
    uri = _fake_study(tmp_path, [("none", "multimodal", "finished", m(0.6)), ("redreg", "multimodal", "running", m(0.1))])
    result = build_report("fake", str(tmp_path / "out"), tracking_uri=uri, command="x")
    assert result["counts"] == {"finished": 1, "running": 1}
    assert "still running" in (tmp_path / "out" / "report.md").read_text()
    assert_real_png(tmp_path / "out" / "dynamics.png")


def test_report_on_an_all_failed_study_is_a_clear_error(tmp_path):
    uri = _fake_study(tmp_path, [("none", "multimodal", "failed", {"best_val_acc": 0.1}),
                                 ("redreg", "multimodal", "diverged", {"best_val_acc": 0.1})])
    with pytest.raises(ConfigError, match=r"study 'fake' has no finished trial yet \(1 diverged, 1 failed\)"):
        build_report("fake", str(tmp_path / "out"), tracking_uri=uri)
    assert not (tmp_path / "out").exists()


def _study_with_roles(tmp_path, metric):
    """A search written with MlflowClient as mmstudy writes it: a 3-seed baseline, 1-seed search trials and
    3-seed confirmation trials, per-seed best-epoch values, the study snapshot on the parent run."""
    import yaml
    from study.records import SNAPSHOT_ARTIFACT

    uri = f"sqlite:///{tmp_path}/roles.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("mmstudy/roles")
    parent = client.create_run(exp, tags={"mmstudy.kind": "study", "mmstudy.study": "roles"}).info.run_id
    (tmp_path / SNAPSHOT_ARTIFACT).write_text(yaml.safe_dump({"name": "roles", "mode": "search", "metric": metric,
                                                              "search_space": "redreg"}))
    client.log_artifact(parent, str(tmp_path / SNAPSHOT_ARTIFACT))
    trials = [("base", "baseline", "none", {}, [0.80, 0.82, 0.81], [0.40, 0.45, 0.41]),
              ("s0", "search", "redreg", {"balancer.gamma": 0.2}, [0.95], [0.70]),
              ("s1", "search", "redreg", {"balancer.gamma": 1.4}, [0.70], [0.60]),
              ("s2", "search", "redreg", {"balancer.gamma": 0.9}, [0.85], [0.65]),
              ("c0", "confirm", "redreg", {"balancer.gamma": 0.2}, [0.84, 0.85, 0.86], [0.60, 0.61, 0.62]),
              ("c1", "confirm", "redreg", {"balancer.gamma": 0.9}, [0.81, 0.83, 0.80], [0.62, 0.63, 0.64])]
    for tid, role, name, point, acc, visual in trials:
        seeds = [0] if role == "search" else [1000, 1001, 1002]
        run = client.create_run(exp, tags={
            "mlflow.parentRunId": parent, "mmstudy.trial_id": tid, "mmstudy.status": "finished", "mmstudy.role": role,
            "mmstudy.seeds": json.dumps(seeds), "mmstudy.point": json.dumps(point),
            "mmstudy.trial_config": json.dumps({"balancer": {"name": name, **{k.split(".")[1]: v for k, v in point.items()}},
                                                "loss_setting": "multimodal"})}).info.run_id
        per_seed = {}
        for i, (s, a, v) in enumerate(zip(seeds, acc, visual)):
            for key, value in (("test_acc", a), ("val_acc", a), ("test_acc_audio", 0.83 + 0.02 * i), ("test_acc_visual", v),
                               ("val_gap", 0.85 - v)):
                per_seed[f"best_{key}/seed_{s}"] = value
        client.set_tag(run, "mmstudy.per_seed", json.dumps(per_seed))  # as the trial writer records them
        for key, values in (("test_acc", acc), ("val_acc", acc), ("val_gap", [0.85 - v for v in visual])):
            client.log_metric(run, f"best_{key}", float(np.mean(values)))
        client.log_metric(run, "best_test_acc_audio", 0.85)
        client.log_metric(run, "best_test_acc_visual", float(np.mean(visual)))
        for epoch in (1, 2):
            client.log_metric(run, "rlc_audio", 0.1 * epoch, step=epoch)
            client.log_metric(run, "rlc_visual", 0.2 * epoch, step=epoch)
    return uri


def test_report_leads_with_the_confirmed_answer_against_joint_training(tmp_path):
    from scipy import stats

    from analysis.plots import sensitivity_figure
    from analysis.sensitivity import analyse
    from analysis.stats import holm
    from search_spaces import load_space

    uri = _study_with_roles(tmp_path, {"name": "val_acc", "mode": "max"})
    result = build_report("roles", str(tmp_path / "out"), tracking_uri=uri, command="x", log_to_mlflow=False)
    md = (tmp_path / "out" / "report.md").read_text()
    first = md.split("\n\n")[1]
    assert first.startswith("**Result (redreg).**") and "re-trained with fresh seeds 1000, 1001, 1002" in first
    assert "`redreg (gamma=0.2)`" in first  # c0: the better confirmed validation, not s0's lucky single seed
    base = [0.80, 0.82, 0.81]
    p = holm([stats.ttest_ind(c, base, equal_var=False).pvalue for c in ([0.84, 0.85, 0.86], [0.81, 0.83, 0.80])])
    assert result["summary"].metrics["best_minus_baseline_p"] == pytest.approx(p[0])
    assert result["summary"].metrics["best_minus_baseline"] == pytest.approx(0.04)
    table = comparison_table(load_study("roles", tracking_uri=uri))
    assert list(table["method"][:3]) == ["none", "redreg (gamma=0.2)", "redreg (gamma=0.9)"]
    assert list(table["delta_p"][1:3]) == pytest.approx(p)
    assert "± 0.00" not in md and "| baseline | – | – |" in md
    # s0: one seed, no spread, no test, and not bold (confirmation replaces a one-seed search number)
    assert "| redreg (gamma=0.2) | search | MM | 1 | 95.00 | 83.00 | 70.00 | 13.00 | +14.00 (no test: one seed) |" in md
    assert "| 3 | **85.00 ± 1.00 [82.52, 87.48]** |" in md  # the confirmed best is bold
    assert_real_png(tmp_path / "out" / "dynamics.png")
    from analysis.report import pick_dynamics_trials
    assert list(pick_dynamics_trials(load_study("roles", tracking_uri=uri), result["summary"].best_trial_id)) == ["c0", "base"]
    # the sensitivity figure draws joint training as a line at its mean and a band over its 95 % CI (of the
    # study's metric, val_acc, here equal to test_acc: every search trial finished, so at the full budget)
    trials = load_study("roles", tracking_uri=uri)
    sens = analyse(trials, trials.attrs["config"], load_space("redreg"), "val_acc", "max")
    assert sens.kind == "search" and sorted(sens.points["trial_id"]) == ["s0", "s1", "s2"]  # not the confirmations
    fig = sensitivity_figure(sens, load_space("redreg"), "roles")
    ax = fig.axes[0]
    ci = stats.t.interval(0.95, 2, loc=np.mean(base), scale=stats.sem(base))
    assert any(np.allclose(line.get_ydata(), 100 * np.mean(base)) for line in ax.get_lines())
    spans = [p.get_extents() for p in ax.patches]
    assert any(np.allclose(ax.transData.inverted().transform([[0, e.y0], [0, e.y1]])[:, 1], 100 * np.array(ci), atol=0.05)
               for e in spans)


def test_multi_objective_report_draws_the_pareto_front_with_the_baseline(tmp_path):
    from analysis.plots import pareto_front

    metric = [{"name": "val_acc", "mode": "max"}, {"name": "val_gap", "mode": "min"}]
    uri = _study_with_roles(tmp_path, metric)
    result = build_report("roles", str(tmp_path / "out"), tracking_uri=uri, command="x", log_to_mlflow=False)
    assert "pareto.png" in result["files"] and "![pareto](pareto.png)" in (tmp_path / "out" / "report.md").read_text()
    assert_real_png(tmp_path / "out" / "pareto.png")
    points = np.array([[0.9, 0.3], [0.8, 0.1], [0.7, 0.2], [0.9, 0.4]])
    assert list(pareto_front(points, ["max", "min"])) == [0, 1]


def test_a_study_folder_is_read_from_one_tracking_uri_rule(tmp_path):
    """analysis.load.resolve_study and records.existing_store (report, ui) read the store with one rule
    (records.study_tracking_uri): the override, else the folder's study.json."""
    from analysis.load import resolve_study
    from study.records import STUDY_FILE, existing_store, study_tracking_uri

    folder_uri = f"sqlite:///{tmp_path / 'gone.db'}"
    (tmp_path / STUDY_FILE).write_text(json.dumps({"name": "s", "tracking_uri": folder_uri, "experiment_id": "1",
                                                   "parent_run_id": "p", "config": {"name": "s", "search_space": "redreg"}}))
    assert resolve_study(str(tmp_path)).tracking_uri == study_tracking_uri(str(tmp_path)) == folder_uri
    override = f"sqlite:///{tmp_path / 'other.db'}"
    assert resolve_study(str(tmp_path), override).tracking_uri == study_tracking_uri(str(tmp_path), override) == override
    with pytest.raises(ConfigError, match=f"no MLflow store at '{folder_uri}'"):
        existing_store(str(tmp_path))
