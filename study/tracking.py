"""MLflow records of a study: one parent run per study, one nested child run per trial.

Logging happens on the driver in a Tune callback, so workers on a cluster need no access to the tracking
server, and an unreachable server mid-study costs no trial: Tune keeps every result in the study folder
(`mmstudy sync` replays them later). Ray's own MLflowLoggerCallback has no parent run, no de-duplication
on resume and no pruned/diverged status, which is why this exists.
"""
from __future__ import annotations

import json
import re
import logging
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from search_spaces import apply_point
from trainables.config import build_trial_config, flatten
from trainables.errors import ConfigError
from trainables.tune_trainable import trial_point

log = logging.getLogger("mmstudy.tracking")

TRIAL_TAG = "mmstudy.trial_id"
STUDY_TAG = "mmstudy.study"
STATUS_TAG = "mmstudy.status"
REASON_TAG = "mmstudy.status_reason"
CONFIG_ARTIFACT = "trial_config.json"
RETRY_AFTER_S = 30.0
SKIP_METRICS = {"timestamp", "time_total_s", "time_since_restore", "iterations_since_restore", "pid", "done",
                "training_iteration", "time_this_iter_s", "checkpoint_dir_name"}


def connect(tracking_uri: str) -> MlflowClient:
    """A client that has proven it can reach the store (a server that is down fails here, before any trial)."""
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as err:  # noqa: BLE001 -- any failure here means the store is unusable
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"tracking_uri: cannot reach MLflow at '{tracking_uri}' ({first[:200]})") from None
    return client


def ensure_experiment(client: MlflowClient, name: str) -> str:
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


def mlflow_key(key: str) -> str:
    """MLflow keys allow alphanumerics, _ - . space : / only."""
    return re.sub(r"[^\w\-. :/]", "_", key)


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    items = [Param(mlflow_key(k), json.dumps(v) if isinstance(v, (list, dict)) else str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def numeric_metrics(result: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in result.items():
        if key in SKIP_METRICS or key.startswith("config"):
            continue
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, (int, float)):
            out[mlflow_key(key.replace("/", "."))] = float(value)
    return out


def resolved_trial_config(base: dict[str, Any], point: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    cfg = build_trial_config(apply_point(base, point), {"seed": seeds[0]}).to_dict()
    cfg.pop("seed")
    return cfg


def trial_config_from_run(run_id: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """The exact resolved config of a trial's MLflow run (`mmstudy debug --from-run`)."""
    import os

    client = MlflowClient(tracking_uri=tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db")
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001
        raise ConfigError(f"--from-run: no MLflow run '{run_id}' in {client.tracking_uri}") from None
    raw = run.data.tags.get("mmstudy.trial_config")
    if raw is None:
        raise ConfigError(f"--from-run: run '{run_id}' is not an mmstudy trial (no mmstudy.trial_config tag)")
    cfg = json.loads(raw)
    seeds = json.loads(run.data.tags.get("mmstudy.seeds", "[0]"))
    cfg["seed"] = seeds[0]
    return cfg


class MlflowStudyCallback(Callback):
    """Driver-side: creates/attaches each trial's child run, logs per-epoch metrics (step = epoch),
    and closes it with a status: finished, pruned (stopped early by the scheduler), diverged or failed.

    The writes run in one background thread, in the order Tune's hooks call them: Tune pauses a trial
    from its report until the driver's loop has handled the result, so an MLflow round trip in the loop
    (a remote server: tens of ms, several per result) would stall every trial at every epoch. The thread
    is drained at the end of the experiment; a driver killed before that leaves the last writes to
    `mmstudy resume` / `mmstudy sync`, which back-fill from the study folder.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, study_name: str,
                 base: dict[str, Any], seeds: list[int], epochs: int):
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.study_name, self.base, self.seeds, self.epochs = study_name, base, seeds, epochs
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}
        self._last_step: dict[str, int] = {}
        self._placed: dict[str, tuple] = {}
        self._failing_since: float | None = None
        self._last_try = 0.0
        self._writer: ThreadPoolExecutor | None = None

    def __getstate__(self):  # Tune pickles callbacks with the experiment state; clients are not state
        state = dict(self.__dict__)
        state.update(_client=None, _runs={}, _last_step={}, _placed={}, _failing_since=None, _writer=None)
        return state

    def _submit(self, what: str, fn, *args) -> None:
        """Queue one MLflow write; one worker thread keeps them in order (a run exists before its metrics)."""
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="mmstudy-mlflow")
        self._writer.submit(self._safely, what, fn, *args)

    def drain(self) -> None:
        """Wait for every queued write."""
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _safely(self, what: str, fn, *args) -> Any:
        """MLflow trouble must never stop trials: warn once per outage, then retry at most every
        RETRY_AFTER_S seconds so a dead server does not stall the driver; `mmstudy sync` back-fills."""
        now = time.time()
        if self._failing_since is not None and now - self._last_try < RETRY_AFTER_S:
            return None
        self._last_try = now
        try:
            out = fn(*args)
            if self._failing_since is not None:
                log.warning("mmstudy: MLflow reachable again; run `mmstudy sync` to back-fill the gap")
                self._failing_since = None
            return out
        except Exception as err:  # noqa: BLE001
            if self._failing_since is None:
                self._failing_since = time.time()
                log.warning("mmstudy: MLflow %s failed (%s); trials continue, results stay in the study folder",
                            what, str(err).splitlines()[0][:200] if str(err) else type(err).__name__)
            return None

    # -- runs --------------------------------------------------------------------
    def run_for(self, trial_id: str, point: dict[str, Any]) -> str:
        if trial_id in self._runs:
            return self._runs[trial_id]
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}' and tags.`mlflow.parentRunId` = '{self.parent_run_id}'",
            max_results=1)
        if found:
            run_id = found[0].info.run_id
            history = self.client.get_metric_history(run_id, "epoch")
            self._last_step[trial_id] = max((int(m.step) for m in history), default=0)
            if found[0].info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
        else:
            resolved = resolved_trial_config(self.base, point, self.seeds)
            tags = {"mlflow.parentRunId": self.parent_run_id, "mlflow.runName": f"{self.study_name}-{trial_id}",
                    TRIAL_TAG: trial_id, STUDY_TAG: self.study_name, STATUS_TAG: "running",
                    "mmstudy.trial_config": json.dumps(resolved), "mmstudy.seeds": json.dumps(self.seeds),
                    "mmstudy.point": json.dumps(point, default=str)}
            for key in ("sweep_param", "sweep_value"):
                if key in point:
                    tags[f"mmstudy.{key}"] = str(point[key])
            run = self.client.create_run(self.experiment_id, tags=tags, run_name=f"{self.study_name}-{trial_id}")
            run_id = run.info.run_id
            params = flatten(resolved)
            params["seeds"] = self.seeds
            log_params(self.client, run_id, params)
            self._last_step[trial_id] = 0
        self._runs[trial_id] = run_id
        return run_id

    def log_result(self, trial_id: str, point: dict[str, Any], result: dict[str, Any]) -> None:
        run_id = self.run_for(trial_id, point)
        step = int(result.get("training_iteration", result.get("epoch", 0)))
        if step <= self._last_step.get(trial_id, 0):
            return  # already logged before a resume
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in numeric_metrics(result).items()]
        for i in range(0, len(metrics), 500):
            self.client.log_batch(run_id, metrics=metrics[i:i + 500])
        self._last_step[trial_id] = step
        placed = (result.get("device"), result.get("hostname"), result.get("node_ip"))
        if placed[0] and self._placed.get(trial_id) != placed:  # first result, or the trial moved (restore)
            self.client.log_batch(run_id, tags=[RunTag("mmstudy.device", str(placed[0])),
                                                RunTag("mmstudy.node", f"{placed[1]} ({placed[2]})")])
            self._placed[trial_id] = placed

    def close(self, trial_id: str, point: dict[str, Any], status: str, reason: str) -> None:
        run_id = self.run_for(trial_id, point)
        tags = [RunTag(STATUS_TAG, status)] + ([RunTag(REASON_TAG, reason[:5000])] if reason else [])
        self.client.log_batch(run_id, tags=tags)
        mlflow_status = {"finished": "FINISHED", "pruned": "KILLED"}.get(status, "FAILED")
        self.client.set_terminated(run_id, status=mlflow_status)

    # -- Tune hooks ------------------------------------------------------------------
    # Arguments are evaluated here, in Tune's loop, so the queued write sees the trial as it was then.
    def on_trial_start(self, iteration, trials, trial, **info):
        self._submit("run creation", self.run_for, trial.trial_id, trial_point(trial.config))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._submit("metric logging", self.log_result, trial.trial_id, trial_point(trial.config), dict(result))

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        status, reason = self.final_status(last)
        self._submit("run closing", self.close, trial.trial_id, trial_point(trial.config), status, reason)

    def on_trial_error(self, iteration, trials, trial, **info):
        reason = last_error_line(getattr(trial, "error_file", None))
        self._submit("run closing", self.close, trial.trial_id, trial_point(trial.config), "failed", reason)

    def on_experiment_end(self, trials, **info):
        self._submit("orphan clean-up", self.remove_orphans, {t.trial_id for t in trials})
        self.drain()

    def remove_orphans(self, known: set[str]) -> int:
        """A driver killed after a trial's run was created but before Tune persisted the trial leaves a run
        for a trial that no longer exists (the searcher proposes a new one on resume). Such runs are closed
        as `orphaned` and deleted (MLflow's soft delete), so the study shows exactly one run per trial."""
        runs = self.client.search_runs([self.experiment_id],
                                       filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'",
                                       max_results=50000)
        removed = 0
        for run in runs:
            if run.data.tags.get(TRIAL_TAG) not in known:
                self.client.set_tag(run.info.run_id, STATUS_TAG, "orphaned")
                self.client.set_terminated(run.info.run_id, status="KILLED")
                self.client.delete_run(run.info.run_id)
                removed += 1
        return removed

    def final_status(self, last: dict[str, Any]) -> tuple[str, str]:
        if last.get("diverged"):
            return "diverged", str(last.get("status_reason", "loss is not finite"))
        if int(last.get("training_iteration", 0)) < self.epochs:
            return "pruned", f"stopped by the scheduler after epoch {last.get('training_iteration', 0)}"
        return "finished", ""


def last_error_line(path: str | Path | None) -> str:
    text = ""
    if path and Path(path).is_file():
        text = Path(path).read_text(errors="replace")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "trial raised an error"


def sync_study(study_dir: Path, info: dict[str, Any], base: dict[str, Any], seeds: list[int]) -> dict[str, int]:
    """Replay the study folder's Tune results into MLflow: creates missing child runs, logs missing epochs,
    closes finished/pruned/diverged/failed trials. Idempotent (steps already logged are skipped)."""
    callback = MlflowStudyCallback(info["tracking_uri"], info["experiment_id"], info["parent_run_id"], info["name"],
                                   base, seeds, int(info["epochs"]))
    counts = {"trials": 0, "epochs_logged": 0, "closed": 0}
    for trial_dir in sorted(p for p in (study_dir / "tune").iterdir() if (p / "params.json").is_file()):
        point = trial_point(json.loads((trial_dir / "params.json").read_text()))
        results = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()] \
            if (trial_dir / "result.json").is_file() else []
        if not results:
            continue
        trial_id = results[-1]["trial_id"]
        counts["trials"] += 1
        before = callback._last_step.get(trial_id)
        callback.run_for(trial_id, point)
        before = callback._last_step.get(trial_id, 0) if before is None else before
        for result in results:
            callback.log_result(trial_id, point, result)
        counts["epochs_logged"] += callback._last_step.get(trial_id, 0) - before
        error_file = trial_dir / "error.txt"
        last = results[-1]
        if error_file.is_file():
            callback.close(trial_id, point, "failed", last_error_line(error_file))
            counts["closed"] += 1
        elif last.get("done") or last.get("diverged") or int(last.get("training_iteration", 0)) >= callback.epochs:
            status, reason = callback.final_status(last)
            callback.close(trial_id, point, status, reason)
            counts["closed"] += 1
    return counts
