"""Several trials on one GPU (issue 13): aggregate samples/s of 1, 2 and 4 concurrent trials, measured in one run.

A study with `resources.gpu: 0.5` (or 0.25) lets Ray place 2 (or 4) trials on one GPU; each is its own
process with its own model. This benchmark starts N such processes on the same device at once, each
training the same trial config on fixed batches for `--seconds` (after warm-up), and reports the sum of their
samples/s, and that sum divided by one trial's, for the `small` encoder and for ResNet-18.

    python benchmarks/gpu_packing.py --device cuda --json docs/benchmarks_raw/gpu_packing_h100.json
    python benchmarks/gpu_packing.py --device cpu --tiny      # proves the script runs (no GPU numbers)
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_throughput import finish, trial_config  # noqa: E402


def worker(raw: dict, seconds: float, warmup: int, barrier, queue) -> None:
    from balancer_step_time import fixed_batches, sync

    from trainables.config import build_trial_config
    from trainables.trainer import Trainer

    torch.set_num_threads(1)
    trainer = Trainer(build_trial_config(raw))
    batches = fixed_batches(trainer, 4)
    trainer.model.train()
    for i in range(warmup):
        trainer.train_step(*batches[i % len(batches)])
    sync(trainer.device)
    barrier.wait()  # every trial starts its timed window together, after all have warmed up
    start, samples, i = time.perf_counter(), 0, 0
    while time.perf_counter() - start < seconds:
        trainer.train_step(*batches[i % len(batches)])
        samples += len(batches[0][1])
        i += 1
    sync(trainer.device)
    queue.put(samples / (time.perf_counter() - start))


def packed_rate(raw: dict, trials: int, seconds: float, warmup: int) -> list[float]:
    ctx = mp.get_context("spawn")  # CUDA cannot be re-initialised in a forked child
    barrier, queue = ctx.Barrier(trials), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(raw, seconds, warmup, barrier, queue)) for _ in range(trials)]
    for p in procs:
        p.start()
    rates = [queue.get(timeout=seconds + 900) for _ in procs]
    for p in procs:
        p.join()
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--encoders", nargs="+", default=["small", "resnet18"], choices=["small", "resnet18"])
    ap.add_argument("--trials", nargs="+", type=int, default=[1, 2, 4])
    ap.add_argument("--size", default="paper", choices=["tiny", "small", "paper"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny shapes, 1 and 2 trials, 3 s")
    ap.add_argument("--json", help="also write every row here")
    args = ap.parse_args()
    if args.tiny:
        args.size, args.batch, args.seconds, args.warmup, args.trials, args.encoders = "tiny", 8, 3.0, 1, [1, 2], ["small"]
    rows = []
    for encoder in args.encoders:
        base = None
        for n in args.trials:
            raw = trial_config(args.device, args.size, args.batch, encoder, args.precision)
            rates = packed_rate(raw, n, args.seconds, args.warmup)
            total = sum(rates)
            base = total if base is None else base
            row = {"encoder": encoder, "trials": n, "resources_gpu": 1 / n, "aggregate_samples_per_s": total,
                   "per_trial_samples_per_s": rates, "ratio_to_one_trial": total / base}
            rows.append(row)
            print(f"{encoder:<9} {n} trial(s) at gpu {1 / n:.2f}: {total:9.1f} samples/s  x{total / base:.2f}",
                  flush=True)
    finish(args, f"size={args.size} batch={args.batch} precision={args.precision} seconds={args.seconds}",
           {"rows": rows})


if __name__ == "__main__":
    main()
