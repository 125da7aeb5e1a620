"""MLflow records of a study's trials: one nested child run per trial under the study's parent run.

`TrialWriter` is the one place that writes a trial's run; the Tune callback (`TrialTracker`) only queues its
calls, and `mmstudy sync` / a resume replay the study folder through the same writer. Logging happens on the
driver, so workers need no route to the tracking server, and an unreachable server costs no trial: Tune keeps
every result in the study folder. (Ray's own MLflowLoggerCallback has no parent run, no de-duplication on
resume and no pruned/diverged status.)
"""
from __future__ import annotations

import json
import logging
import math
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from search_spaces import apply_point
from study.config import default_tracking_uri
from study.records import Study, connect
from study.status import trial_status
from trainables.config import build_trial_config, flatten
from trainables.errors import ConfigError

log = logging.getLogger("mmstudy.tracking")

TRIAL_TAG, STUDY_TAG, STATUS_TAG, REASON_TAG = "mmstudy.trial_id", "mmstudy.study", "mmstudy.status", "mmstudy.status_reason"
PER_SEED_TAG, PER_SEED_LIMIT = "mmstudy.per_seed", 8000  # MLflow's tag values hold 8000 characters
CONFIG_ARTIFACT = "trial_config.yaml"
RETRY_AFTER_S = 30.0
# Tune's bookkeeping and the trainable's flags: in the study folder, not on a run a person reads.
NOT_METRICS = {"timestamp", "time_total_s", "time_since_restore", "iterations_since_restore", "pid", "done",
               "training_iteration", "time_this_iter_s", "checkpoint_dir_name", "should_checkpoint", "diverged",
               "num_seeds"}


def mlflow_key(key: str) -> str:
    """MLflow keys allow alphanumerics, _ - . space : / only."""
    return re.sub(r"[^\w\-. :/]", "_", key)


def params_of(tree: dict[str, Any]) -> dict[str, str]:
    """A config tree as MLflow params (dotted keys; lists and mappings as JSON) -- for the UI's columns."""
    return {mlflow_key(k): (json.dumps(v) if isinstance(v, (list, dict)) else str(v))[:6000]
            for k, v in flatten(tree).items()}


def metrics_of(result: dict[str, Any]) -> dict[str, float]:
    """The numbers a person reads; per-seed values (`best_<key>/seed_<s>`) only with the final result."""
    return {mlflow_key(k): float(v) for k, v in result.items()
            if k not in NOT_METRICS and not k.startswith("config") and "/seed_" not in k
            and isinstance(v, (int, float)) and not isinstance(v, bool)}


def per_seed_values(result: dict[str, Any]) -> str:
    """Each seed's best-epoch values (`best_<key>/seed_<s>`) as one JSON tag, `mmstudy.per_seed`: reports
    compute CIs over seeds from them, and as a tag they stay off the trial's metric charts (one single-point
    chart per seed and key would bury the curves a person reads). Accuracy-type keys are kept first when the
    JSON would pass MLflow's tag length."""
    values = {k: float(v) for k, v in result.items()
              if "/seed_" in k and isinstance(v, (int, float)) and not isinstance(v, bool)}
    text = json.dumps(values, separators=(",", ":"))
    # very many seeds: keep the accuracies, then the headline test/val accuracy, then the test accuracy alone
    for keep in (("_acc", "_f1", "best_epoch/"), ("best_test_acc/", "best_val_acc/"), ("best_test_acc/",)):
        if len(text) <= PER_SEED_LIMIT:
            break
        values = {k: v for k, v in values.items() if any(part in k for part in keep)}
        text = json.dumps(values, separators=(",", ":"))
    return text if len(text) <= PER_SEED_LIMIT else "{}"  # never a failed write that leaves the run open


def resolved_trial_config(base: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """The exact trial config of a trial (without its seed: the seeds are the run's `seeds`)."""
    cfg = build_trial_config(apply_point(base, spec["point"]), {"seed": spec["seeds"][0]}).to_dict()
    cfg.pop("seed")
    return cfg


def trial_config_from_run(run_id: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """The exact resolved config of a trial's MLflow run (`mmstudy debug --from-run`)."""
    client = MlflowClient(tracking_uri=tracking_uri or default_tracking_uri())
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001
        raise ConfigError(f"--from-run: no MLflow run '{run_id}' in {client.tracking_uri}") from None
    raw = run.data.tags.get("mmstudy.trial_config")
    if raw is None:
        raise ConfigError(f"--from-run: run '{run_id}' is not an mmstudy trial (no mmstudy.trial_config tag)")
    cfg = json.loads(raw)
    cfg["seed"] = json.loads(run.data.tags.get("mmstudy.seeds", "[0]"))[0]
    return cfg


class TrialWriter:
    """Creates or re-attaches a trial's run, logs each epoch once (step = epoch), tags where it trained and its
    provenance, and closes it with a status: finished, pruned (stopped by the scheduler), diverged or failed."""

    def __init__(self, study: Study):
        cfg = study.config
        self.tracking_uri, self.experiment_id = study.info["tracking_uri"], study.info["experiment_id"]
        self.parent_run_id, self.study_name = study.info["parent_run_id"], study.name
        self.base, self.epochs = cfg.base_trial(), cfg.trial_config().epochs
        self._client: MlflowClient | None = None
        self.runs: dict[str, str] = {}
        self.steps: dict[str, int] = {}  # epochs already on each trial's run
        self.placed: dict[str, tuple] = {}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def logged_epochs(self, trial_id: str) -> int:
        return self.steps.get(trial_id, 0)

    def run_for(self, trial_id: str, spec: dict[str, Any], reopen: bool = True) -> str:
        """The trial's run, created when missing; an ended one found again is reopened for more epochs
        (a resume), unless `reopen` is off (adding weights to a closed run must leave its status)."""
        if trial_id in self.runs:
            return self.runs[trial_id]
        found = self.client.search_runs(
            [self.experiment_id], max_results=1,
            filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}' and tags.`mlflow.parentRunId` = '{self.parent_run_id}'")
        if found:
            run_id = found[0].info.run_id
            history = self.client.get_metric_history(run_id, "epoch")
            self.steps[trial_id] = max((int(m.step) for m in history), default=0)
            if reopen and found[0].info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
        else:
            resolved = resolved_trial_config(self.base, spec)
            name = f"{self.study_name}-{spec['role']}-{trial_id}"
            tags = {"mlflow.parentRunId": self.parent_run_id, TRIAL_TAG: trial_id, STUDY_TAG: self.study_name,
                    STATUS_TAG: "running", "mmstudy.role": spec["role"], "mmstudy.trial_config": json.dumps(resolved),
                    "mmstudy.seeds": json.dumps(spec["seeds"]), "mmstudy.point": json.dumps(spec["point"], default=str)}
            tags.update({f"mmstudy.{k}": str(v) for k, v in spec["point"].items() if k.startswith("sweep_")})
            if "confirms" in spec:
                tags["mmstudy.confirms"] = spec["confirms"]
            if "method" in spec:  # benchmark mode: which method's search or confirmation this trial is
                tags["mmstudy.method"] = spec["method"]
            run_id = self.client.create_run(self.experiment_id, tags=tags, run_name=name).info.run_id
            params = params_of(resolved)
            params["seeds"] = json.dumps(spec["seeds"])
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
            self.client.log_text(run_id, yaml.safe_dump(resolved, sort_keys=False), CONFIG_ARTIFACT)
            self.steps[trial_id] = 0
        self.runs[trial_id] = run_id
        return run_id

    def log_result(self, trial_id: str, spec: dict[str, Any], result: dict[str, Any]) -> None:
        run_id = self.run_for(trial_id, spec)
        step = int(result.get("training_iteration", result.get("epoch", 0)))
        if step <= self.steps.get(trial_id, 0):
            return  # already logged before a resume
        now = int(time.time() * 1000)
        tags = []
        if isinstance(result.get("provenance"), str):
            tags.append(RunTag("mmstudy.provenance", result["provenance"][:8000]))
        placed = (result.get("device"), result.get("hostname"), result.get("node_ip"))
        if placed[0] and self.placed.get(trial_id) != placed:  # first result, or the trial moved (restore)
            tags += [RunTag("mmstudy.device", str(placed[0])), RunTag("mmstudy.node", f"{placed[1]} ({placed[2]})")]
            self.placed[trial_id] = placed
        self.client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in metrics_of(result).items()],
                              tags=tags)
        self.steps[trial_id] = step

    def close(self, trial_id: str, spec: dict[str, Any], status: str, reason: str,
              last: dict[str, Any] | None = None) -> None:
        """End the run: its status, and the final per-seed values (reports compute CIs over seeds from them)."""
        run_id = self.run_for(trial_id, spec)
        tags = [RunTag(STATUS_TAG, status), RunTag(PER_SEED_TAG, per_seed_values(last or {}))]
        tags += [RunTag(REASON_TAG, reason[:5000])] if reason else []
        self.client.log_batch(run_id, tags=tags)
        self.client.set_terminated(run_id, status={"finished": "FINISHED", "pruned": "KILLED"}.get(status, "FAILED"))

    def log_weights(self, trial_id: str, spec: dict[str, Any], folder: str) -> int:
        """The best epoch's checkpoint (every seed's weights) as the run's `best_checkpoint/`; returns bytes."""
        run_id = self.run_for(trial_id, spec, reopen=False)
        self.client.log_artifacts(run_id, folder, "best_checkpoint")
        return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())

    def remove_orphans(self, known: set[str]) -> int:
        """A driver killed after a trial's run was created but before Tune persisted the trial leaves a run
        for a trial that no longer exists (the searcher proposes a new one on resume). Such runs are closed
        as `orphaned` and deleted (MLflow's soft delete), so the study shows exactly one run per trial."""
        runs = self.client.search_runs([self.experiment_id], max_results=50000,
                                       filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'")
        removed = 0
        for run in runs:
            if run.data.tags.get(TRIAL_TAG) not in known:
                self.client.set_tag(run.info.run_id, STATUS_TAG, "orphaned")
                self.client.set_terminated(run.info.run_id, status="KILLED")
                self.client.delete_run(run.info.run_id)
                removed += 1
        return removed


def last_error_line(path: str | Path | None) -> str:
    text = Path(path).read_text(errors="replace") if path and Path(path).is_file() else ""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "trial raised an error"


class TrialTracker(Callback):
    """Tune's hooks queue the writer's calls on one background thread, in the order Tune calls them: Tune
    pauses a trial from its report until the driver's loop has handled the result, so an MLflow round trip in
    the loop (a remote server: tens of ms) would stall every trial at every epoch. The queue is drained at the
    end of the experiment; a driver killed before that leaves the last writes to `resume` / `sync`.

    MLflow trouble never stops trials: the tracker warns once per outage, then retries at most every
    RETRY_AFTER_S seconds so a dead server does not stall the queue; `mmstudy sync` back-fills the gap.
    """

    def __init__(self, study: Study):
        self.study, self.epochs = study, study.config.trial_config().epochs
        self.writer: TrialWriter | None = None
        self._queue: ThreadPoolExecutor | None = None
        self._failing_since: float | None = None
        self._last_try = 0.0

    def __getstate__(self):  # Tune pickles callbacks with the experiment state; clients and threads are not state
        return {**self.__dict__, "writer": None, "_queue": None, "_failing_since": None, "_last_try": 0.0}

    def _submit(self, what: str, method: str, *args) -> None:
        if self._queue is None:
            self.writer = self.writer or TrialWriter(self.study)
            self._queue = ThreadPoolExecutor(1, thread_name_prefix="mmstudy-mlflow")
        self._queue.submit(self._safely, what, method, *args)

    def drain(self) -> None:
        if self._queue is not None:
            self._queue.shutdown(wait=True)
            self._queue = None

    def _safely(self, what: str, method: str, *args) -> None:
        now = time.time()
        if self._failing_since is not None and now - self._last_try < RETRY_AFTER_S:
            return
        self._last_try = now
        try:
            getattr(self.writer, method)(*args)
            if self._failing_since is not None:
                log.warning("mmstudy: MLflow reachable again; run `mmstudy sync` to back-fill the gap")
                self._failing_since = None
        except Exception as err:  # noqa: BLE001
            if self._failing_since is None:
                self._failing_since = now
                log.warning("mmstudy: MLflow %s failed (%s); trials continue, results stay in the study folder",
                            what, str(err).splitlines()[0][:200] if str(err) else type(err).__name__)

    # Arguments are evaluated here, in Tune's loop, so the queued write sees the trial as it was then.
    def on_trial_start(self, iteration, trials, trial, **info):
        self._submit("run creation", "run_for", trial.trial_id, dict(trial.config))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._submit("metric logging", "log_result", trial.trial_id, dict(trial.config), dict(result))

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = dict(trial.last_result or {})
        status, reason = trial_status(last, self.epochs)
        self._submit("run closing", "close", trial.trial_id, dict(trial.config), status, reason, last)

    def on_trial_error(self, iteration, trials, trial, **info):
        reason = last_error_line(trial.error_file)
        self._submit("run closing", "close", trial.trial_id, dict(trial.config), "failed", reason,
                     dict(trial.last_result or {}))

    def on_experiment_end(self, trials, **info):
        self._submit("orphan clean-up", "remove_orphans", {t.trial_id for t in trials})
        self.drain()


def replay(study: Study) -> dict[str, int]:
    """Replay the study folder's Tune results (read with Tune's ExperimentAnalysis) through the writer: missing
    runs created, missing epochs logged, ended trials closed. Idempotent: logged epochs are skipped."""
    from ray.tune import ExperimentAnalysis

    connect(study.info["tracking_uri"])
    writer, epochs = TrialWriter(study), study.config.trial_config().epochs
    analysis = ExperimentAnalysis(str(study.tune_dir))
    counts = {"trials": 0, "epochs_logged": 0, "closed": 0}
    for trial in analysis.trials:
        rows = analysis.trial_dataframes.get(trial.trial_id)
        if rows is None or rows.empty:
            continue
        counts["trials"] += 1
        writer.run_for(trial.trial_id, trial.config)
        before = writer.logged_epochs(trial.trial_id)
        records = [{k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
                   for row in rows.to_dict("records")]
        for record in records:
            writer.log_result(trial.trial_id, trial.config, record)
        counts["epochs_logged"] += writer.logged_epochs(trial.trial_id) - before
        last = dict(trial.last_result or records[-1])
        if trial.status == "ERROR":
            writer.close(trial.trial_id, trial.config, "failed", last_error_line(trial.error_file), last)
        elif trial.status == "TERMINATED" or last.get("diverged") or int(last.get("training_iteration", 0)) >= epochs:
            writer.close(trial.trial_id, trial.config, *trial_status(last, epochs), last)
        else:
            continue
        counts["closed"] += 1
    return counts


def log_best_weights(study: Study, results) -> None:
    """`log_checkpoint: best`: each trial's best epoch (by its mean validation accuracy over seeds), kept by
    Tune's checkpoint manager, goes onto the trial's run; the sizes are printed."""
    writer, total = TrialWriter(study), 0
    for result in results:
        if result.config is None or not result.best_checkpoints:
            continue
        checkpoint = result.get_best_checkpoint("val_acc", "max")
        if checkpoint is None:
            continue
        with checkpoint.as_directory() as folder:
            total += writer.log_weights(result.metrics["trial_id"], result.config, folder)
    print(f"best-epoch weights on the trial runs: {total / 2**20:.1f} MiB in all (log_checkpoint: best)")
