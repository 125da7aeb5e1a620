"""ARL -- Asymmetric Reinforcing Learning ("Improving Multimodal Learning via Imbalanced Learning", ICCV 2025).

Authors' code read: github.com/shicaiwei123/ICCV2025-ARL at commit 358af4f6782781ac3821527beae3321e77f9d31e
(main_arl_variance.py `train_epoch`, models/backbone.py `GradScale`, models/fusion_modules.py `*_AUXI`).
What it does, and what this balancer does:
- Unimodal logits come from the fused head itself with the other modality's features zeroed ("parameter-shared
  module"), and the loss is CE(fused) + g * sum_m CE(f(z_m, 0)), with g = 1 in the warm-up epochs and
  g = `gamma` after them (epochs > `start`).
- Modality analysis per step: importance I_m = sum over classes of the batch-mean |logit| of m's unimodal
  logits, normalised to shares; confidence D_m = 1 / max(H_m / (H_a + H_v), 0.3) with H_m the batch-mean
  entropy, normalised to shares. The weights are asymmetric -- each modality's confidence times the *other*
  modality's importance: (w_a, w_v) = softmax(T * [I_v * D_a, I_a * D_v]).
- After the warm-up, the gradient reaching each encoder's output is multiplied by (1 + w_m) (identity forward).
  The weight in force at a step is the one computed at the step before (the code sets it after the forward
  pass that saved it); it is 0.5 through the warm-up.
- Every step the gradients are clipped to total norm 40 (`clip_norm`).
Paper vs code: in the released code the computed weights are never written back (only the warm-up's 0.5 is),
so every encoder gradient is scaled by 1.5 after the warm-up. The README describes the computed weights as
the ones GradScale uses: that is the default here (`apply_weights: true`); `variant: code` keeps 0.5.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from trainables.balancers.base import Balancer, State, StepAverager, variant_defaults
from trainables.precision import upcast

# ----------------------------------------------------------------------------- pure functions


def masked_logits(model: nn.Module, feats: dict[str, torch.Tensor], keep: str) -> torch.Tensor:
    """The fused head on `feats` with every modality but `keep` zeroed (the code's *_AUXI outputs)."""
    return model.fuse({m: z if m == keep else torch.zeros_like(z) for m, z in feats.items()})


def logit_importance(logits: torch.Tensor) -> float:
    """sum over classes of the batch-mean |logit|."""
    return float(upcast(logits.detach()).abs().mean(0).sum())


def mean_entropy(logits: torch.Tensor) -> float:
    """Batch-mean softmax entropy (log(p + 1e-16), as the code)."""
    p = torch.softmax(upcast(logits.detach()), 1)
    return float(torch.sum(-p * torch.log(p + 1e-16), 1).mean())


def arl_weights(importance: tuple[float, float], entropy: tuple[float, float], temperature: float,
                entropy_floor: float = 0.3) -> tuple[float, float]:
    """(w_a, w_v) = softmax(T * [I~_v * D~_a, I~_a * D~_v]): I~ importance shares, D~ shares of
    1 / max(entropy share, floor)."""
    i_a, i_v = importance
    i_a, i_v = i_a / (i_a + i_v), i_v / (i_a + i_v)
    h_a, h_v = entropy
    d_a = 1 / max(h_a / (h_a + h_v), entropy_floor)
    d_v = 1 / max(h_v / (h_a + h_v), entropy_floor)
    d_a, d_v = d_a / (d_a + d_v), d_v / (d_a + d_v)
    w = torch.softmax(torch.tensor([i_v * d_a * temperature, i_a * d_v * temperature]), 0)
    return float(w[0]), float(w[1])


def scale_gradient_of(x: torch.Tensor, scale: float) -> None:
    """The gradient reaching `x`, summed over all its uses, is multiplied by `scale` (forward untouched)."""
    x.register_hook(lambda grad: grad * scale)


# ----------------------------------------------------------------------------- params

CODE_VARIANT = {"apply_weights": False}


class ARLParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    variant: Literal["paper", "code"] = "paper"
    gamma: float = Field(4.0, ge=0, le=100, description="unimodal-loss weight after the warm-up (README: 4.0)")
    temperature: float = Field(8.0, gt=0, le=1000, description="T of the weight softmax (code: 8.0)")
    start: int = Field(5, ge=0, description="ARL acts in epochs > start (0-based, code default 5)")
    entropy_floor: float = Field(0.3, gt=0, le=1, description="lower clamp of the entropy shares")
    clip_norm: float = Field(40.0, ge=0, description="gradient-norm clip every step (code: 40; 0 = off)")
    apply_weights: bool = Field(True, description="use the computed weights (README); false = the released code's 0.5")

    _apply_variant = variant_defaults("code", CODE_VARIANT)


# ----------------------------------------------------------------------------- balancer


class ARL(Balancer):
    name = "arl"
    adds_unimodal_supervision = True  # CE(f(z_m, 0), y) per modality, weight g, under both loss settings
    Params = ARLParams
    two_modalities_only = True  # the asymmetric weights pair each modality with the other one

    def __init__(self, params: ARLParams, modalities: list[str]):
        super().__init__(params, modalities)
        self.weights = {m: 0.5 for m in modalities}
        self.avg = StepAverager()

    def _active(self, state: State) -> bool:
        return state.epoch > self.p.start

    def after_encode(self, state: State) -> None:
        if self._active(state):
            for m, z in state.features.items():
                scale_gradient_of(z, 1.0 + self.weights[m])

    def after_loss(self, state: State) -> None:
        a, v = self.modalities
        logits = {m: masked_logits(state.model, state.features, m) for m in self.modalities}
        active = self._active(state)
        uni_weight = self.p.gamma if active else 1.0
        uni = sum(w * F.cross_entropy(logits[m], t) for m in self.modalities for w, t in state.targets)
        state.loss = state.loss + uni_weight * uni
        applied = dict(self.weights)
        if not active:
            self.weights = {a: 0.5, v: 0.5}
        elif self.p.apply_weights:
            w = arl_weights((logit_importance(logits[a]), logit_importance(logits[v])),
                            (mean_entropy(logits[a]), mean_entropy(logits[v])), self.p.temperature,
                            self.p.entropy_floor)
            self.weights = {a: w[0], v: w[1]}
        self.avg.add(arl_active=float(active), arl_uni_weight=uni_weight,
                     **{f"arl_scale_{m}": 1.0 + applied[m] if active else 1.0 for m in self.modalities},
                     **{f"arl_w_{m}": self.weights[m] for m in self.modalities},
                     **{f"arl_importance_{m}": logit_importance(logits[m]) for m in self.modalities},
                     **{f"arl_entropy_{m}": mean_entropy(logits[m]) for m in self.modalities})

    def after_backward(self, state: State) -> None:
        if self.p.clip_norm > 0:
            nn.utils.clip_grad_norm_(state.model.parameters(), max_norm=self.p.clip_norm)

    def epoch_metrics(self) -> dict[str, Any]:
        return self.avg.means()

    def reset_epoch_metrics(self) -> None:
        self.avg.reset()

    def state_dict(self) -> dict[str, Any]:
        return {"weights": dict(self.weights)}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.weights = dict(sd.get("weights", self.weights))
