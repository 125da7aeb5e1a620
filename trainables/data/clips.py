"""File-backed datasets: a layout (how one published dataset sits on disk) read raw or from a prepared cache.

A layout says which clips each split has, how to read one clip from the raw files, and how to turn what it
read into tensors (frame choice, crops, normalisation). The expensive, deterministic part of reading (audio
decoding and STFT, JPEG decoding, unpickling) is what `mmstudy prepare` caches, so training from the cache
runs the same tensor code on the same inputs. The bundle a study ships through Ray's object store holds only
this index, never the samples.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel
from torch.utils.data import Dataset

from trainables.errors import ConfigError
from trainables.data.base import DatasetBundle, ModalitySpec
from trainables.data.frames import FrameArray

MANIFEST = "manifest.json"
CACHE_FORMAT = "mmstudy-prepared/1"


@dataclass(frozen=True)
class Clip:
    id: str
    label: int
    split: str  # the split folder/file it comes from (a carved validation clip stays in "train")


@dataclass
class SourceIndex:
    splits: dict[str, list[Clip]]  # "train", "test" and, where the dataset has one, "val"
    classes: list[str]
    split_files: list[Path]  # their checksums go into the prepared manifest


class Layout:
    """One published dataset layout. Subclasses set the class attributes and implement the four methods."""

    name: ClassVar[str]
    how_to_get: ClassVar[str]
    modality_names: ClassVar[tuple[str, ...]]
    frame_modalities: ClassVar[dict[str, str]] = {}  # modality -> PIL mode, for modalities that are frame stacks
    cache_keys: ClassVar[tuple[str, ...]] = ()  # params that change what `prepare` stores
    normalize: ClassVar[dict[str, tuple]] = {}  # modality -> (mean, std) applied on the device to uint8 input

    def __init__(self, params: BaseModel):
        self.p = params
        self.root = Path(params.root).expanduser()

    def check(self) -> None:
        """Raise a ConfigError naming the first expected file that is missing."""
        raise NotImplementedError

    def index(self) -> SourceIndex:
        raise NotImplementedError

    def read(self, clip: Clip) -> dict[str, Any]:
        """One clip's decoded inputs: arrays, or FrameFolder / FlowFolder objects for frame stacks."""
        raise NotImplementedError

    def to_tensors(self, sample: dict[str, Any], train: bool) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def cache_options(self) -> dict[str, Any]:
        """The params that change what `prepare` stores, as a prepared manifest records them."""
        params = self.p.model_dump(mode="json")
        return {key: params[key] for key in self.cache_keys}

    def missing(self, clip: Clip) -> Path | None:
        """The first file or folder of `clip` that is not there (raw training skips such clips, as the
        reference loaders do; `prepare` lists them)."""
        return None

    def expected(self, rel: str, what: str = "") -> ConfigError:
        where = self.root / rel
        detail = f" ({what})" if what else ""
        return ConfigError(f"dataset.root: expected {where}{detail}; {self.how_to_get}; to cache it for training: "
                           f"mmstudy prepare {self.name} --src {self.root} --dst DIR (docs/datasets.md)")


class PreparedReader:
    """Reads the arrays `mmstudy prepare` wrote: <root>/<modality>/<split>/<clip>.npy (memory-mapped)."""

    def __init__(self, root: Path, modalities: list[str], frame_modalities: dict[str, str]):
        self.root, self.modalities, self.frame_modalities = root, modalities, frame_modalities

    def read(self, clip: Clip) -> dict[str, Any]:
        arrays = {m: np.load(self.root / m / clip.split / f"{clip.id}.npy", mmap_mode="r") for m in self.modalities}
        return as_read(arrays, self.frame_modalities)


def as_read(arrays: dict[str, np.ndarray], frame_modalities: dict[str, str]) -> dict[str, Any]:
    """Cached arrays in the form Layout.read gives: frame stacks wrapped so they index like frame folders."""
    return {m: FrameArray(a, frame_modalities[m]) if m in frame_modalities else a for m, a in arrays.items()}


class ClipDataset(Dataset):
    """One split: clip index + a reader (raw layout or prepared cache) + the layout's tensor code."""

    def __init__(self, layout: Layout, reader, clips: list[Clip], train: bool):
        self.layout, self.reader, self.clips, self.train = layout, reader, clips, train

    @property
    def items(self) -> list[tuple[str, int]]:
        return [(c.id, c.label) for c in self.clips]

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int):
        clip = self.clips[index]
        return self.layout.to_tensors(self.reader.read(clip), self.train), torch.tensor(clip.label)


def carve_validation(index: SourceIndex, fraction: float, seed: int) -> tuple[list[Clip], list[Clip], list[Clip]]:
    """train, val, test: the dataset's own validation split where it has one, else a fixed-seed slice of train
    (papers that have none select on test; we never do unless `selection: test` says so)."""
    if index.splits.get("val"):
        return index.splits["train"], index.splits["val"], index.splits["test"]
    train_all = index.splits["train"]
    order = np.random.default_rng(seed).permutation(len(train_all))
    n_val = max(1, int(round(fraction * len(train_all))))
    return ([train_all[i] for i in sorted(order[n_val:])], [train_all[i] for i in sorted(order[:n_val])],
            index.splits["test"])


def read_manifest(root: Path) -> dict | None:
    path = root / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"dataset.root: {path} is not a readable prepared-cache manifest ({err}); "
                          "run mmstudy prepare again") from None
    if manifest.get("format") != CACHE_FORMAT:
        raise ConfigError(f"dataset.root: {path} is not an mmstudy prepared cache (format "
                          f"{manifest.get('format')!r}, expected {CACHE_FORMAT!r})")
    return manifest


def prepared_index(layout: Layout, manifest: dict) -> SourceIndex:
    """The index a prepared cache recorded, after checking it was made from the same layout options."""
    if manifest["dataset"] != layout.name:
        raise ConfigError(f"dataset.name: the prepared cache at {layout.root} holds {manifest['dataset']!r}, "
                          f"not {layout.name!r}")
    if not manifest.get("complete"):
        raise ConfigError(f"dataset.root: the prepared cache at {layout.root} is incomplete (prepare was "
                          f"interrupted); run the same mmstudy prepare command again to finish it")
    for key, value in layout.cache_options().items():
        if manifest["options"].get(key) != value:
            raise ConfigError(f"dataset.{key}: the prepared cache at {layout.root} was made with {key}="
                              f"{manifest['options'].get(key)!r} (got {value!r}); prepare a cache "
                              f"with {key}={value!r} or drop the override")
    splits = {name: [Clip(cid, int(label), name) for cid, label in entry["clips"]]
              for name, entry in manifest["splits"].items()}
    return SourceIndex(splits=splits, classes=list(manifest["classes"]), split_files=[])


def build_clip_bundle(layout: Layout, val_fraction: float, split_seed: int) -> DatasetBundle:
    """Raw layout or prepared cache (a manifest.json in dataset.root), with the same tensors either way."""
    manifest = read_manifest(layout.root)
    if manifest is not None:
        index = prepared_index(layout, manifest)
        reader: Any = PreparedReader(layout.root, list(layout.modality_names), layout.frame_modalities)
        source = "prepared"
    else:
        layout.check()
        index, reader, source = layout.index(), layout, "raw"
        present = {name: [c for c in clips if layout.missing(c) is None] for name, clips in index.splits.items()}
        missing = sum(len(index.splits[n]) - len(present[n]) for n in present)
        index = SourceIndex(present, index.classes, index.split_files)
    train, val, test = carve_validation(index, val_fraction, split_seed)
    for split, clips in (("train", train), ("val", val), ("test", test)):
        if not clips:
            raise ConfigError(f"dataset.root: the {split} split of {layout.root} has no readable clips")
    first = ClipDataset(layout, reader, val[:1], train=False)[0][0]
    modalities = {m: ModalitySpec(_kind(t, m in layout.frame_modalities), tuple(t.shape), layout.normalize.get(m))
                  for m, t in first.items()}
    return DatasetBundle(
        name=layout.name, modalities=modalities, num_classes=len(index.classes),
        train=ClipDataset(layout, reader, train, train=True), val=ClipDataset(layout, reader, val, train=False),
        test=ClipDataset(layout, reader, test, train=False),
        info={"classes": index.classes, "source": source, "root": str(layout.root),
              "missing": 0 if manifest is not None else missing,
              "train": len(train), "val": len(val), "test": len(test)},
    )


def _kind(tensor: torch.Tensor, frames: bool) -> str:
    if frames:
        return "frames"
    return {3: "spectrogram", 2: "sequence", 1: "vector"}[tensor.dim()]
