"""Fault injection: diverging and crashing trials, storage, unsafe input, MLflow going away (issue 7)."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
from mlflow.tracking import MlflowClient

from study.config import load_study_config
from study.runner import run_study
from trainables.config import build_trial_config
from trainables.trainer import Trainer

pytestmark = pytest.mark.integration

TINY = {"epochs": 3, "dataset": {"name": "synthetic", "size": "tiny", "n_train": 64, "n_val": 32, "n_test": 32},
        "model": {"feature_dim": 8}, "optim": {"batch_size": 32}}


def compare_study(tmp_path, name, variants, **extra):
    raw = {"name": name, "mode": "compare", "trial": TINY, "variants": variants, "storage_path": str(tmp_path / "runs"),
           "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "max_concurrent": 2, "metric": {"name": "best_val_acc"}}
    raw.update(extra)
    return load_study_config(None, raw=raw)


def child_runs_by_variant(cfg):
    info = json.loads((cfg.study_dir() / "study.json").read_text())
    client = MlflowClient(cfg.resolved_tracking_uri())
    runs = client.search_runs([info["experiment_id"]], filter_string=f"tags.`mlflow.parentRunId` = '{info['parent_run_id']}'")
    return client, {r.data.tags["mmstudy.sweep_value"]: r for r in runs}


def test_crashing_trial_is_retried_from_its_checkpoint_then_marked_failed(tmp_path, ray_local):
    variants = {
        "once": {"balancer": {"name": "fault_balancers:CrashAtEpoch", "marker": str(tmp_path / "once.marker")}},
        "always": {"balancer": {"name": "fault_balancers:CrashAtEpoch", "marker": str(tmp_path / "always.marker"),
                                "always": True}},
    }
    cfg = compare_study(tmp_path, "crash", variants, max_failures=1)
    results = run_study(cfg).results
    assert len(results.errors) == 1  # only the always-crashing trial, after its retry
    client, runs = child_runs_by_variant(cfg)
    once = runs["once"]
    assert once.data.tags["mmstudy.status"] == "finished"
    assert [m.step for m in client.get_metric_history(once.info.run_id, "val_acc")] == [1, 2, 3]
    trial_dir = next((cfg.study_dir() / "tune").glob(f"*{once.data.tags['mmstudy.trial_id']}*"))
    # Tune copies result.json back from storage when it retries a trial, so its first lines depend on how far the
    # sync had got; what the retry itself reports does not: it restored epoch 1's checkpoint, so its first result
    # is epoch 2 (iterations_since_restore 1), and epoch 1 was not trained twice.
    reported = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
    retry_start = [r for r in reported if r["iterations_since_restore"] == 1][-1]
    assert retry_start["training_iteration"] == 2 and reported[-1]["training_iteration"] == 3, reported
    always = runs["always"]
    assert always.data.tags["mmstudy.status"] == "failed" and always.info.status == "FAILED"
    assert "injected fault at epoch 2" in always.data.tags["mmstudy.status_reason"]


def _cli(args, cwd, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "study.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env or dict(os.environ), timeout=timeout)


def test_storage_that_is_not_a_folder_is_a_clear_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    config = tmp_path / "s.yaml"
    config.write_text(json.dumps({"name": "s", "trial": TINY, "search_space": "none",
                                  "storage_path": str(tmp_path / "afile" / "runs"),
                                  "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}))
    proc = _cli(["run", str(config)], tmp_path)
    assert proc.returncode == 2 and "storage_path:" in proc.stderr and "is a file, not a folder" in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_yaml_is_never_evaluated(tmp_path):
    target = tmp_path / "pwned"
    config = tmp_path / "evil.yaml"
    config.write_text(f'name: !!python/object/apply:os.system ["touch {target}"]\n')
    proc = _cli(["run", str(config)], tmp_path)
    assert proc.returncode == 2 and "is not valid YAML" in proc.stderr and "Traceback" not in proc.stderr
    assert not target.exists()


class _Evil:
    def __reduce__(self):
        return (os.system, ("true",))


def test_checkpoints_load_weights_only(tmp_path):
    trainer = Trainer(build_trial_config(TINY))
    path = tmp_path / "evil.pt"
    torch.save({"model": _Evil()}, path)
    with pytest.raises(Exception, match="Weights only load failed"):
        trainer.load(str(path))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_mlflow(tmp_path, port):
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--workers", "1",
                             "--default-artifact-root", str(tmp_path / "artifacts")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            # tracking only: without MLflow's job runner (8 more processes) it is up in half the time
                            env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            MlflowClient(f"http://127.0.0.1:{port}").search_experiments(max_results=1)
            return proc
        except Exception:  # noqa: BLE001
            time.sleep(1)
    proc.kill()
    raise RuntimeError("mlflow server did not start")


def _stop(proc):
    import signal

    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_mlflow_down_at_start_is_a_clear_error_before_any_trial(tmp_path):
    port = _free_port()
    config = tmp_path / "s.yaml"
    config.write_text(json.dumps({"name": "s", "trial": TINY, "search_space": "none", "storage_path": str(tmp_path / "runs"),
                                  "tracking_uri": f"http://127.0.0.1:{port}"}))
    env = dict(os.environ, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    proc = _cli(["run", str(config)], tmp_path, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"tracking_uri: cannot reach MLflow at 'http://127.0.0.1:{port}'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_ray_address_where_nothing_answers_is_a_clear_error_at_once(tmp_path):
    port = _free_port()
    config = tmp_path / "s.yaml"
    config.write_text(json.dumps({"name": "s", "trial": TINY, "search_space": "none", "storage_path": str(tmp_path / "runs"),
                                  "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}))
    start = time.time()
    proc = _cli(["run", str(config), "--address", f"127.0.0.1:{port}"], tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"mmstudy: error: ray_address: nothing answers at '127.0.0.1:{port}' ([Errno 111] Connection refused); start "
        "the head node with `ray start --head` and give its address, or leave ray_address unset for a local Ray"]
    assert time.time() - start < 60  # Ray alone retries a silent address for minutes
    assert not (tmp_path / "runs").exists()


def test_mlflow_going_away_mid_study_loses_nothing(tmp_path):
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _start_mlflow(tmp_path, port)
    raw = {"name": "outage", "mode": "compare", "trial": dict(TINY, epochs=4),
           "variants": {"a": {}, "b": {"seed": 1}, "c": {"seed": 2}}, "storage_path": str(tmp_path / "runs"),
           "tracking_uri": uri, "max_concurrent": 1}
    config = tmp_path / "outage.yaml"
    config.write_text(json.dumps(raw))
    env = dict(os.environ, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    driver = subprocess.Popen([sys.executable, "-m", "study.cli", "run", str(config), "--verbose", "0"], cwd=tmp_path,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tune_dir = tmp_path / "runs" / "outage" / "tune"
    deadline = time.time() + 180
    while time.time() < deadline and not list(tune_dir.glob("*/result.json")):
        time.sleep(0.5)
    _stop(server)  # the tracking server dies while the first trial trains
    out, _ = driver.communicate(timeout=400)
    assert driver.returncode == 0, out[-3000:]
    finished = [p for p in tune_dir.glob("*/result.json") if len(p.read_text().splitlines()) == 4]
    assert len(finished) == 3  # every trial ran to the end and its results are in the study folder
    server = _start_mlflow(tmp_path, port)
    try:
        sync = _cli(["sync", str(tmp_path / "runs" / "outage")], tmp_path, env=env)
        assert sync.returncode == 0, sync.stderr[-2000:]
        client = MlflowClient(uri)
        info = json.loads((tmp_path / "runs" / "outage" / "study.json").read_text())
        runs = client.search_runs([info["experiment_id"]],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{info['parent_run_id']}'")
        assert len(runs) == 3
        for run in runs:
            assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2, 3, 4]
            assert run.data.tags["mmstudy.status"] == "finished"
        again = _cli(["sync", str(tmp_path / "runs" / "outage")], tmp_path, env=env)  # idempotent
        assert "0 epochs logged" in again.stdout
        # `mmstudy ui` on a study whose store is a (live) tracking server: its runs-table link, nothing started
        ui = _cli(["ui", str(tmp_path / "runs" / "outage"), "--port", "5001"], tmp_path, env=env, timeout=60)
        assert ui.returncode == 0 and ui.stdout.strip() == (
            f"MLflow UI (tracking server): {uri}/#/experiments/{info['experiment_id']}/runs"
            "?workflowType=machine_learning"), ui.stderr[-2000:]
    finally:
        _stop(server)


def test_a_diverging_trial_is_recorded_the_study_continues_and_optuna_sees_a_failed_trial(tmp_path, ray_local):
    """The study goes on; MLflow keeps the diverged trial as failed with its reason; Optuna, read back with
    `optuna.load_study` from the journal in the study folder (what optuna-dashboard opens), has it as FAIL."""
    import optuna

    space = {"params": {"dataset.noise": {"type": "categorical", "choices": [1.0, 1.0e39]}}}
    raw = {"name": "optdiv", "trial": TINY, "search_space": space, "searcher": "random", "scheduler": "none",
           "num_samples": 6, "storage_path": str(tmp_path / "runs"), "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
           "baseline": {"enabled": False}, "confirm": {"top_k": 0}}
    cfg = load_study_config(None, raw=raw)
    results = run_study(cfg).results
    assert len(results) == 6 and not results.errors  # the study went on
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(cfg.study_dir() / "optuna.journal")))
    states = {}
    for t in optuna.load_study(study_name="optdiv", storage=storage).trials:
        states.setdefault(t.params["dataset.noise"], set()).add(t.state.name)
    assert states.get(1.0e39) == {"FAIL"} and states.get(1.0) == {"COMPLETE"}, states
    info = json.loads((cfg.study_dir() / "study.json").read_text())
    runs = MlflowClient(cfg.resolved_tracking_uri()).search_runs(
        [info["experiment_id"]], filter_string=f"tags.`mlflow.parentRunId` = '{info['parent_run_id']}'")
    assert len(runs) == 6
    for run in runs:
        tags = run.data.tags
        if json.loads(tags["mmstudy.point"])["dataset.noise"] == 1.0e39:
            assert tags["mmstudy.status"] == "diverged" and run.info.status == "FAILED"
            assert "loss is nan at epoch 1" in tags["mmstudy.status_reason"]
        else:
            assert tags["mmstudy.status"] == "finished" and run.info.status == "FINISHED"
