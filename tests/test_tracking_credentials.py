"""A tracking URI's password is used, never written: not in what mmstudy prints, not in the study folder (Tune's
pickles included), not in MLflow's params, tags or artifacts, not in report.md.

The integration test runs a tiny study (real Ray Tune, Optuna, MLflow) against a loopback MLflow server that
requires the password (MLflow's basic-auth app), so the study can only finish if the credentials reach MLflow,
and then looks for the password everywhere it could have been written."""
from __future__ import annotations

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

from study.cli import main
from study.credentials import adopt, redact, redact_text
from trainables.errors import ConfigError

PASSWORD = "s3cretPW-7q2x"  # MLflow's auth app wants at least 12 characters
CREDENTIAL_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "PGUSER",
                   "PGPASSWORD", "MLFLOW_TRACKING_URI")


@pytest.fixture
def clean_env(monkeypatch):
    """No credential variables before; whatever a test (or `adopt`) sets is undone after."""
    for name in CREDENTIAL_VARS:
        monkeypatch.setenv(name, "")  # recorded, so teardown restores the variable as it was
        monkeypatch.delenv(name)


@pytest.mark.parametrize("uri, clean", [
    ("http://user:pw@host:5000", "http://host:5000"),
    ("https://user:p%40ss@host/mlflow", "https://host/mlflow"),
    ("http://user@host", "http://host"),
    ("http://host:5000/?token=abc&x=1", "http://host:5000/?x=1"),
    ("http://host/?access_token=abc&API-KEY=k&sig=s&sslkey=/k.pem", "http://host/?sslkey=%2Fk.pem"),
    ("postgresql://me:pw@db:5432/mlflow?sslmode=require&password=pw", "postgresql://db:5432/mlflow?sslmode=require"),
    ("sqlite:////data/mlflow.db", "sqlite:////data/mlflow.db"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("databricks", "databricks"),
])
def test_redaction_rule(uri, clean):
    assert redact(uri) == clean
    assert "pw" not in redact(uri) and "abc" not in redact(uri)


def test_redact_text_finds_uris_inside_a_message():
    text = "API request to http://user:pw@host:5000/api/2.0/x?token=abc failed ('http://u:v@h')"
    assert redact_text(text) == "API request to http://host:5000/api/2.0/x failed ('http://h')"


def test_adopt_moves_credentials_into_the_environment_and_says_so_once(clean_env, capsys):
    assert adopt(f"http://user:{PASSWORD}@127.0.0.1:9") == "http://127.0.0.1:9"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "user" and os.environ["MLFLOW_TRACKING_PASSWORD"] == PASSWORD
    adopt(f"http://user:{PASSWORD}@127.0.0.1:9")
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "MLFLOW_TRACKING_PASSWORD" in out[0] and "'http://127.0.0.1:9'" in out[0], out
    assert PASSWORD not in out[0]
    assert adopt("http://h:1/?token=t0k") == "http://h:1/" and os.environ["MLFLOW_TRACKING_TOKEN"] == "t0k"
    assert adopt("postgresql://me:pw@db/m") == "postgresql://db/m" and os.environ["PGPASSWORD"] == "pw"


@pytest.mark.parametrize("uri", ["mysql://u:pw@db/m", "http://h/?api_key=k", "file://u@host/x"])
def test_a_secret_no_variable_can_carry_is_refused(clean_env, uri):
    with pytest.raises(ConfigError) as err:
        adopt(uri)
    assert "pw" not in str(err.value) and "=k" not in str(err.value)


# ----------------------------------------------------------------------------- a study against a server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def auth_server(tmp_path):
    """A loopback MLflow server that answers only to user:PASSWORD (MLflow's basic-auth app), its files in
    tmp_path/server; yields its port."""
    folder = tmp_path / "server"
    folder.mkdir()
    (folder / "auth.ini").write_text(
        "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{folder}/auth.db\nadmin_username = user\nadmin_password = {PASSWORD}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "auth_cache_ttl_seconds = 600\n")  # a password hash checked once, not on every request
    port = _free_port()
    env = dict(os.environ, MLFLOW_AUTH_CONFIG_PATH=str(folder / "auth.ini"), MLFLOW_FLASK_SERVER_SECRET_KEY="test",
               MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    for name in CREDENTIAL_VARS:
        env.pop(name, None)
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--host",
                             "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{folder}/server.db",
                             "--default-artifact-root", str(folder / "artifacts")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    import requests

    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok:
                break
        except requests.RequestException:
            time.sleep(1)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        raise RuntimeError("mlflow server did not start")
    yield port
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def files_holding(folder: Path, secret: bytes) -> list[str]:
    return sorted(str(p) for p in Path(folder).rglob("*") if p.is_file() and secret in p.read_bytes())


@pytest.mark.integration
def test_a_password_in_the_tracking_uri_is_used_and_never_written(tmp_path, clean_env, monkeypatch, capsys,
                                                                  auth_server, ray_local):
    from test_study_integration import TINY_TRIAL

    port = auth_server
    uri, clean = f"http://user:{PASSWORD}@127.0.0.1:{port}", f"http://127.0.0.1:{port}"
    secret = PASSWORD.encode()
    requests_env = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
    for name, value in requests_env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(Exception, match="401|Unauthorized|credentials"):  # the server does refuse a bare client
        MlflowClient(clean).search_experiments()
    monkeypatch.chdir(tmp_path)
    printed: list[str] = []

    def command(*argv) -> int:
        status = main(list(argv))
        captured = capsys.readouterr()
        printed.append(captured.out + captured.err)
        return status

    config = tmp_path / "study.yaml"
    config.write_text(json.dumps({
        "name": "secret", "trial": dict(TINY_TRIAL, epochs=2), "search_space": "redreg", "num_samples": 2,
        "max_concurrent": 2, "storage_path": str(tmp_path / "runs"), "tracking_uri": uri,
        "baseline": {"enabled": False}, "confirm": {"top_k": 0}, "scheduler": "none"}))
    assert command("run", str(config)) == 0, printed[-1][-3000:]
    assert printed[-1].count("records keep 'http://127.0.0.1:") == 1  # the one line that says where they went
    study_dir = tmp_path / "runs" / "secret"
    info = json.loads((study_dir / "study.json").read_text())
    assert info["tracking_uri"] == clean and info["config"]["tracking_uri"] == clean

    # the next commands, as a new shell would run them: credentials from the URI given again, or the variables
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name)
    argv = ["report", str(study_dir), "--tracking-uri", uri]
    monkeypatch.setattr(sys, "argv", ["mmstudy", *argv])  # report.md quotes the command that made it
    assert command(*argv) == 0, printed[-1][-3000:]
    client = MlflowClient(clean)  # (the variables are set again by now)
    runs = client.search_runs([info["experiment_id"]])
    trial = next(r for r in runs if "mmstudy.trial_config" in r.data.tags)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert command("debug", "--from-run", trial.info.run_id, "--out", str(tmp_path / "debug")) == 0, printed[-1][-3000:]
    assert os.environ["MLFLOW_TRACKING_URI"] == clean
    # failing commands name the store: never with its password
    assert command("debug", "--from-run", "0" * 32, "--tracking-uri", uri) == 2
    assert f"no MLflow run '{'0' * 32}' in {clean}" in printed[-1]
    assert command("report", "no-such-experiment", "--tracking-uri", uri) == 2
    closed = f"http://user:{PASSWORD}@127.0.0.1:{_free_port()}"
    assert command("report", str(study_dir), "--tracking-uri", closed) == 2
    assert "cannot reach MLflow at 'http://127.0.0.1:" in printed[-1]
    assert command("run", str(config), "--tracking-uri", "mysql://user:" + PASSWORD + "@db/m") == 2
    assert command("list", "--storage-path", str(tmp_path / "runs")) == 0

    assert not [text for text in printed if PASSWORD in text], printed
    assert (study_dir / "tune" / "tuner.pkl").is_file()
    assert f"--tracking-uri {clean}`" in (study_dir / "report" / "report.md").read_text()  # "Produced by: ..."
    assert not files_holding(study_dir, secret)  # study.json, study.yaml, Tune's pickles, Optuna's journal, report/
    assert not files_holding(tmp_path / "debug", secret)
    # MLflow: every run's params and tags, every artifact (downloaded), and the server's own files
    assert runs and all(r.info.status == "FINISHED" for r in runs)
    parent = client.get_run(info["parent_run_id"])
    assert parent.data.params["tracking_uri"] == clean
    for run in runs:
        for key, value in {**run.data.params, **run.data.tags}.items():
            assert PASSWORD not in value, (run.info.run_id, key)
        folder = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "dl" / run.info.run_id)))
        assert not files_holding(folder, secret)
    assert {"study.yaml", "report"} <= {a.path for a in client.list_artifacts(info["parent_run_id"])}
    assert not files_holding(tmp_path / "server" / "artifacts", secret)
    assert secret not in (tmp_path / "server" / "server.db").read_bytes()
