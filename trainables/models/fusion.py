"""Fusion modules: each really changes how the modalities are combined (none is built and bypassed).

`block_logits` gives one modality's share of the fused head where that is well defined (concat, sum,
late): the logits OGM-GE and B-MM read per-modality confidence from.
"""
from __future__ import annotations

import torch
from torch import nn


class Fusion(nn.Module):
    supports_block_logits = False

    def __init__(self, dims: dict[str, int], num_classes: int):
        super().__init__()
        self.names = list(dims)
        self.dims = dims
        self.num_classes = num_classes

    def block_logits(self, feats: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no per-modality block of its head")


class ConcatFusion(Fusion):
    """One linear head on [z_a; z_v]; modality m's block is W[:, cols_m] z_m + b / M (OGM-GE's split)."""

    supports_block_logits = True

    def __init__(self, dims, num_classes, hidden: int = 0):
        super().__init__(dims, num_classes)
        self.fc = nn.Linear(sum(dims.values()), num_classes)
        offsets, start = {}, 0
        for name, d in dims.items():
            offsets[name] = (start, start + d)
            start += d
        self.offsets = offsets

    def forward(self, feats):
        return self.fc(torch.cat([feats[n] for n in self.names], dim=1))

    def block_logits(self, feats, name):
        lo, hi = self.offsets[name]
        return feats[name] @ self.fc.weight[:, lo:hi].T + self.fc.bias / len(self.names)


class SumFusion(Fusion):
    """A linear map per modality into logit space, summed."""

    supports_block_logits = True

    def __init__(self, dims, num_classes, hidden: int = 0):
        super().__init__(dims, num_classes)
        self.fc = nn.ModuleDict({n: nn.Linear(d, num_classes) for n, d in dims.items()})

    def forward(self, feats):
        return torch.stack([self.fc[n](feats[n]) for n in self.names]).sum(0)

    def block_logits(self, feats, name):
        return self.fc[name](feats[name])


class LateFusion(SumFusion):
    """Decision-level fusion: the average of per-modality classifiers' logits."""

    def forward(self, feats):
        return torch.stack([self.fc[n](feats[n]) for n in self.names]).mean(0)


class FiLMFusion(Fusion):
    """FiLM (Perez et al.): the first modality predicts a scale and shift for the second's features."""

    def __init__(self, dims, num_classes, hidden: int = 128):
        super().__init__(dims, num_classes)
        _require_two(self.names, "film")
        cond, target = self.names
        self.to_hidden = nn.Linear(dims[target], hidden)
        self.film = nn.Linear(dims[cond], 2 * hidden)
        self.fc_out = nn.Linear(hidden, num_classes)

    def forward(self, feats):
        cond, target = self.names
        gamma, beta = self.film(feats[cond]).chunk(2, dim=1)
        return self.fc_out(gamma * self.to_hidden(feats[target]) + beta)


class GatedFusion(Fusion):
    """Gated fusion (OGM-GE's variant): sigmoid(W_a z_a) gates W_v z_v before the output layer."""

    def __init__(self, dims, num_classes, hidden: int = 128):
        super().__init__(dims, num_classes)
        _require_two(self.names, "gated")
        gate, value = self.names
        self.fc_gate = nn.Linear(dims[gate], hidden)
        self.fc_value = nn.Linear(dims[value], hidden)
        self.fc_out = nn.Linear(hidden, num_classes)

    def forward(self, feats):
        gate, value = self.names
        return self.fc_out(torch.sigmoid(self.fc_gate(feats[gate])) * self.fc_value(feats[value]))


def _require_two(names: list[str], fusion: str) -> None:
    if len(names) != 2:
        from trainables.errors import ConfigError

        raise ConfigError(
            f"model.fusion: '{fusion}' is defined for exactly 2 modalities (got {len(names)}: {names}); "
            "use one of: concat, sum, late"
        )


FUSIONS = {"concat": ConcatFusion, "sum": SumFusion, "late": LateFusion, "film": FiLMFusion, "gated": GatedFusion}
