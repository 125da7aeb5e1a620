"""Encoders: map one modality's input to a feature map, then pool it to a vector z_m.

The split into `feature_map` and `pool` matters: RedReg's authors measure redundancy on the un-pooled
maps, the paper on the pooled features; both are available to balancers.
"""
from __future__ import annotations

import torch
from torch import nn

from trainables.data.base import ModalitySpec


class Encoder(nn.Module):
    out_dim: int
    # Set by MultimodalNet.use_channels_last (CUDA): conv inputs in NHWC, the layout tensor cores prefer.
    channels_last: bool = False

    def body(self) -> nn.Module:
        """The module that holds the FLOPs (what `compile` compiles in place)."""
        return self

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.feature_map(x))


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def small_cnn(in_channels: int, width: int) -> nn.Sequential:
    """Four conv-BN-ReLU blocks: fast enough for CPU studies, deep enough to show imbalance."""
    half = max(width // 2, 4)
    return nn.Sequential(
        _conv_bn(in_channels, half, 1), _conv_bn(half, half, 2), _conv_bn(half, width, 1), _conv_bn(width, width, 2)
    )


def resnet18_trunk(in_channels: int) -> nn.Sequential:
    """torchvision's ResNet-18 up to layer4, trained from scratch; 1-channel stem for spectrograms
    (as the OGM-GE / InfoReg / RedReg reference code does). torchvision is imported here, not at module
    level: importing it costs about a second, which every trial actor and driver would pay for nothing
    when a study uses the small encoder."""
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)


class SpectrogramEncoder(Encoder):
    """C x F x T input, 2D CNN, global average pooling."""

    def __init__(self, trunk: nn.Module, out_dim: int):
        super().__init__()
        self.trunk, self.out_dim = trunk, out_dim

    def body(self) -> nn.Module:
        return self.trunk

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(_layout(x, self.channels_last))

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return fmap.mean(dim=(2, 3))


class FramesEncoder(Encoder):
    """C x T x H x W input: the 2D CNN runs on each frame, then spatio-temporal average pooling
    (the reference implementations' frame-wise ResNet for video)."""

    def __init__(self, trunk: nn.Module, out_dim: int):
        super().__init__()
        self.trunk, self.out_dim = trunk, out_dim

    def body(self) -> nn.Module:
        return self.trunk

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        fmap = self.trunk(_layout(frames, self.channels_last))
        _, d, fh, fw = fmap.shape
        return fmap.view(b, t, d, fh, fw).permute(0, 2, 1, 3, 4)  # B x D x T x h x w

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return fmap.mean(dim=(2, 3, 4))


class VectorEncoder(Encoder):
    """Pre-extracted features (D): a two-layer MLP; the 'map' is the hidden vector itself."""

    def __init__(self, in_dim: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, width), nn.ReLU(inplace=True), nn.Linear(width, width), nn.ReLU())
        self.out_dim = width

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return fmap


class SequenceEncoder(Encoder):
    """Pre-extracted per-step features (L x D), e.g. CMU-MOSI's GloVe / COVAREP / Facet: a linear projection,
    learned positions and a small Transformer encoder (RedReg runs MOSI on a Transformer backbone); the map is
    the per-step output, pooled by the mean over steps."""

    def __init__(self, length: int, in_dim: int, width: int, layers: int = 2):
        super().__init__()
        heads = next(h for h in (4, 2, 1) if width % h == 0)
        self.project = nn.Linear(in_dim, width)
        self.position = nn.Parameter(torch.zeros(1, length, width))
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.1, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out_dim = width

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.transformer(self.project(x) + self.position[:, : x.shape[1]])

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return fmap.mean(dim=1)


def build_encoder(spec: ModalitySpec, kind: str, width: int) -> Encoder:
    """`kind` (model.encoder) picks the CNN for spectrograms and frames; sequences always get the Transformer."""
    if spec.kind == "vector":
        return VectorEncoder(int(torch.tensor(spec.shape).prod()), width)
    if spec.kind == "sequence":
        return SequenceEncoder(spec.shape[0], spec.shape[1], width)
    channels = spec.shape[0]
    trunk, out_dim = (resnet18_trunk(channels), 512) if kind == "resnet18" else (small_cnn(channels, width), width)
    return SpectrogramEncoder(trunk, out_dim) if spec.kind == "spectrogram" else FramesEncoder(trunk, out_dim)
