"""Multimodal Mixup (MM; "Mixup Helps Understanding Multimodal Video Better", Sec. 3.2).

[text] mixup at the aggregated multimodal feature level, lambda ~ Beta(alpha, alpha).
[reading] per batch one permutation pi and one lambda shared by every modality's features (for concat
fusion this is exactly mixing the concatenated vector); loss = lambda CE(y) + (1 - lambda) CE(y[pi]).
Every step from epoch 0; no mixing at evaluation. `level: input` mixes the model-ready inputs instead.
Per step lambda is drawn first (the Beta quantile of one uniform), then pi, both from `self.generator`.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from scipy.special import betaincinv

from trainables.balancers.base import Balancer, State, StepAverager


def mix(x: torch.Tensor, lam: float, perm: torch.Tensor) -> torch.Tensor:
    """lam * x + (1 - lam) * x[perm]."""
    return lam * x + (1 - lam) * x[perm]


def mixup_targets(labels: torch.Tensor, lam: float, perm: torch.Tensor) -> list[tuple[float, torch.Tensor]]:
    """The label mixture that goes with `mix(x, lam, perm)`: same lambda, same permutation."""
    return [(lam, labels), (1 - lam, labels[perm])]


def sample_lambda(alpha: float, u: float) -> float:
    """lambda ~ Beta(alpha, alpha) by inverse-CDF sampling: the Beta quantile of a uniform draw `u` (so the
    balancer's generator fixes it; torch.distributions.Beta cannot take one)."""
    return float(betaincinv(alpha, alpha, u))


def permutation(n: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random permutation of range(n) on `device`, drawn where `generator` lives (the CPU if none)."""
    where = generator.device if generator is not None else "cpu"
    return torch.randperm(n, generator=generator, device=where).to(device)


class MMParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(1.0, gt=0, le=100, description="Beta(alpha, alpha); alpha -> 0 recovers plain training")
    level: Literal["feature", "input"] = "feature"
    warmup_epochs: int = Field(0, ge=0, description="plain epochs before mixing (paper: 0 for MM)")


class MultimodalMixup(Balancer):
    name = "mm"
    Params = MMParams

    def __init__(self, params: MMParams, modalities: list[str]):
        super().__init__(params, modalities)
        self.avg = StepAverager()

    def _mix(self, state: State, tensors: dict[str, torch.Tensor]) -> None:
        if state.epoch < self.p.warmup_epochs:
            return
        lam = sample_lambda(self.p.alpha, self.rand())
        perm = permutation(len(state.labels), state.labels.device, self.generator)
        for m in self.modalities:
            tensors[m] = mix(tensors[m], lam, perm)
        state.targets = mixup_targets(state.labels, lam, perm)
        self.avg.add(mm_lambda=lam)

    def on_batch_start(self, state: State) -> None:
        if self.p.level == "input":
            self._mix(state, state.inputs)

    def after_encode(self, state: State) -> None:
        if self.p.level == "feature":
            self._mix(state, state.features)

    def epoch_metrics(self) -> dict[str, Any]:
        return self.avg.means()

    def reset_epoch_metrics(self) -> None:
        self.avg.reset()
