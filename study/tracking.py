"""MLflow records of a study's trials: one nested child run per trial under the study's parent run.

`TrialWriter` is the one place that writes a trial's run; the Tune callback (`TrialTracker`) only queues its
calls, and `mmstudy sync` / a resume replay the study folder's JSON files through the same writer. Logging happens
on the driver, so workers need no route to the tracking server, and an unreachable server costs no trial: Tune keeps
every result in the study folder. (Ray's own MLflowLoggerCallback has no parent run, no de-duplication on
resume and no pruned/diverged status.)

Nothing here deletes a run that holds results or that belongs to a trial any experiment state of the study has
recorded, and a resume whose restore lost earlier trials stops before its first step (`check_restored`).
"""
from __future__ import annotations

import json
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback, Checkpoint

from search_spaces import apply_point
from study.folder import TUNE_DIR, Study, read_info, trial_ids_ever, tune_trials
from study.search import TAGGED_KEYS
from study.status import trial_status
from trainables.config import build_trial_config, flatten
from trainables.errors import ConfigError
from trainables.tune_trainable import PREDICTIONS_FILE, seed_overrides

log = logging.getLogger("mmstudy.tracking")

TRIAL_TAG, STUDY_TAG, STATUS_TAG, REASON_TAG = "mmstudy.trial_id", "mmstudy.study", "mmstudy.status", "mmstudy.status_reason"
PER_SEED_TAG, PER_SEED_LIMIT = "mmstudy.per_seed", 8000  # MLflow's tag values hold 8000 characters
CONFIG_ARTIFACT = "trial_config.yaml"
PREDICTION_ROLES = ("confirm", "baseline")  # confirmed trials: their test predictions go on the run
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
    """The exact trial config of a trial (without its seed: the seeds are the run's `seeds`; a data seed that
    follows the training seed shows the first seed's)."""
    overrides = seed_overrides(spec["seeds"][0], spec.get("per_seed_keys", ()))
    cfg = build_trial_config(apply_point(base, spec["point"]), overrides).to_dict()
    cfg.pop("seed")
    return cfg


class TrialWriter:
    """Creates or re-attaches a trial's run, logs each epoch once (step = epoch), tags where it trained and its
    provenance, and closes it with a status: finished, pruned (stopped by the scheduler), diverged or failed."""

    def __init__(self, study: Study):
        cfg = study.config
        self.tracking_uri, self.experiment_id = study.info["tracking_uri"], study.info["experiment_id"]
        self.parent_run_id, self.study_name = study.info["parent_run_id"], study.name
        self.study_dir = str(study.dir)
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
            # the confirmed search trial and its rank, the benchmark method, joint baseline, sampler start-up
            tags.update({f"mmstudy.{k}": str(spec[k]) for k in TAGGED_KEYS if k in spec})
            if spec.get("per_seed_keys"):  # keys each seed sets to its own value (dataset.seed): re-runs need them
                tags["mmstudy.per_seed_keys"] = json.dumps(list(spec["per_seed_keys"]))
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

    def log_predictions(self, trial_id: str, spec: dict[str, Any], checkpoint) -> None:
        """A confirmed trial's (confirm, baseline) per-example test predictions at each seed's best validation
        epoch, from its last checkpoint, as `predictions/test_predictions.csv` (paired tests read them)."""
        if checkpoint is None or spec.get("role") not in PREDICTION_ROLES:
            return
        with checkpoint.as_directory() as folder:
            path = Path(folder) / PREDICTIONS_FILE
            if path.is_file():
                self.client.log_artifact(self.run_for(trial_id, spec), str(path), "predictions")

    def log_weights(self, trial_id: str, spec: dict[str, Any], folder: str) -> int:
        """The best epoch's checkpoint (every seed's weights) as the run's `best_checkpoint/`; returns bytes."""
        run_id = self.run_for(trial_id, spec, reopen=False)
        self.client.log_artifacts(run_id, folder, "best_checkpoint")
        return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())

    def remove_orphans(self, known: set[str]) -> int:
        """A driver killed after a trial's run was created but before Tune persisted the trial leaves a run
        for a trial that no longer exists (the searcher proposes a new one on resume). Such runs are closed as
        `orphaned`; those that hold no result are deleted (MLflow's soft delete), so the study shows one run per
        trial. Spared: every trial in `known` or in any experiment state the study folder has ever held, runs
        with any logged result (closed as orphaned, kept), and runs this writer did not make (no trial tag)."""
        known = set(known) | trial_ids_ever(Path(self.study_dir) / TUNE_DIR) | recorded_trial_ids(self.study_dir)
        runs = self.client.search_runs([self.experiment_id], max_results=50000,
                                       filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'")
        removed = 0
        for run in runs:
            trial_id = run.data.tags.get(TRIAL_TAG)
            if trial_id is None or run.data.tags.get(STUDY_TAG) != self.study_name or trial_id in known:
                continue
            if run.data.tags.get(STATUS_TAG) == "orphaned":
                continue
            tags = [RunTag(STATUS_TAG, "orphaned"),
                    RunTag(REASON_TAG, "Tune never recorded this trial (its driver was killed first); the "
                                       "searcher proposed another in its place")]
            self.client.log_batch(run.info.run_id, tags=tags)
            if run.info.status == "RUNNING":
                self.client.set_terminated(run.info.run_id, status="KILLED")
            if not run.data.metrics:
                self.client.delete_run(run.info.run_id)
                removed += 1
        return removed


def recorded_trial_ids(study_dir: str | Path) -> set[str]:
    """The trial ids a resume found in Tune's experiment state before restoring it (study.json's
    `tune_trial_ids`): what the restore must bring back."""
    try:
        ids = read_info(Path(study_dir)).get("tune_trial_ids", [])
    except ConfigError:
        return set()
    return {str(i) for i in ids} if isinstance(ids, list) else set()


def check_restored(study_dir: str | Path, trial_ids: set[str]) -> None:
    """A restore that did not bring back every trial Tune had recorded (a damaged tune/ folder, a Ray or Optuna
    upgrade since the run: Tune then starts the study over) must stop the study before anything is trained or
    deleted: one line, exit 2."""
    expected = recorded_trial_ids(study_dir)
    missing = sorted(expected - set(trial_ids))
    if missing:
        more = " ..." if len(missing) > 5 else ""
        raise ConfigError(f"study: Tune restored {len(expected) - len(missing)} of the {len(expected)} trials the "
                          f"study folder records (missing: {', '.join(missing[:5])}{more}): its experiment or "
                          f"searcher state could not be read (damaged, or written by another Ray or Optuna "
                          f"version); stopped before any trial ran, MLflow untouched, '{study_dir}' kept")


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
    # class defaults too: a tracker unpickled from a study started by an older mmstudy has no such attributes
    _restore_checked = _restore_failed = False

    def __init__(self, study: Study):
        self.study, self.epochs = study, study.config.trial_config().epochs
        self.writer: TrialWriter | None = None
        self._queue: ThreadPoolExecutor | None = None
        self._failing_since: float | None = None
        self._last_try = 0.0

    def __getstate__(self):  # Tune pickles callbacks with the experiment state; clients and threads are not state
        return {**self.__dict__, "writer": None, "_queue": None, "_failing_since": None, "_last_try": 0.0,
                "_restore_checked": False, "_restore_failed": False}

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

    def on_step_begin(self, iteration, trials, **info):
        """Before Tune's first step in this driver, while nothing has been trained or written: the restore
        brought back every trial the study folder records (`check_restored`), or the study stops here."""
        if not self._restore_checked:
            self._restore_checked = True
            try:
                check_restored(self.study.dir, {t.trial_id for t in trials})
            except ConfigError:
                self._restore_failed = True
                raise

    # Arguments are evaluated here, in Tune's loop, so the queued write sees the trial as it was then.
    def on_trial_start(self, iteration, trials, trial, **info):
        self._submit("run creation", "run_for", trial.trial_id, dict(trial.config))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._submit("metric logging", "log_result", trial.trial_id, dict(trial.config), dict(result))

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = dict(trial.last_result or {})
        status, reason = trial_status(last, self.epochs)
        if status == "finished" and trial.config.get("role") in PREDICTION_ROLES:
            self._submit("predictions", "log_predictions", trial.trial_id, dict(trial.config), trial.checkpoint)
        self._submit("run closing", "close", trial.trial_id, dict(trial.config), status, reason, last)

    def on_trial_error(self, iteration, trials, trial, **info):
        reason = last_error_line(trial.error_file)
        self._submit("run closing", "close", trial.trial_id, dict(trial.config), "failed", reason,
                     dict(trial.last_result or {}))

    def on_experiment_end(self, trials, **info):
        ids = {t.trial_id for t in trials}
        if not self._restore_checked:  # no step ran (a finished study resumed): the same check
            self._restore_checked = True
            self._restore_failed = bool(recorded_trial_ids(self.study.dir) - ids)
        if not self._restore_failed:  # after a lost restore every run stays as it is
            self._submit("orphan clean-up", "remove_orphans", ids)
        self.drain()
        if self._restore_failed:
            check_restored(self.study.dir, ids)


def replay(study: Study) -> dict[str, int]:
    """Replay the trials of the study folder's last Tune experiment state through the writer, from JSON files
    only (`study.folder`: never Tune's pickles): missing runs created, missing epochs logged, ended trials
    closed. Idempotent: logged epochs are skipped."""
    writer, epochs = TrialWriter(study), study.config.trial_config().epochs
    counts = {"trials": 0, "epochs_logged": 0, "closed": 0}
    for trial in tune_trials(study.tune_dir):
        records = trial.results()
        if not records:
            continue
        counts["trials"] += 1
        writer.run_for(trial.trial_id, trial.config)
        before = writer.logged_epochs(trial.trial_id)
        for record in records:
            writer.log_result(trial.trial_id, trial.config, record)
        counts["epochs_logged"] += writer.logged_epochs(trial.trial_id) - before
        last = dict(trial.last_result or records[-1])
        if trial.status == "ERROR":
            writer.close(trial.trial_id, trial.config, "failed", last_error_line(trial.error_file), last)
        elif trial.status == "TERMINATED" or last.get("diverged") or int(last.get("training_iteration", 0)) >= epochs:
            status = trial_status(last, epochs)
            if status[0] == "finished" and trial.config.get("role") in PREDICTION_ROLES:
                folder = trial.last_checkpoint()
                writer.log_predictions(trial.trial_id, trial.config,
                                       None if folder is None else Checkpoint.from_directory(str(folder)))
            writer.close(trial.trial_id, trial.config, *status, last)
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
