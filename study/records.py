"""A study's records: its folder (STORAGE_PATH/NAME) and its parent MLflow run -- started together, finished
together, synced together; this module is their one home.

Study folder:
  study.json   the snapshot (resolved study config with the search space inlined), MLflow ids, status, and
               at the end the trial counts and the best trial -- what `resume`, `list`, `report`, `sync` read
  study.yaml   the snapshot as YAML, also an artifact of the parent run (`report <experiment>` reads it)
  tune/        Tune's experiment (trial results, checkpoints, searcher state) -- `Tuner.restore` reads it
  optuna.journal  the Optuna study of a sampled search (`optuna.load_study`, optuna-dashboard)
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from study.config import OWN_ROLES, StudyConfig, default_tracking_uri, load_study_config
from trainables.errors import ConfigError

STUDY_FILE = "study.json"
SNAPSHOT_ARTIFACT = "study.yaml"
TUNE_DIR = "tune"
# A tracking server that stops answering must not stall the driver for minutes per call.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON so a reader (or a killed writer) never sees half a file; NumPy/torch scalars as numbers."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2, default=lambda v: v.item() if hasattr(v, "item") else str(v))
    os.replace(tmp, path)


@dataclass
class Study:
    """A study's folder and what study.json holds; `config` is the snapshot, validated."""
    dir: Path
    info: dict[str, Any]

    @cached_property
    def config(self) -> StudyConfig:
        return load_study_config(None, raw=self.info["config"])

    @property
    def name(self) -> str:
        return self.info["name"]

    @property
    def tune_dir(self) -> Path:
        return self.dir / TUNE_DIR

    def save(self) -> None:
        write_json_atomic(self.dir / STUDY_FILE, self.info)


def open_study(study_dir: str | Path) -> Study:
    path = Path(study_dir).resolve()
    if not (path / STUDY_FILE).is_file():
        raise ConfigError(f"study: '{study_dir}' is not a study folder (no {STUDY_FILE}); see `mmstudy list`")
    return Study(path, json.loads((path / STUDY_FILE).read_text()))


# ----------------------------------------------------------------------------- before a study starts


def check_storage(study_dir: Path) -> None:
    """Fail fast, before Ray or MLflow, when the study folder cannot be written."""
    check_writable(study_dir.parent, "storage_path")


def check_writable(folder: Path, field: str) -> None:
    """Fail fast, before anything is written, when `folder` (there already or still to be made) cannot be
    written; `field` names the setting or flag it came from in the one-line error."""
    probe_dir = folder
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise ConfigError(f"{field}: '{probe_dir}' is a file, not a folder")
    if not os.access(probe_dir, os.W_OK) or not can_create_in(probe_dir):
        raise ConfigError(f"{field}: '{folder}' is not writable")
    free = shutil.disk_usage(probe_dir).free
    if free < 50 * 2**20:
        raise ConfigError(f"{field}: only {free // 2**20} MiB free under '{probe_dir}' (need at least 50 MiB)")


def can_create_in(folder: Path) -> bool:
    """Whether a folder can really be made in `folder` (tried and removed): the permission bits do not tell for
    root, nor for kernel file systems such as /sys."""
    try:
        os.rmdir(tempfile.mkdtemp(dir=folder, prefix=".mmstudy-probe-"))
    except OSError:
        return False
    return True


def new_sqlite_store(uri: str) -> bool:
    """True for a sqlite:/// URI whose file does not exist yet in a writable folder."""
    if not uri.startswith("sqlite:///"):
        return False
    path = Path(uri[len("sqlite:///"):])
    return not path.exists() and path.parent.is_dir() and os.access(path.parent, os.W_OK)


def check_new(cfg: StudyConfig) -> None:
    """Everything a new study needs that is not Ray: a free name, a writable folder, a reachable store (a new
    SQLite file is created only once the study's records are made, so a study that fails before leaves none)."""
    study_dir = cfg.study_dir()
    if (study_dir / STUDY_FILE).exists():
        raise ConfigError(f"name: study '{cfg.name}' already exists in {study_dir}; "
                          f"continue it with `mmstudy resume {study_dir}` or choose another name")
    check_storage(study_dir)
    if not new_sqlite_store(cfg.resolved_tracking_uri()):
        connect(cfg.resolved_tracking_uri())


def connect(tracking_uri: str):
    """A client that has proven it can reach the store (a server that is down fails here, before any trial)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as err:  # noqa: BLE001 -- any failure here means the store is unusable
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"tracking_uri: cannot reach MLflow at '{tracking_uri}' ({first[:200]})") from None
    return client


def study_tracking_uri(study: str, tracking_uri: str | None = None) -> str:
    """The tracking URI a study folder or experiment name is read from (`report`, `ui`, analysis.load): the
    override, else the folder's study.json, else the default store."""
    snapshot = Path(study) / STUDY_FILE
    if tracking_uri:
        return tracking_uri
    return json.loads(snapshot.read_text())["tracking_uri"] if snapshot.is_file() else default_tracking_uri()


def existing_store(study: str, tracking_uri: str | None = None) -> str:
    """`study_tracking_uri`, proven to exist and answer: a server that is down or a SQLite file that is not
    there is one line naming the URI, never a traceback or a new empty store."""
    uri = study_tracking_uri(study, tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise ConfigError(f"tracking_uri: no MLflow store at '{uri}' (no such SQLite file)")
    connect(uri)
    return uri


def ensure_experiment(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    return client.create_experiment(name)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def dataset_label(cfg: StudyConfig) -> str:
    """synthetic/tiny for generated data, kinetics_sounds:/data/ks for file-backed data."""
    dataset = cfg.trial_config().dataset
    params = dataset.params()
    return f"{dataset.name}/{params['size']}" if "size" in params else f"{dataset.name}:{params.get('root', '')}"


# ----------------------------------------------------------------------------- start, finish, sync


def start(cfg: StudyConfig, config_path: str | None = None) -> Study:
    """The study folder, its snapshot and the parent MLflow run -- all or none: a failure removes what was
    made (a SQLite store this call created is removed too while it holds no run)."""
    from mlflow.entities import Param

    from study.tracking import params_of

    uri, study_dir = cfg.resolved_tracking_uri(), cfg.study_dir()
    created_store = new_sqlite_store(uri)
    client = parent_id = None
    try:
        client = connect(uri)
        experiment_id = ensure_experiment(client, cfg.resolved_experiment())
        snapshot = cfg.snapshot()
        parent_id = client.create_run(experiment_id, run_name=cfg.name, tags={
            "mmstudy.study": cfg.name, "mmstudy.kind": "study", "mmstudy.mode": cfg.mode,
            "mmstudy.git_commit": git_commit(), "mmstudy.dataset": dataset_label(cfg),
            "mmstudy.balancer": cfg.trial_config().balancer.name, "mmstudy.config_hash": cfg.config_hash(),
            "mmstudy.study_dir": str(study_dir), "mmstudy.status": "running", **cfg.protocol_tags()}).info.run_id
        client.log_batch(parent_id, params=[Param(k, v) for k, v in params_of(snapshot).items()])
        study_dir.mkdir(parents=True, exist_ok=True)
        (study_dir / SNAPSHOT_ARTIFACT).write_text(yaml.safe_dump(snapshot, sort_keys=False))
        client.log_artifact(parent_id, str(study_dir / SNAPSHOT_ARTIFACT))
        if config_path:
            client.log_artifact(parent_id, config_path, "as_given")
        study = Study(study_dir, {"name": cfg.name, "config": snapshot, "tracking_uri": uri,
                                  "experiment_id": experiment_id, "experiment_name": cfg.resolved_experiment(),
                                  "parent_run_id": parent_id, "status": "running", "created": time.time()})
        study.save()
        return study
    except BaseException:
        if parent_id is not None:
            try:
                client.delete_run(parent_id)
            except Exception:  # noqa: BLE001
                pass
        shutil.rmtree(study_dir, ignore_errors=True)
        if created_store:
            discard_store(uri)
        raise


def discard_store(uri: str) -> None:
    """Remove a SQLite store that holds no run (not even a deleted one): another command may have started
    using a store meanwhile, and then it stays."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    path = Path(uri[len("sqlite:///"):])
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


def rank(frame, metric: str | list[str], mode: str | list[str], epochs: int | None = None):
    """The study's own trials (not baseline or confirmation) with a value of the study's metric(s), best first
    by the one ranking rule (`study.ranking.rank_trials`: values at each trial's best validation epoch, trials
    that ran all `epochs` first). `frame`: Tune's one row per trial (ResultGrid / ExperimentAnalysis dataframes)."""
    from study.ranking import rank_trials

    own = frame[frame["config/role"].isin(OWN_ROLES)] if "config/role" in frame else frame
    return rank_trials(own, metric, mode, epochs)


def best_of(frame, metric: str | list[str], mode: str | list[str], epochs: int | None = None) -> dict[str, Any] | None:
    """The best trial by `rank`: its id, each metric as last reported and at its best epoch, its test accuracy."""
    from study.ranking import rank_column

    ranked = rank(frame, metric, mode, epochs)
    if ranked.empty:
        return None
    row = ranked.iloc[0]
    metrics = [metric] if isinstance(metric, str) else list(metric)
    keys = dict.fromkeys([*metrics, *(rank_column(frame, m) for m in metrics), "best_val_acc", "best_test_acc"])
    return {"trial_id": row["trial_id"],
            **{k: float(row[k]) for k in keys if k in row and row[k] == row[k]}}


def finish(study: Study, results, summary: Any = None) -> None:
    """Mark the study finished; the best trial by the study's metric and mode, the trial counts and (when
    given) the summary against the baseline go to study.json and the parent run."""
    cfg = study.config
    best = best_of(results.get_dataframe(), cfg.metric.names, cfg.metric.modes, cfg.trial_config().epochs)
    study.info.update(status="finished", finished=time.time(), trials=len(results), errors=len(results.errors),
                      best=best)
    study.save()
    try:
        client = connect(study.info["tracking_uri"])
        parent = study.info["parent_run_id"]
        if best is not None:
            for key, value in best.items():
                if key != "trial_id":
                    client.log_metric(parent, f"study_{key}", value)
            client.set_tag(parent, "mmstudy.best_trial", best["trial_id"])
        if summary is not None:
            for key, value in summary.metrics.items():
                client.log_metric(parent, key, float(value))
            client.set_tag(parent, "mlflow.note.content", summary.text)
        client.set_tag(parent, "mmstudy.status", "finished")
        client.set_terminated(parent, status="FINISHED")
    except Exception as err:  # noqa: BLE001
        print(f"mmstudy: warning: could not update the study's MLflow run ({str(err).splitlines()[0][:200]}); "
              f"`mmstudy sync {study.dir}` retries")


def sync(study: Study) -> dict[str, int]:
    """Replay the study folder into MLflow (what an outage or a killed driver left unwritten); idempotent."""
    from ray.tune import Tuner

    from study.tracking import replay

    if not study.tune_dir.is_dir() or not Tuner.can_restore(str(study.tune_dir)):
        raise ConfigError(f"study: '{study.dir}' has no Tune experiment ({TUNE_DIR}/) to sync: its trials never "
                          f"started, so MLflow has nothing to catch up on")
    counts = replay(study)
    if study.info.get("status") == "finished":
        client = connect(study.info["tracking_uri"])
        client.set_tag(study.info["parent_run_id"], "mmstudy.status", "finished")
        client.set_terminated(study.info["parent_run_id"], status="FINISHED")
    return counts


# ----------------------------------------------------------------------------- list


def list_studies(storage_path: str) -> list[dict[str, Any]]:
    """Every study under `storage_path`: status, trial counts, the best trial by its metric and mode. A finished
    study's counts come from study.json (no Ray import); a running or interrupted one's from Tune's files."""
    rows = []
    for path in sorted(Path(storage_path).glob(f"*/{STUDY_FILE}")):
        study = Study(path.parent, json.loads(path.read_text()))
        metric = study.info["config"]["metric"]
        metric = metric[0] if isinstance(metric, list) else metric  # several: the first is the primary one
        row = {"name": study.name, "status": study.info.get("status", "?"), "dir": str(study.dir),
               "experiment": study.info.get("experiment_name", ""), "metric": metric["name"], "mode": metric["mode"]}
        if study.info.get("status") == "finished":
            row.update(trials=study.info.get("trials", 0), with_results=study.info.get("trials", 0),
                       best=study.info.get("best"))
        else:
            row.update(live_counts(study, study.config.metric.names, study.config.metric.modes))
        rows.append(row)
    return rows


def live_counts(study: Study, metric: str | list[str], mode: str | list[str]) -> dict[str, Any]:
    """Trial counts and the best so far from Tune's experiment state (readable without a running Ray)."""
    if not study.tune_dir.is_dir():
        return {"trials": 0, "with_results": 0, "best": None}
    from ray.tune import ExperimentAnalysis

    try:
        analysis = ExperimentAnalysis(str(study.tune_dir))
    except Exception:  # noqa: BLE001 -- no experiment state written yet
        return {"trials": 0, "with_results": 0, "best": None}
    frame = analysis.dataframe()
    return {"trials": len(analysis.trials), "with_results": sum(t.last_result is not None and bool(t.last_result)
                                                                 for t in analysis.trials),
            "best": best_of(frame, metric, mode, study.config.trial_config().epochs)}
