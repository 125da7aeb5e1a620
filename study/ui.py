"""`mmstudy ui [STUDY]`: MLflow's own UI on a study's store, opened on the study's runs table.

MLflow 3 opens an experiment on its GenAI overview (traces, tokens) unless the URL names the classic
machine-learning workflow, so every link mmstudy prints carries `workflowType=machine_learning`.
A study on a tracking server is already served: its link is printed (once the server answers) and nothing is
started. A store that is down or missing is one line naming its URI (records.existing_store).
The UI `mlflow ui` serves has no login and can change runs, so it listens on 127.0.0.1 unless --host says
otherwise, and then mmstudy warns.
"""
from __future__ import annotations

import ipaddress
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from trainables.errors import ConfigError


def runs_table_url(base_url: str, experiment_id: str | None = None) -> str:
    """The page a researcher wants: the experiment's runs table (parent run per study, a child per trial)."""
    base = base_url.rstrip("/")
    if experiment_id is None:
        return f"{base}/#/experiments?workflowType=machine_learning"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def served_url(tracking_uri: str) -> str | None:
    """The base URL of a tracking server (http/https URI), or None for a local store that needs `mlflow ui`."""
    return tracking_uri if urlsplit(tracking_uri).scheme in ("http", "https") else None


def study_store(study: str | None, shared_group: str | None = None) -> tuple[str, str | None]:
    """(tracking URI, experiment id) of a study folder or experiment name; the default store for None. A study
    folder passes the trust rule first (study.trust), as for every command that reads one."""
    from analysis.load import resolve_study
    from study.config import default_tracking_uri
    from study.records import STUDY_FILE, existing_store, open_study

    if study is None:
        return default_tracking_uri(), None
    if (Path(study) / STUDY_FILE).is_file():
        open_study(study, shared_group)
    ref = resolve_study(study, existing_store(study))
    return ref.tracking_uri, ref.experiment_id


def exposure_warning(host: str, port: int) -> str | None:
    """The one-line warning for a --host that other machines can reach (anything but a loopback address or
    'localhost'), else None."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = False  # a host name: it resolves to an address others can reach
    if loopback:
        return None
    return (f"mmstudy: warning: --host '{host}': the MLflow UI has no authentication and can change and delete runs, "
            f"and so can anyone who reaches port {port} of this machine; keep the default 127.0.0.1 and use an SSH "
            f"tunnel (ssh -L {port}:127.0.0.1:{port} THIS_HOST), or a tracking server with authentication "
            f"(docs/cluster.md)")


def open_ui(study: str | None, host: str = "127.0.0.1", port: int = 5000, shared_group: str | None = None) -> int:
    """Start `mlflow ui` on the study's store (or print the server's link) and serve until Ctrl-C."""
    tracking_uri, experiment_id = study_store(study, shared_group)
    server = served_url(tracking_uri)
    if server is not None:
        print(f"MLflow UI (tracking server): {runs_table_url(server, experiment_id)}")
        return 0
    mlflow_cli = shutil.which("mlflow") or shutil.which("mlflow", path=str(sys.prefix) + "/bin")
    if mlflow_cli is None:
        raise ConfigError("mlflow: the `mlflow` command is not on PATH; install mlflow in this environment")
    warning = exposure_warning(host, port)
    if warning:
        print(warning, flush=True)
    print(f"MLflow UI on {tracking_uri}: {runs_table_url(f'http://{host}:{port}', experiment_id)}  (Ctrl-C stops it)",
          flush=True)
    command = [mlflow_cli, "ui", "--backend-store-uri", tracking_uri, "--host", host, "--port", str(port)]
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 0
