"""The MLflow store a study writes to: proven to answer before anything is written, created only by `run` (a new
local SQLite file, with the study's records), never by a command that reads or continues a study."""
from __future__ import annotations

import os
from pathlib import Path

from study.config import absolute_store_uri, default_tracking_uri
from study.credentials import adopt, redact_text
from study.folder import STUDY_FILE, read_info
from trainables.errors import ConfigError

# A tracking server that stops answering must not stall the driver for minutes per call.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")


def sqlite_path(uri: str) -> Path | None:
    """The file of a sqlite:/// URI (None for other stores)."""
    return Path(uri[len("sqlite:///"):].partition("?")[0]) if uri.startswith("sqlite:///") else None


def new_sqlite_store(uri: str) -> bool:
    """True for a sqlite:/// URI whose file does not exist yet in a writable folder."""
    path = sqlite_path(uri)
    return path is not None and not path.exists() and path.parent.is_dir() and os.access(path.parent, os.W_OK)


def connect(tracking_uri: str):
    """A client that has proven it can reach the store (a server that is down fails here, before any trial)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as err:  # noqa: BLE001 -- any failure here means the store is unusable
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"tracking_uri: cannot reach MLflow at '{tracking_uri}' ({redact_text(first)[:200]})") \
            from None
    return client


def open_existing(uri: str):
    """`connect` to a store that is already there: a SQLite file that is gone (or named relative to another
    working directory by an older study) is one line naming it, never a new empty store."""
    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        hint = "" if path.is_absolute() else (" (a path relative to the folder the study was started in: run from "
                                              "there, or give --tracking-uri where the command has it)")
        raise ConfigError(f"tracking_uri: no MLflow store at '{uri}' (no such SQLite file){hint}")
    return connect(uri)


def study_tracking_uri(study: str, tracking_uri: str | None = None) -> str:
    """The tracking URI a study folder or experiment name is read from (`report`, `ui`, analysis.load): the
    override, else the folder's study.json, else the default store."""
    if tracking_uri:
        return absolute_store_uri(adopt(tracking_uri))
    return adopt(read_info(Path(study))["tracking_uri"]) if (Path(study) / STUDY_FILE).is_file() else default_tracking_uri()


def existing_store(study: str, tracking_uri: str | None = None) -> str:
    """`study_tracking_uri`, proven to exist and answer (`open_existing`)."""
    uri = study_tracking_uri(study, tracking_uri)
    open_existing(uri)
    return uri


def ensure_experiment(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    return client.create_experiment(name)


def discard_store(uri: str) -> None:
    """Remove a SQLite store that holds no run (not even a deleted one): another command may have started
    using a store meanwhile, and then it stays."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    path = sqlite_path(uri)
    if path is None:
        return
    if path.exists():
        try:
            client = MlflowClient(tracking_uri=uri)
            ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
            if ids and client.search_runs(ids, run_view_type=ViewType.ALL, max_results=1):
                return
        except Exception:  # noqa: BLE001 -- an unreadable store was never used by a study
            pass
    for leftover in (path, path.with_name(path.name + "-journal")):
        leftover.unlink(missing_ok=True)
