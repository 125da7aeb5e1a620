"""AGM -- Adaptive Gradient Modulation (Li et al., ICCV 2023, "Boosting Multi-modal Model Performance with
Adaptive Gradient Modulation").

Authors' code read: github.com/lihong2303/AGM_ICCV2023 at commit 5a65542c70b1c7c15c5df291e77fa9cf2bbb9549
(run/CREMAD_main.py `train`, model/CREMAD_net.py `GradMod`). What it does, and what this balancer does:
- Every training step also runs the network with one modality's input zeroed, in eval mode but with
  gradient: f(a, 0) and f(0, v). The mono-modal responses are o_a = (f(a,v) - f(0,v) + f(a,0)) / 2 and
  o_v = (f(a,v) - f(a,0) + f(0,v)) / 2 (the code also computes f(0, 0) and leaves it out), so o_a + o_v equals
  the fused output f(a, v) in value.
- Scores: s_m = batch mean of -log softmax(o_m)[y] (per-sample probabilities floored at 1e-8); their running
  means over all earlier steps s~_m (0 before the first step). r_a = exp(s_v - s_a), r~_a = exp(s~_v - s~_a)
  (and symmetrically for v); coefficients k_m = exp(alpha * min(r~_m - r_m, cap)), cap = 10. A modality doing
  better than its own history (r_m > r~_m) is slowed, a lagging one accelerated. BalanceBenchmark flips the
  sign of this difference; we follow the authors' code.
- The fused cross-entropy is taken on o_a + o_v, with a backward hook multiplying the gradient through o_m by
  k_m (set per step inside the window `modulation_starts <= epoch <= modulation_ends`; outside it the last
  coefficients stay in force, as in the code, where they start at 1).
- After the backward pass: if any fusion weight's gradient leaves [-1, 1], all model gradients are clipped to
  norm 1 (`clip_grad`).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from trainables.balancers.base import Balancer, State, StepAverager
from trainables.precision import upcast

# ----------------------------------------------------------------------------- pure functions


def shapley_responses(full: torch.Tensor, only_a: torch.Tensor, only_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(o_a, o_v) from f(a,v), f(a,0), f(0,v): o_a = (f(a,v) - f(0,v) + f(a,0)) / 2, o_v likewise."""
    return 0.5 * (full - only_v + only_a), 0.5 * (full - only_a + only_v)


def response_score(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Batch mean of -log softmax(logits)[y], each probability floored at 1e-8 (the code's guard)."""
    p = F.softmax(upcast(logits.detach()), 1).gather(1, labels[:, None]).squeeze(1)
    return float(-torch.log(p.clamp_min(1e-8)).mean())


def agm_coefficients(score_a: float, score_v: float, mean_a: float, mean_v: float, alpha: float,
                     cap: float = 10.0) -> tuple[float, float]:
    """k_m = exp(alpha * min(r~_m - r_m, cap)) with r_a = exp(s_v - s_a) and r~_a = exp(s~_v - s~_a)."""
    ratio_a, ratio_v = math.exp(score_v - score_a), math.exp(score_a - score_v)
    target_a, target_v = math.exp(mean_v - mean_a), math.exp(mean_a - mean_v)
    return math.exp(alpha * min(target_a - ratio_a, cap)), math.exp(alpha * min(target_v - ratio_v, cap))


def running_mean(mean: float, value: float, count: int) -> float:
    """The mean of `count` values given the mean of the first count - 1 (count >= 1)."""
    return mean * (count - 1) / count + value / count


def scaled_backward(x: torch.Tensor, scale: float) -> torch.Tensor:
    """x in the forward pass; the gradient flowing back through it is multiplied by `scale`."""
    y = x.view_as(x)
    y.register_hook(lambda grad: grad * scale)
    return y


# ----------------------------------------------------------------------------- params


class AGMParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(1.0, gt=0, le=100, description="modulation strength (code default 1.0)")
    cap: float = Field(10.0, gt=0, le=100, description="upper clamp of r~ - r inside exp (code: 10)")
    modulation_starts: int = Field(0, ge=0, description="first epoch (0-based) with new coefficients")
    modulation_ends: int = Field(19, ge=0, description="last epoch (0-based, inclusive); code default 20 (1-based)")
    clip_grad: bool = Field(True, description="code: clip all gradients to norm 1 when a fusion weight's grad leaves [-1, 1]")

    @model_validator(mode="after")
    def _check(self) -> "AGMParams":
        if self.modulation_ends < self.modulation_starts:
            raise ValueError("modulation_ends must be >= modulation_starts")
        return self


# ----------------------------------------------------------------------------- balancer


class AGM(Balancer):
    name = "agm"
    Params = AGMParams
    two_modalities_only = True  # the responses and ratios are written for two modalities

    def __init__(self, params: AGMParams, modalities: list[str]):
        super().__init__(params, modalities)
        self.coeff = {m: 1.0 for m in modalities}
        self.mean_score = {m: 0.0 for m in modalities}
        self.avg = StepAverager()

    def _masked_logits(self, state: State, keep: str) -> torch.Tensor:
        """f with every modality but `keep` zeroed, the network in eval mode, gradients kept."""
        model = state.model
        was_training = model.training
        model.eval()
        inputs = {m: x if m == keep else torch.zeros_like(x) for m, x in state.inputs.items()}
        logits = model.fuse(model.encode(inputs))
        model.train(was_training)
        return logits

    def after_loss(self, state: State) -> None:
        a, v = self.modalities
        y = state.labels
        full = state.fused_logits
        o_a, o_v = shapley_responses(full, self._masked_logits(state, a), self._masked_logits(state, v))
        score = {a: response_score(o_a, y), v: response_score(o_v, y)}
        active = self.p.modulation_starts <= state.epoch <= self.p.modulation_ends
        if active:
            k_a, k_v = agm_coefficients(score[a], score[v], self.mean_score[a], self.mean_score[v], self.p.alpha,
                                        self.p.cap)
            self.coeff = {a: k_a, v: k_v}
        count = state.step + 1
        self.mean_score = {m: running_mean(self.mean_score[m], score[m], count) for m in self.modalities}
        out = scaled_backward(o_a, self.coeff[a]) + scaled_backward(o_v, self.coeff[v])
        # The fused CE is taken on o_a + o_v (equal to f(a, v) in value) instead of on f(a, v).
        swap = sum(w * (F.cross_entropy(out, t) - F.cross_entropy(full, t)) for w, t in state.targets)
        state.loss = state.loss + swap
        self.avg.add(agm_active=float(active), **{f"agm_coeff_{m}": self.coeff[m] for m in self.modalities},
                     **{f"agm_score_{m}": score[m] for m in self.modalities})

    def after_backward(self, state: State) -> None:
        if not self.p.clip_grad:
            return
        grads = [p.grad for p in state.model.fusion.parameters() if p.dim() >= 2 and p.grad is not None]
        clipped = any(float(g.max()) > 1 or float(g.min()) < -1 for g in grads)
        if clipped:
            nn.utils.clip_grad_norm_(state.model.parameters(), max_norm=1.0)
        self.avg.add(agm_clipped=float(clipped))

    def epoch_metrics(self) -> dict[str, Any]:
        return self.avg.means()

    def reset_epoch_metrics(self) -> None:
        self.avg.reset()

    def state_dict(self) -> dict[str, Any]:
        return {"coeff": dict(self.coeff), "mean_score": dict(self.mean_score)}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.coeff = dict(sd.get("coeff", self.coeff))
        self.mean_score = dict(sd.get("mean_score", self.mean_score))
