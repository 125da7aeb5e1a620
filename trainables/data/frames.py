"""Frame sequences read from a folder of JPEGs (raw layouts) or from a cached uint8 array (prepared cache).

Both hand out PIL images, so the same transforms run on either source and a cache made at the original
resolution gives exactly the tensors the raw layout gives.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class FrameFolder:
    """Sorted image files of one clip, decoded only when indexed (a clip has more frames than are used)."""

    def __init__(self, files: list[Path], mode: str = "RGB"):
        if not files:
            raise FileNotFoundError("no frames")
        self.files, self.mode = files, mode

    @classmethod
    def glob(cls, folder: Path, pattern: str, mode: str = "RGB") -> "FrameFolder":
        files = sorted(folder.glob(pattern))
        if not files:
            raise FileNotFoundError(f"no {pattern} frames in {folder}")
        return cls(files, mode)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Image.Image:
        with Image.open(self.files[index]) as img:
            return img.convert(self.mode)

    def to_array(self, short_side: int = 0) -> np.ndarray:
        """Every frame decoded into N x H x W x C uint8 (the prepared form); all frames share the first's size."""
        images = [self[i] for i in range(len(self))]
        if short_side:
            images = [resize_short_side(img, short_side) for img in images]
        size = images[0].size
        arrays = [np.asarray(img if img.size == size else img.resize(size, Image.BILINEAR)) for img in images]
        stacked = np.stack(arrays)
        return stacked if stacked.ndim == 4 else stacked[..., None]


class FlowFolder:
    """Optical flow as two grey-scale frame folders (x and y components); indexing gives the (u, v) pair."""

    def __init__(self, u: FrameFolder, v: FrameFolder):
        self.u, self.v = u, v

    def __len__(self) -> int:
        return min(len(self.u), len(self.v))

    def __getitem__(self, index: int) -> tuple[Image.Image, Image.Image]:
        return self.u[index], self.v[index]

    def to_array(self, short_side: int = 0) -> np.ndarray:
        """N x H x W x 2 uint8 (u, v as channels)."""
        n = len(self)
        u = FrameFolder(self.u.files[:n], "L").to_array(short_side)
        v = FrameFolder(self.v.files[:n], "L").to_array(short_side)
        if v.shape[1:3] != u.shape[1:3]:
            raise ValueError(f"flow u and v frames differ in size ({u.shape[1:3]} vs {v.shape[1:3]})")
        return np.concatenate([u, v], axis=-1)


class FrameArray:
    """A prepared N x H x W x C uint8 array (memory-mapped) behaving like a FrameFolder (mode RGB or L) or a
    FlowFolder (mode UV)."""

    def __init__(self, array: np.ndarray, mode: str = "RGB"):
        self.array, self.mode = array, mode

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, index: int):
        frame = np.asarray(self.array[index])
        if self.mode == "UV":
            return Image.fromarray(np.ascontiguousarray(frame[..., 0])), Image.fromarray(np.ascontiguousarray(frame[..., 1]))
        return Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame)


def resize_short_side(img: Image.Image, side: int) -> Image.Image:
    w, h = img.size
    scale = side / min(w, h)
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)


def segment_indices(num_frames: int, pick: int, train: bool, generator: torch.Generator | None = None) -> list[int]:
    """0-based frame indices the reference loaders use: the clip cut into `pick` equal segments, a random
    frame of each segment for training and the segment's middle frame for evaluation (1-based in the
    reference code, hence the +1/-1). Short clips repeat frames rather than fail."""
    seg = max(num_frames // pick, 1)
    out = []
    for i in range(pick):
        if train:
            one_based = i * seg + 1 + int(torch.randint(seg, (1,), generator=generator))
        else:
            one_based = i * seg + max(seg // 2, 1)
        out.append(min(one_based, num_frames) - 1)
    return out


IMAGENET_NORMALIZE = (tuple(IMAGENET_MEAN), tuple(IMAGENET_STD))


def imagenet_transform(train: bool, size: int, random_crop: bool = True):
    """The reference pipelines' geometry: RandomResizedCrop (or Resize) + horizontal flip for training, Resize
    for evaluation. The result stays uint8; ToTensor's /255 and the ImageNet normalisation happen on the
    training device (ModalitySpec.normalize)."""
    from torchvision import transforms as T

    if train:
        first = T.RandomResizedCrop(size) if random_crop else T.Resize((size, size))
        return T.Compose([first, T.RandomHorizontalFlip(), T.PILToTensor()])
    return T.Compose([T.Resize((size, size)), T.PILToTensor()])


def stack_frames(images: list[Image.Image], transform) -> torch.Tensor:
    """C x T x H x W uint8, the layout the frame encoders take."""
    return torch.stack([transform(img) for img in images], dim=1)
