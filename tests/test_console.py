"""The live view of `mmstudy run`, driven by a real Tune run with a real ASHA scheduler (no torch, no MLflow)."""
import io

import pytest
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from study.console import StudyConsole, format_duration, short_names
from study.status import trial_status
from study.ui import runs_table_url, served_url


def test_short_names_keep_a_parent_only_where_last_parts_clash():
    assert short_names(["balancer.gamma", "balancer.beta"]) == {"balancer.gamma": "gamma", "balancer.beta": "beta"}
    assert short_names(["optim.lr", "balancer.lr"]) == {"optim.lr": "optim.lr", "balancer.lr": "balancer.lr"}


def test_durations_read_as_a_person_writes_them():
    assert [format_duration(s) for s in (5, 75, 3725)] == ["5s", "1m15s", "1h02m"]


def test_trial_status_from_the_last_result():
    assert trial_status({"training_iteration": 3}, 3) == ("finished", "")
    assert trial_status({"training_iteration": 1}, 3)[0] == "pruned"
    assert trial_status({"training_iteration": 2, "diverged": 1.0, "status_reason": "loss is nan"}, 3) == \
        ("diverged", "loss is nan")


def test_links_open_the_classic_runs_table():
    assert runs_table_url("http://127.0.0.1:5000/", "7") == \
        "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
    assert served_url("http://mlflow:5000") == "http://mlflow:5000" and served_url("sqlite:///mlflow.db") is None


def constant_learner(config):
    for epoch in range(1, 5):
        tune.report({"val_acc": config["point"]["quality"] * epoch / 4, "train_loss": 1.0 / epoch})


@pytest.mark.integration
def test_console_lines_follow_the_study_metric_and_asha(tmp_path, ray_local):
    out = io.StringIO()
    console = StudyConsole("demo", metric="val_acc", mode="max", total=5, epochs=4, out=out, every_s=0.0)
    tuner = tune.Tuner(
        constant_learner,
        # the joint-training baseline (role baseline) is the strongest here, but it is no candidate for "best"
        param_space={"point": {"quality": tune.grid_search([0.9, 0.8, 0.2, 0.1, 1.0])},
                     "role": tune.sample_from(lambda spec: "baseline" if spec.config.point.quality == 1.0 else "search")},
        tune_config=tune.TuneConfig(metric="val_acc", mode="max", max_concurrent_trials=1,
                                    scheduler=ASHAScheduler(grace_period=1, reduction_factor=2, max_t=4)),
        run_config=tune.RunConfig(storage_path=str(tmp_path), callbacks=[console], verbose=0),
    )
    tuner.fit()
    text = out.getvalue()
    ended = [line for line in text.splitlines() if line.lstrip().startswith(("finished", "pruned"))]
    assert len(ended) == 5, text
    assert any(line.lstrip().startswith("pruned") for line in ended), text  # ASHA stopped the later, weaker ones
    final = text.strip().splitlines()[-1]
    assert "best val_acc 0.9000" in final and "quality=0.9" in final, final
    assert "Checkpoint" not in text and "train_loss" not in text
