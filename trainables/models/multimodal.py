"""The multimodal network: encoders per modality, a fusion head, and per-modality logits."""
from __future__ import annotations

import torch
from torch import nn

from trainables.config import ModelConfig
from trainables.data.base import ModalitySpec
from trainables.models.encoders import Encoder, build_encoder
from trainables.models.fusion import FUSIONS, Fusion


class MultimodalNet(nn.Module):
    def __init__(self, modalities: dict[str, ModalitySpec], num_classes: int, cfg: ModelConfig):
        super().__init__()
        self.modality_names = list(modalities)
        self.num_classes = num_classes
        self.unimodal_head = cfg.unimodal_head
        self.encoders = nn.ModuleDict({m: build_encoder(s, cfg.encoder, cfg.feature_dim) for m, s in modalities.items()})
        dims = {m: enc.out_dim for m, enc in self.encoders.items()}
        self.fusion: Fusion = FUSIONS[cfg.fusion](dims, num_classes, cfg.fusion_dim)
        # Separate heads always exist so per-modality accuracy is defined for every fusion; under the
        # `multimodal` loss they are trained on detached features (a probe that does not touch the encoders).
        self.heads = nn.ModuleDict({m: nn.Linear(d, num_classes) for m, d in dims.items()})

    def encoder(self, name: str) -> Encoder:
        return self.encoders[name]

    def encode(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: self.encoders[m](inputs[m]) for m in self.modality_names}

    def fuse(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.fusion(feats)

    def unimodal_logits(self, feats: dict[str, torch.Tensor], detach_probe: bool = False) -> dict[str, torch.Tensor]:
        if self.unimodal_head == "fused_block":
            return {m: self.fusion.block_logits(feats, m) for m in self.modality_names}
        return {m: self.heads[m](feats[m].detach() if detach_probe else feats[m]) for m in self.modality_names}

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.fuse(self.encode(inputs))

    def use_channels_last(self) -> None:
        """Conv weights and conv inputs in NHWC (on CUDA: faster convolutions under autocast)."""
        self.to(memory_format=torch.channels_last)
        for enc in self.encoders.values():
            enc.channels_last = True

    def compile_encoders(self) -> None:
        """torch.compile each encoder's body in place (nn.Module.compile): parameter names, state_dict and
        checkpoints are unchanged, and every caller -- the trainer, balancers' hooks, RedReg's monitor through
        `feature_map` or the encoder itself -- runs the compiled body. Compilation happens on first use."""
        for enc in self.encoders.values():
            enc.body().compile()


def build_model(modalities: dict[str, ModalitySpec], num_classes: int, cfg: ModelConfig) -> MultimodalNet:
    return MultimodalNet(modalities, num_classes, cfg)
