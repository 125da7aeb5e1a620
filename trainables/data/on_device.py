"""A prepared dataset held on the training device, augmented there in batch (`dataset.on_device`).

Why: at paper scale a GPU step is faster than loader workers can decode, crop and collate prepared clips
(docs/benchmarks.md). When the prepared cache fits, its uint8 frames and float spectrograms are copied to
the device once per trial; every training batch is then a gather, a batched RandomResizedCrop + flip
(`torchvision.ops.roi_align`, one box per frame) and a uint8 result, and normalisation stays where it always
is (`model_input`). The crop boxes follow torchvision's RandomResizedCrop algorithm exactly (scale 0.08-1,
ratio 3/4-4/3, ten attempts, centre-crop fallback) and each frame gets its own crop and flip, as in the
loader path; the shuffle order is the loader path's (the same seeded permutation). Pixel values differ from
PIL's resampling by rounding inside an enlarged crop; at a crop's edges roi_align reads up to half a source
pixel beyond the crop where PIL repeats the edge pixel; a shrunk crop is averaged over a grid of bilinear
samples where PIL uses a triangle filter. Evaluation splits are resized once, at load (antialiased bilinear).

Memory is checked before anything is copied: the tensors must fit in half of the device's free memory
(the rest is left to the model, activations and other trials on the same GPU); `on_device: true` on a
dataset that does not fit, or that cannot be held (raw layout, frames of different sizes), is a one-line
ConfigError, `auto` falls back to the loader path. On the CPU `auto` is the loader path.
"""
from __future__ import annotations

import math
import os
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from trainables.data.base import DatasetBundle
from trainables.errors import ConfigError

FREE_MEMORY_SHARE = 0.5  # at most this share of the device's free memory holds the dataset
SCALE, RATIO = (0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0)  # torchvision's RandomResizedCrop defaults


# ----------------------------------------------------------------------------- batched augmentation


def random_resized_crop_boxes(n: int, height: int, width: int, generator: torch.Generator | None = None,
                              scale=SCALE, ratio=RATIO, attempts: int = 10) -> torch.Tensor:
    """n boxes (top, left, h, w), int64, drawn as torchvision's RandomResizedCrop.get_params draws one: up to
    `attempts` tries of area ~ U(scale) * H * W and log-aspect ~ U(log ratio); the first that fits wins, with
    a uniform position; none fits -> the centre crop with the aspect clamped to `ratio`."""
    area = height * width
    target = area * torch.empty(n, attempts).uniform_(scale[0], scale[1], generator=generator)
    log_r = torch.empty(n, attempts).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_r)
    w = torch.sqrt(target * aspect).round().long()
    h = torch.sqrt(target / aspect).round().long()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    rows = torch.arange(n)
    h_pick, w_pick = h[rows, first.clamp(min=0)], w[rows, first.clamp(min=0)]
    u_top, u_left = torch.rand(n, generator=generator), torch.rand(n, generator=generator)
    top = (u_top * (height - h_pick + 1)).floor().long()
    left = (u_left * (width - w_pick + 1)).floor().long()
    # fallback: the whole image, cut to the nearest allowed aspect ratio, centred
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    miss = first < 0
    h_pick, w_pick = torch.where(miss, fh, h_pick), torch.where(miss, fw, w_pick)
    top, left = torch.where(miss, (height - fh) // 2, top), torch.where(miss, (width - fw) // 2, left)
    return torch.stack([top, left, h_pick, w_pick], dim=1)


def crop_resize_flip(frames: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """N x C x H x W uint8 -> N x C x size x size uint8: each frame's box resized bilinearly, flipped where
    `flips` is true. roi_align with aligned=True uses PIL's pixel-centre convention."""
    from torchvision.ops import roi_align

    top, left, h, w = boxes.to(frames.device, torch.float32).unbind(1)
    index = torch.arange(len(frames), device=frames.device, dtype=torch.float32)
    rois = torch.stack([index, left, top, left + w, top + h], dim=1)
    out = roi_align(frames.float(), rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1,
                    aligned=True)
    out = torch.where(flips.to(frames.device)[:, None, None, None], out.flip(-1), out)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def resize(frames: torch.Tensor, size: int) -> torch.Tensor:
    """N x C x H x W uint8 -> N x C x size x size uint8 (bilinear, antialiased: Resize((size, size)))."""
    out = torch.nn.functional.interpolate(frames.float(), size=(size, size), mode="bilinear", align_corners=False,
                                          antialias=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def augment_frames(stack: torch.Tensor, size: int, generator: torch.Generator | None) -> torch.Tensor:
    """B x T x H x W x C uint8 (as prepared) -> B x C x T x size x size uint8, a crop and flip per frame."""
    b, t, h, w, c = stack.shape
    frames = stack.reshape(b * t, h, w, c).permute(0, 3, 1, 2)
    boxes = random_resized_crop_boxes(b * t, h, w, generator)
    flips = torch.rand(b * t, generator=generator) < 0.5
    out = crop_resize_flip(frames, boxes, flips, size)
    return out.view(b, t, c, size, size).permute(0, 2, 1, 3, 4)


# ----------------------------------------------------------------------------- the splits on the device


@dataclass
class DeviceSplit:
    tensors: dict[str, torch.Tensor]  # frames: N x T x H x W x C (train) or N x C x T x S x S (eval), uint8
    labels: torch.Tensor
    augment: dict[str, int]  # frame modality -> output side; empty for evaluation splits

    def __len__(self) -> int:
        return len(self.labels)


class DeviceLoader:
    """Batches of one split, already on the device, in the loader path's order (`generator`: the trainer's
    per-epoch shuffle generator; None = in order). Crops and flips draw from the same generator."""

    def __init__(self, split: DeviceSplit, batch_size: int, generator: torch.Generator | None = None):
        self.split, self.batch_size, self.generator = split, batch_size, generator

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def __iter__(self):
        n = len(self.split)
        order = torch.randperm(n, generator=self.generator) if self.generator is not None else torch.arange(n)
        device = self.split.labels.device
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size].to(device)
            inputs = {}
            for m, t in self.split.tensors.items():
                x = t.index_select(0, idx)
                inputs[m] = augment_frames(x, self.split.augment[m], self.generator) if m in self.split.augment else x
            yield inputs, self.split.labels.index_select(0, idx)


class AugmentOnDevice:
    """The loader path with its crops and flips moved to the device: wraps a DataLoader whose train split hands
    out uncropped uint8 frames (`augment_on_device: true`), moves each batch to `device` and augments it there
    in batch, drawing from `generator` (the per-epoch shuffle generator, after the sampler has drawn its order)."""

    def __init__(self, loader, sizes: dict[str, int], device: torch.device, generator: torch.Generator):
        self.loader, self.sizes, self.device, self.generator = loader, sizes, device, generator

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for inputs, labels in self.loader:
            inputs = {m: x.to(self.device, non_blocking=True) for m, x in inputs.items()}
            for m, size in self.sizes.items():
                inputs[m] = augment_frames(inputs[m], size, self.generator)
            yield inputs, labels


def with_device_augmentation(loader, bundle: DatasetBundle, device: torch.device, generator: torch.Generator):
    """`loader` itself, or wrapped in AugmentOnDevice when the dataset's params ask for it."""
    layout = getattr(bundle.train, "layout", None)
    if layout is None or not getattr(layout.p, "augment_on_device", False):
        return loader
    return AugmentOnDevice(loader, layout.on_device_sizes(), device, generator)


@dataclass
class OnDeviceData:
    splits: dict[str, DeviceSplit]

    def loader(self, split: str, batch_size: int, generator: torch.Generator | None = None) -> DeviceLoader:
        return DeviceLoader(self.splits[split], batch_size, generator)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for s in self.splits.values() for t in s.tensors.values())


# ----------------------------------------------------------------------------- deciding and loading


def _plain_arrays(dataset, clip) -> dict[str, np.ndarray]:
    return dataset.layout.untransformed(dataset.reader.read(clip))


def why_not_on_device(bundle: DatasetBundle) -> str | None:
    """None if the bundle can be held on a device, else the reason (for the one-line error)."""
    layout = getattr(bundle.train, "layout", None)
    if layout is None or not hasattr(layout, "untransformed"):
        return f"dataset '{bundle.name}' has no on-device path"
    if bundle.info.get("source") != "prepared":
        return "it needs a prepared cache (mmstudy prepare, docs/datasets.md), not the raw layout"
    return None


def required_bytes(bundle: DatasetBundle) -> int:
    """Device bytes of every split: train at the prepared resolution, val/test resized once."""
    first = _plain_arrays(bundle.train, bundle.train.clips[0])
    train = sum(a.nbytes for a in first.values())
    sizes = bundle.train.layout.on_device_sizes()
    evaluation = sum(first[m].nbytes if m not in sizes else
                     first[m].shape[0] * first[m].shape[-1] * sizes[m] ** 2 for m in first)
    return len(bundle.train) * train + (len(bundle.val) + len(bundle.test)) * evaluation


def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def load_split(dataset, device: torch.device, train: bool, chunk: int = 256) -> DeviceSplit:
    """Every clip's plain arrays, read `chunk` clips at a time (host memory holds one chunk), copied into one
    tensor per modality on `device`; evaluation frames are resized there once."""
    sizes = dataset.layout.on_device_sizes()
    n_clips = len(dataset.clips)
    tensors: dict[str, torch.Tensor] = {}  # allocated once, filled chunk by chunk (no second copy on the device)
    shapes: dict[str, tuple] = {}
    for start in range(0, len(dataset.clips), chunk):
        arrays = [_plain_arrays(dataset, c) for c in dataset.clips[start:start + chunk]]
        for m in arrays[0]:
            shapes.setdefault(m, arrays[0][m].shape)
            other = next((a[m].shape for a in arrays if a[m].shape != shapes[m]), None)
            if other is not None:
                raise ConfigError(f"dataset.on_device: the prepared {m} arrays differ in shape ({shapes[m]} vs "
                                  f"{other}) and the on-device path needs one; allowed here: auto, false")
            part = torch.from_numpy(np.stack([a[m] for a in arrays])).to(device)
            if m in sizes and not train:  # N x T x H x W x C -> N x C x T x S x S, resized once
                n, t, h, w, c = part.shape
                part = resize(part.reshape(n * t, h, w, c).permute(0, 3, 1, 2), sizes[m])
                part = part.view(n, t, c, sizes[m], sizes[m]).permute(0, 2, 1, 3, 4).contiguous()
            if m not in tensors:
                tensors[m] = torch.empty((n_clips, *part.shape[1:]), dtype=part.dtype, device=device)
            tensors[m][start:start + len(part)] = part
    labels = torch.tensor([c.label for c in dataset.clips], device=device)
    return DeviceSplit(tensors, labels, sizes if train else {})


_HELD: dict[tuple[int, str], tuple[weakref.ref, OnDeviceData]] = {}  # seeds of one trial share one copy


def device_data(bundle: DatasetBundle, mode, device: torch.device) -> OnDeviceData | None:
    """The on-device splits for `dataset.on_device` = mode ('auto', True, False), or None for the loader path."""
    if mode is False or (mode == "auto" and device.type != "cuda"):
        return None
    key = (id(bundle), str(device))
    held = _HELD.get(key)
    if held is not None and held[0]() is bundle:
        return held[1]
    reason = why_not_on_device(bundle)
    if reason is None:
        need, free = required_bytes(bundle), free_bytes(device)
        if need > FREE_MEMORY_SHARE * free:
            reason = (f"it needs {need / 2**30:.1f} GiB, more than {FREE_MEMORY_SHARE:.0%} of the "
                      f"{free / 2**30:.1f} GiB free on {device}")
    if reason is not None:
        if mode == "auto":
            return None
        raise ConfigError(f"dataset.on_device: true but {reason}; allowed: auto, false")
    try:
        data = OnDeviceData({"train": load_split(bundle.train, device, train=True),
                             "val": load_split(bundle.val, device, train=False),
                             "test": load_split(bundle.test, device, train=False)})
    except ConfigError:
        if mode == "auto":  # e.g. frames of different sizes: the loader path takes them
            return None
        raise
    _HELD[key] = (weakref.ref(bundle, lambda _ref, key=key: _HELD.pop(key, None)), data)
    return data
