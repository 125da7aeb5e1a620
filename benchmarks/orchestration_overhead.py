"""Orchestration overhead: wall time of N trials through `mmstudy run` divided by the same N trainer calls in
a plain Python process pool at the same concurrency, measured in one run.

Trials are sized to about `--trial-seconds` each (one epoch is timed first). The study side includes
everything a user pays for: starting Ray, Optuna, the object store, per-epoch checkpoints, MLflow logging.

    python benchmarks/orchestration_overhead.py --trial-seconds 10 --trials 4 --concurrency 2
    python benchmarks/orchestration_overhead.py --trial-seconds 60 --trials 4 --concurrency 2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

TRIAL = {"dataset": {"name": "synthetic", "size": "tiny"}, "model": {"encoder": "small"}, "balancer": {"name": "none"}}


def _one_trial(epochs: int) -> float:
    import torch

    torch.set_num_threads(1)  # what a 1-CPU Tune trial gets (Ray sets OMP_NUM_THREADS=1)
    from trainables.config import build_trial_config
    from trainables.trainer import Trainer

    cfg = build_trial_config(TRIAL, {"epochs": epochs})
    start = time.perf_counter()
    Trainer(cfg).fit()
    return time.perf_counter() - start


def epoch_seconds() -> float:
    with ProcessPoolExecutor(1) as pool:
        return pool.submit(_one_trial, 2).result() / 2


def plain_loop(trials: int, concurrency: int, epochs: int) -> float:
    start = time.perf_counter()
    with ProcessPoolExecutor(concurrency) as pool:
        list(pool.map(_one_trial, [epochs] * trials))
    return time.perf_counter() - start


def through_mmstudy(trials: int, concurrency: int, epochs: int, checkpoint_every: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        config = {"name": "overhead", "trial": dict(TRIAL, epochs=epochs), "search_space": "none",
                  "searcher": "random", "scheduler": "none", "num_samples": trials, "max_concurrent": concurrency,
                  "resources": {"cpu": 1}, "storage_path": str(Path(tmp) / "runs"),
                  "checkpoint_every": checkpoint_every,
                  "tracking_uri": f"sqlite:///{tmp}/mlflow.db"}
        path = Path(tmp) / "study.yaml"
        path.write_text(json.dumps(config))
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "study.cli", "run", str(path), "--verbose", "0"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trial-seconds", type=float, default=10)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--checkpoint-every", type=int, default=1, help="the study's checkpoint_every")
    args = parser.parse_args()
    per_epoch = epoch_seconds()
    epochs = max(1, round(args.trial_seconds / per_epoch))
    loop = plain_loop(args.trials, args.concurrency, epochs)
    study = through_mmstudy(args.trials, args.concurrency, epochs, args.checkpoint_every)
    print(f"trials={args.trials} concurrency={args.concurrency} epochs/trial={epochs} "
          f"checkpoint_every={args.checkpoint_every} "
          f"(~{epochs * per_epoch:.1f} s/trial) cpus={os.cpu_count()}")
    print(f"plain process pool: {loop:.1f} s   mmstudy run: {study:.1f} s   overhead ratio: {study / loop:.3f}")


if __name__ == "__main__":
    main()
