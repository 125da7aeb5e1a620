"""A study's records: its folder (STORAGE_PATH/NAME, `study.folder`) and its parent MLflow run -- started
together, finished together, synced together; this module is their one home. The trial runs are
`study.tracking`'s (records -> tracking, never back); the store is `study.store`'s.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from study.config import OWN_ROLES, StudyConfig
# The folder's and the store's names, imported from their homes for the callers that know them from here.
from study.folder import (SNAPSHOT_ARTIFACT, STUDY_FILE, TUNE_DIR, Study, open_study, read_info,  # noqa: F401
                          trial_folders, trial_results, tune_state_files, tune_trials, write_json_atomic)
from study.store import (connect, discard_store, ensure_experiment, existing_store, new_sqlite_store,  # noqa: F401
                         open_existing, study_tracking_uri)
from study.credentials import redact_text
from study.trust import Trust, check_no_swap, check_trusted, make_study_folder
from trainables.balancers.plugin_trust import PluginRefused
from trainables.errors import ConfigError


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


def check_new(cfg: StudyConfig, shared_group: str | None = None) -> None:
    """Everything a new study needs that is not Ray: a free name, a writable folder, a reachable store (a new
    SQLite file is created only once the study's records are made, so a study that fails before leaves none).
    A folder of that name that is already there must be the user's (`study.trust`) and hold nothing mmstudy
    would write: the study then starts in it and leaves its other files alone."""
    from study.search import OPTUNA_FILE

    study_dir = cfg.study_dir()
    if (study_dir / STUDY_FILE).exists():
        raise ConfigError(f"name: study '{cfg.name}' already exists in {study_dir}; "
                          f"continue it with `mmstudy resume {study_dir}` or choose another name")
    trust = Trust.of_user(shared_group)  # an unknown --shared-group fails here, before anything
    if study_dir.exists():
        if not study_dir.is_dir():
            raise ConfigError(f"name: '{study_dir}' is a file, not a study folder; choose another name")
        check_trusted(study_dir, shared_group)
        taken = [n for n in (SNAPSHOT_ARTIFACT, TUNE_DIR, OPTUNA_FILE) if (study_dir / n).exists()]
        if taken:
            raise ConfigError(f"name: '{study_dir}' already holds {', '.join(taken)} but no {STUDY_FILE} (not a study "
                              f"mmstudy can continue); move them or choose another name")
    elif study_dir.parent.exists():
        check_no_swap(study_dir.parent, trust)
    check_storage(study_dir)
    uri = cfg.resolved_tracking_uri()
    if not new_sqlite_store(uri):
        open_existing(uri)


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


def start(cfg: StudyConfig, config_path: str | None = None, shared_group: str | None = None) -> Study:
    """The study folder, its snapshot and the parent MLflow run -- all or none. A failure (Ctrl-C too) removes
    exactly what this call made: the parent run, the files it wrote, the folders it created (a new folder is
    0700, or 2770 for `shared_group`), a new SQLite store while it holds no run. A folder that was there
    before stays, with everything else in it."""
    from mlflow.entities import Param

    from study.tracking import params_of

    uri, study_dir = cfg.resolved_tracking_uri(), cfg.study_dir()
    created_store = new_sqlite_store(uri)
    client = parent_id = None
    made_dirs: list[Path] = []
    made_files = [p for p in (study_dir / SNAPSHOT_ARTIFACT, study_dir / STUDY_FILE) if not p.exists()]
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
        make_study_folder(study_dir, shared_group, made_dirs)
        (study_dir / SNAPSHOT_ARTIFACT).write_text(yaml.safe_dump(snapshot, sort_keys=False))
        client.log_artifact(parent_id, str(study_dir / SNAPSHOT_ARTIFACT))
        if config_path:  # the user's file, as given -- but never a tracking URI's credentials
            client.log_text(parent_id, redact_text(Path(config_path).read_text()), f"as_given/{Path(config_path).name}")
        info = {"name": cfg.name, "config": snapshot, "tracking_uri": uri, "experiment_id": experiment_id,
                "experiment_name": cfg.resolved_experiment(), "parent_run_id": parent_id, "status": "running",
                "created": time.time()}
        if shared_group:
            info["shared_group"] = shared_group
        study = Study(study_dir, info)
        study.config = cfg  # this command's own, validated config (its plug-in, if any, is the user's choice)
        study.save()
        return study
    except BaseException:
        if parent_id is not None:
            try:
                client.delete_run(parent_id)
            except Exception:  # noqa: BLE001
                pass
        for path in made_files:
            path.unlink(missing_ok=True)
        for folder in reversed(made_dirs):
            try:
                folder.rmdir()  # only while empty: what another process put there meanwhile stays
            except OSError:
                pass
        if created_store:
            discard_store(uri)
        raise


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


def expect_restored(study: Study) -> set[str]:
    """Before a resume restores Tune's experiment: the trial ids its last state holds (read as JSON), kept in
    study.json as `tune_trial_ids` for the check after the restore (`tracking.check_restored`) and for the
    orphan clean-up, which spares them. An unreadable state is a one-line error before Ray starts."""
    ids = {t.trial_id for t in tune_trials(study.tune_dir)}
    study.info["tune_trial_ids"] = sorted(ids)
    study.save()
    return ids


def sync(study: Study) -> dict[str, int]:
    """Replay the study folder into MLflow (what an outage or a killed driver left unwritten); idempotent. Reads
    Tune's JSON files only (`study.folder`), and opens the study's store, never a new one."""
    from study.tracking import replay

    if not tune_state_files(study.tune_dir):
        raise ConfigError(f"study: '{study.dir}' has no Tune experiment ({TUNE_DIR}/) to sync: its trials never "
                          f"started, so MLflow has nothing to catch up on")
    client = open_existing(study.info["tracking_uri"])
    counts = replay(study)
    if study.info.get("status") == "finished":
        client.set_tag(study.info["parent_run_id"], "mmstudy.status", "finished")
        client.set_terminated(study.info["parent_run_id"], status="FINISHED")
    return counts


# ----------------------------------------------------------------------------- list


def scan_studies(storage_path: str, shared_group: str | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Every study under `storage_path` (status, trial counts, the best trial by its metric and mode), and one
    note per folder skipped: untrusted (`study.trust`) or with an unreadable study.json. Reads JSON only: a
    finished study's counts come from study.json, a running or interrupted one's from Tune's JSON files."""
    rows, skipped = [], []
    storage = Path(storage_path)
    if not storage.is_dir():
        return rows, skipped
    check_no_swap(storage.resolve(), Trust.of_user(shared_group))
    for path in sorted(storage.glob(f"*/{STUDY_FILE}")):
        try:
            check_trusted(path.parent, shared_group)
            study = Study(path.parent.resolve(), read_info(path.parent))
            try:
                cfg = study.config
            except PluginRefused as refused:  # shown, not imported
                rows.append({"name": study.name, "status": str(study.info.get("status", "?")), "dir": str(study.dir),
                             "experiment": study.info.get("experiment_name", ""), "metric": "-", "mode": "-",
                             "trials": "-", "with_results": "-", "best": None,
                             "note": f"not read: its study.json names the plug-in '{refused.path}' (--allow-plugin)"})
                continue
            row = {"name": study.name, "status": str(study.info.get("status", "?")), "dir": str(study.dir),
                   "experiment": study.info.get("experiment_name", ""), "metric": cfg.metric.name,
                   "mode": cfg.metric.mode}
            if study.info.get("status") == "finished":
                row.update(trials=study.info.get("trials", 0), with_results=study.info.get("trials", 0),
                           best=study.info.get("best"))
            else:
                row.update(live_counts(study, cfg.metric.names, cfg.metric.modes))
        except ConfigError as err:
            skipped.append(f"skipped '{path.parent}': {err}")
            continue
        rows.append(row)
    return rows, skipped


def list_studies(storage_path: str, shared_group: str | None = None) -> list[dict[str, Any]]:
    """`scan_studies`' rows."""
    return scan_studies(storage_path, shared_group)[0]


def live_counts(study: Study, metric: str | list[str], mode: str | list[str]) -> dict[str, Any]:
    """Trial counts and the best so far from Tune's JSON files (no Ray, no unpickling): the trials of its last
    experiment state and those whose folders are newer, each by its last result."""
    import pandas as pd

    last: dict[str, dict[str, Any]] = {}
    try:
        last.update({t.trial_id: t.last_result for t in tune_trials(study.tune_dir)})
    except ConfigError:  # a state file being replaced or cut short: the trial folders still count
        pass
    for folder in trial_folders(study.tune_dir):
        results = trial_results(folder)
        trial_id = str(results[-1].get("trial_id", "")) if results else ""
        trial_id = trial_id or folder.name.rsplit("_", 1)[-1]
        last[trial_id] = results[-1] if results else last.get(trial_id, {})
    reported = [r for r in last.values() if r]
    frame = pd.json_normalize(reported, sep="/") if reported else pd.DataFrame()
    return {"trials": len(last), "with_results": len(reported),
            "best": best_of(frame, metric, mode, study.config.trial_config().epochs) if reported else None}
