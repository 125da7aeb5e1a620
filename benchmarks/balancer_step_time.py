"""Training-step time of each balancer as a ratio to joint training (`none`), measured in one run.

Every balancer trains on the same fixed batches (data loading excluded), after warm-up steps; the
median over repeats is reported. RedReg's monitor costs extra encoder passes, so RedReg is also timed with
`monitor_every` / `monitor_samples`, and the fidelity of the sub-sampled monitor is measured against the
full one (relative error of red_m and agreement of the gate's R test on the same states).

    python benchmarks/balancer_step_time.py --size small --device cpu
    python benchmarks/balancer_step_time.py --size paper --encoder resnet18 --device cuda --batch 64
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from trainables.config import build_trial_config
from trainables.trainer import Trainer

VARIANTS = [
    ("none", {"name": "none"}),
    ("ogm_ge", {"name": "ogm_ge"}),
    ("mm", {"name": "mm"}),
    ("bmm", {"name": "bmm", "warmup_epochs": 0}),
    ("inforeg", {"name": "inforeg"}),
    ("cal", {"name": "cal", "warmup_epochs": 0}),
    ("redreg (monitor every step, full batch)", {"name": "redreg", "R": -100.0}),
    ("redreg (defaults)", {"name": "redreg"}),
    ("redreg (monitor_every=4)", {"name": "redreg", "monitor_every": 4}),
    ("redreg (monitor_samples=16)", {"name": "redreg", "monitor_samples": 16}),
    ("redreg (monitor_every=4, monitor_samples=16)", {"name": "redreg", "monitor_every": 4, "monitor_samples": 16}),
    ("redreg (code variant)", {"name": "redreg", "variant": "code"}),
    ("pmr", {"name": "pmr"}),
    ("agm", {"name": "agm"}),
    ("arl", {"name": "arl", "start": 0}),
    ("mmpareto", {"name": "mmpareto"}),
    ("gblend (super_epoch=1)", {"name": "gblend", "super_epoch": 1}),  # its cost comes once per super-epoch
    ("relearn", {"name": "relearn"}),  # one diagnosis per period, not per step
    ("reconboost (stage 0 turn)", {"name": "reconboost"}),  # epoch 0: one encoder; see docs/balancers.md
    ("mla", {"name": "mla"}),  # one optimizer step per modality per batch
    ("mla (paper: head projection)", {"name": "mla", "variant": "paper"}),
    ("ume", {"name": "ume"}),  # the unimodal models only: no fused head
    ("umt (teacher phase)", {"name": "umt"}),  # epoch 0: the teachers train, the model rests
    ("umt (distillation)", {"name": "umt", "teacher_fraction": 0.1}),  # epoch 1 on: joint step + frozen teachers
]
# Rows timed at a later epoch of their balancer's schedule (default: epoch 0).
START_EPOCH = {"umt (distillation)": 1}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_trainer(args, balancer: dict) -> Trainer:
    raw = {"device": args.device, "epochs": 10, "dataset": {"name": "synthetic", "size": args.size,
                                                            "n_train": args.batch * 4, "n_val": 64, "n_test": 64},
           "model": {"encoder": args.encoder, "fusion": args.fusion}, "optim": {"batch_size": args.batch},
           "loss_setting": "multimodal+unimodal", "balancer": balancer}
    return Trainer(build_trial_config(raw))


def fixed_batches(trainer: Trainer, n: int):
    loader = trainer._train_loader(0)
    batches = []
    for inputs, labels in loader:
        batches.append(({m: x.to(trainer.device) for m, x in inputs.items()}, labels.to(trainer.device)))
        if len(batches) == n:
            break
    return batches


def time_steps(trainer: Trainer, batches, warmup: int, steps: int, repeats: int) -> float:
    trainer.model.train()
    trainer.balancer.on_epoch_start(trainer.state)
    for i in range(warmup):
        trainer.train_step(*batches[i % len(batches)])
    times = []
    for _ in range(repeats):
        sync(trainer.device)
        start = time.perf_counter()
        for i in range(steps):
            trainer.train_step(*batches[i % len(batches)])
        sync(trainer.device)
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


@torch.no_grad()
def monitor_fidelity(trainer: Trainer, batches, samples: int) -> dict[str, float]:
    """Sub-sampled vs full-batch red_m on the same states (each batch with several noise draws): median
    relative error, and how often the test `red > R` agrees when R sits at the median full-batch value
    (the hardest place for a threshold; a fixed R far from red would agree trivially)."""
    b = trainer.balancer
    pairs = []
    for inputs, labels in batches:
        trainer.state.inputs, trainer.state.labels = inputs, labels
        for m in trainer.modalities:
            for draw in range(4):
                b.p.monitor_samples = 0
                torch.manual_seed(draw)
                full = b.redundancy(trainer.state, m)
                b.p.monitor_samples = samples
                torch.manual_seed(draw)
                pairs.append((m, full, b.redundancy(trainer.state, m)))
    b.p.monitor_samples = 0
    errors = [abs(sub - full) / (abs(full) + 1e-12) for _, full, sub in pairs]
    agree = []
    for m in trainer.modalities:
        fulls = [full for mm, full, _ in pairs if mm == m]
        R = statistics.median(fulls)
        agree += [float((sub > R) == (full > R)) for mm, full, sub in pairs if mm == m]
    return {"rel_error_median": statistics.median(errors), "R_test_agreement_at_median": statistics.fmean(agree)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", choices=["tiny", "small", "paper"])
    parser.add_argument("--encoder", default="small", choices=["small", "resnet18"])
    parser.add_argument("--fusion", default="concat")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = args.device == "cuda"

    rows = []
    base = None
    for label, balancer in VARIANTS:
        trainer = make_trainer(args, balancer)
        trainer.state.epoch = START_EPOCH.get(label, 0)
        batches = fixed_batches(trainer, 4)
        seconds = time_steps(trainer, batches, args.warmup, args.steps, args.repeats)
        base = seconds if base is None else base
        row = {"balancer": label, "ms_per_step": 1000 * seconds, "ratio_to_none": seconds / base}
        if label == "redreg (monitor_samples=16)":
            row.update(monitor_fidelity(trainer, batches, 16))
        rows.append(row)
        extra = "".join(f"  {k}={v:.3f}" for k, v in row.items() if k not in ("balancer", "ms_per_step", "ratio_to_none"))
        print(f"{label:<48} {row['ms_per_step']:9.2f} ms/step  x{row['ratio_to_none']:.2f}{extra}", flush=True)
        del trainer
        if args.device == "cuda":
            torch.cuda.empty_cache()
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"setting: size={args.size} encoder={args.encoder} fusion={args.fusion} batch={args.batch} device={device} "
          f"torch={torch.__version__} threads={torch.get_num_threads()}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "device": device, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
