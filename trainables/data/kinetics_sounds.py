"""Kinetics-Sounds in the layout of the GeWu-Lab reference code (InfoReg, which RedReg follows; BalanceBenchmark).

    ROOT/class.txt                                class names, comma- or line-separated (31 or 34 classes)
    ROOT/ks_audio/{train,val,test}_1fps_path.txt  lines `<path>/<clip_id> <label>` (label 0-based, last field)
    ROOT/ks_audio/{train,val,test}/<clip_id>.npy  the clip's log-magnitude spectrogram, F x T
    ROOT/ks_visual/{train,val,test}/<clip_id>/frame_00001.jpg ...   frames at 1 frame/s

Audio: the stored spectrogram with a channel axis -> 1 x F x T. Frames: the clip cut into `frames` equal
segments, a random frame of each for training and the middle frame for evaluation; RandomResizedCrop + flip
for training, Resize for evaluation, ImageNet normalisation -> 3 x T x 224 x 224. The val list is optional:
without it a validation split is carved from train with a fixed seed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from trainables.errors import ConfigError
from trainables.data.base import DatasetBundle
from trainables.data.clips import Clip, Layout, SourceIndex, build_clip_bundle
from trainables.data.frames import IMAGENET_NORMALIZE, FrameFolder, imagenet_transform, segment_indices, stack_frames
from trainables.data.registry import register_dataset

HOW_TO_GET = ("Kinetics-Sounds: the Kinetics-400 clips of the class list (Arandjelovic & Zisserman 2017), "
              "spectrograms and 1-fps frames made as in the InfoReg / BalanceBenchmark pre-processing; see "
              "docs/datasets.md")


class KineticsSoundsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: str = Field(..., description="folder with class.txt, ks_audio/, ks_visual/, or its `mmstudy prepare` cache")
    classes_file: str = Field("class.txt", description="class list, relative to root")
    frames: int = Field(3, ge=1, le=64, description="frames per clip (T), one per segment")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="used only when there is no val list")
    split_seed: int = Field(0, ge=0)
    image_size: int = Field(224, ge=16, le=1024)


def read_class_list(path: Path) -> list[str]:
    text = path.read_text()
    names = [n.strip() for n in text.replace("\n", ",").split(",")]
    return [n for n in names if n]


class KineticsSoundsLayout(Layout):
    name = "kinetics_sounds"
    how_to_get = HOW_TO_GET
    modality_names = ("audio", "visual")
    frame_modalities = {"visual": "RGB"}
    normalize = {"visual": IMAGENET_NORMALIZE}
    cache_keys = ("classes_file",)

    def list_file(self, split: str) -> Path:
        return self.root / "ks_audio" / f"{split}_1fps_path.txt"

    def check(self) -> None:
        for rel in (self.p.classes_file, "ks_audio/train_1fps_path.txt", "ks_audio/test_1fps_path.txt",
                    "ks_audio/train", "ks_visual/train"):
            if not (self.root / rel).exists():
                raise self.expected(rel, "Kinetics-Sounds layout: class.txt, ks_audio/<split>_1fps_path.txt, "
                                         "ks_audio/<split>/<clip>.npy, ks_visual/<split>/<clip>/*.jpg")

    def index(self) -> SourceIndex:
        classes = read_class_list(self.root / self.p.classes_file)
        splits, files = {}, []
        for split in ("train", "val", "test"):
            path = self.list_file(split)
            if not path.is_file():
                continue
            files.append(path)
            clips = []
            for line_no, line in enumerate(path.read_text().splitlines(), 1):
                fields = line.split()
                if not fields:
                    continue
                try:
                    label = int(fields[-1])
                except ValueError:
                    label = -1
                if len(fields) < 2 or not 0 <= label < len(classes):
                    raise ConfigError(f"dataset.root: {path} line {line_no}: expected `<path>/<clip_id> <label>` "
                                      f"with label in 0..{len(classes) - 1} ({len(classes)} classes in "
                                      f"{self.p.classes_file})")
                clips.append(Clip(fields[0].rstrip("/").split("/")[-1], label, split))
            splits[split] = clips
        return SourceIndex(splits, classes, files)

    def missing(self, clip: Clip) -> Path | None:
        for path in (self.root / "ks_audio" / clip.split / f"{clip.id}.npy",
                     self.root / "ks_visual" / clip.split / clip.id):
            if not path.exists():
                return path
        return None

    def read(self, clip: Clip) -> dict:
        spec = np.load(self.root / "ks_audio" / clip.split / f"{clip.id}.npy", allow_pickle=False)
        return {"audio": spec, "visual": FrameFolder.glob(self.root / "ks_visual" / clip.split / clip.id, "*.jpg")}

    def to_tensors(self, sample: dict, train: bool) -> dict[str, torch.Tensor]:
        spec = torch.as_tensor(np.array(sample["audio"], dtype=np.float32))
        frames = sample["visual"]
        images = [frames[i] for i in segment_indices(len(frames), self.p.frames, train)]
        return {"audio": spec.unsqueeze(0) if spec.dim() == 2 else spec,
                "visual": stack_frames(images, imagenet_transform(train, self.p.image_size))}


def build_kinetics_sounds(p: KineticsSoundsParams) -> DatasetBundle:
    return build_clip_bundle(KineticsSoundsLayout(p), p.val_fraction, p.split_seed)


register_dataset("kinetics_sounds", KineticsSoundsParams, build_kinetics_sounds, KineticsSoundsLayout)
