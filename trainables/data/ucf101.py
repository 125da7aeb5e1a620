"""UCF-101 as two modalities, RGB frames and pre-computed optical flow, in the BalanceBenchmark layout
(the setting of the B-MM paper: RGB + flow).

    ROOT/classInd.txt                              lines `<index> <ClassName>` (1-based, 101 classes)
    ROOT/trainlist0N.txt, ROOT/testlist0N.txt      lines `<ClassName>/<video>.avi [label]` (N = split 1..3)
    ROOT/ucf101-frames-1fps/video-set/<video>/img_00001.jpg ...   RGB frames (`rgb_dir`)
    ROOT/u/<video>/frame00001.jpg ..., ROOT/v/<video>/frame00001.jpg ...   flow x / y as grey-scale JPEGs

RGB: `frames` segments, a random frame of each for training and the middle one for evaluation, Resize(224)
(+ horizontal flip for training), ImageNet normalisation -> 3 x T x 224 x 224. Flow: the same segment
sampling over the flow frames, Resize(224) (+ flip), Normalize(0.1307, 0.3081) per component, u and v as
two channels -> 2 x T x 224 x 224. Differences from the reference code: u and v of a frame are flipped
together (the reference flips each image independently), the RGB frame count is read from the folder (the
reference assumes 6), and a validation split is carved from the train list with a fixed seed.
"""
from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from trainables.errors import ConfigError
from trainables.data.base import DatasetBundle
from trainables.data.clips import Clip, Layout, SourceIndex, build_clip_bundle
from trainables.data.frames import IMAGENET_NORMALIZE, FlowFolder, FrameFolder, imagenet_transform, segment_indices, stack_frames
from trainables.data.registry import register_dataset

HOW_TO_GET = ("UCF-101: https://www.crcv.ucf.edu/data/UCF101.php (videos and the train/test split lists), RGB "
              "frames and TV-L1 flow extracted per video into the folders of docs/datasets.md")
FLOW_MEAN, FLOW_STD = 0.1307, 0.3081


class UCF101Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: str = Field(..., description="folder with classInd.txt, the split lists and the frame folders, or its "
                                       "`mmstudy prepare` cache")
    split: int = Field(1, ge=1, le=3, description="official split: trainlist0N.txt / testlist0N.txt")
    rgb_dir: str = Field("ucf101-frames-1fps/video-set", description="RGB frame folders, relative to root")
    flow_u_dir: str = Field("u", description="flow x-component folders, relative to root")
    flow_v_dir: str = Field("v", description="flow y-component folders, relative to root")
    frames: int = Field(3, ge=1, le=64, description="frames per clip (T) for both modalities")
    val_fraction: float = Field(0.1, gt=0, lt=1)
    split_seed: int = Field(0, ge=0)
    image_size: int = Field(224, ge=16, le=1024)


class UCF101Layout(Layout):
    name = "ucf101"
    how_to_get = HOW_TO_GET
    modality_names = ("visual", "flow")
    frame_modalities = {"visual": "RGB", "flow": "UV"}
    normalize = {"visual": IMAGENET_NORMALIZE, "flow": ((FLOW_MEAN, FLOW_MEAN), (FLOW_STD, FLOW_STD))}
    cache_keys = ("split", "rgb_dir", "flow_u_dir", "flow_v_dir")

    def lists(self) -> dict[str, Path]:
        return {"train": self.root / f"trainlist0{self.p.split}.txt", "test": self.root / f"testlist0{self.p.split}.txt"}

    def check(self) -> None:
        rels = ["classInd.txt", *(p.name for p in self.lists().values()), self.p.rgb_dir, self.p.flow_u_dir,
                self.p.flow_v_dir]
        for rel in rels:
            if not (self.root / rel).exists():
                raise self.expected(rel, "UCF-101 layout: classInd.txt, trainlist0N.txt, testlist0N.txt, RGB "
                                         "frame folders, flow u/ and v/ folders")

    def index(self) -> SourceIndex:
        class_ind = self.root / "classInd.txt"
        classes = []
        for line in class_ind.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 2:
                classes.append(fields[1])
        by_name = {c.lower(): i for i, c in enumerate(classes)}  # the lists spell e.g. HandstandPushups both ways
        splits = {}
        for split, path in self.lists().items():
            clips = []
            for line_no, line in enumerate(path.read_text().splitlines(), 1):
                fields = line.split()
                if not fields:
                    continue
                entry = fields[0]
                if "/" not in entry or entry.split("/")[0].lower() not in by_name:
                    raise ConfigError(f"dataset.root: {path} line {line_no}: expected `<ClassName>/<video>.avi` with "
                                      f"ClassName listed in {class_ind}")
                video = Path(entry.split("/")[-1]).stem
                clips.append(Clip(video, by_name[entry.split("/")[0].lower()], split))
            splits[split] = clips
        return SourceIndex(splits, classes, [class_ind, *self.lists().values()])

    def _folders(self, clip: Clip) -> list[Path]:
        return [self.root / d / clip.id for d in (self.p.rgb_dir, self.p.flow_u_dir, self.p.flow_v_dir)]

    def missing(self, clip: Clip) -> Path | None:
        return next((f for f in self._folders(clip) if not f.is_dir()), None)

    def read(self, clip: Clip) -> dict:
        rgb, u, v = self._folders(clip)
        return {"visual": FrameFolder.glob(rgb, "*.jpg"),
                "flow": FlowFolder(FrameFolder.glob(u, "*.jpg", "L"), FrameFolder.glob(v, "*.jpg", "L"))}

    def to_tensors(self, sample: dict, train: bool) -> dict[str, torch.Tensor]:
        rgb, flow = sample["visual"], sample["flow"]
        images = [rgb[i] for i in segment_indices(len(rgb), self.p.frames, train)]
        pairs = [flow[i] for i in segment_indices(len(flow), self.p.frames, train)]
        return {"visual": stack_frames(images, imagenet_transform(train, self.p.image_size, random_crop=False)),
                "flow": torch.stack([self._flow_frame(u, v, train) for u, v in pairs], dim=1)}

    def _flow_frame(self, u, v, train: bool) -> torch.Tensor:
        from torchvision.transforms import functional as F

        size = [self.p.image_size, self.p.image_size]
        pair = torch.cat([F.pil_to_tensor(F.resize(img, size)) for img in (u, v)])  # 2 x H x W uint8
        if train and bool(torch.rand(()) < 0.5):
            pair = pair.flip(-1)
        return pair  # normalised on the device with (FLOW_MEAN, FLOW_STD), see UCF101Layout.normalize


def build_ucf101(p: UCF101Params) -> DatasetBundle:
    return build_clip_bundle(UCF101Layout(p), p.val_fraction, p.split_seed)


register_dataset("ucf101", UCF101Params, build_ucf101, UCF101Layout)
