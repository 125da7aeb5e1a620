"""Orchestration overhead: wall time of N trials through `mmstudy run` divided by the same N trainer calls in
a plain Python process pool at the same concurrency, measured in one run.

Trials are sized to about `--trial-seconds` each from the steady-state epoch time (epochs 2-4 of a trainer
in a 1-thread process; the first epoch pays one-off warm-up and would make trials shorter than asked). The
study side includes everything a user pays for: importing, starting Ray, a new MLflow store and its parent
run, the data through the object store, Optuna, per-epoch checkpoints and MLflow logging of every epoch.

This machine's speed drifts by several per cent from minute to minute, so `--repeats R` runs the sides R
times in A B, B A, ... order (a slow drift then favours neither) and reports the ratio of the summed wall
times (and each repeat's). `--fixed-cost` also times
a 1-trial, 1-epoch study against one such trainer call: the per-study cost that N trials share.
`--address` runs the studies on a Ray started once (`ray start --head`) instead of one per study; with
`--also-local` each repeat times both kinds of study (plain pool, study on that Ray, study starting its own
Ray), so the two ratios come from the same minutes of this machine. `--fixed-only` times just the per-study
cost, `--repeats` times.

    python benchmarks/orchestration_overhead.py --trial-seconds 10 --trials 4 --concurrency 2 --repeats 2
    python benchmarks/orchestration_overhead.py --trial-seconds 60 --trials 4 --concurrency 2 --repeats 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

TRIAL = {"dataset": {"name": "synthetic", "size": "tiny"}, "model": {"encoder": "small"}, "balancer": {"name": "none"}}


def _one_trial(epochs: int) -> list[float]:
    """Train one trial as a Tune trial would (1 thread: Ray sets OMP_NUM_THREADS=1 for a 1-CPU trial);
    returns each epoch's seconds."""
    import torch

    torch.set_num_threads(1)
    from trainables.config import build_trial_config
    from trainables.trainer import Trainer

    trainer = Trainer(build_trial_config(TRIAL, {"epochs": epochs}))
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        trainer.train_epoch()
        seconds.append(time.perf_counter() - start)
    return seconds


def epoch_seconds() -> float:
    with ProcessPoolExecutor(1) as pool:
        return statistics.median(pool.submit(_one_trial, 4).result()[1:])


def plain_loop(trials: int, concurrency: int, epochs: int) -> float:
    start = time.perf_counter()
    with ProcessPoolExecutor(concurrency) as pool:
        list(pool.map(_one_trial, [epochs] * trials))
    return time.perf_counter() - start


def through_mmstudy(trials: int, concurrency: int, epochs: int, checkpoint_every: int, address: str | None) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        config = {"name": "overhead", "trial": dict(TRIAL, epochs=epochs), "search_space": "none",
                  "searcher": "random", "scheduler": "none", "num_samples": trials, "max_concurrent": concurrency,
                  "resources": {"cpu": 1}, "storage_path": str(Path(tmp) / "runs"),
                  "checkpoint_every": checkpoint_every,
                  "tracking_uri": f"sqlite:///{tmp}/mlflow.db"}
        if address:
            config["ray_address"] = address
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
    parser.add_argument("--repeats", type=int, default=1, help="run the sides this many times, in A B, B A, ... order")
    parser.add_argument("--fixed-cost", action="store_true", help="also time a 1-trial, 1-epoch study")
    parser.add_argument("--address", help="run the studies on this running Ray (`ray start --head`) instead of "
                                          "starting one per study")
    parser.add_argument("--also-local", action="store_true",
                        help="with --address: also time a study that starts its own Ray in each repeat")
    parser.add_argument("--fixed-only", action="store_true",
                        help="only the per-study cost, `--repeats` times (with --also-local: on both kinds of Ray)")
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args()
    if args.also_local and not args.address:
        parser.error("--also-local needs --address")
    result = {"address": args.address, "cpus": os.cpu_count()}
    if not args.fixed_only:
        result.update(n_trial_comparison(args))
    if args.fixed_cost or args.fixed_only:
        result.update(fixed_costs(args.address, args.also_local, args.repeats if args.fixed_only else 1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


def n_trial_comparison(args) -> dict:
    """N trials through `mmstudy run` against the plain pool, the sides alternated `--repeats` times."""
    per_epoch = epoch_seconds()
    epochs = max(1, round(args.trial_seconds / per_epoch))
    print(f"trials={args.trials} concurrency={args.concurrency} epochs/trial={epochs} "
          f"(steady epoch {per_epoch:.2f} s, ~{epochs * per_epoch:.1f} s/trial) "
          f"checkpoint_every={args.checkpoint_every} cpus={os.cpu_count()}", flush=True)
    sides = {"plain": lambda: plain_loop(args.trials, args.concurrency, epochs),
             "study": lambda: through_mmstudy(args.trials, args.concurrency, epochs, args.checkpoint_every,
                                              args.address)}
    if args.also_local:
        sides["local"] = lambda: through_mmstudy(args.trials, args.concurrency, epochs, args.checkpoint_every, None)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for repeat in range(args.repeats):
        # A B, then B A: a machine that slows (or speeds up) over minutes favours neither side
        for name in (list(sides) if repeat % 2 == 0 else list(reversed(sides))):
            times[name].append(sides[name]())
        loops, studies = times["plain"], times["study"]
        line = (f"repeat {repeat + 1}: plain process pool {loops[-1]:.1f} s   mmstudy run {studies[-1]:.1f} s   "
                f"ratio {studies[-1] / loops[-1]:.3f}")
        if args.also_local:
            local = times["local"][-1]
            line += f"   mmstudy run starting its own Ray {local:.1f} s   ratio {local / loops[-1]:.3f}"
        print(line, flush=True)
    local_studies = times.get("local", [])
    result = {"trials": args.trials, "concurrency": args.concurrency, "epochs_per_trial": epochs,
              "epoch_seconds": per_epoch, "checkpoint_every": args.checkpoint_every,
              "plain_s": loops, "mmstudy_s": studies, "ratio": sum(studies) / sum(loops)}
    if local_studies:
        result.update(local_mmstudy_s=local_studies, local_ratio=sum(local_studies) / sum(loops))
        print(f"overhead ratio of studies that start their own Ray: {result['local_ratio']:.3f}")
    print(f"overhead ratio (summed over {args.repeats} repeat(s)): {result['ratio']:.3f}")
    return result


def fixed_costs(address: str | None, also_local: bool, repeats: int) -> dict:
    """A 1-trial, 1-epoch study against one trainer call: the per-study cost that N trials share."""
    plain, study, local = [], [], []
    for _ in range(repeats):
        plain.append(plain_loop(1, 1, 1))
        study.append(through_mmstudy(1, 1, 1, 1, address))
        line = (f"fixed cost: a 1-trial 1-epoch study {study[-1]:.1f} s vs one trainer call {plain[-1]:.1f} s "
                f"-> {study[-1] - plain[-1]:.1f} s per study")
        if also_local:
            local.append(through_mmstudy(1, 1, 1, 1, None))
            line += f"; starting its own Ray {local[-1]:.1f} s -> {local[-1] - plain[-1]:.1f} s per study"
        print(line, flush=True)
    out = {"fixed_plain_s": plain, "fixed_mmstudy_s": study,
           "fixed_cost_s": statistics.median(s - p for s, p in zip(study, plain))}
    if local:
        out.update(fixed_local_mmstudy_s=local,
                   fixed_local_cost_s=statistics.median(s - p for s, p in zip(local, plain)))
        print(f"median per-study cost: {out['fixed_cost_s']:.1f} s on the running Ray, "
              f"{out['fixed_local_cost_s']:.1f} s starting its own")
    return out


if __name__ == "__main__":
    main()
