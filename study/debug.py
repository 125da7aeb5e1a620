"""`mmstudy debug`: one trial in-process, no Ray -- the place to set a breakpoint."""
from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from study.credentials import redact_text
from study.records import connect, write_json_atomic
from trainables.balancers.plugin_trust import config_from_record
from trainables.config import (TrialConfig, build_trial_config, deep_merge, flatten, format_validation_error,
                               parse_overrides)
from trainables.errors import ConfigError
from trainables.trainer import Trainer

# Per-epoch values that are not results: wall time, and what the trial reported once about itself.
NOT_COMPARED = {"epoch", "epoch_time_s", "num_seeds", "diverged"}


def format_row(record: dict[str, Any], modalities: list[str]) -> str:
    cols = [f"{record['epoch']:>5d}", f"{record['train_loss']:>10.4f}", f"{record['val_acc']:>8.4f}",
            f"{record['val_f1']:>7.4f}", *[f"{record[f'val_acc_{m}']:>9.4f}" for m in modalities],
            f"{record['test_acc']:>8.4f}"]
    return " ".join(cols)


def header(modalities: list[str]) -> str:
    names = ["epoch", "train_loss", "val_acc", "val_f1", *[f"val_{m[:5]}" for m in modalities], "test_acc"]
    widths = [5, 10, 8, 7, *[9] * len(modalities), 8]
    return " ".join(f"{n:>{w}}" for n, w in zip(names, widths))


def run_debug(cfg: TrialConfig, out_dir: str | None, progress: bool = True) -> dict[str, Any]:
    from trainables.tune_trainable import build_trainers

    # builds data, model and balancer: every config error surfaces before any file
    return train_and_print(build_trainers([cfg]), [cfg.seed], out_dir, progress)


def train_and_print(trainers: list[Trainer], seeds: list[int], out_dir: str | None,
                    progress: bool = True) -> dict[str, Any]:
    """Train the seeds of one trial in lockstep, as its Tune trial does, and print one row per epoch (the
    mean over seeds when there are several). Returns the result written to DIR/metrics.json."""
    from trainables.tune_trainable import lockstep_epoch

    first, cfg = trainers[0], trainers[0].cfg
    mods = first.modalities
    out = Path(out_dir) if out_dir else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    seeds_note = f" seeds={seeds} (rows: mean over seeds)" if len(seeds) > 1 else ""
    print(f"device={first.device} dataset={cfg.dataset.name} balancer={cfg.balancer.name} "
          f"fusion={cfg.model.fusion} loss={cfg.loss_setting} selection={cfg.selection}{seeds_note}", flush=True)
    print(header(mods), flush=True)
    bar = None
    if progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=cfg.epochs * first.state.steps_per_epoch * len(trainers), desc="train", leave=False,
                   file=sys.stderr)
    rows: list[dict[str, Any]] = []

    def result() -> dict[str, Any]:
        if len(trainers) == 1:
            return first.result()
        config = {k: v for k, v in cfg.to_dict().items() if k != "seed"}
        return {"config": config, "seeds": seeds, "history": rows,
                "best": {k[5:]: v for k, v in rows[-1].items() if k.startswith("best_") and "/" not in k},
                "per_seed": [t.result() for t in trainers]}

    while first.epoch < cfg.epochs:
        summary = lockstep_epoch(trainers, seeds)
        row = first.history[-1] if len(trainers) == 1 else {**summary, "epoch": first.epoch}
        rows.append(row)
        if bar is not None:
            bar.update(first.state.steps_per_epoch * len(trainers))
            bar.clear()
        print(format_row(row, mods), flush=True)
        if out is not None:
            write_json_atomic(out / "metrics.json", result())
    if bar is not None:
        bar.close()
    final = result()
    best = final["best"]
    print(f"best epoch {best['epoch']:g} (selected on {cfg.selection}): val_acc={best['val_acc']:.4f} "
          f"test_acc={best['test_acc']:.4f} test_f1={best['test_f1']:.4f} "
          + " ".join(f"test_acc_{m}={best[f'test_acc_{m}']:.4f}" for m in mods), flush=True)
    if out is not None:
        write_json_atomic(out / "metrics.json", final)
        print(f"wrote {out / 'metrics.json'}")
    return final


# ------------------------------------------------------------------ --from-run
class RecordedProvenance(BaseModel):
    """The fields of a run's `mmstudy.provenance` tag a re-run reads (trainables.provenance.collect writes them),
    checked: tags are written by anyone with write access to the tracking server."""
    model_config = ConfigDict(extra="allow")
    threads: int | None = Field(None, ge=1, le=4096)
    device: str | None = None
    device_name: str | None = None
    cpu_capability: str | None = None
    precision: str | None = None
    versions: dict[str, str | None] = Field(default_factory=dict)
    git: dict[str, str | bool | None] = Field(default_factory=dict)
    seeds: list[int] | None = None
    dataset: dict[str, Any] | None = None


@dataclass
class TrialRun:
    """What `debug --from-run` reads from a trial's MLflow run, each tag checked."""
    run_id: str
    trial_id: str
    config: dict[str, Any]  # `mmstudy.trial_config`: the resolved trial config, without its seed
    seeds: list[int]  # `mmstudy.seeds`
    per_seed_keys: list[str]  # `mmstudy.per_seed_keys`: trial keys each seed sets to its own value (dataset.seed)
    provenance: dict[str, Any] | None  # `mmstudy.provenance`, None for a run that records none


def read_trial_run(run_id: str, uri: str) -> TrialRun:
    """A trial's MLflow run and its mmstudy tags (`trial_from_tags`); a store that does not answer and a run
    that is not there are each one line naming it."""
    from mlflow.exceptions import MlflowException

    from study.records import existing_store

    client = connect(existing_store("", tracking_uri=uri))
    try:
        tags = client.get_run(run_id).data.tags
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise ConfigError(f"--from-run: no MLflow run '{run_id}' in {uri}") from None
        raise ConfigError(f"--from-run: cannot read run '{run_id}' from {uri} ({first_line(err)})") from None
    return trial_from_tags(run_id, tags)


def trial_from_tags(run_id: str, tags: dict[str, str], field: str = "--from-run") -> TrialRun:
    """A trial run's mmstudy tags, each checked (anyone with write access to the tracking server writes tags):
    a tag that is not what mmstudy writes is one line naming it. The config is still data: build it under
    `config_from_record` so that a plug-in path in it is never imported unasked."""
    def tag(name: str, default: str | None = None) -> Any:
        text = tags.get(name, default)
        try:
            return None if text is None else json.loads(text)
        except ValueError:
            raise ConfigError(f"{field}: run '{run_id}' has a malformed {name} tag (not JSON)") from None

    config = tag("mmstudy.trial_config")
    if config is None:
        raise ConfigError(f"{field}: run '{run_id}' is not an mmstudy trial (no mmstudy.trial_config tag)")
    if not isinstance(config, dict):
        raise ConfigError(f"{field}: run '{run_id}' has a malformed mmstudy.trial_config tag (not a mapping)")
    seeds = tag("mmstudy.seeds", "[0]")
    if not (isinstance(seeds, list) and seeds and all(type(s) is int and s >= 0 for s in seeds)
            and len(set(seeds)) == len(seeds)):
        raise ConfigError(f"{field}: run '{run_id}' has a malformed mmstudy.seeds tag (allowed: a non-empty "
                          f"list of distinct non-negative integers; got {tags.get('mmstudy.seeds')[:100]!r})")
    recorded = tag("mmstudy.provenance")
    if recorded is not None:
        try:
            recorded = RecordedProvenance.model_validate(recorded).model_dump()
        except ValidationError as err:
            raise ConfigError(f"{field}: run '{run_id}' has a malformed mmstudy.provenance tag "
                              f"({format_validation_error(err, prefix='provenance')})") from None
    per_seed_keys = tag("mmstudy.per_seed_keys", "[]")
    if not (isinstance(per_seed_keys, list) and all(isinstance(k, str) and re.fullmatch(r"[A-Za-z_][\w.]*", k)
                                                     for k in per_seed_keys)):
        raise ConfigError(f"{field}: run '{run_id}' has a malformed mmstudy.per_seed_keys tag (allowed: a list of "
                          f"dotted trial keys; got {tags.get('mmstudy.per_seed_keys')[:100]!r})")
    config = {k: v for k, v in config.items() if k != "seed"}
    return TrialRun(run_id, str(tags.get("mmstudy.trial_id", run_id)), config, seeds, per_seed_keys, recorded)


def seed_config(trial: TrialRun, seed: int, overrides: list[str] | None = None) -> TrialConfig:
    """One seed's config of a recorded trial as that seed trained: its seed, and its own data draw where the
    trial drew one per seed (`per_seed_keys`, trainables.tune_trainable.seed_overrides); then `overrides`."""
    from trainables.tune_trainable import seed_overrides

    return build_trial_config(deep_merge(trial.config, seed_overrides(seed, trial.per_seed_keys)), overrides)


def first_line(err: Exception) -> str:
    text = str(err).strip()
    return redact_text(text.splitlines()[0][:200]) if text else type(err).__name__


def run_from_run(run_id: str, tracking_uri: str | None, flags: dict[str, Any], overrides: list[str],
                 threads: int | None, out_dir: str | None) -> dict[str, Any]:
    """Re-run an MLflow trial run as its trial ran: its config and seeds (in lockstep), its torch thread
    count and device type applied before anything is built; say whether the numbers can match exactly,
    then compare them with the run's per-epoch MLflow history.

    The run is data, not code: a balancer plug-in path in its config is not imported unless it is the one
    given on this command line (`--balancer`, `balancer.name=`) or the user says `--allow-plugin`."""
    import torch

    from study.config import default_tracking_uri
    from trainables import provenance
    from trainables.tune_trainable import build_trainers

    uri = tracking_uri or default_tracking_uri()
    trial = read_trial_run(run_id, uri)
    seeds = [flags["seed"]] if flags.get("seed") is not None else trial.seeds
    given = [flags.get("balancer"), flatten(parse_overrides(overrides)).get("balancer.name")]
    given = [g for g in given if isinstance(g, str)]
    with config_from_record(f"MLflow run {run_id} (tag mmstudy.trial_config)", given):
        recorded_device = build_trial_config(trial.config).device  # checked before it is used
        settings = provenance.applied_settings(trial.provenance, threads, torch.cuda.is_available())
        raw = dict(trial.config)
        if "device" in settings and flags.get("device") is None:
            from trainables.trainer import resolve_device

            if resolve_device(recorded_device).type != settings["device"]:
                raw["device"] = settings["device"]  # e.g. a CPU trial's `auto` where this machine has a GPU
        raw = apply_flags(raw, flags)
        configs = [seed_config(TrialRun(**{**trial.__dict__, "config": raw}), s, [*overrides, f"seed={s}"])
                   for s in seeds]
    resolved = {k: v for k, v in configs[0].to_dict().items() if k != "seed"}
    recorded_fields = flatten(trial.config)  # fields added to mmstudy after the trial ran are not changes
    changed = sorted(k for k, v in flatten(resolved).items() if k in recorded_fields and recorded_fields[k] != v
                     and not (k == "device" and v == settings.get("device")))
    before = torch.get_num_threads()
    if "threads" in settings:
        torch.set_num_threads(settings["threads"])  # before anything is built: the trial's reduction order
    try:
        trainers = build_trainers(configs)
        here = provenance.collect(trainers[0], seeds)
        _, line = provenance.verdict(trial.trial_id, trial.provenance, here, changed)
        print(line, flush=True)
        result = train_and_print(trainers, seeds, out_dir, progress=True)
    finally:
        torch.set_num_threads(before)  # an in-process caller (a notebook, a test) keeps its own setting
    rows = result["history"]
    gap = largest_difference(connect(uri), run_id, rows)
    print(gap["line"], flush=True)
    result["comparison"] = {"trial_id": trial.trial_id, "run_id": run_id, "provenance_line": line,
                            "provenance_here": here, "provenance_trial": trial.provenance, **gap}
    if out_dir is not None:
        write_json_atomic(Path(out_dir) / "metrics.json", result)
    return result


def apply_flags(raw: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """`--balancer/--dataset/--epochs/--seed/--device` on top of a config (a new plug-in name drops the old
    plug-in's params)."""
    raw = dict(raw)
    for key, value in flags.items():
        if value is None:
            continue
        if key in ("balancer", "dataset"):
            current = raw.get(key)
            if not (isinstance(current, dict) and current.get("name") == value):
                raw[key] = {"name": value}
        else:
            raw[key] = value
    return raw


def largest_difference(client, run_id: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Every per-epoch metric this run and the trial's MLflow history both have, epoch by epoch (step =
    epoch): the largest absolute difference, and the largest in val_acc."""
    logged = client.get_run(run_id).data.metrics
    keys = sorted(k for k in rows[0] if k in logged and k not in NOT_COMPARED
                  and isinstance(rows[0][k], (int, float)) and not k.startswith("best_"))
    worst = (0.0, None, None)
    val_acc = 0.0
    epochs: set[int] = set()
    for key in keys:
        history = {int(m.step): m.value for m in client.get_metric_history(run_id, key)}
        for row in rows:
            epoch = int(row["epoch"])
            if epoch not in history:
                continue
            epochs.add(epoch)
            a, b = float(row[key]), history[epoch]
            diff = 0.0 if math.isnan(a) and math.isnan(b) else abs(a - b)
            if math.isnan(diff):  # NaN on one side only
                diff = math.inf
            if key == "val_acc":
                val_acc = max(val_acc, diff)
            if diff > worst[0]:
                worst = (diff, key, epoch)
    if not epochs:
        line = f"no per-epoch history on MLflow run {run_id} to compare with"
    elif worst[1] is None:
        line = (f"matches the trial's MLflow history exactly: {len(keys)} metrics x {len(epochs)} epochs, "
                "largest difference 0")
    else:
        line = (f"largest difference from the trial's MLflow history ({len(keys)} metrics x {len(epochs)} "
                f"epochs): {worst[0]:.6g} in {worst[1]} at epoch {worst[2]}; val_acc: {val_acc:.6g}")
    return {"line": line, "max_abs_diff": worst[0], "max_diff_metric": worst[1], "max_diff_epoch": worst[2],
            "val_acc_max_abs_diff": val_acc, "compared_metrics": keys, "compared_epochs": sorted(epochs)}
