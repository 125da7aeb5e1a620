"""A two-node Ray cluster on this machine (`ray start --head`, then `ray start --address`): the study runs
against it through `ray_address`, the worker node is killed mid-study, and its trial is rescheduled from its
checkpoint on the head node (issue 7: lost worker)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.integration

RAY = str(Path(sys.executable).with_name("ray"))
EPOCHS = 40  # about 0.1 s each on tiny data: the worker node's trial is mid-run when the node is killed


def _descendants(pid: int) -> list[int]:
    """pid and every process below it (from /proc): a node's raylet, its object store and its workers."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def _kill_node(proc: subprocess.Popen) -> None:
    for pid in _descendants(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _rows(result: Path) -> list[dict]:
    """The complete lines of a trial's result.json (the last one may be half-written while we read)."""
    rows = []
    for line in result.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def two_nodes(tmp_path):
    port = _port()
    # token authentication stays on: every node and the driver present the same token (~/.ray/auth_token)
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token")
    # --block keeps each node's processes in one process group we own: the teardown kills exactly these,
    # never another Ray on the machine (`ray stop` would also kill the test session's own Ray).
    head = subprocess.Popen([RAY, "start", "--head", f"--port={port}", "--num-cpus=1", "--node-ip-address=127.0.0.1",
                             "--include-dashboard=false", "--disable-usage-stats", "--block"], env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 90
    while time.time() < deadline:
        if subprocess.run([RAY, "status", f"--address=127.0.0.1:{port}"], capture_output=True, env=env).returncode == 0:
            break
        time.sleep(1)
    worker = subprocess.Popen([RAY, "start", f"--address=127.0.0.1:{port}", "--num-cpus=1",
                               "--node-ip-address=127.0.0.1", "--block"], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 90
    while time.time() < deadline:
        status = subprocess.run([RAY, "status", f"--address=127.0.0.1:{port}"], capture_output=True, text=True,
                                env=env)
        if status.stdout.count("node_") >= 2:
            break
        time.sleep(1)
    else:
        pytest.fail("the worker node did not join")
    yield f"127.0.0.1:{port}", worker, env
    for proc in (worker, head):
        _kill_node(proc)


def test_lost_worker_node_trials_are_rescheduled_and_the_study_completes(tmp_path, two_nodes):
    address, worker, env = two_nodes
    raw = {"name": "twonode", "mode": "compare", "max_concurrent": 2, "max_failures": 3,
           "trial": {"epochs": EPOCHS, "dataset": {"name": "synthetic", "size": "tiny", "n_train": 256, "n_val": 64, "n_test": 64},
                     "model": {"feature_dim": 8}, "optim": {"batch_size": 32}},
           "variants": {"a": {}, "b": {"optim": {"lr": 0.02}}}, "storage_path": str(tmp_path / "runs"),
           "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "ray_address": address}
    config = tmp_path / "twonode.yaml"
    config.write_text(json.dumps(raw))
    driver = subprocess.Popen([sys.executable, "-m", "study.cli", "run", str(config), "--verbose", "0"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    tune_dir = tmp_path / "runs" / "twonode" / "tune"
    # Kill the node only once the trial running *on it* (its reporting pid is one of the node's processes) has
    # reported a few epochs and is still far from done; killing on a timer raced the trial's end on a slow box.
    on_worker = None
    deadline = time.time() + 180
    while on_worker is None and time.time() < deadline:
        worker_pids = set(_descendants(worker.pid))
        for result in tune_dir.glob("*/result.json"):
            rows = _rows(result)
            if len(rows) >= 2 and rows[-1]["pid"] in worker_pids:
                on_worker = result, len(rows)
                break
        time.sleep(0.2)
    assert on_worker is not None, "no trial reported from the worker node within 180 s"
    _kill_node(worker)  # the worker node dies (raylet, object store, workers) with a trial on it
    assert on_worker[1] < EPOCHS, "the worker node's trial had already finished when the node was killed"
    out, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, out[-4000:]
    assert "2 trials, 0 errored" in out
    for result in tune_dir.glob("*/result.json"):
        assert _rows(result)[-1]["training_iteration"] == EPOCHS
    # the killed node's trial was restored from its checkpoint: `iterations_since_restore` restarts, epochs do not
    rows = _rows(on_worker[0])
    assert any(r["iterations_since_restore"] < r["training_iteration"] for r in rows), "the lost trial was not restored"
    assert len({r["pid"] for r in rows}) >= 2, "the lost trial did not move to another process"
    info = json.loads((tmp_path / "runs" / "twonode" / "study.json").read_text())
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([info["experiment_id"]], filter_string=f"tags.`mlflow.parentRunId` = '{info['parent_run_id']}'")
    assert sorted(r.data.tags["mmstudy.status"] for r in runs) == ["finished", "finished"]
