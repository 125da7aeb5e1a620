"""CREMA-D in the layout of the OGM-GE / InfoReg / RedReg reference code, with the same tensors.

    ROOT/train.csv, ROOT/test.csv          rows `clip_id,EMOTION` (NEU, HAP, SAD, FEA, DIS, ANG)
    ROOT/AudioWAV/<clip_id>.wav
    ROOT/Image-<NN>-FPS/<clip_id>/*.jpg    NN = frames per second, two digits

Audio: resampled to 22,050 Hz, tiled to 3 s, clipped to [-1, 1], STFT (n_fft 512, hop 353, Hann,
centred, zero padding -- librosa's defaults) and log(|S| + 1e-7) -> 1 x 257 x 188.
Frames: the first `fps` frames in name order (the reference code draws indices and then ignores them),
RandomResizedCrop(224) + horizontal flip for training, Resize((224, 224)) for evaluation, ImageNet
normalisation -> 3 x T x 224 x 224. The reference code has no validation split: ours is carved from
train.csv with a fixed seed (`val_fraction`, `split_seed`).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import Dataset

from trainables.config import ConfigError
from trainables.data.base import DatasetBundle, ModalitySpec
from trainables.data.registry import register_dataset

CLASSES = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
SAMPLE_RATE = 22050
N_FFT, HOP = 512, 353
HOW_TO_GET = ("CREMA-D: https://github.com/CheyneyComputerScience/CREMA-D (AudioWAV), frames extracted at FPS "
              "frames/s into Image-NN-FPS/<clip>/; see docs/datasets.md")


class CremaDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: str = Field(..., description="folder with train.csv, test.csv, AudioWAV/, Image-NN-FPS/")
    fps: int = Field(1, ge=1, le=99, description="which Image-NN-FPS folder to read")
    frames: int = Field(3, ge=1, le=64, description="frames per clip (T)")
    val_fraction: float = Field(0.1, gt=0, lt=1)
    split_seed: int = Field(0, ge=0)
    image_size: int = Field(224, ge=16, le=1024)


def log_spectrogram(wave: np.ndarray) -> torch.Tensor:
    """The reference pipeline from a 22,050 Hz waveform: tile to 3 s, clip, STFT, log magnitude."""
    samples = np.tile(wave.astype(np.float32), int(np.ceil(3 * SAMPLE_RATE / max(len(wave), 1))))[: 3 * SAMPLE_RATE]
    samples = np.clip(samples, -1.0, 1.0)
    spec = torch.stft(torch.from_numpy(samples), n_fft=N_FFT, hop_length=HOP, window=torch.hann_window(N_FFT),
                      center=True, pad_mode="constant", return_complex=True)
    return torch.log(spec.abs() + 1e-7).unsqueeze(0)


def read_wav(path: Path) -> np.ndarray:
    """Mono float waveform at 22,050 Hz (polyphase resampling where the file's rate differs)."""
    from math import gcd

    from scipy.io import wavfile
    from scipy.signal import resample_poly

    rate, data = wavfile.read(path)
    if data.dtype.kind == "i":
        data = data.astype(np.float32) / float(np.iinfo(data.dtype).max)
    elif data.dtype.kind == "u":
        data = (data.astype(np.float32) - 128.0) / 128.0
    data = data.astype(np.float32)
    if data.ndim == 2:
        data = data.mean(axis=1)
    if rate != SAMPLE_RATE:
        g = gcd(rate, SAMPLE_RATE)
        data = resample_poly(data, SAMPLE_RATE // g, rate // g).astype(np.float32)
    return data


def image_transform(train: bool, size: int):
    from torchvision import transforms as T

    norm = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    if train:
        return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    return T.Compose([T.Resize((size, size)), T.ToTensor(), norm])


def read_split(root: Path, name: str) -> list[tuple[str, int]]:
    path = root / f"{name}.csv"
    if not path.is_file():
        raise ConfigError(f"dataset.root: expected {path} (rows clip_id,EMOTION); {HOW_TO_GET}")
    rows = []
    with path.open(newline="") as fh:
        for line_no, row in enumerate(csv.reader(fh), 1):
            if not row:
                continue
            if len(row) < 2 or row[1].strip() not in CLASSES:
                raise ConfigError(f"dataset.root: {path} line {line_no}: expected clip_id,EMOTION with EMOTION in "
                                  f"{', '.join(CLASSES)}")
            rows.append((row[0].strip(), CLASSES.index(row[1].strip())))
    return rows


class CremaDSplit(Dataset):
    def __init__(self, root: Path, items: list[tuple[str, int]], p: CremaDParams, train: bool):
        self.root, self.items, self.p = root, items, p
        self.frames_dir = root / f"Image-{p.fps:02d}-FPS"
        self.transform = image_transform(train, p.image_size)

    def __len__(self) -> int:
        return len(self.items)

    def audio(self, clip: str) -> torch.Tensor:
        return log_spectrogram(read_wav(self.root / "AudioWAV" / f"{clip}.wav"))

    def visual(self, clip: str) -> torch.Tensor:
        from PIL import Image

        files = sorted((self.frames_dir / clip).glob("*.jpg"))
        if not files:
            raise FileNotFoundError(f"no frames in {self.frames_dir / clip}")
        files = [files[min(i, len(files) - 1)] for i in range(self.p.frames)]  # repeat the last if short
        frames = [self.transform(Image.open(f).convert("RGB")) for f in files]
        return torch.stack(frames, dim=1)  # 3 x T x H x W

    def __getitem__(self, index: int):
        clip, label = self.items[index]
        return {"audio": self.audio(clip), "visual": self.visual(clip)}, torch.tensor(label)


def check_layout(root: Path, p: CremaDParams) -> None:
    for rel in ("train.csv", "test.csv", "AudioWAV", f"Image-{p.fps:02d}-FPS"):
        if not (root / rel).exists():
            raise ConfigError(f"dataset.root: expected {root / rel} (CREMA-D layout: train.csv, test.csv, AudioWAV/, "
                              f"Image-{p.fps:02d}-FPS/); {HOW_TO_GET}")


def build_crema_d(p: CremaDParams) -> DatasetBundle:
    root = Path(p.root).expanduser()
    check_layout(root, p)
    train_all, test = read_split(root, "train"), read_split(root, "test")
    order = np.random.default_rng(p.split_seed).permutation(len(train_all))
    n_val = max(1, int(round(p.val_fraction * len(train_all))))
    val = [train_all[i] for i in sorted(order[:n_val])]
    train = [train_all[i] for i in sorted(order[n_val:])]
    frames = 1 + (3 * SAMPLE_RATE) // HOP
    return DatasetBundle(
        name="crema_d",
        modalities={"audio": ModalitySpec("spectrogram", (1, N_FFT // 2 + 1, frames)),
                     "visual": ModalitySpec("frames", (3, p.frames, p.image_size, p.image_size))},
        num_classes=len(CLASSES),
        train=CremaDSplit(root, train, p, train=True), val=CremaDSplit(root, val, p, train=False),
        test=CremaDSplit(root, test, p, train=False),
        info={"classes": CLASSES, "train": len(train), "val": len(val), "test": len(test)},
    )


register_dataset("crema_d", CremaDParams, build_crema_d)
