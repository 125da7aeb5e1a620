"""A synthetic audio-visual benchmark that reproduces modality imbalance, deterministically from a seed.

Why it is imbalanced (the knobs below control each part):
- audio: the class is a horizontal frequency band in a spectrogram -- strong, position-fixed, learned in a
  few steps by any CNN; but only `audio_reliability` of the samples carry their own class's band (the rest
  carry a random class's band), so audio alone saturates below 100%.
- visual: the class is a small coloured template pasted at a random position in each frame with low
  amplitude -- reliable (`visual_reliability`) but slow to learn. Trained alone, the visual encoder gets far;
  trained jointly, the fast audio branch absorbs the gradient and the visual branch stays under-trained.
- headroom: the two modalities err on different samples, so a model that uses both well beats either.

Sample i of a split is generated from its own seed (seed, split, i), so any sample can be produced on its
own: `tiny`/`small` are materialised in memory, `paper` (CREMA-D shapes) is generated lazily per item.
"""
from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.utils.data import Dataset

from trainables.data.base import DatasetBundle, ModalitySpec, MultimodalTensorDataset
from trainables.data.registry import register_dataset

# size -> (n_train, n_val, n_test, spectrogram F, spectrogram T, frames, image side)
SIZES = {
    "tiny": (768, 256, 256, 32, 24, 2, 20),
    "small": (3000, 600, 600, 64, 48, 3, 32),
    "paper": (6028, 670, 744, 257, 188, 3, 224),  # CREMA-D: 6,698 train+val, 744 test
}
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


class SyntheticParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # The field that seeds the whole draw (prototypes and every split): a study with `data_seed: per_seed` sets
    # it to each training seed, so the seeds' intervals cover the data draw too (study.config.draw_seed_key).
    DRAW_SEED: ClassVar[str] = "seed"
    size: Literal["tiny", "small", "paper"] = "tiny"
    num_classes: int = Field(6, ge=2, le=64)
    seed: int = Field(0, ge=0, description="data seed (independent of the training seed)")
    n_train: int | None = Field(None, ge=8)
    n_val: int | None = Field(None, ge=8)
    n_test: int | None = Field(None, ge=8)
    audio_amplitude: float = Field(2.5, ge=0, description="height of the class band over unit noise")
    audio_reliability: float = Field(0.85, ge=0, le=1, description="share of samples whose band is their class")
    visual_amplitude: float = Field(1.2, ge=0, description="template contrast over unit noise")
    visual_reliability: float = Field(0.9, ge=0, le=1, description="share of frames showing their class")
    template_size: int = Field(5, ge=2, le=64, description="side of the visual class template in pixels")
    noise: float = Field(1.0, gt=0, description="std of the Gaussian background in both modalities")

    @model_validator(mode="after")
    def _fits(self) -> "SyntheticParams":
        side = SIZES[self.size][6]
        if self.template_size > side:
            raise ValueError(f"template_size must be <= image side {side} for size '{self.size}'")
        return self

    def split_sizes(self) -> dict[str, int]:
        n_train, n_val, n_test = SIZES[self.size][:3]
        return {"train": self.n_train or n_train, "val": self.n_val or n_val, "test": self.n_test or n_test}


class SyntheticWorld:
    """The fixed class prototypes (bands and templates), drawn once from the data seed."""

    def __init__(self, p: SyntheticParams):
        self.p = p
        _, _, _, self.freq, self.time, self.frames, self.side = SIZES[p.size]
        g = torch.Generator().manual_seed(10_007 * p.seed + 17)
        k = p.num_classes
        centres = (torch.arange(k, dtype=torch.float32) + 0.5) * self.freq / k
        f = torch.arange(self.freq, dtype=torch.float32)
        width = max(self.freq / (4 * k), 0.75)
        self.bands = torch.exp(-0.5 * ((f[None, :] - centres[:, None]) / width) ** 2)  # K x F
        t = self.template_size = p.template_size
        self.templates = torch.sign(torch.randn(k, 3, t, t, generator=g))  # K x 3 x t x t, +-1

    def sample(self, split: str, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        p = self.p
        g = torch.Generator().manual_seed(((p.seed * 3 + _SPLIT_IDS[split]) * 1_000_003 + index) % (2**63 - 1))
        label = int(torch.randint(p.num_classes, (1,), generator=g))
        u = torch.rand(2 + self.frames, generator=g)
        audio_class = label if u[0] < p.audio_reliability else int(torch.randint(p.num_classes, (1,), generator=g))
        envelope = 0.6 + 0.4 * torch.rand(self.time, generator=g)
        audio = p.noise * torch.randn(1, self.freq, self.time, generator=g)
        audio += p.audio_amplitude * self.bands[audio_class][None, :, None] * envelope[None, None, :]

        visual = p.noise * torch.randn(3, self.frames, self.side, self.side, generator=g)
        t = self.template_size
        for fr in range(self.frames):
            cls = label if u[2 + fr] < p.visual_reliability else int(torch.randint(p.num_classes, (1,), generator=g))
            y0, x0 = (int(v) for v in torch.randint(self.side - t + 1, (2,), generator=g))
            visual[:, fr, y0:y0 + t, x0:x0 + t] += p.visual_amplitude * self.templates[cls]
        return audio, visual, label


class LazySyntheticSplit(Dataset):
    """Generates each item on demand: the `paper` size would not fit in memory materialised."""

    def __init__(self, world: SyntheticWorld, split: str, n: int):
        self.world, self.split, self.n = world, split, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        audio, visual, label = self.world.sample(self.split, index)
        return {"audio": audio, "visual": visual}, torch.tensor(label)


def materialise(world: SyntheticWorld, split: str, n: int) -> MultimodalTensorDataset:
    items = [world.sample(split, i) for i in range(n)]
    return MultimodalTensorDataset(
        {"audio": torch.stack([a for a, _, _ in items]), "visual": torch.stack([v for _, v, _ in items])},
        torch.tensor([y for _, _, y in items]),
    )


def build_synthetic(p: SyntheticParams) -> DatasetBundle:
    world = SyntheticWorld(p)
    sizes = p.split_sizes()
    make = LazySyntheticSplit if p.size == "paper" else materialise
    splits = {name: make(world, name, n) for name, n in sizes.items()}
    return DatasetBundle(
        name="synthetic",
        modalities={
            "audio": ModalitySpec("spectrogram", (1, world.freq, world.time)),
            "visual": ModalitySpec("frames", (3, world.frames, world.side, world.side)),
        },
        num_classes=p.num_classes,
        info={"size": p.size, "chance": 1.0 / p.num_classes, "audio_ceiling": _audio_ceiling(p), **sizes},
        **splits,
    )


def _audio_ceiling(p: SyntheticParams) -> float:
    """Best possible audio-only accuracy: reliable samples plus lucky random bands."""
    return p.audio_reliability + (1 - p.audio_reliability) / p.num_classes


register_dataset("synthetic", SyntheticParams, build_synthetic)
