"""A study submitted to a Ray cluster as a Ray job, the way docs/cluster.md runs one from a laptop:
`ray job submit --address http://HEAD:8265 --working-dir . -- mmstudy run ...` against a head node started
with `ray start --head` under token authentication.

The head runs on this machine (dashboard and GCS addresses on 127.0.0.1, free ports, its own temp dir and its
own token file made by `ray get-auth-token --generate` in a private HOME), so the test touches neither the
user's ~/.ray/auth_token nor any other Ray here; it is stopped by killing its own processes, never with
`ray stop` (which stops every Ray on the machine, see tests/ray_processes.py). One head serves both tests.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study.cluster import JOB_DRIVER_ENV
from ray_processes import free_port, stop_node

pytestmark = pytest.mark.integration

RAY = str(Path(sys.executable).with_name("ray"))
ROOT = Path(__file__).resolve().parent.parent
# not copied into the test's project: what Ray leaves out of a --working-dir by default (.git, .venv,
# __pycache__) and build or test leftovers; results (runs/, mlflow.db) are added below, as a user's would be
NOT_COPIED = [".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache", "runs", "mlflow.db", "mlruns"]
# the shipped smoke study, shrunk: the same shape (TPE + ASHA search, baseline, confirmation), fewer epochs
SMALL = ["num_samples=2", "trial.epochs=2", "trial.optim.lr_step=1", "trial.dataset.n_train=96",
         "trial.dataset.n_val=48", "trial.dataset.n_test=48", "baseline.seeds=[0,1,2]", "confirm.seeds=[7]"]


def _ray(env, *args, timeout=300):
    return subprocess.run([RAY, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def head():
    base = Path(tempfile.mkdtemp(prefix="mmray-"))  # short: Ray's socket paths under it must fit 107 bytes
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", JOB_DRIVER_ENV)}
    env.update(RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0",
               PATH=os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", ""))))
    home = base / "home"
    home.mkdir()
    made = _ray(dict(env, HOME=str(home)), "get-auth-token", "--generate")
    assert made.returncode == 0, made.stderr[-2000:]
    env["RAY_AUTH_TOKEN_PATH"] = str(home / ".ray" / "auth_token")  # the head, the job and `ray job` use it
    dashboard = free_port()
    command = [RAY, "start", "--head", f"--port={free_port()}", "--num-cpus=2", "--include-dashboard=true",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
               f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
               f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
               f"--ray-client-server-port={free_port()}", f"--temp-dir={base / 'ray'}", "--disable-usage-stats",
               "--block"]
    log = (base / "head.log").open("w")
    node = subprocess.Popen(command, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.time() + 180
        while _ray(env, "job", "list", f"--address={address}", timeout=60).returncode != 0:
            if node.poll() is not None or time.time() > deadline:
                pytest.fail(f"the head node's job server did not answer:\n{(base / 'head.log').read_text()[-3000:]}")
            time.sleep(2)
        yield address, env, base
    finally:
        stop_node(node)
        log.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def project(head):
    """A copy of the project, as a user's checkout with local results in it, to upload as `--working-dir .`:
    Ray leaves out what .gitignore names (runs/, mlflow.db), so they never travel to the cluster."""
    copy = head[2] / "project"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(*NOT_COPIED))
    (copy / "runs").mkdir()
    (copy / "runs" / "local-results-marker").write_text("a laptop's own study folder")
    (copy / "mlflow.db").write_text("a laptop's own store")
    return copy


def submit(head, project, submission_id, *entrypoint):
    """`ray job submit --working-dir . -- ENTRYPOINT` from the project folder, as docs/cluster.md has it."""
    address, env, _ = head
    return subprocess.run([RAY, "job", "submit", f"--address={address}", f"--submission-id={submission_id}",
                           "--working-dir", ".", "--", *entrypoint], cwd=project, env=env, capture_output=True,
                          text=True, timeout=600)


def uploaded(head, name: str) -> list[Path]:
    """Files called `name` in the head's copies of uploaded working directories (under its Ray temp dir)."""
    return list(Path(head[2], "ray").rglob(name))


def job(head, submission_id) -> dict:
    """The job's record from the Jobs REST API (status, driver_exit_code, message), with the cluster token."""
    address, env, _ = head
    token = Path(env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    request = urllib.request.Request(f"{address}/api/jobs/{submission_id}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_a_study_submitted_as_a_ray_job_records_its_runs_on_the_shared_store(head, project):
    shared = head[2] / "shared"  # stands for storage every node mounts at the same path
    shared.mkdir(exist_ok=True)
    store = f"sqlite:///{shared}/mlflow.db"
    done = submit(head, project, "mmstudy-smoke", "mmstudy", "run", "study/configs/smoke.yaml",
                  f"storage_path={shared}/studies", "--tracking-uri", store, *SMALL)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert job(head, "mmstudy-smoke")["status"] == "SUCCEEDED"
    assert "4 trials, 0 errored" in done.stdout
    study_dir = shared / "studies" / "smoke"
    info = json.loads((study_dir / "study.json").read_text())
    client = MlflowClient(store)
    parent = client.get_run(info["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["mmstudy.study"] == "smoke"
    runs = client.search_runs([info["experiment_id"]],
                              filter_string=f"tags.`mlflow.parentRunId` = '{info['parent_run_id']}'")
    roles = sorted(r.data.tags["mmstudy.role"] for r in runs)
    assert roles == ["baseline", "confirm", "search", "search"]
    assert all(r.data.tags["mmstudy.status"] == "finished" and r.info.status == "FINISHED" for r in runs)
    assert all(r.data.metrics["best_test_acc"] >= 0 for r in runs)
    # the upload had the code and not the laptop's results; nothing of the study landed in the job's copy
    assert uploaded(head, "smoke.yaml") and not uploaded(head, "local-results-marker")
    assert not uploaded(head, "mlflow.db") and not uploaded(head, "study.json")


def test_a_ray_job_with_a_relative_storage_path_is_refused_before_anything_is_written(head, project):
    refused = submit(head, project, "mmstudy-relative", "mmstudy", "run", "study/configs/smoke.yaml", *SMALL)
    assert refused.returncode != 0
    record = job(head, "mmstudy-relative")
    assert record["status"] == "FAILED" and record["driver_exit_code"] == 2, record
    address, env, _ = head
    logs = _ray(env, "job", "logs", f"--address={address}", "mmstudy-relative").stdout  # the driver's own output
    errors = [line for line in logs.splitlines() if "mmstudy: error:" in line]
    assert len(errors) == 1 and errors[0].startswith("mmstudy: error: storage_path: 'runs' would be written inside "
                                                     "this Ray job's working directory"), logs[-3000:]
    assert "Traceback" not in logs
    assert not uploaded(head, "mlflow.db") and not uploaded(head, "study.json")


def test_the_job_server_refuses_a_submission_without_the_cluster_token(head, project):
    address, env, _ = head
    wrong = dict(env, RAY_AUTH_TOKEN="0" * 64)  # takes precedence over the token file
    refused = _ray(wrong, "job", "submit", f"--address={address}", "--", "echo", "never runs")
    assert refused.returncode != 0 and "never runs" not in refused.stdout
    assert "token" in (refused.stdout + refused.stderr).lower(), refused.stderr[-2000:]  # refused for its token
