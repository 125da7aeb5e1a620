"""Studies from MLflow into pandas: one row per trial, and per-epoch histories. Usable from a notebook:

    from analysis import load_study, load_histories
    trials = load_study("runs/quickstart")            # a study folder, or an MLflow experiment name
    history = load_histories(trials, ["val_acc", "rlc_audio"])
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from mlflow.tracking import MlflowClient

from study.folder import SNAPSHOT_ARTIFACT, STUDY_FILE, read_info, validated_config
from study.store import study_tracking_uri
from trainables.config import flatten
from trainables.errors import ConfigError


@dataclass
class StudyRef:
    name: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    config: dict[str, Any]
    study_dir: str | None  # the study folder read; None for an experiment name (a run's tag names no folder we trust)


def resolve_study(study: str, tracking_uri: str | None = None) -> StudyRef:
    """A study folder (reads study.json) or an MLflow experiment name / study name (reads the snapshot the
    parent run keeps as an artifact). Either way the config is the study's snapshot, never the live YAML."""
    path = Path(study)
    uri = study_tracking_uri(study, tracking_uri)
    if (path / STUDY_FILE).is_file():
        info = read_info(path)
        validated_config(info["config"], str(path / STUDY_FILE))  # a report reads its fields: checked first
        return StudyRef(info["name"], uri, info["experiment_id"], info["parent_run_id"], info["config"],
                        str(path.resolve()))
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(study) or client.get_experiment_by_name(f"mmstudy/{study}")
    if exp is None:
        raise ConfigError(f"study: '{study}' is neither a study folder nor an MLflow experiment in {uri}")
    parents = client.search_runs([exp.experiment_id], filter_string="tags.`mmstudy.kind` = 'study'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        raise ConfigError(f"study: experiment '{exp.name}' has no mmstudy study run")
    parent = parents[0]
    snapshot = snapshot_of(client, parent.info.run_id)
    if snapshot:  # a parent run that kept none: the report's defaults
        validated_config(snapshot, f"MLflow run {parent.info.run_id} ({SNAPSHOT_ARTIFACT})")
    return StudyRef(parent.data.tags.get("mmstudy.study", exp.name), uri, exp.experiment_id, parent.info.run_id,
                    snapshot, None)


def quiet_downloads() -> None:
    """No progress bar per downloaded artifact: the report reads many small files (a user's setting wins)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def snapshot_of(client: MlflowClient, parent_run_id: str) -> dict[str, Any]:
    """The resolved study config the parent run keeps (`study.yaml`); empty for a run without one."""
    quiet_downloads()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(parent_run_id, SNAPSHOT_ARTIFACT, tmp)
        except Exception:  # noqa: BLE001 -- not an artifact of this run
            return {}
        return yaml.safe_load(Path(path).read_text()) or {}


def _parse(value: str) -> Any:
    try:
        return json.loads(value)
    except (json.JSONDecodeError, TypeError):
        return value


def child_runs(ref: StudyRef) -> list:
    client = MlflowClient(tracking_uri=ref.tracking_uri)
    return client.search_runs([ref.experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{ref.parent_run_id}'", max_results=50000)


PARENT_TAGS = ("mmstudy.shared_knobs", "mmstudy.noise_sources")  # the parent run's, in attrs["parent_tags"]
PREDICTIONS_ARTIFACT = "predictions/test_predictions.csv"
PREDICTION_COLUMNS = ("seed", "example", "label", "prediction")
MAX_PREDICTIONS_BYTES = 256 * 2**20


def _flag(tags: dict[str, str], key: str) -> bool | None:
    """A 0/1 tag as a bool; None when the run does not carry it (recorded before the tag existed)."""
    return None if key not in tags else tags[key] == "1"


def _rank(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else None


def load_study(study: str, tracking_uri: str | None = None) -> pd.DataFrame:
    """One row per trial: trial/run ids, role (search | sensitivity | compare | baseline | confirm) and the
    search trial a confirmation re-trains (with its rank among the method's confirmations, `confirm_rank`),
    whether it is a tuned joint-training baseline (`joint_baseline`) or a search's random start-up trial
    (`startup`; None where not recorded), status, seeds, loss setting, the sampled point, every resolved
    parameter (as `param.<dotted key>`) and the final metrics (latest values, best_* at the best
    validation epoch, mean and std over seeds). attrs: the study, its config and the parent run's
    PARENT_TAGS (`parent_tags`)."""
    ref = resolve_study(study, tracking_uri)
    parent = MlflowClient(tracking_uri=ref.tracking_uri).get_run(ref.parent_run_id)
    rows = []
    for run in child_runs(ref):
        tags = run.data.tags
        point = json.loads(tags.get("mmstudy.point", "{}"))
        config = json.loads(tags.get("mmstudy.trial_config", "{}"))
        seeds = json.loads(tags.get("mmstudy.seeds", "[0]"))
        row: dict[str, Any] = {
            "trial_id": tags.get("mmstudy.trial_id"), "run_id": run.info.run_id,
            "role": tags.get("mmstudy.role"), "confirms": tags.get("mmstudy.confirms"),
            "method": tags.get("mmstudy.method"), "confirm_rank": _rank(tags.get("mmstudy.confirm_rank")),
            "joint_baseline": _flag(tags, "mmstudy.joint_baseline"), "startup": _flag(tags, "mmstudy.startup"),
            "status": tags.get("mmstudy.status", run.info.status.lower()),
            "status_reason": tags.get("mmstudy.status_reason", ""),
            "seeds": seeds, "num_seeds": len(seeds),
            "balancer": config.get("balancer", {}).get("name"), "loss_setting": config.get("loss_setting"),
            "sweep_param": tags.get("mmstudy.sweep_param"), "sweep_value": _parse(tags.get("mmstudy.sweep_value", "null")),
            "epochs_run": int(run.data.metrics.get("epoch", 0)),
        }
        row["point"] = {k: v for k, v in point.items() if not k.startswith("sweep_")}
        row.update({f"param.{k}": v for k, v in flatten(config).items()})
        row.update(run.data.metrics)
        row.update(json.loads(tags.get("mmstudy.per_seed", "{}")))  # best_<key>/seed_<s>: each seed's best epoch
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame.attrs.update(study=ref.name, tracking_uri=ref.tracking_uri, parent_run_id=ref.parent_run_id,
                       config=ref.config, study_dir=ref.study_dir,
                       parent_tags={k: v for k, v in parent.data.tags.items() if k in PARENT_TAGS})
    return frame


def load_histories(trials: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Long per-epoch history: one row per (trial, epoch), one column per requested metric."""
    client = MlflowClient(tracking_uri=trials.attrs["tracking_uri"])
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for _, trial in trials.iterrows():
        for metric in metrics:
            for m in client.get_metric_history(trial["run_id"], metric):
                key = (trial["trial_id"], int(m.step))
                rows.setdefault(key, {"trial_id": trial["trial_id"], "epoch": int(m.step)})[metric] = m.value
    frame = pd.DataFrame(list(rows.values()), columns=["trial_id", "epoch", *metrics])
    return frame.sort_values(["trial_id", "epoch"]).reset_index(drop=True)


def read_predictions(path: str | Path) -> pd.DataFrame:
    """One trial's per-example test predictions (`seed,example,label,prediction`, integers; one row per seed and
    example), checked as untrusted input: ValueError saying what is wrong."""
    path = Path(path)
    if path.stat().st_size > MAX_PREDICTIONS_BYTES:
        raise ValueError(f"larger than {MAX_PREDICTIONS_BYTES // 2**20} MiB")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"missing column(s) {', '.join(missing)} (needs {','.join(PREDICTION_COLUMNS)})")
    frame = frame[list(PREDICTION_COLUMNS)]
    if not frame.map(lambda v: v.strip().lstrip("-").isdigit()).all().all():
        raise ValueError("every value must be an integer")
    frame = frame.astype("int64")
    if frame.duplicated(["seed", "example"]).any():
        raise ValueError("a (seed, example) pair appears twice")
    return frame


def load_predictions(trials: pd.DataFrame) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """The per-example test predictions (PREDICTIONS_ARTIFACT) of the given trials, by trial id, and the trials
    whose file could not be read, with why. Trials without the artifact (recorded before it existed) are in
    neither."""
    quiet_downloads()
    client = MlflowClient(tracking_uri=trials.attrs["tracking_uri"])
    folder = PREDICTIONS_ARTIFACT.rsplit("/", 1)[0]
    found: dict[str, pd.DataFrame] = {}
    problems: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _, trial in trials.iterrows():
            if not any(f.path == PREDICTIONS_ARTIFACT for f in client.list_artifacts(trial["run_id"], folder)):
                continue
            try:
                local = client.download_artifacts(trial["run_id"], PREDICTIONS_ARTIFACT, tmp)
                found[trial["trial_id"]] = read_predictions(local)
            except Exception as err:  # noqa: BLE001 -- an unreadable file is reported, the rest of the report stands
                problems[trial["trial_id"]] = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            finally:
                for leftover in Path(tmp).rglob("*.csv"):
                    leftover.unlink()
    return found, problems
