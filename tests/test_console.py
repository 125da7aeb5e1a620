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


# ----------------------------------------------------------------------------- the plan and the ETA

def study_cfg(**fields):
    from study.config import load_study_config

    raw = {"name": "eta", "trial": {"epochs": 6, "balancer": {"name": "redreg"}}, "search_space": "redreg",
           "num_samples": 4, "seeds": [0], "asha": {"grace_period": 2, "reduction_factor": 3},
           "baseline": {"seeds": [10, 11, 12]}, "confirm": {"top_k": 2, "seeds": [10, 11, 12]}}
    return load_study_config(None, raw={**raw, **fields})


def test_asha_expectation_by_hand():
    from study.console import StudyPlan
    from study.search import asha_rungs

    assert asha_rungs(12, 2, 3) == (2, 6) and asha_rungs(8, 2, 2) == (2, 4) and asha_rungs(6, 2, 3) == (2,)
    assert asha_rungs(10, 2, 1.5) == (2, 3, 5, 7) and asha_rungs(12, 9, 3) == (9,)  # judged at the first epoch past 4.5
    plan = StudyPlan(12, {"search": 10, "baseline": 1}, {"search": 1, "baseline": 3}, (2, 6), 3.0)
    assert plan.expected_epochs("search") == pytest.approx(2 + 4 / 3 + 6 / 9)  # the quickstart: 4 epochs
    assert plan.expected_epochs("search", reached=2) == pytest.approx(6 + 6 / 3)  # past rung 2: surely to 6
    assert plan.expected_epochs("search", reached=7) == 12 and plan.expected_epochs("baseline") == 12
    assert plan.seed_epochs() == pytest.approx(10 * 4 + 3 * 12)


@pytest.mark.parametrize("config", ["quickstart", "smoke", "redreg_sensitivity", "compare_synthetic",
                                    "benchmark_synthetic"])
def test_the_plan_has_the_trials_the_searcher_runs(config, tmp_path):
    """study_plan reads the config only; its trial count must be what the study's searcher hands Tune."""
    from study.config import load_study_config
    from study.console import study_plan
    from study.runner import study_searcher

    cfg = load_study_config(f"study/configs/{config}.yaml", [f"storage_path={tmp_path}"])

    class Folder:  # the searcher needs only the study folder (its Optuna journal)
        config, dir = cfg, tmp_path

    assert study_plan(cfg).total == study_searcher(Folder).total()


def test_plan_of_a_search_counts_every_role_with_its_own_seeds():
    from study.console import study_plan

    plan = study_plan(study_cfg())
    assert plan.trials == {"baseline": 1, "search": 4, "confirm": 2}
    assert plan.seeds == {"baseline": 3, "search": 1, "confirm": 3} and plan.rungs == (2,)
    assert study_plan(study_cfg(scheduler="none")).rungs == ()
    grid = study_plan(study_cfg(mode="sensitivity", confirm={"top_k": 0}, seeds=[0, 1]))
    assert grid.rungs == () and grid.trials["sensitivity"] == 30 and grid.seeds["sensitivity"] == 2


class ScriptedTrial:
    def __init__(self, trial_id, role, seeds, quality=0.5):
        self.trial_id, self.last_result, self.status = trial_id, {}, "PENDING"
        self.config = {"point": {"balancer.gamma": quality}, "role": role, "seeds": list(seeds)}

    def __str__(self):
        return self.trial_id


def test_eta_counts_seed_epochs_of_every_role_and_reaches_zero():
    """A scripted study (baseline, four ASHA search trials, two confirmations) on a fake clock where one
    seed-epoch takes 0.5 s: the ETA is the work left x 0.5 s, falls from trial to trial and ends at 0; done
    counts every ended trial (finished, pruned, diverged, failed)."""
    from study.console import study_plan

    now = [100.0]
    out = io.StringIO()
    console = StudyConsole("eta", "val_acc", "max", plan=study_plan(study_cfg()), out=out, every_s=0.0,
                           clock=lambda: now[0])

    def run(trial, epochs, end="complete"):
        console.on_trial_start(0, [], trial)
        for epoch in range(1, epochs + 1):
            now[0] += 0.5 * len(trial.config["seeds"])
            trial.last_result = {"training_iteration": epoch, "val_acc": 0.5, "best_val_acc": 0.5}
            if end == "diverged" and epoch == epochs:
                trial.last_result = {"training_iteration": epoch, "diverged": 1.0, "val_acc": float("nan")}
            console.on_trial_result(0, [], trial, trial.last_result)
        if end == "error":
            console.on_trial_error(0, [], trial)
        else:
            console.on_trial_complete(0, [], trial)
        return console.eta(), console.summary_line()

    assert console.eta() is None  # nothing trained yet: no rate
    search = 4 * (2 + 4 / 3)  # four search trials not started, each expected to run 2 + (6 - 2) / 3 epochs
    eta, line = run(ScriptedTrial("base", "baseline", [10, 11, 12]), 6)
    assert eta == pytest.approx(0.5 * (search + 2 * 3 * 6)), line  # 18 seed-epochs in 9 s; confirmations 3 x 6 each
    assert "done 1/7" in line and "ETA ~25s (18/67 seed-epochs)" in line, line
    etas = [eta]
    for trial, epochs, end in ((ScriptedTrial("s1", "search", [0], 0.9), 6, "complete"),
                               (ScriptedTrial("s2", "search", [0], 0.2), 2, "complete"),  # ASHA stops it: pruned
                               (ScriptedTrial("s3", "search", [0], 0.8), 6, "complete"),
                               (ScriptedTrial("s4", "search", [0], 0.1), 1, "diverged"),
                               (ScriptedTrial("c1", "confirm", [10, 11, 12]), 6, "complete"),
                               (ScriptedTrial("c2", "confirm", [10, 11, 12]), 3, "error")):
        eta, line = run(trial, epochs, end)
        etas.append(eta)
    assert all(later < earlier for earlier, later in zip(etas, etas[1:])), etas
    assert etas[-1] == 0 and "done 7/7" in line and "pruned 1" in line and "failed 2" in line, line
    assert "ETA ~0s" in line, line
    console.on_experiment_end([])
    assert console.eta() == 0 and "ETA ~0s" in out.getvalue().strip().splitlines()[-1]


def test_eta_of_a_running_trial_follows_its_rungs():
    from study.console import study_plan

    now = [0.0]
    console = StudyConsole("eta", "val_acc", "max", plan=study_plan(study_cfg(confirm={"top_k": 0})),
                           clock=lambda: now[0], out=io.StringIO())
    trial = ScriptedTrial("s1", "search", [0])
    console.on_trial_start(0, [], trial)
    now[0] = 1.0
    console.on_trial_result(0, [], trial, {"training_iteration": 1})
    waiting = 3 * (2 + 4 / 3) + 1 * 3 * 6  # three search trials and the baseline not started
    assert console.work() == (1, pytest.approx(1 + 4 / 3 + waiting))  # before rung 2: surely to 2, then 4/3 more
    now[0] = 3.0
    console.on_trial_result(0, [], trial, {"training_iteration": 3})
    assert console.work() == (3, pytest.approx(3 + waiting))  # past rung 2 (promoted): to the budget, 6
    assert console.eta() == pytest.approx(3 + waiting)  # 1 seed-epoch per second


class FakeClock:
    """A clock that pickles with the console, as Tune pickles it."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_resumed_study_counts_what_it_had_done_before():
    """After `mmstudy resume` Tune restores ended trials without an event: the console (unpickled from the
    study's tuner.pkl, as Tune hands it back) still counts them as done, keeps the best of them, and its rate
    counts only what this process trains."""
    import pickle

    from study.console import study_plan

    before = StudyConsole("eta", "val_acc", "max", plan=study_plan(study_cfg()), out=io.StringIO(), every_s=0.0,
                          clock=FakeClock())
    console = pickle.loads(pickle.dumps(before))  # what the resumed driver gets: the state of the study's start
    console.out = out = io.StringIO()
    ended = []
    for trial_id, role, seeds, epochs, status in (("base", "baseline", [10, 11, 12], 6, "TERMINATED"),
                                                 ("s1", "search", [0], 6, "TERMINATED"),
                                                 ("s2", "search", [0], 2, "TERMINATED"),
                                                 ("s3", "search", [0], 1, "ERROR")):
        trial = ScriptedTrial(trial_id, role, seeds, quality=0.9 if trial_id == "s1" else 0.2)
        trial.status, trial.last_result = status, {"training_iteration": epochs, "val_acc": 0.8,
                                                   "best_val_acc": 0.8 if trial_id == "s1" else 0.3}
        ended.append(trial)
    running = ScriptedTrial("s4", "search", [0])
    running.status, running.last_result = "RUNNING", {"training_iteration": 2, "val_acc": 0.5, "best_val_acc": 0.5}
    console.on_trial_start(0, ended + [running], running)  # restored from its checkpoint after epoch 2
    console.on_step_end(0, ended + [running])
    line = out.getvalue().strip().splitlines()[-1]
    assert "done 4/7" in line and "running 1" in line and "pruned 1" in line and "failed 1" in line, line
    assert "best best_val_acc 0.8000 (s1: gamma=0.9)" in line, line
    assert console.work_before == 18 + 6 + 2 + 1 + 2 and console.eta() is None  # nothing trained here yet
    console.clock.now = 2.0
    console.on_trial_result(0, ended + [running], running, {"training_iteration": 3, "val_acc": 0.5})
    done, left = console.work()
    assert done == 30 and console.eta() == pytest.approx(2.0 * left)  # one seed-epoch in 2 s, by this process
