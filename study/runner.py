"""Run and resume a study: Ray Tune executes, Optuna searches, ASHA stops early, MLflow records.

Read top to bottom, this is the story of a study; every step is a call into a module named for its job:
the config (`study.config`), the records (`study.records`: folder, snapshot, parent run), the Ray session
(`study.cluster`), what is trained in which order (`study.search`), the trial runs (`study.tracking`) and
the live view (`study.console`).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study import records
from study.cluster import check_job_paths, ray_session
from study.config import StudyConfig
from study.trust import shared_umask
from trainables.errors import ConfigError


@dataclass
class Outcome:
    """What a finished (or resumed) study hands back to the command line."""
    study: records.Study
    results: Any  # Tune's ResultGrid
    summary: Any  # analysis.summary.StudySummary, or None when it could not be computed


def run_study(cfg: StudyConfig, config_path: str | None = None, verbose: int = 0, out=None,
              shared_group: str | None = None) -> Outcome:
    check_job_paths(cfg.storage_path, cfg.resolved_tracking_uri())  # as a Ray job: nothing in its temporary copy
    records.check_new(cfg, shared_group)                     # a free name, a writable folder, a reachable store
    with shared_umask(shared_group), ray_session(cfg.ray_address, cfg.resources):  # start/join Ray; a trial fits
        trainable = trainable_for(cfg)                       # the dataset: a bad one fails before any record exists
        study = records.start(cfg, config_path, shared_group)  # folder (0700) + snapshot + parent run, or none
        print_links(study, out)
        searcher = study_searcher(study)
        tuner = tune().Tuner(trainable, param_space={},
                             tune_config=tune_config(study, searcher), run_config=run_config(study, searcher, verbose, out))
        results = tuner.fit()
    return wrap_up(study, results)


def resume_study(study_dir: str | Path, verbose: int = 0, out=None, shared_group: str | None = None) -> Outcome:
    study = records.open_study(study_dir, shared_group)      # only you (or the shared group) wrote it; the snapshot
    check_job_paths(study_dir, study.info["tracking_uri"], "study_dir")
    cfg = study.config
    if not study.tune_dir.exists() or not tune().Tuner.can_restore(str(study.tune_dir)):
        raise ConfigError(f"study: '{study.dir}' has no restorable Tune experiment (was it started?)")
    from study.search import check_saved_state

    records.open_existing(study.info["tracking_uri"])       # the study's own store, never a new one
    check_saved_state(cfg, study.tune_dir)                   # Tune would restart the study on a bad searcher state
    records.expect_restored(study)                           # the trials Tune recorded: a restore that loses one stops
    quiet_tune(verbose)
    with shared_umask(shared_group), ray_session(cfg.ray_address, cfg.resources):
        print_links(study, out)
        tuner = tune().Tuner.restore(str(study.tune_dir), trainable=trainable_for(cfg), resume_unfinished=True,
                                     resume_errored=True)
        results = fit(tuner)
    backfill(study)                                          # what the killed driver had not written to MLflow
    return wrap_up(study, results)


def fit(tuner):
    """`tuner.fit()` of a restored study. A restore that lost trials stops in the study's callback
    (`tracking.check_restored`) with one line, also when Ray hands it back wrapped (the Ray client runs the
    tuner remotely); Tune's own log of why it could not restore becomes the end of that line."""
    import logging

    why = RestoreFailure()
    tune_log = logging.getLogger("ray.tune.execution.tune_controller")
    tune_log.addFilter(why)
    try:
        return tuner.fit()
    except Exception as err:
        stop = err if isinstance(err, ConfigError) else getattr(err, "cause", None)
        if isinstance(stop, ConfigError):
            raise ConfigError(f"{stop}{f' (Tune: {why.reason})' if why.reason else ''}") from None
        raise
    finally:
        tune_log.removeFilter(why)


class RestoreFailure:
    """A logging filter that keeps the reason of Tune's "Failed to restore the run state." (logged with a
    traceback, after which Tune starts the experiment over) instead of printing it."""

    def __init__(self):
        self.reason: str | None = None

    def filter(self, record) -> bool:
        if not record.getMessage().startswith("Failed to restore") or not record.exc_info:
            return True
        err = record.exc_info[1]
        self.reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200] if str(err).strip() else ''}"
        return False


def wrap_up(study: records.Study, results) -> Outcome:
    """The Optuna study tidied, the best trial's weights (when asked), the answer against the baseline, the
    parent run closed."""
    from study.search import close_orphans

    close_orphans(study.config, study.dir)                   # each method's proposals a killed driver never trained
    if study.config.checkpoint_policy() == "best":
        from study.tracking import log_best_weights

        log_best_weights(study, results)
    summary = summarize(study)
    records.finish(study, results, summary)
    return Outcome(study, results, summary)


# ----------------------------------------------------------------------------- the pieces the story calls


def tune():
    """Ray Tune, imported by the commands that train (listing or reporting a study needs none of it)."""
    from ray import tune as ray_tune

    return ray_tune


def trainable_for(cfg: StudyConfig):
    """The trial function with the data placed once in Ray's object store, and the trial's resources."""
    from study.search import train
    from trainables.data.registry import build_dataset

    trial = cfg.trial_config()
    data = build_dataset(trial.dataset.name, trial.dataset_params())
    fn = tune().with_parameters(train, base=cfg.base_trial(), data=data, checkpoint_every=cfg.checkpoint_every,
                                metric=cfg.metric.name)
    return tune().with_resources(fn, {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu})


def study_searcher(study: records.Study):
    """The study's one searcher: one Optuna study per method, interleaved (a search study has one method)."""
    from study.search import StudySearcher

    return StudySearcher.for_study(study.config, study.dir)


def tune_config(study: records.Study, searcher):
    from study import search

    cfg = study.config
    scheduler = search.scheduler_for(cfg)                    # ASHA per method
    TrialName = search.TrialName
    return tune().TuneConfig(metric=cfg.metric.name, mode=cfg.metric.mode, search_alg=searcher,
                             scheduler=scheduler, num_samples=searcher.total(),
                             max_concurrent_trials=cfg.max_concurrent, reuse_actors=True,
                             trial_name_creator=TrialName(cfg.name), trial_dirname_creator=TrialName(cfg.name, "_"))


def run_config(study: records.Study, searcher, verbose: int, out=None):
    """Study folder, failure retries, checkpoints (the best by validation accuracy is kept for
    `log_checkpoint: best`, the latest always), and the callbacks: MLflow records and the live view."""
    from study.console import StudyConsole, short_names, study_plan
    from study.tracking import TrialTracker

    cfg = study.config
    keep_best = {"checkpoint_score_attribute": "val_acc", "checkpoint_score_order": "max"} \
        if cfg.checkpoint_policy() == "best" else {}
    console = StudyConsole(cfg.name, cfg.metric.name, cfg.metric.mode, total=searcher.total(),
                           short_names=short_names(list(cfg.space().params)), out=out or sys.stdout,
                           epochs=cfg.trial_config().epochs, plan=study_plan(cfg))
    callbacks = [TrialTracker(study)] + ([console] if verbose == 0 else [])
    quiet_tune(verbose)
    return tune().RunConfig(name=records.TUNE_DIR, storage_path=str(study.dir), callbacks=callbacks,
                            failure_config=tune().FailureConfig(max_failures=cfg.max_failures),
                            checkpoint_config=tune().CheckpointConfig(num_to_keep=2, **keep_best),
                            verbose=verbose)


def quiet_tune(verbose: int) -> None:
    """At verbosity 0 the compact view is all: Tune's legacy reporter at 0 prints nothing (its new one still
    prints a banner), and its INFO lines go. Tune snapshots its state whenever a trial has checkpointed
    num_to_keep times; that is wanted, not a warning."""
    import logging

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if verbose == 0:
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
        logging.getLogger("ray.tune").setLevel(logging.WARNING)


def print_links(study: records.Study, out=None) -> None:
    from study.ui import runs_table_url, served_url

    server = served_url(study.info["tracking_uri"])
    where = runs_table_url(server, study.info["experiment_id"]) if server else (
        f"{runs_table_url('http://127.0.0.1:5000', study.info['experiment_id'])}  (after `mmstudy ui {study.dir}`)")
    print(f"study '{study.name}' in {study.dir}\nMLflow runs table: {where}", file=out or sys.stdout, flush=True)


def backfill(study: records.Study) -> None:
    """After a resume, log what the killed driver had not yet written to MLflow (its last epochs or run
    closings): the study folder has every result, and the replay skips what MLflow already has."""
    try:
        counts = records.sync(study)
    except Exception as err:  # noqa: BLE001
        print(f"mmstudy: warning: could not back-fill MLflow ({str(err).splitlines()[0][:200]}); "
              f"run `mmstudy sync {study.dir}` later")
        return
    if counts["epochs_logged"]:
        print(f"mmstudy: back-filled {counts['epochs_logged']} epochs the interrupted driver had not logged")


def summarize(study: records.Study):
    """The study's answer against its joint-training baseline (analysis.summary), from its MLflow records."""
    try:
        from analysis.load import load_study
        from analysis.summary import study_summary

        cfg = study.config
        if cfg.mode == "benchmark":
            from analysis.benchmark import benchmark_summary

            return benchmark_summary(load_study(str(study.dir)))
        return study_summary(load_study(str(study.dir)), cfg.metric.names, cfg.metric.modes)
    except Exception as err:  # noqa: BLE001 -- a summary that cannot be computed must not fail a finished study
        print(f"mmstudy: warning: no summary ({str(err).splitlines()[0][:200] if str(err) else type(err).__name__}); "
              f"`mmstudy report {study.dir}` has the tables")
        return None
