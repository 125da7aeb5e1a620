"""What every dataset hands the trainer: three splits and a description of each modality."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch.utils.data import Dataset


@dataclass(frozen=True)
class ModalitySpec:
    """`kind` picks the encoder family: spectrogram (C x F x T), frames (C x T x H x W), sequence (L x D,
    pre-extracted per-step features), vector (D)."""

    kind: Literal["spectrogram", "frames", "sequence", "vector"]
    shape: tuple[int, ...]
    # Frames travel from the loader workers as uint8 (4x less to copy than float32) and are scaled to [0, 1]
    # and normalised with these per-channel (mean, std) on the training device -- the same arithmetic as
    # torchvision's ToTensor + Normalize in the reference loaders, done where it is cheap.
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None


def model_input(x: torch.Tensor, spec: ModalitySpec, device: torch.device) -> torch.Tensor:
    """A batch as the model takes it: on `device`, in torch's default dtype (the one the model's parameters
    were made in: float32, float64 in the golden tests), normalised where the spec says so."""
    x = x.to(device, non_blocking=True)
    dtype = torch.get_default_dtype()
    if spec.normalize is None:
        return x.to(dtype)
    mean, std = _channel_stats(spec.normalize, device, x.dim(), dtype)
    return (x.to(dtype) / 255.0 - mean) / std


@functools.lru_cache(maxsize=64)
def _channel_stats(normalize: tuple, device: torch.device, ndim: int,
                   dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) on `device`, shaped to broadcast over B x C x ...; made once, not copied every batch."""
    shape = (-1, *([1] * (ndim - 2)))
    return tuple(torch.tensor(v, device=device, dtype=dtype).view(shape) for v in normalize)


class MultimodalTensorDataset(Dataset):
    """In-memory split: a tensor per modality plus labels (cheap to ship through Ray's object store)."""

    def __init__(self, inputs: dict[str, torch.Tensor], labels: torch.Tensor):
        n = len(labels)
        for name, tensor in inputs.items():
            if len(tensor) != n:
                raise ValueError(f"modality {name!r} has {len(tensor)} samples, labels have {n}")
        self.inputs = inputs
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return {name: t[index] for name, t in self.inputs.items()}, self.labels[index]


@dataclass
class DatasetBundle:
    name: str
    modalities: dict[str, ModalitySpec]
    num_classes: int
    train: Dataset
    val: Dataset
    test: Dataset
    info: dict = field(default_factory=dict)
    spec: dict = field(default_factory=dict)  # the resolved dataset config it was built from

    @property
    def modality_names(self) -> list[str]:
        return list(self.modalities)
