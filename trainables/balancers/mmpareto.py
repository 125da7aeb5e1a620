"""MMPareto (Wei & Hu, ICML 2024, "MMPareto: Boosting Multimodal Learning with Innocent Unimodal Assistance").

Read: the authors' code, GeWu-Lab/MMPareto_ICML2024 at commit a339db39cc25b157df376b50bb894917dc6c01d6
(code/MMPareto.py `train_epoch`, code/min_norm_solvers.py). The paper's full text was not available here
(abstract only): the `paper` variant is our reading of its vector notation, marked in docs/balancers.md.

Per step and per encoder m, with g_mm the gradient of the multimodal loss and g_u that of m's own unimodal
loss (both over the whole encoder, each from its own autograd pass in `after_loss`, as the code does):
- cos(g_mm, g_u) > 0 (code; `agree_when: ge` for >= 0): weights (1/2, 1/2); else the min-norm weights of
  the two-point convex hull (the authors' solver, with its 0.999/0.001 clipping at the ends).
- g_new = 2 (a_mm g_mm + a_u g_u); g_final = gamma * max(1, |g_mm + g_u| / |g_new|) * g_new, the norms
  taken per parameter tensor (code) or over the whole encoder (`rescale_scope: encoder`).
Heads (fusion and unimodal) keep their plain gradient; the trainer's joint backward gives |g_mm + g_u|.
Under `loss_setting: multimodal` no unimodal loss reaches the encoders (g_u = 0): the rule then reduces to
g_final = gamma * g_mm (the authors' formula gives the same), i.e. the magnitude enhancement alone.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from trainables.balancers.base import Balancer, State, StepAverager, variant_defaults

PAPER_VARIANT = {"agree_when": "ge", "rescale_scope": "encoder"}


def flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def min_norm_two(v1v1: float, v1v2: float, v2v2: float) -> tuple[float, float]:
    """(c, 1 - c) minimising |c x1 + (1 - c) x2|^2 for c in [0, 1], from the inner products; at the ends
    the authors' solver returns 0.999 / 0.001 rather than 1 / 0, and so do we."""
    if v1v2 >= v1v1:
        return 0.999, 0.001
    if v1v2 >= v2v2:
        return 0.001, 0.999
    c = (v2v2 - v1v2) / (v1v1 + v2v2 - 2 * v1v2)
    return c, 1.0 - c


def agrees(cos: float, agree_when: str) -> bool:
    return cos >= 0 if agree_when == "ge" else cos > 0


def pareto_weights(g_mm: torch.Tensor, g_u: torch.Tensor, agree_when: str) -> tuple[float, float, float]:
    """(a_mm, a_u, cos) for two flat gradients: equal weights when they agree, else the min-norm weights."""
    cos = float(F.cosine_similarity(g_mm, g_u, dim=0))
    if agrees(cos, agree_when):
        return 0.5, 0.5, cos
    a_mm, a_u = min_norm_two(float((g_mm * g_mm).sum()), float((g_mm * g_u).sum()), float((g_u * g_u).sum()))
    return a_mm, a_u, cos


def rescaled(new: list[torch.Tensor], total_norm: torch.Tensor, gamma: float) -> list[torch.Tensor]:
    """gamma * max(1, |total| / |new|) * new, for the tensors in `new` together (a zero `new` stays zero,
    where the authors' code gives NaN). Norms are taken in the gradients' own dtype, as in the authors' code
    (a float64 ratio over float32 gradients moved the tiny float32 golden network off the reference)."""
    new_norm = flat(new).norm()
    ratio = total_norm / new_norm
    if new_norm > 0 and ratio > 1:
        return [n * ratio * gamma for n in new]
    return [n * gamma for n in new]


def combine(g_mm: list[torch.Tensor], g_u: list[torch.Tensor], total: list[torch.Tensor], a_mm: float, a_u: float,
            gamma: float, scope: str) -> list[torch.Tensor]:
    """The final per-tensor gradients of one encoder; `total` is the joint loss's gradient (g_mm + g_u)."""
    new = [2 * a_mm * gm + 2 * a_u * gu for gm, gu in zip(g_mm, g_u)]
    if scope == "tensor":
        return [rescaled([n], t.norm(), gamma)[0] for n, t in zip(new, total)]
    return rescaled(new, flat(total).norm(), gamma)


class MMParetoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    variant: Literal["paper", "code"] = "code"
    gamma: float = Field(1.5, gt=0, le=100, description="magnitude enhancement (code: gamma = 1.5)")
    agree_when: Literal["gt", "ge"] = Field("gt", description="equal weights when cos > 0 (code) or >= 0")
    rescale_scope: Literal["tensor", "encoder"] = Field(
        "tensor", description="norms for the rescaling: per parameter tensor (code) or over the encoder")

    _apply_variant = variant_defaults("paper", PAPER_VARIANT)


class MMPareto(Balancer):
    name = "mmpareto"
    Params = MMParetoParams

    def __init__(self, params: MMParetoParams, modalities: list[str]):
        super().__init__(params, modalities)
        self.grads: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        self.avg = StepAverager()

    def _params(self, state: State, m: str) -> list[torch.nn.Parameter]:
        return [p for p in state.model.encoder(m).parameters() if p.requires_grad]

    def after_loss(self, state: State) -> None:
        """g_mm and g_u by separate autograd passes over the encoders, as the authors' code does (the
        subtraction g_total - g_u agrees to ~3e-6 relative per step, but on the golden run that rounding
        crossed a ReLU kink and the trajectories parted)."""
        self.grads = {}
        unimodal_trains_encoders = state.loss_setting == "multimodal+unimodal"
        multimodal = sum(w * F.cross_entropy(state.fused_logits, y) for w, y in state.targets)
        for m in self.modalities:
            params = self._params(state, m)
            losses = [multimodal]
            if unimodal_trains_encoders:
                losses.append(sum(w * F.cross_entropy(state.unimodal_logits[m], y)
                                  for w, y in state.unimodal_targets.get(m, state.targets)))
            grads = [[torch.zeros_like(p) if g is None else g for p, g in
                      zip(params, torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))]
                     for loss in losses]
            if len(grads) == 1:  # no unimodal loss reaches the encoders: g_u = 0
                grads.append([torch.zeros_like(p) for p in params])
            self.grads[m] = (grads[0], grads[1])

    def after_backward(self, state: State) -> None:
        for m in self.modalities:
            params = self._params(state, m)
            g_mm, g_u = self.grads[m]
            a_mm, a_u, cos = pareto_weights(flat(g_mm), flat(g_u), self.p.agree_when)
            total = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
            final = combine(g_mm, g_u, total, a_mm, a_u, self.p.gamma, self.p.rescale_scope)
            for p, g in zip(params, final):
                p.grad = g
            total_norm = float(flat(total).norm())
            self.avg.add(**{f"mmpareto_cos_{m}": cos, f"mmpareto_conflict_{m}": float(not agrees(cos, self.p.agree_when)),
                            f"mmpareto_alpha_mm_{m}": a_mm,
                            f"mmpareto_norm_ratio_{m}": float(flat(final).norm()) / max(total_norm, 1e-12)})
        self.grads = {}

    def epoch_metrics(self) -> dict[str, Any]:
        return self.avg.means()

    def reset_epoch_metrics(self) -> None:
        self.avg.reset()
