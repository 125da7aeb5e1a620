"""What every dataset hands the trainer: three splits and a description of each modality."""
from __future__ import annotations

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
