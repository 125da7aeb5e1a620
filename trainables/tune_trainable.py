"""The Ray Tune trainable: a thin adapter from a sampled point to the trainer.

Seeds of one configuration train in lockstep inside one trial, so the searcher and ASHA see the mean over
seeds at every epoch, and the spread is reported with it. A checkpoint per epoch holds every seed's
trainer state, so a paused, failed or restored trial continues where it stopped.
"""
from __future__ import annotations

import csv
import json
import math
import os
import statistics
import tempfile
from typing import Any

from ray import tune

from search_spaces import apply_point
from trainables.config import TrialConfig, build_trial_config, unflatten
from trainables.data.base import DatasetBundle
from trainables.metrics import modality_gap
from trainables.provenance import collect, to_json
from trainables.trainer import Trainer, TrialDiverged

SPREAD_KEYS = ("val_acc", "test_acc", "val_f1", "test_f1")
# Each trial checkpoint's per-example test predictions at every seed's best validation epoch (the MLflow writer
# logs them as `predictions/test_predictions.csv` for confirmed trials); `example` indexes that seed's test split.
PREDICTIONS_FILE = "test_predictions.csv"
PREDICTION_COLUMNS = ("seed", "example", "label", "prediction")


def trial_point(config: dict[str, Any]) -> dict[str, Any]:
    """The sampled point of a Tune config: every mode's trials carry it under 'point' (with 'role', 'seeds')."""
    return dict(config.get("point", config))


def seed_overrides(seed: int, per_seed_keys: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """What one seed sets in a trial config: the training seed, and every key in `per_seed_keys` (the spec's;
    `dataset.seed` under `data_seed: per_seed`, so each seed is also its own draw of the data)."""
    return unflatten({"seed": seed, **{key: seed for key in per_seed_keys}})


def trial_configs(base: dict[str, Any], point: dict[str, Any], seeds: list[int],
                  per_seed_keys: list[str] | tuple[str, ...] = ()):
    raw = apply_point(base, point)
    return [build_trial_config(raw, seed_overrides(s, per_seed_keys)) for s in seeds]


def with_gaps(record: dict[str, Any]) -> dict[str, Any]:
    """The record with `val_gap`/`test_gap` (trainables.metrics.modality_gap of the unimodal heads'
    accuracies), per seed, so a study can search it (`metric: [..., {name: val_gap, mode: min}]`)."""
    gaps = {}
    for split in ("val", "test"):
        gap = modality_gap(v for k, v in record.items() if k.startswith(f"{split}_acc_") and isinstance(v, (int, float)))
        if gap is not None:
            gaps[f"{split}_gap"] = gap
    return {**record, **gaps}


def summarize(records: list[dict[str, Any]], bests: list[dict[str, Any]],
              seeds: list[int] | None = None) -> dict[str, Any]:
    """Mean over seeds of every numeric per-epoch value; the sample std (ddof=1) of the headline metrics
    when there are two seeds or more (one seed has no spread, so no `_std` key); best-epoch metrics
    (selected on validation per seed) as best_* with their spread, and each seed's own best-epoch values
    as `best_<key>/seed_<s>` so that reports can compute confidence intervals over seeds."""
    seeds = seeds if seeds is not None else list(range(len(records)))
    records, bests = [with_gaps(r) for r in records], [with_gaps(b) for b in bests]
    out: dict[str, Any] = {"num_seeds": len(records)}
    for key in records[0]:
        values = [r[key] for r in records if isinstance(r.get(key), (int, float))]
        if len(values) == len(records):
            out[key] = statistics.fmean(values)
        elif isinstance(records[0][key], str):
            out[key] = statistics.mode(r[key] for r in records)
    if len(records) > 1:
        for key in SPREAD_KEYS:
            out[f"{key}_std"] = statistics.stdev([r[key] for r in records])
    for key in bests[0]:
        values = [b[key] for b in bests if isinstance(b.get(key), (int, float))]
        if len(values) == len(bests):
            out[f"best_{key}"] = statistics.fmean(values)
            if key.startswith(("val_acc", "test_acc", "test_f1")) and len(values) > 1:
                out[f"best_{key}_std"] = statistics.stdev(values)
            if key != "epoch" or len(values) > 1:
                out.update({f"best_{key}/seed_{s}": v for s, v in zip(seeds, values)})
    return out


def device_label(device) -> str:
    """Where a trial trains, for its MLflow run: 'cpu', or the GPU's name and the ids Ray gave the trial
    (several trials share one id when `resources.gpu` is a fraction)."""
    if device.type != "cuda":
        return device.type
    import ray
    import torch

    index = device.index if device.index is not None else torch.cuda.current_device()
    ids = ",".join(str(i) for i in ray.get_gpu_ids()) or "none"
    return f"cuda:{index} {torch.cuda.get_device_name(index)} (Ray GPU ids {ids})"


def build_trainers(configs: list[TrialConfig], data: DatasetBundle | None = None) -> list[Trainer]:
    """One trainer per seed, every dataset built before any trainer seeds itself (as under Tune, where the
    driver builds the data), so `mmstudy debug --from-run` starts from the trial's exact state. Seeds with the
    same dataset config share one build (`data` when it was built from it); a trial that varies the dataset, or
    whose seeds draw their own data, builds each one once here."""
    from trainables.data.registry import build_dataset

    built: dict[str, DatasetBundle] = {}
    if data is not None and data.spec:
        built[json.dumps(data.spec, sort_keys=True)] = data
    chosen = []
    for cfg in configs:
        key = json.dumps(cfg.to_dict()["dataset"], sort_keys=True)
        if data is not None and not data.spec:
            chosen.append(data)  # data without a spec: the caller's own, for every seed
            continue
        if key not in built:
            built[key] = build_dataset(cfg.dataset.name, cfg.dataset_params())
        chosen.append(built[key])
    return [Trainer(cfg, data=bundle) for cfg, bundle in zip(configs, chosen)]


def write_predictions(trainers: list[Trainer], seeds: list[int], path: str) -> None:
    """Every seed's test labels and fused predictions at its best validation epoch, one row per example."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(PREDICTION_COLUMNS)
        for seed, trainer in zip(seeds, trainers):
            best = trainer.best_test_predictions
            if best is not None:
                writer.writerows((seed, i, y, p) for i, (y, p) in
                                 enumerate(zip(best["label"].tolist(), best["prediction"].tolist())))


def lockstep_epoch(trainers: list[Trainer], seeds: list[int]) -> dict[str, Any]:
    """One epoch of every seed, in seed order, summarised over seeds. The seeds share torch's global RNG,
    so this order is part of a multi-seed trial's numbers."""
    records = [t.train_epoch() for t in trainers]
    return summarize(records, [t.best() for t in trainers], seeds)


def run_trial(config: dict[str, Any], base: dict[str, Any] | None = None, seeds: list[int] | None = None,
              data: DatasetBundle | None = None, checkpoint_every: int = 1, metric: str = "val_acc") -> None:
    seeds = seeds or [0]
    trainers = build_trainers(trial_configs(base or {}, point=trial_point(config), seeds=seeds,
                                            per_seed_keys=config.get("per_seed_keys", ())), data)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            for seed, trainer in zip(seeds, trainers):
                trainer.load(os.path.join(folder, f"seed_{seed}.pt"))
    epochs = trainers[0].cfg.epochs
    device = device_label(trainers[0].device)
    # What the numbers depend on beyond the config, once per (re)start: the trial writer keeps it on the run.
    provenance = to_json(collect(trainers[0], seeds))
    while trainers[0].epoch < epochs:
        try:
            metrics = lockstep_epoch(trainers, seeds)
        except TrialDiverged as err:
            nan = math.nan  # the study's metric must be present (Tune checks); NaN reads as "failed"
            tune.report({"diverged": 1.0, "status_reason": str(err), "epoch": trainers[0].epoch + 1,
                         "val_acc": nan, "best_val_acc": nan, metric: nan})
            return
        metrics.update(diverged=0.0, device=device)
        if provenance is not None:
            metrics["provenance"], provenance = provenance, None
        epoch = trainers[0].epoch
        if epoch % checkpoint_every and epoch < epochs:
            tune.report(metrics)
            continue
        with tempfile.TemporaryDirectory() as folder:
            for seed, trainer in zip(seeds, trainers):
                trainer.save(os.path.join(folder, f"seed_{seed}.pt"))
            write_predictions(trainers, seeds, os.path.join(folder, PREDICTIONS_FILE))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
