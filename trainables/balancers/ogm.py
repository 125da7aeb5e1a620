"""OGM and OGM-GE (Peng et al., CVPR 2022): on-the-fly gradient modulation with generalisation enhancement.

Per step the dominant modality (larger summed true-class probability) gets its encoder gradient scaled by
k = 1 - tanh(alpha * relu(ratio)); OGM-GE also adds Gaussian noise with the gradient's own std.
Read against the authors' code (GeWu-Lab/OGM-GE_CVPR2022 @ 343dc1d, main.py train_epoch): modulation in
epochs `modulation_starts <= epoch <= modulation_ends` (both inclusive), on conv weights (4-D) only.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from trainables.balancers.base import Balancer, State, StepAverager
from trainables.metrics import true_class_score


def ogm_coefficients(score_a: float, score_v: float, alpha: float) -> tuple[float, float, float]:
    """(coeff_a, coeff_v, ratio_v): the dominant modality's coefficient is 1 - tanh(alpha * relu(ratio))."""
    ratio_v = score_v / max(score_a, 1e-12)
    ratio_a = 1.0 / max(ratio_v, 1e-12)
    coeff_a = coeff_v = 1.0
    if ratio_v > 1:
        coeff_v = 1 - math.tanh(alpha * max(ratio_v, 0.0))
    elif ratio_a > 1:
        coeff_a = 1 - math.tanh(alpha * max(ratio_a, 0.0))
    return coeff_a, coeff_v, ratio_v


def modulate_gradients(params: list[torch.nn.Parameter], coeff: float,
                       noise: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
    """grad <- grad * coeff (+ N(0, 1) draws from `noise` times std(grad) + 1e-8 in GE mode), in place;
    the std is the gradient's own before scaling, as in the authors' code."""
    for p in params:
        if p.grad is None:
            continue
        std = float(p.grad.std()) if p.grad.numel() > 1 else 0.0
        p.grad.mul_(coeff)
        if noise is not None:
            p.grad.add_(noise(p.grad) * (std + 1e-8))


def modulated_params(encoder: torch.nn.Module, conv_only: bool) -> list[torch.nn.Parameter]:
    """The parameters OGM scales: conv kernels (4-D/5-D) with `conv_only`, as the authors' code does; an
    encoder without any (the sequence and vector encoders) falls back to all its parameters, so OGM is
    never a silent no-op on a modality whose `ogm_coeff_*` says it was scaled."""
    params = list(encoder.parameters())
    conv = [p for p in params if p.dim() >= 4]
    return conv if conv_only and conv else params


class OGMParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(0.8, gt=0, le=100, description="modulation strength (OGM-GE README example: 0.8)")
    modulation_starts: int = Field(0, ge=0, description="first epoch (0-based) with modulation")
    modulation_ends: int = Field(50, ge=0, description="last epoch (0-based, inclusive) with modulation")
    conv_only: bool = Field(True, description="authors' code: modulate conv weights (4-D/5-D tensors) only; "
                                              "an encoder without conv weights is modulated whole")
    ge_noise_on: Literal["both", "dominant"] = Field("both", description="authors' code adds GE noise to both encoders")

    @model_validator(mode="after")
    def _check(self) -> "OGMParams":
        if self.modulation_ends < self.modulation_starts:
            raise ValueError("modulation_ends must be >= modulation_starts")
        return self


class OGM(Balancer):
    name = "ogm"
    Params = OGMParams
    two_modalities_only = True
    generalisation_enhancement = False

    def __init__(self, params: OGMParams, modalities: list[str]):
        super().__init__(params, modalities)
        self.avg = StepAverager()

    def after_backward(self, state: State) -> None:
        a, v = self.modalities
        s_a = true_class_score(state.unimodal_logits[a], state.labels)
        s_v = true_class_score(state.unimodal_logits[v], state.labels)
        coeff_a, coeff_v, ratio_v = ogm_coefficients(s_a, s_v, self.p.alpha)
        active = self.p.modulation_starts <= state.epoch <= self.p.modulation_ends
        if active:
            for m, c in ((a, coeff_a), (v, coeff_v)):
                dominant = c < 1.0
                noise = self.generalisation_enhancement and (dominant or self.p.ge_noise_on == "both")
                if dominant or noise:
                    modulate_gradients(modulated_params(state.model.encoder(m), self.p.conv_only), c,
                                       self.randn if noise else None)
        self.avg.add(ogm_ratio=s_a / max(s_v, 1e-12), **{f"ogm_coeff_{a}": coeff_a, f"ogm_coeff_{v}": coeff_v},
                     ogm_active=float(active))

    def epoch_metrics(self) -> dict[str, Any]:
        return self.avg.means()

    def reset_epoch_metrics(self) -> None:
        self.avg.reset()


class OGMGE(OGM):
    name = "ogm_ge"
    generalisation_enhancement = True
