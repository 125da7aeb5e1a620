"""GPU throughput of a trial (issue 13), every ratio measured in one run.

Sections (`--only` picks some):
  step    paper-scale joint step: samples/s of fp32 eager, bf16 + channels_last, bf16 + channels_last + compile;
          ratios to fp32 eager; achieved TFLOP/s (torch.utils.flop_counter counts one step's forward+backward);
          compile time reported separately (first step over a typical step).
  redreg  RedReg at defaults / joint training, both in the fast path (bf16, channels_last, optional compile).
  epoch   a whole training epoch on prepared CREMA-D-shaped data (benchmarks/loader_throughput.py's generator):
          samples/s of the loader path (--workers), of the loader path with dataset.augment_on_device=true
          (workers hand out uncropped frames, crops and flips on the device) and of dataset.on_device=true.
  parity  accuracy parity: paper-size synthetic (the `mmstudy debug` dataset), --seeds seeds, bf16 vs fp32,
          mean best validation accuracy.

    python benchmarks/gpu_throughput.py --device cuda --json docs/benchmarks_raw/gpu_throughput_h100.json
    python benchmarks/gpu_throughput.py --device cpu --tiny            # proves the script runs (no GPU numbers)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from balancer_step_time import fixed_batches, sync, time_steps  # noqa: E402

from trainables.config import build_trial_config  # noqa: E402
from trainables.trainer import Trainer  # noqa: E402


def trial_config(device: str, size: str, batch: int, encoder: str, precision: str, **extra) -> dict:
    """The benchmarked trial (also gpu_packing.py's): synthetic data at `size`, four batches of training data,
    small evaluation splits (never timed)."""
    raw = {"device": device, "epochs": 10, "precision": precision,
           "dataset": {"name": "synthetic", "size": size, "n_train": batch * 4, "n_val": 64, "n_test": 64},
           "model": {"encoder": encoder}, "optim": {"batch_size": batch}}
    raw.update(extra)
    return raw


def trial(args, precision: str, compile_: bool = False, balancer: dict | None = None, **extra) -> Trainer:
    return Trainer(build_trial_config(trial_config(args.device, args.size, args.batch, args.encoder, precision,
                                                   compile=compile_, balancer=balancer or {"name": "none"}, **extra)))


def finish(args, setting: str, results: dict) -> None:
    """The setting line (with the device's name) after the rows, and every row in --json when asked."""
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"setting: device={device} {setting} torch={torch.__version__}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "device": device, **results}, fh, indent=2)


def step_flops(trainer: Trainer, batch) -> int:
    """Forward + backward FLOPs of one training step (counted on an eager step)."""
    with FlopCounterMode(display=False) as counter:
        trainer.train_step(*batch)
    return counter.get_total_flops()


def timed(trainer: Trainer, batches, warmup: int, steps: int, repeats: int) -> dict[str, float]:
    trainer.model.train()
    trainer.balancer.on_epoch_start(trainer.state)
    sync(trainer.device)
    start = time.perf_counter()
    trainer.train_step(*batches[0])
    sync(trainer.device)
    first = time.perf_counter() - start
    seconds = time_steps(trainer, batches, warmup, steps, repeats)  # the step-time benchmark's own loop
    return {"ms_per_step": 1000 * seconds, "samples_per_s": args_batch(batches) / seconds,
            "first_step_extra_s": max(first - seconds, 0.0)}


def args_batch(batches) -> int:
    return len(batches[0][1])


def section_step(args) -> list[dict]:
    rows, flops = [], None
    variants = [("fp32 eager", "fp32", False), ("bf16 + channels_last", "bf16", False)]
    if not args.no_compile:
        variants.append(("bf16 + channels_last + compile", "bf16", True))
    for label, precision, compile_ in variants:
        trainer = trial(args, precision, compile_)
        batches = fixed_batches(trainer, 4)
        if flops is None:
            flops = step_flops(trainer, batches[0])
        row = {"variant": label, "precision": trainer.precision.name,
               "channels_last": trainer.device.type == "cuda" and precision != "fp32",
               **timed(trainer, batches, args.warmup, args.steps, args.repeats)}
        row["tflops_per_s"] = flops * row["samples_per_s"] / args.batch / 1e12
        if compile_:
            row["compile_time_s"] = row.pop("first_step_extra_s")
        else:
            row.pop("first_step_extra_s")
        rows.append(row)
        del trainer
    base = rows[0]["samples_per_s"]
    for row in rows:
        row["ratio_to_fp32_eager"] = row["samples_per_s"] / base
        row["gflop_per_sample"] = flops / args.batch / 1e9
    return rows


def section_redreg(args) -> list[dict]:
    precision = "fp32" if args.device == "cpu" else "bf16"
    rows = []
    for label, balancer in (("joint", {"name": "none"}), ("redreg (defaults)", {"name": "redreg"})):
        trainer = trial(args, precision, not args.no_compile and args.device != "cpu", balancer)
        batches = fixed_batches(trainer, 4)
        row = {"variant": label, "precision": trainer.precision.name,
               **timed(trainer, batches, args.warmup, args.steps, args.repeats)}
        row.pop("first_step_extra_s")
        rows.append(row)
        del trainer
    rows[1]["ratio_to_joint"] = rows[0]["samples_per_s"] / rows[1]["samples_per_s"]
    return rows


def section_epoch(args) -> list[dict]:
    from loader_throughput import write_crema_d

    from trainables.data.crema_d import CremaDLayout, CremaDParams
    from trainables.data.prepare import prepare

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        raw, cache = Path(tmp) / "raw", Path(tmp) / "prepared"
        write_crema_d(raw, args.clips)
        prepare(CremaDLayout(CremaDParams(root=str(raw))), cache, frame_size=args.frame_size,
                workers=args.workers, progress=False)
        for label, on_device, augment, workers in (("loader", False, False, args.workers),
                                                   ("loader + augment_on_device", False, True, args.workers),
                                                   ("on_device", True, False, 0)):
            extra = {"dataset": {"name": "crema_d", "root": str(cache), "on_device": on_device,
                                 "augment_on_device": augment, "image_size": args.image_size},
                     "num_workers": workers,
                     "model": {"encoder": args.encoder}}
            trainer = trial(args, "auto", False, None, **extra)
            sync(trainer.device)
            times = []
            for epoch in range(args.epochs):
                start = time.perf_counter()
                n = 0
                trainer.model.train()
                for inputs, labels in trainer._train_loader(epoch):
                    trainer.train_step(inputs, labels)
                    n += len(labels)
                sync(trainer.device)
                times.append(time.perf_counter() - start)
            # the first epoch pays for worker start-up / compile warm-up on both paths: the best epoch is reported
            rows.append({"variant": label, "workers": workers, "samples": n, "precision": trainer.precision.name,
                         "samples_per_s": n / min(times), "epoch_s": min(times)})
            del trainer
    for row in rows[1:]:
        row["ratio_to_loader"] = row["samples_per_s"] / rows[0]["samples_per_s"]
    return rows


def section_parity(args) -> list[dict]:
    rows = []
    for precision in ("fp32", "bf16"):
        accs = []
        for seed in range(args.seeds):
            raw = {"device": args.device, "epochs": args.parity_epochs, "seed": seed, "precision": precision,
                   "num_workers": args.workers,
                   "dataset": {"name": "synthetic", "size": args.parity_size, "n_train": args.parity_train,
                               "n_val": args.parity_eval, "n_test": args.parity_eval},
                   "model": {"encoder": args.encoder}, "optim": {"batch_size": args.batch}}
            result = Trainer(build_trial_config(raw)).fit()
            accs.append(result["best"]["val_acc"])
        rows.append({"precision": precision, "best_val_acc_per_seed": accs, "mean_best_val_acc": statistics.fmean(accs),
                     "std": statistics.stdev(accs) if len(accs) > 1 else None})
    rows[1]["difference_points"] = 100 * (rows[1]["mean_best_val_acc"] - rows[0]["mean_best_val_acc"])
    return rows


SECTIONS = {"step": section_step, "redreg": section_redreg, "epoch": section_epoch, "parity": section_parity}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=sorted(SECTIONS), default=list(SECTIONS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", default="paper", choices=["tiny", "small", "paper"])
    ap.add_argument("--encoder", default="resnet18", choices=["small", "resnet18"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true", help="leave the compile variants out")
    ap.add_argument("--clips", type=int, default=1000, help="epoch: CREMA-D-shaped clips written and prepared")
    ap.add_argument("--frame-size", type=int, default=0, help="epoch: prepare --frame-size (0 = 480x360 as written)")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    ap.add_argument("--epochs", type=int, default=3, help="epoch: epochs per path (the fastest is reported)")
    ap.add_argument("--seeds", type=int, default=3, help="parity: seeds per precision")
    ap.add_argument("--parity-size", default="paper", choices=["tiny", "small", "paper"])
    ap.add_argument("--parity-epochs", type=int, default=5)
    ap.add_argument("--parity-train", type=int, default=1536, help="parity: training samples (as the earlier "
                    "ResNet-18 `mmstudy debug` run in docs/benchmarks.md)")
    ap.add_argument("--parity-eval", type=int, default=256, help="parity: validation and test samples each")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny shapes, small encoder, few steps")
    ap.add_argument("--json", help="also write every row here")
    args = ap.parse_args()
    if args.tiny:
        args.size, args.encoder, args.batch, args.warmup, args.steps, args.repeats = "tiny", "small", 8, 1, 2, 1
        args.clips, args.image_size, args.epochs, args.seeds = 24, 32, 1, 2
        args.parity_size, args.parity_epochs, args.workers, args.no_compile = "tiny", 1, 1, True
        args.parity_train, args.parity_eval = 64, 32
    torch.backends.cudnn.benchmark = args.device == "cuda"
    out = {}
    for name in args.only:
        rows = SECTIONS[name](args)
        out[name] = rows
        print(f"== {name}")
        for row in rows:
            print("  " + "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                  flush=True)
    finish(args, f"size={args.size} encoder={args.encoder} batch={args.batch} threads={torch.get_num_threads()}",
           {"sections": out})


if __name__ == "__main__":
    main()
