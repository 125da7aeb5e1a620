"""Run and resume studies: Ray Tune executes, Optuna searches, ASHA stops early, MLflow records.

Study folder (STORAGE_PATH/NAME):
  study.json   the resolved study config, MLflow ids, status -- what `resume`, `list` and `report` read
  study.yaml   the config as given
  tune/        Tune's experiment (trial results, checkpoints, searcher state) -- Tuner.restore reads it
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import yaml

from study.config import StudyConfig, load_study_config
from trainables.config import build_trial_config, flatten
from trainables.errors import ConfigError

STUDY_FILE = "study.json"
# A tracking server that stops answering must not stall the driver for minutes per call.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
TUNE_DIR = "tune"


# ----------------------------------------------------------------------------- pieces


def dataset_label(name: str, params: dict) -> str:
    """synthetic/tiny for generated data, kinetics_sounds:/data/ks for file-backed data."""
    return f"{name}/{params['size']}" if "size" in params else f"{name}:{params.get('root', '')}"


def check_storage(study_dir: Path) -> None:
    """Fail fast, before Ray or MLflow, when the study folder cannot be written."""
    parent = study_dir.parent
    probe_dir = parent
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise ConfigError(f"storage_path: '{probe_dir}' is a file, not a folder")
    if not os.access(probe_dir, os.W_OK):
        raise ConfigError(f"storage_path: '{parent}' is not writable")
    free = shutil.disk_usage(probe_dir).free
    if free < 50 * 2**20:
        raise ConfigError(f"storage_path: only {free // 2**20} MiB free under '{probe_dir}' (need at least 50 MiB)")


def build_search(cfg: StudyConfig, base: dict[str, Any]):
    """(param_space, search_alg, scheduler, num_samples) for the study's mode and searcher."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from search_spaces import define_by_run, grid_points, sensitivity_points

    space = cfg.space()
    epochs = build_trial_config(base).epochs
    scheduler = None
    if cfg.scheduler == "asha" and cfg.mode == "search" and cfg.searcher != "grid":  # grids run every point fully
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=epochs,
                                  grace_period=min(cfg.asha.grace_period, epochs),
                                  reduction_factor=cfg.asha.reduction_factor)
    if cfg.mode == "compare":
        from study.config import compare_points

        return {"point": tune.grid_search(compare_points(cfg))}, None, None, 1
    if cfg.mode == "sensitivity":
        points = sensitivity_points(space, base, cfg.sensitivity.params, cfg.loss_settings)
        return {"point": tune.grid_search(points)}, None, None, 1
    if cfg.searcher == "grid":
        points = [dict(p, loss_setting=s) for p in grid_points(space, base) for s in cfg.loss_settings]
        return {"point": tune.grid_search(points)}, None, scheduler, 1

    import optuna

    from study.searcher import DivergenceAwareOptunaSearch as OptunaSearch

    # Several loss settings in a search: the setting becomes one more categorical.
    extra = {"loss_setting": list(cfg.loss_settings)} if len(cfg.loss_settings) > 1 else None
    define = define_by_run(space, base, extra)

    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=cfg.sampler_seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=cfg.sampler_seed),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=cfg.sampler_seed, warn_independent_sampling=False),
    }
    search = OptunaSearch(space=define, metric=cfg.metric.name, mode=cfg.metric.mode, sampler=samplers[cfg.searcher]())
    return {}, search, scheduler, cfg.num_samples


def check_ray_address(address: str | None, timeout_s: float = 5.0) -> None:
    """Fail at once, before MLflow or Ray start, when nothing answers at the cluster's 'host:port' (or
    'ray://host:port'): Ray itself retries a silent address for minutes before it gives up."""
    host, sep, port = (address or "").split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit():
        return  # no address (a local Ray), 'auto' and other forms that Ray resolves itself
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return
    except OSError as err:
        raise ConfigError(f"ray_address: nothing answers at '{address}' ({err or type(err).__name__}); start the "
                          f"head node with `ray start --head` and give its address, or leave ray_address unset "
                          f"for a local Ray") from None


def init_ray(address: str | None) -> bool:
    """Connect to the cluster at `address`, or (None) start a local Ray bound to 127.0.0.1. Returns True if
    we started it (and so should stop it). Token authentication stays on (Ray's default)."""
    import ray

    if ray.is_initialized():
        return False
    # "local" always starts a fresh Ray: never attach by accident to a `ray start` cluster (or its stale
    # address file) on this machine -- a cluster is used only when named.
    kwargs: dict[str, Any] = {"address": address or "local", "log_to_driver": True}
    if address is None:
        kwargs.update(dashboard_host="127.0.0.1", include_dashboard=False)
    try:
        ray.init(**kwargs)
    except ConnectionError as err:
        hint = "" if os.environ.get("RAY_AUTH_MODE") else (
            "; a cluster started with `ray start` uses token authentication: set RAY_AUTH_MODE=token here, with "
            "its token in ~/.ray/auth_token or RAY_AUTH_TOKEN (docs/cluster.md)")
        raise ConfigError(f"ray_address: cannot connect to Ray at '{address}' "
                          f"({str(err).splitlines()[0][:200]}){hint}") from None
    return True


def check_trial_fits(cpu: float, gpu: float, started_ray: bool) -> None:
    """A trial that no node can hold would leave Tune waiting forever. On a Ray this command started (nothing
    will join it) that is a one-line error before anything is written; on a cluster, which may autoscale,
    a warning."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(r.get("CPU", 0) >= cpu and r.get("GPU", 0) >= gpu for r in nodes):
        return
    largest = max(nodes, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
    have = f"CPU {largest.get('CPU', 0):g}, GPU {largest.get('GPU', 0):g}"
    field = "resources.gpu" if gpu > largest.get("GPU", 0) else "resources.cpu"
    if started_ray:
        raise ConfigError(f"{field}: a trial asks for {cpu:g} CPU and {gpu:g} GPU but this machine's local Ray has "
                          f"{have}; lower {field} (GPU fractions such as 0.5 share one GPU) or set ray_address "
                          f"to a cluster that has them")
    print(f"mmstudy: warning: no node of the Ray cluster has {cpu:g} CPU and {gpu:g} GPU for one trial (largest "
          f"node: {have}); trials wait until the cluster scales up", flush=True)


def new_sqlite_store(uri: str) -> bool:
    """True for a sqlite:/// URI whose file does not exist yet in a writable folder."""
    if not uri.startswith("sqlite:///"):
        return False
    path = Path(uri[len("sqlite:///"):])
    return not path.exists() and path.parent.is_dir() and os.access(path.parent, os.W_OK)


def discard_store(uri: str) -> None:
    """Remove a SQLite store this command created before failing, so a study that never started leaves no
    file -- unless it already holds a run (another command may have started using it meanwhile)."""
    path = Path(uri[len("sqlite:///"):])
    try:
        with closing(sqlite3.connect(path)) as db:
            if db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]:
                return
    except sqlite3.Error:
        pass  # no runs table yet: the store was never used
    for leftover in (path, path.with_name(path.name + "-journal")):
        leftover.unlink(missing_ok=True)


@contextmanager
def discarding_new_store(uri: str, new_store: bool):
    """Undo the creation of a new SQLite store if the block fails (see `discard_store`)."""
    try:
        yield
    except BaseException:
        if new_store:
            discard_store(uri)
        raise


def connect_and_start_ray(uri: str, address: str | None):
    """(MLflow client, whether we started Ray).

    A tracking store is checked before Ray starts, so an unreachable one is a one-line error. The exception
    is a new SQLite file: creating it (MLflow's schema migrations, ~1.5 s) cannot meet an unreachable
    server, so it runs in a thread while Ray starts -- Ray's start is mostly waiting on its own processes.
    """
    from study.tracking import connect  # MLflow, Ray Tune and torch: imported by the commands that use them

    address = address or os.environ.get("RAY_ADDRESS") or None  # --address / ray_address, else RAY_ADDRESS
    check_ray_address(address)
    if not new_sqlite_store(uri):
        client = connect(uri)
        return client, init_ray(address)
    with ThreadPoolExecutor(1, thread_name_prefix="mmstudy-mlflow") as pool:
        tracking = pool.submit(connect, uri)
        started_ray = init_ray(address)
        try:
            return tracking.result(), started_ray
        except BaseException:
            if started_ray:
                import ray

                ray.shutdown()
            raise


def trainable_for(cfg: StudyConfig, base: dict[str, Any]):
    """The trial function with the data placed once in Ray's object store and the trial's resources."""
    from ray import tune

    from trainables.data.registry import build_dataset
    from trainables.tune_trainable import run_trial

    trial = build_trial_config(base)
    data = build_dataset(trial.dataset.name, trial.dataset_params())
    fn = tune.with_parameters(run_trial, base=base, seeds=list(cfg.seeds), data=data,
                              checkpoint_every=cfg.checkpoint_every, metric=cfg.metric.name)
    resources = {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu}
    return tune.with_resources(fn, resources)


def write_study_file(study_dir: Path, payload: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=study_dir, prefix=".study-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2)
    os.replace(tmp, study_dir / STUDY_FILE)


def read_study_file(study_dir: str | Path) -> dict[str, Any]:
    path = Path(study_dir) / STUDY_FILE
    if not path.is_file():
        raise ConfigError(f"study: '{study_dir}' is not a study folder (no {STUDY_FILE}); see `mmstudy list`")
    return json.loads(path.read_text())


def start_records(cfg: StudyConfig, client, experiment_id: str, config_path: str | None, study_dir: Path,
                  uri: str) -> dict[str, Any]:
    """The parent MLflow run and the study folder -- both or neither: a failure here removes what was made."""
    from study.tracking import git_commit, log_params

    trial = build_trial_config(cfg.base_trial())
    parent_id = None
    try:
        parent = client.create_run(experiment_id, run_name=cfg.name, tags={
            "mmstudy.study": cfg.name, "mmstudy.kind": "study", "mmstudy.mode": cfg.mode,
            "mmstudy.git_commit": git_commit(),
            "mmstudy.dataset": dataset_label(trial.dataset.name, trial.dataset.params()),
            "mmstudy.balancer": trial.balancer.name, "mmstudy.config_hash": cfg.config_hash(),
            "mmstudy.study_dir": str(study_dir), "mmstudy.status": "running"})
        parent_id = parent.info.run_id
        log_params(client, parent_id, flatten(cfg.model_dump(mode="json")))
        study_dir.mkdir(parents=True, exist_ok=True)
        (study_dir / "study.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        if config_path:
            client.log_artifact(parent_id, config_path)
        client.log_artifact(parent_id, str(study_dir / "study.yaml"))
        info = {"name": cfg.name, "config": cfg.model_dump(mode="json"), "tracking_uri": uri,
                "experiment_id": experiment_id, "experiment_name": cfg.resolved_experiment(),
                "parent_run_id": parent_id, "status": "running", "created": time.time(), "epochs": trial.epochs}
        write_study_file(study_dir, info)
        return info
    except BaseException:
        if parent_id is not None:
            try:
                client.delete_run(parent_id)
            except Exception:  # noqa: BLE001
                pass
        shutil.rmtree(study_dir, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------- run / resume


def run_study(cfg: StudyConfig, config_path: str | None = None, verbose: int = 1):
    from ray import tune
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig

    from study.tracking import MlflowStudyCallback, ensure_experiment

    study_dir = cfg.study_dir()
    if (study_dir / STUDY_FILE).exists():
        raise ConfigError(f"name: study '{cfg.name}' already exists in {study_dir}; "
                          f"continue it with `mmstudy resume {study_dir}` or choose another name")
    check_storage(study_dir)
    base = cfg.base_trial()
    uri = cfg.resolved_tracking_uri()
    new_store, started_ray = new_sqlite_store(uri), False
    try:
        with discarding_new_store(uri, new_store):  # until the study's records exist
            client, started_ray = connect_and_start_ray(uri, cfg.ray_address)
            check_trial_fits(cfg.resources.cpu, cfg.resources.gpu, started_ray)
            trainable = trainable_for(cfg, base)
            param_space, search_alg, scheduler, num_samples = build_search(cfg, base)
            experiment_id = ensure_experiment(client, cfg.resolved_experiment())
            info = start_records(cfg, client, experiment_id, config_path, study_dir, uri)
        parent_id = info["parent_run_id"]
        trial = build_trial_config(base)
        callback = MlflowStudyCallback(uri, experiment_id, parent_id, cfg.name, base, list(cfg.seeds), trial.epochs)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=TuneConfig(metric=cfg.metric.name, mode=cfg.metric.mode, search_alg=search_alg,
                                   scheduler=scheduler, num_samples=num_samples,
                                   max_concurrent_trials=cfg.max_concurrent, reuse_actors=True),
            run_config=RunConfig(name=TUNE_DIR, storage_path=str(study_dir), callbacks=[callback],
                                 failure_config=FailureConfig(max_failures=cfg.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2), verbose=verbose),
        )
        results = tuner.fit()
        return finish(study_dir, info, results)
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def resume_study(study_dir: str | Path, verbose: int = 1):
    from ray import tune

    study_dir = Path(study_dir).resolve()
    info = read_study_file(study_dir)
    cfg = load_study_config(None, raw=info["config"])
    if not (study_dir / TUNE_DIR).exists() or not tune.Tuner.can_restore(str(study_dir / TUNE_DIR)):
        raise ConfigError(f"study: '{study_dir}' has no restorable Tune experiment (was it started?)")
    _, started_ray = connect_and_start_ray(info["tracking_uri"], cfg.ray_address)
    try:
        check_trial_fits(cfg.resources.cpu, cfg.resources.gpu, started_ray)
        tuner = tune.Tuner.restore(str(study_dir / TUNE_DIR), trainable=trainable_for(cfg, cfg.base_trial()),
                                   resume_unfinished=True, resume_errored=True)
        results = tuner.fit()
        backfill(study_dir, info, cfg)
        return finish(study_dir, info, results)
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def backfill(study_dir: Path, info: dict[str, Any], cfg: StudyConfig) -> None:
    """After a resume, log what the killed driver had not yet written to MLflow (its last epochs or run
    closings): the study folder has every result, and the replay skips what MLflow already has."""
    from study.tracking import sync_study

    try:
        counts = sync_study(study_dir, info, cfg.base_trial(), list(cfg.seeds))
    except Exception as err:  # noqa: BLE001
        print(f"mmstudy: warning: could not back-fill MLflow ({str(err).splitlines()[0][:200]}); "
              f"run `mmstudy sync {study_dir}` later")
        return
    if counts["epochs_logged"]:
        print(f"mmstudy: back-filled {counts['epochs_logged']} epochs the interrupted driver had not logged")


def finish(study_dir: Path, info: dict[str, Any], results) -> Any:
    """Mark the study finished, put the headline numbers on the parent run, return the results."""
    from mlflow.tracking import MlflowClient

    frame = results.get_dataframe()
    metric = info["config"]["metric"]["name"]
    counts = {"trials": len(results), "errors": len(results.errors)}
    info.update(status="finished", finished=time.time(), **counts)
    write_study_file(study_dir, info)
    try:
        client = MlflowClient(tracking_uri=info["tracking_uri"])
        best_cols = [c for c in ("best_val_acc", "best_test_acc", "best_test_f1") if c in frame]
        if best_cols and metric in frame and frame[metric].notna().any():
            mode = info["config"]["metric"]["mode"]
            best = frame.loc[frame["best_val_acc"].idxmax() if mode == "max" else frame["best_val_acc"].idxmin()]
            for col in best_cols:
                client.log_metric(info["parent_run_id"], f"study_{col}", float(best[col]))
        client.set_tag(info["parent_run_id"], "mmstudy.status", "finished")
        client.set_terminated(info["parent_run_id"], status="FINISHED")
    except Exception as err:  # noqa: BLE001
        print(f"mmstudy: warning: could not update the study's MLflow run ({str(err).splitlines()[0][:200]})")
    return results


def top_trials_table(results, metric: str, mode: str, k: int = 5) -> str:
    import pandas as pd

    frame = results.get_dataframe()
    if frame.empty or "best_val_acc" not in frame:
        return "no trial reported a result"
    point_cols = [c for c in frame.columns if c.startswith("config/")]
    keep = ["trial_id", *point_cols, "training_iteration", "best_epoch", "best_val_acc", "best_test_acc",
            "best_test_acc_std"]
    keep = [c for c in keep if c in frame]
    frame = frame.sort_values("best_val_acc", ascending=(mode == "min"), na_position="last").head(k)[keep]
    frame = frame.dropna(axis=1, how="all").drop(columns=["config/point/sweep_param"], errors="ignore")
    frame = frame.rename(columns=lambda c: c.replace("config/point/", "").replace("config/", "")
                         .replace("balancer.", "").replace("training_iteration", "epochs"))
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4f}".format):
        return frame.to_string(index=False)


def list_studies(storage_path: str) -> list[dict[str, Any]]:
    root = Path(storage_path)
    rows = []
    for path in sorted(root.glob(f"*/{STUDY_FILE}")):
        info = json.loads(path.read_text())
        row = {"name": info["name"], "status": info.get("status", "?"), "dir": str(path.parent),
               "experiment": info.get("experiment_name", "")}
        row.update(_trial_counts(path.parent / TUNE_DIR))
        rows.append(row)
    return rows


def _trial_counts(tune_dir: Path) -> dict[str, Any]:
    """Counts and best result from each trial's result.json (readable without Ray running)."""
    total = done = 0
    best = None
    for result_file in tune_dir.glob("*/result.json"):
        total += 1
        last = None
        for line in result_file.read_text().splitlines():
            if line.strip():
                try:
                    last = json.loads(line)
                except json.JSONDecodeError:
                    continue
        if last is not None:
            done += 1
            value = last.get("best_val_acc")
            if isinstance(value, (int, float)) and value == value and (best is None or value > best[0]):
                best = (value, last.get("best_test_acc"))
    return {"trials": total, "with_results": done, "best_val_acc": best[0] if best else None,
            "best_test_acc": best[1] if best else None}

