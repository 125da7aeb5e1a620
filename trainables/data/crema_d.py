"""CREMA-D in the layout of the OGM-GE / InfoReg / RedReg reference code, with the same tensors.

    ROOT/train.csv, ROOT/test.csv          rows `clip_id,EMOTION` (NEU, HAP, SAD, FEA, DIS, ANG)
    ROOT/AudioWAV/<clip_id>.wav
    ROOT/Image-<NN>-FPS/<clip_id>/*.jpg    NN = frames per second, two digits

Audio: resampled to 22,050 Hz, tiled to 3 s, clipped to [-1, 1], STFT (n_fft 512, hop 353, Hann,
centred, zero padding -- librosa's defaults) and log(|S| + 1e-7) -> 1 x 257 x 188.
Frames: the first `frames` frames in name order (the reference code draws indices and then ignores them),
RandomResizedCrop(224) + horizontal flip for training, Resize((224, 224)) for evaluation, ImageNet
normalisation -> 3 x T x 224 x 224. The reference code has no validation split: ours is carved from
train.csv with a fixed seed (`val_fraction`, `split_seed`). `mmstudy prepare crema_d` caches the spectrograms
and decoded frames; `root` may point at the raw folder or at that cache.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from pydantic import BaseModel, ConfigDict, Field, field_validator

from trainables.errors import ConfigError
from trainables.data.base import DatasetBundle
from trainables.data.clips import Clip, Layout, SourceIndex, build_clip_bundle
from trainables.data.frames import IMAGENET_NORMALIZE, FrameFolder, imagenet_transform, stack_frames
from trainables.data.registry import register_dataset

CLASSES = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
SAMPLE_RATE = 22050
N_FFT, HOP = 512, 353
HOW_TO_GET = ("CREMA-D: https://github.com/CheyneyComputerScience/CREMA-D (AudioWAV), frames extracted at FPS "
              "frames/s into Image-NN-FPS/<clip>/; see docs/datasets.md")


class CremaDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: str = Field(..., description="folder with train.csv, test.csv, AudioWAV/, Image-NN-FPS/, or its "
                                        "`mmstudy prepare` cache")
    fps: int = Field(1, ge=1, le=99, description="which Image-NN-FPS folder to read")
    frames: int = Field(3, ge=1, le=64, description="frames per clip (T)")
    val_fraction: float = Field(0.1, gt=0, lt=1)
    split_seed: int = Field(0, ge=0)
    image_size: int = Field(224, ge=16, le=1024)
    # Hold a prepared cache on the training device, crops and flips there in batch (trainables/data/on_device.py):
    # auto = when it is a prepared cache on a GPU with room for it, else the loader path.
    on_device: Literal["auto"] | bool = "auto"
    # On the loader path: workers hand out the first T frames uncropped (uint8, all clips' frames must share one
    # size) and the random crops and flips run on the training device in batch (no effect when on_device holds).
    augment_on_device: bool = False

    @field_validator("on_device", mode="before")
    @classmethod
    def _on_device(cls, value: Any) -> Any:
        allowed = {"auto": "auto", True: True, False: False, "true": True, "false": False}
        if isinstance(value, (bool, str)) and value in allowed:
            return allowed[value]
        raise ValueError("must be one of: auto, true, false")


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


def read_split(root: Path, name: str) -> list[tuple[str, int]]:
    path = root / f"{name}.csv"
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


class CremaDLayout(Layout):
    name = "crema_d"
    how_to_get = HOW_TO_GET
    modality_names = ("audio", "visual")
    frame_modalities = {"visual": "RGB"}
    normalize = {"visual": IMAGENET_NORMALIZE}
    cache_keys = ("fps",)

    @property
    def frames_dir(self) -> Path:
        return self.root / f"Image-{self.p.fps:02d}-FPS"

    def check(self) -> None:
        for rel in ("train.csv", "test.csv", "AudioWAV", self.frames_dir.name):
            if not (self.root / rel).exists():
                raise self.expected(rel, f"CREMA-D layout: train.csv, test.csv, AudioWAV/, {self.frames_dir.name}/")

    def index(self) -> SourceIndex:
        splits = {name: [Clip(cid, label, name) for cid, label in read_split(self.root, name)]
                  for name in ("train", "test")}
        return SourceIndex(splits, CLASSES, [self.root / "train.csv", self.root / "test.csv"])

    def missing(self, clip: Clip) -> Path | None:
        for path in (self.root / "AudioWAV" / f"{clip.id}.wav", self.frames_dir / clip.id):
            if not path.exists():
                return path
        return None

    def read(self, clip: Clip) -> dict:
        return {"audio": log_spectrogram(read_wav(self.root / "AudioWAV" / f"{clip.id}.wav")).numpy(),
                "visual": FrameFolder.glob(self.frames_dir / clip.id, "*.jpg")}

    def to_tensors(self, sample: dict, train: bool) -> dict[str, torch.Tensor]:
        if train and self.p.augment_on_device:  # cropped and flipped on the device (data/on_device.py)
            return {m: torch.from_numpy(a) for m, a in self.untransformed(sample).items()}
        frames = sample["visual"]
        # The first T frames in name order, the last repeated if the clip is short (see the module docstring).
        images = [frames[min(i, len(frames) - 1)] for i in range(self.p.frames)]
        return {"audio": torch.as_tensor(np.array(sample["audio"], dtype=np.float32)),
                "visual": stack_frames(images, imagenet_transform(train, self.p.image_size))}


    def untransformed(self, sample: dict) -> dict[str, np.ndarray]:
        """What `to_tensors` starts from, before any crop: the spectrogram and the first T frames as
        T x H x W x C uint8 (the input of the on-device crops)."""
        frames = sample["visual"]
        picks = [min(i, len(frames) - 1) for i in range(self.p.frames)]
        # a prepared FrameArray is indexed as stored; a raw FrameFolder is decoded (PIL) to H x W x C
        stack = [np.asarray(frames.array[i]) if hasattr(frames, "array") else np.asarray(frames[i]) for i in picks]
        return {"audio": np.array(sample["audio"], dtype=np.float32), "visual": np.stack(stack)}  # copies

    def on_device_sizes(self) -> dict[str, int]:
        """Frame modalities and their output side (RandomResizedCrop / Resize target)."""
        return {"visual": self.p.image_size}


def build_crema_d(p: CremaDParams) -> DatasetBundle:
    return build_clip_bundle(CremaDLayout(p), p.val_fraction, p.split_seed)


register_dataset("crema_d", CremaDParams, build_crema_d, CremaDLayout)
