"""What mmstudy exposes on the network and how it says so: the local Ray's token file is private, a
switched-off token and a UI served beyond this machine are one-line warnings, and a study run as a Ray job
never writes into the job's temporary working directory (the real job: tests/test_remote_submit.py)."""
import http.client
import json
import os
import socket
import stat
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from ray_processes import listening, node_processes, stop_node
from study.cli import main
from study.cluster import JOB_DRIVER_ENV, check_job_paths, keep_token_private
from study.ui import exposure_warning, open_ui
from trainables.errors import ConfigError

AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private HOME (~/.ray/auth_token is Ray's default token file) and no token settings."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in AUTH_ENV:
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_missing_token_file_is_made_private_for_ray_to_fill(home):
    keep_token_private()
    token = home / ".ray" / "auth_token"
    assert mode(token) == 0o600 and mode(token.parent) == 0o700 and token.read_text() == ""


def test_an_existing_token_file_is_tightened_not_rewritten(home):
    token = home / ".ray" / "auth_token"
    token.parent.mkdir(parents=True)
    token.write_text("abc")
    token.chmod(0o644)
    keep_token_private()
    assert mode(token) == 0o600 and token.read_text() == "abc"


@pytest.mark.parametrize("env", [{"RAY_AUTH_TOKEN": "abc"}, {"RAY_AUTH_MODE": "disabled"},
                                 {"RAY_AUTH_TOKEN_PATH": "missing_token"}])
def test_no_token_file_is_made_when_ray_would_not_read_it(home, monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    keep_token_private()
    assert not (home / ".ray").exists() and not (home / "missing_token").exists()


def test_a_named_token_file_is_tightened(home, tmp_path, monkeypatch):
    token = tmp_path / "token"
    token.write_text("abc")
    token.chmod(0o640)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    keep_token_private()
    assert mode(token) == 0o600


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("auth_mode, warned", [("disabled", True), ("Disabled", True), ("token", False), (None, False)])
def test_ray_auth_mode_disabled_is_a_one_line_warning(tmp_path, monkeypatch, capsys, auth_mode, warned):
    """The warning comes before Ray is touched (here the cluster does not answer: exit 2, nothing written)."""
    monkeypatch.chdir(tmp_path)
    if auth_mode is None:
        monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    else:
        monkeypatch.setenv("RAY_AUTH_MODE", auth_mode)
    config = tmp_path / "s.yaml"
    config.write_text(json.dumps({"name": "s", "search_space": "redreg", "storage_path": str(tmp_path / "runs"),
                                  "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
                                  "ray_address": f"127.0.0.1:{closed_port()}"}))
    assert main(["run", str(config)]) == 2
    out, err = capsys.readouterr()
    warnings = [line for line in out.splitlines() if line.startswith("mmstudy: warning: RAY_AUTH_MODE=disabled")]
    assert len(warnings) == int(warned)
    assert err.startswith("mmstudy: error: ray_address: nothing answers") and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "[2001:db8::1]", "gpu-box.example.org"])
def test_a_ui_host_others_can_reach_is_warned_about(host):
    warning = exposure_warning(host, 5000)
    assert warning.startswith(f"mmstudy: warning: --host '{host}': the MLflow UI has no authentication")
    assert "\n" not in warning


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_a_loopback_ui_host_is_not_warned_about(host):
    assert exposure_warning(host, 5000) is None


def test_mmstudy_ui_prints_the_warning_before_it_serves(tmp_path, monkeypatch, capsys):
    """`mlflow ui` itself is not started here (it would serve on 0.0.0.0): the command it would run is kept."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    started = []
    monkeypatch.setattr("study.ui.subprocess.call", lambda command: started.append(command) or 0)
    assert open_ui(None, host="0.0.0.0", port=5123) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("mmstudy: warning: --host '0.0.0.0'") and "5123" in lines[0]
    assert started and started[0][-4:] == ["--host", "0.0.0.0", "--port", "5123"]


@pytest.fixture
def job_driver(tmp_path, monkeypatch):
    """This process as the driver of a Ray job submitted with --working-dir: the job's cwd is the upload."""
    upload = tmp_path / "working_dir"
    upload.mkdir()
    monkeypatch.chdir(upload)
    monkeypatch.setenv(JOB_DRIVER_ENV, json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_x.zip"}}))
    return upload


@pytest.mark.parametrize("storage, uri, field", [
    ("runs", "http://mlflow:5000", "storage_path"),                      # the default storage_path
    ("{upload}/runs", "http://mlflow:5000", "storage_path"),             # absolute, but inside the upload
    ("/shared/studies", "sqlite:///mlflow.db", "tracking_uri"),          # the default store
    ("/shared/studies", "sqlite:///{upload}/mlflow.db", "tracking_uri"),
    ("/shared/studies", "mlruns", "tracking_uri"),                       # a file store by path
    ("/shared/studies", "sqlite://", "tracking_uri"),                    # in memory
])
def test_a_job_driver_refuses_a_folder_or_store_inside_its_working_dir(job_driver, storage, uri, field):
    with pytest.raises(ConfigError) as refused:
        check_job_paths(storage.format(upload=job_driver), uri.format(upload=job_driver))
    message = str(refused.value)
    assert message.startswith(f"{field}: ") and "Ray job's working directory" in message and "\n" not in message


@pytest.mark.parametrize("uri", ["http://mlflow:5000", "sqlite:////shared/mlflow.db", "file:///shared/mlruns",
                                 "postgresql://mlflow@db/mlflow"])
def test_a_job_driver_accepts_shared_absolute_paths_and_servers(job_driver, uri):
    check_job_paths("/shared/studies", uri)


def test_outside_a_ray_job_relative_paths_are_fine(tmp_path, monkeypatch):
    monkeypatch.delenv(JOB_DRIVER_ENV, raising=False)
    check_job_paths("runs", "sqlite:///mlflow.db")


@pytest.mark.integration
def test_the_local_ray_keeps_its_token_private_and_guards_what_it_exposes(tmp_path):
    """A local Ray as `mmstudy run` starts it (study.cluster.init_ray), with a fresh HOME: Ray generates the
    token into the 0600 file mmstudy prepared. Then what it listens on (docs/cluster.md, "What listens
    where"): ports on addresses other machines can reach, and no HTTP endpoint there answers without the
    token except Prometheus metrics."""
    env = {k: v for k, v in os.environ.items() if k not in (*AUTH_ENV, "RAY_ADDRESS", JOB_DRIVER_ENV)}
    env.update(HOME=str(tmp_path / "home"), RAY_USAGE_STATS_ENABLED="0")
    script = ("import sys, ray\nfrom study.cluster import init_ray\ninit_ray(None)\nprint('ready', flush=True)\n"
              "sys.stdin.readline()\nray.shutdown()\n")
    driver = subprocess.Popen([sys.executable, "-c", script], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        assert driver.stdout.readline().strip() == "ready"
        token = tmp_path / "home" / ".ray" / "auth_token"
        assert mode(token) == 0o600 and len(token.read_text().strip()) == 64
        sockets = listening(node_processes(driver.pid))
        exposed = [(host, port) for host, port, _ in sockets if not host.startswith("127.") and host != "::1"]
        assert exposed, "Ray bound every port to loopback: update docs/cluster.md, 'What listens where'"
        for host, port in exposed:
            where = "127.0.0.1" if host in ("0.0.0.0", "::") else f"[{host}]" if ":" in host else host
            try:
                with urllib.request.urlopen(f"http://{where}:{port}/", timeout=5) as response:
                    body = response.read(20000).decode(errors="replace")
                assert "# TYPE" in body or "# HELP" in body, f"port {port} answers without the token"
            except urllib.error.HTTPError as err:
                assert err.code in (401, 403), f"port {port}: HTTP {err.code} without the token"
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError):
                pass  # not HTTP: gRPC, whose calls Ray checks for the token
        driver.stdin.write("\n")
        driver.stdin.flush()
        driver.wait(timeout=120)
    finally:
        stop_node(driver)
