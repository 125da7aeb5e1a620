"""CMU-MOSI with its pre-extracted features, three modalities, in the layout of the MulT / BalanceBenchmark code.

    ROOT/mosi_data.pkl            word-aligned features (`aligned: true`, the default)
    ROOT/mosi_data_noalign.pkl    unaligned features (`aligned: false`)

Each file is a pickled dict {"train" | "valid" | "test": {"text": N x L x 300 (GloVe), "audio": N x L x 5
(COVAREP), "vision": N x L x 20 (Facet), "labels": N x 1 x 1 sentiment in [-3, 3], "id": ...}}. The task is
binary sentiment as in the reference code (score < 0 negative, else positive); we report accuracy and
macro-F1. Audio -inf values are set to 0 as the reference does. The pickle is read with an unpickler that
only rebuilds NumPy arrays, so a tampered file cannot run code.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from trainables.errors import ConfigError
from trainables.data.base import DatasetBundle
from trainables.data.clips import Clip, Layout, SourceIndex, build_clip_bundle
from trainables.data.registry import register_dataset

HOW_TO_GET = ("CMU-MOSI: the aligned/unaligned feature pickles distributed with MulT (github.com/yaohungt/"
              "Multimodal-Transformer, mosi_data.pkl / mosi_data_noalign.pkl); see docs/datasets.md")
CLASSES = ["negative", "positive"]
SPLITS = {"train": "train", "valid": "val", "test": "test"}  # pickle key -> our split
PICKLE_KEY = {ours: key for key, ours in SPLITS.items()}
FEATURES = {"text": "text", "audio": "audio", "visual": "vision"}
_ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}


class CmuMosiParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: str = Field(..., description="folder with mosi_data.pkl / mosi_data_noalign.pkl, or its `mmstudy "
                                       "prepare` cache")
    aligned: bool = Field(True, description="word-aligned features (mosi_data.pkl) or not (mosi_data_noalign.pkl)")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="unused: MOSI has an official validation split")
    split_seed: int = Field(0, ge=0)


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a feature pickle (arrays only)")


def load_feature_pickle(path: Path) -> dict:
    with path.open("rb") as fh:
        try:
            return _ArraysOnly(fh, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as err:
            raise ConfigError(f"dataset.root: {path} is not a MOSI feature pickle ({err})") from None


class CmuMosiLayout(Layout):
    name = "cmu_mosi"
    how_to_get = HOW_TO_GET
    modality_names = ("text", "audio", "visual")
    cache_keys = ("aligned",)

    def __init__(self, params: CmuMosiParams):
        super().__init__(params)
        self._data: dict | None = None

    def __getstate__(self):  # ship the index, not the arrays, to workers and Ray
        return {**self.__dict__, "_data": None}

    @property
    def pickle_path(self) -> Path:
        return self.root / ("mosi_data.pkl" if self.p.aligned else "mosi_data_noalign.pkl")

    def check(self) -> None:
        if not self.pickle_path.is_file():
            raise self.expected(self.pickle_path.name, "CMU-MOSI feature pickle with train/valid/test")

    def data(self) -> dict:
        if self._data is None:
            raw = load_feature_pickle(self.pickle_path)
            missing = [f"{s}.{k}" for s in SPLITS for k in (*FEATURES.values(), "labels")
                       if not isinstance(raw.get(s), dict) or k not in raw[s]]
            if missing:
                raise ConfigError(f"dataset.root: {self.pickle_path} lacks {', '.join(missing)} (expected "
                                  f"train/valid/test with text, audio, vision, labels)")
            self._data = raw
        return self._data

    def index(self) -> SourceIndex:
        data = self.data()
        splits = {}
        for key, split in SPLITS.items():
            scores = np.asarray(data[key]["labels"], dtype=np.float32).reshape(len(data[key]["labels"]), -1)[:, 0]
            splits[split] = [Clip(f"{i:05d}", int(score >= 0), split) for i, score in enumerate(scores)]
        return SourceIndex(splits, CLASSES, [self.pickle_path])

    def read(self, clip: Clip) -> dict:
        part = self.data()[PICKLE_KEY[clip.split]]
        i = int(clip.id)
        out = {m: np.asarray(part[key][i], dtype=np.float32) for m, key in FEATURES.items()}
        out["audio"] = np.where(np.isneginf(out["audio"]), 0.0, out["audio"]).astype(np.float32)
        return out

    def to_tensors(self, sample: dict, train: bool) -> dict[str, torch.Tensor]:
        return {m: torch.as_tensor(np.array(sample[m], dtype=np.float32)) for m in self.modality_names}


def build_cmu_mosi(p: CmuMosiParams) -> DatasetBundle:
    return build_clip_bundle(CmuMosiLayout(p), p.val_fraction, p.split_seed)


register_dataset("cmu_mosi", CmuMosiParams, build_cmu_mosi, CmuMosiLayout)
