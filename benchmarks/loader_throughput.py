"""Loader throughput (samples/s) from the raw layout and from the `mmstudy prepare` cache, against how fast a
ResNet-18 training step consumes samples at the paper shapes, measured in one run.

A CREMA-D or Kinetics-Sounds folder at the published shapes is written first (CREMA-D: 16 kHz 2.5 s wavs and
480x360 JPEG frames at 1 fps; Kinetics-Sounds: 257x188 spectrogram .npy files and ten 340x256 JPEG frames at
1 fps), then prepared. Loading goes through the trainer's own path: the dataset's train split (random crops
and flips) in a DataLoader with `--workers` worker processes and batch 64. The training step is ResNet-18
per modality + concat fusion, forward + backward + SGD, on synthetic tensors of the same shapes.

    python benchmarks/loader_throughput.py --dataset crema_d --workers 2 --device cpu
    python benchmarks/loader_throughput.py --dataset kinetics_sounds --workers 14 --device cuda --clips 400
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from trainables.config import ModelConfig, build_trial_config
from trainables.data.base import model_input
from trainables.data.prepare import prepare
from trainables.data.registry import build_dataset, dataset_layout, dataset_params_model
from trainables.models.multimodal import build_model


def natural_frame(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """A smooth image with some texture: JPEG-compresses and decodes like a video frame, not like noise."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([np.sin(x / rng.uniform(20, 80) + c) * np.cos(y / rng.uniform(20, 80)) for c in range(3)], -1)
    img = 127 + 90 * base + rng.normal(0, 8, (height, width, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def write_crema_d(root: Path, clips: int) -> None:
    from scipy.io import wavfile

    rng = np.random.default_rng(0)
    (root / "AudioWAV").mkdir(parents=True)
    emotions = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
    rows = {"train": [], "test": []}
    for i in range(clips):
        split = "test" if i % 10 == 0 else "train"
        clip = f"{1001 + i}_IEO_ANG_HI"
        t = np.arange(int(2.5 * 16000)) / 16000
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.02 * rng.standard_normal(len(t))
        wavfile.write(root / "AudioWAV" / f"{clip}.wav", 16000, (wave * 32767).astype(np.int16))
        folder = root / "Image-01-FPS" / clip
        folder.mkdir(parents=True)
        for f in range(3):
            natural_frame(rng, 360, 480).save(folder / f"{f + 1:05d}.jpg", quality=90)
        rows[split].append(f"{clip},{emotions[i % 6]}")
    for split, lines in rows.items():
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")


def write_kinetics_sounds(root: Path, clips: int) -> None:
    rng = np.random.default_rng(0)
    (root / "class.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "class.txt").write_text(",".join(f"class {c}" for c in range(31)))
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for i in range(clips):
        split = "test" if i % 10 == 0 else "val" if i % 10 == 1 else "train"
        clip = f"clip{i:06d}"
        (root / "ks_audio" / split).mkdir(parents=True, exist_ok=True)
        np.save(root / "ks_audio" / split / f"{clip}.npy", rng.standard_normal((257, 188)).astype(np.float32))
        folder = root / "ks_visual" / split / clip
        folder.mkdir(parents=True)
        for f in range(10):
            natural_frame(rng, 256, 340).save(folder / f"frame_{f + 1:05d}.jpg", quality=90)
        lines[split].append(f"/ks/{split}/{clip} {i % 31}")
    for split, rows in lines.items():
        (root / "ks_audio" / f"{split}_1fps_path.txt").write_text("\n".join(rows) + "\n")


WRITERS = {"crema_d": write_crema_d, "kinetics_sounds": write_kinetics_sounds}


def loader_rate(data, workers: int, batch: int, rounds: int) -> float:
    """Steady-state samples/s: clips are drawn with replacement (so a small folder feeds any number of
    batches; its files sit in the page cache, as a hot shared-storage cache would), the first 2 x workers
    batches (start-up and the prefetch queue) are not timed, then `rounds` x workers batches are."""
    from torch.utils.data import RandomSampler

    warm, timed = 2 * max(workers, 1), rounds * max(workers, 1)
    sampler = RandomSampler(data, replacement=True, num_samples=(warm + timed) * batch,
                            generator=torch.Generator().manual_seed(0))
    loader = DataLoader(data, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True)
    it = iter(loader)
    for _ in range(warm):
        next(it)
    start, n = time.perf_counter(), 0
    for _ in range(timed):
        inputs, labels = next(it)
        n += len(labels)
    return n / (time.perf_counter() - start)


def step_rate(bundle, device: torch.device, batch: int, steps: int) -> float:
    model = build_model(bundle.modalities, bundle.num_classes, ModelConfig(encoder="resnet18")).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.002, momentum=0.9)
    # What the loader hands over: uint8 frames (normalised on the device inside the step), float spectrograms.
    raw = {m: (torch.randint(0, 256, (batch, *s.shape), dtype=torch.uint8) if s.normalize else torch.randn(batch, *s.shape))
           for m, s in bundle.modalities.items()}
    labels = torch.randint(0, bundle.num_classes, (batch,), device=device)
    times = []
    for i in range(steps + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        inputs = {m: model_input(x, bundle.modalities[m], device) for m, x in raw.items()}
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(inputs), labels).backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # warm-up: cuDNN autotuning, allocator
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=sorted(WRITERS), default="crema_d")
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=4, help="timed batches per loader, in multiples of --workers")
    ap.add_argument("--steps", type=int, default=5, help="timed training steps")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args()
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        raw, cache = Path(tmp) / "raw", Path(tmp) / "cache"
        WRITERS[args.dataset](raw, args.clips)
        params = dataset_params_model(args.dataset)(root=str(raw))
        start = time.perf_counter()
        manifest = prepare(dataset_layout(args.dataset)(params), cache, workers=args.workers, progress=False)
        prepare_rate = manifest["counts"]["written"] / (time.perf_counter() - start)
        disk = {name: sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) for name, root in
                (("raw", raw), ("prepared", cache))}
        rates = {}
        for source, root in (("raw", raw), ("prepared", cache)):
            cfg = build_trial_config({"dataset": {"name": args.dataset, "root": str(root)}})
            bundle = build_dataset(args.dataset, cfg.dataset_params())
            rates[source] = loader_rate(bundle.train, args.workers, args.batch, args.rounds)
        train_rate = step_rate(bundle, device, args.batch, args.steps)

    result = {
        "dataset": args.dataset, "clips": args.clips, "workers": args.workers, "batch": args.batch,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu_count": os.cpu_count(), "shapes": {m: list(s.shape) for m, s in bundle.modalities.items()},
        "prepare_clips_per_s": round(prepare_rate, 1),
        "disk_mb": {k: round(v / 2**20, 1) for k, v in disk.items()},
        "loader_samples_per_s": {k: round(v, 1) for k, v in rates.items()},
        "resnet18_step_samples_per_s": round(train_rate, 1),
        "prepared_over_raw": round(rates["prepared"] / rates["raw"], 2),
        "prepared_over_step": round(rates["prepared"] / train_rate, 2),
        "raw_over_step": round(rates["raw"] / train_rate, 2),
    }
    print(json.dumps(result, indent=1))
    print(f"prepared / raw loading: {result['prepared_over_raw']}x; loader / ResNet-18 step with {args.workers} "
          f"workers: prepared {result['prepared_over_step']}x, raw {result['raw_over_step']}x (>= 1 keeps up)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
