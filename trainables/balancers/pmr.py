"""PMR -- Prototypical Modal Rebalance (Fan et al., CVPR 2023, "PMR: Prototypical Modal Rebalance for
Multimodal Learning").

Authors' code read: github.com/fanyunfeng-bit/Modal-Imbalance-PMR, main_Prototype_grad.py at commit
3615e48983555089b0e693380087617c3797a641. What it does, and what this balancer does:
- Class prototypes per modality c^m_k: the mean pooled feature of class k over the first tenth of a pass over
  the training loader (`proto_fraction`; at least one batch), model in eval mode, no gradient. Computed once
  before training and again after every epoch; from the end of the second epoch on, blended with the previous
  ones: c <- (1 - momentum) c_new + momentum c_old (the code's `epoch <= 0` test skips the blend after epoch 0).
- Per step: prototype logits -||z_m - c^m_k|| (Euclidean, not squared); s_m = sum over the batch of the
  true-class softmax of those logits; rho = s_a / s_v. Inside the window `modulation_starts <= epoch <=
  modulation_ends` (both inclusive), the weaker modality (rho > 1: visual; rho < 1: audio; rho == 1: none) gets
  alpha * CE(-||z - c||, y) added to the loss: a fixed weight, chosen per batch by the ratio.
- The paper also has a prototype entropy regularisation (PER) for the dominant modality in early epochs
  (abstract); the authors' code has none and the paper's equation is not available here. `entropy_reg` > 0
  turns on our reading of it (off by default, as in the code): loss -= entropy_reg * H(softmax(-||z - c||))
  of the dominant modality for epochs < `entropy_epochs`.
Judgement call: a class with no sample in the prototype batches keeps its previous prototype (zero before the
first), where the code divides by zero.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from trainables.balancers.base import Balancer, State, StepAverager
from trainables.precision import upcast

# ----------------------------------------------------------------------------- pure functions


def prototype_logits(z: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """-||z_i - c_k||_2 for every sample i and class k (B x K)."""
    return -(z[:, None, :] - protos[None, :, :]).pow(2).sum(-1).sqrt()


def true_class_score(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """s = sum_i softmax(logits_i)[y_i] (a batch sum, as in the authors' code)."""
    return float(F.softmax(upcast(logits.detach()), 1).gather(1, labels[:, None]).sum())


def pmr_coefficients(ratio: float, alpha: float) -> tuple[float, float]:
    """(coeff_a, coeff_v) for rho = s_a / s_v: alpha on the weaker modality's prototype CE, 0 on the other."""
    if ratio > 1:
        return 0.0, alpha
    if ratio < 1:
        return alpha, 0.0
    return 0.0, 0.0


def prototype_batches(num_batches: int, fraction: float) -> int:
    """How many loader batches the prototypes average: the code's `len(loader) // 10`, at least one."""
    return max(math.floor(num_batches * fraction + 1e-9), 1)


@torch.no_grad()
def class_means(feats: Iterable[tuple[dict[str, torch.Tensor], torch.Tensor]], modalities: list[str],
                num_classes: int, previous: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Per modality the K x D mean feature of each class; a class never seen keeps `previous` (or 0)."""
    sums: dict[str, torch.Tensor] = {}
    counts = None
    for z, y in feats:
        for m in modalities:
            if m not in sums:
                sums[m] = torch.zeros(num_classes, z[m].shape[1], device=z[m].device)
            sums[m].index_add_(0, y, upcast(z[m]))
        batch_counts = torch.bincount(y, minlength=num_classes).float()
        counts = batch_counts if counts is None else counts + batch_counts
    out = {}
    for m in modalities:
        means = sums[m] / counts.clamp_min(1)[:, None]
        fallback = previous[m] if previous is not None else torch.zeros_like(means)
        out[m] = torch.where((counts > 0)[:, None], means, fallback)
    return out


def blend(new: dict[str, torch.Tensor], old: dict[str, torch.Tensor], momentum: float) -> dict[str, torch.Tensor]:
    """c <- (1 - momentum) * c_new + momentum * c_old."""
    return {m: (1 - momentum) * new[m] + momentum * old[m] for m in new}


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the softmax entropy."""
    logp = F.log_softmax(logits, 1)
    return -(logp.exp() * logp).sum(1).mean()


# ----------------------------------------------------------------------------- params


class PMRParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(1.0, ge=0, le=100, description="weight of the weak modality's prototype CE (code default 1.0)")
    momentum: float = Field(0.2, ge=0, lt=1, description="weight of the previous prototypes (code's momentum_coef)")
    modulation_starts: int = Field(0, ge=0, description="first epoch (0-based) with the prototype CE")
    modulation_ends: int = Field(100, ge=0, description="last epoch (0-based, inclusive, as in the code)")
    proto_fraction: float = Field(0.1, gt=0, le=1, description="share of the training batches the prototypes average")
    entropy_reg: float = Field(0.0, ge=0, le=10, description="PER weight (our reading of the paper; 0 = code)")
    entropy_epochs: int = Field(10, ge=0, description="PER applies in epochs < entropy_epochs")

    @model_validator(mode="after")
    def _check(self) -> "PMRParams":
        if self.modulation_ends < self.modulation_starts:
            raise ValueError("modulation_ends must be >= modulation_starts")
        return self


# ----------------------------------------------------------------------------- balancer


class PMR(Balancer):
    name = "pmr"
    adds_unimodal_supervision = True  # alpha * CE(prototype logits of z_m, y) for the weaker modality
    Params = PMRParams
    two_modalities_only = True  # the ratio s_a / s_v picks one of two modalities

    def __init__(self, params: PMRParams, modalities: list[str]):
        super().__init__(params, modalities)
        self.protos: dict[str, torch.Tensor] | None = None
        self.avg = StepAverager()

    @torch.no_grad()
    def _prototypes(self, state: State) -> dict[str, torch.Tensor]:
        loader = state.train_loader
        n_use = prototype_batches(len(loader), self.p.proto_fraction)
        model = state.model
        was_training = model.training
        model.eval()

        def feats():
            for i, (inputs, labels) in enumerate(loader):
                if i >= n_use:
                    break
                yield model.encode(state.model_input(inputs)), labels.to(state.device)

        protos = class_means(feats(), self.modalities, state.num_classes, self.protos)
        model.train(was_training)
        return protos

    def on_fit_start(self, state: State) -> None:
        if self.protos is None:
            self.protos = self._prototypes(state)

    def on_epoch_end(self, state: State) -> None:
        fresh = self._prototypes(state)
        self.protos = blend(fresh, self.protos, self.p.momentum) if state.epoch >= 1 else fresh

    def after_loss(self, state: State) -> None:
        a, v = self.modalities
        y = state.labels
        logits = {m: prototype_logits(state.features[m], self.protos[m]) for m in self.modalities}
        scores = {m: true_class_score(logits[m], y) for m in self.modalities}
        ratio = scores[a] / max(scores[v], 1e-12)
        active = self.p.modulation_starts <= state.epoch <= self.p.modulation_ends
        coeff = dict(zip((a, v), pmr_coefficients(ratio, self.p.alpha))) if active else {a: 0.0, v: 0.0}
        for m in self.modalities:
            if coeff[m]:
                state.loss = state.loss + coeff[m] * F.cross_entropy(logits[m], y)
        if active and self.p.entropy_reg > 0 and state.epoch < self.p.entropy_epochs and ratio != 1:
            dominant = a if ratio > 1 else v
            state.loss = state.loss - self.p.entropy_reg * entropy(logits[dominant])
        self.avg.add(pmr_ratio=ratio, pmr_active=float(active),
                     **{f"pmr_coeff_{m}": coeff[m] for m in self.modalities},
                     **{f"pmr_proto_acc_{m}": float((logits[m].argmax(1) == y).float().mean()) for m in self.modalities})

    def epoch_metrics(self) -> dict[str, Any]:
        return self.avg.means()

    def reset_epoch_metrics(self) -> None:
        self.avg.reset()

    def state_dict(self) -> dict[str, Any]:
        return {"protos": self.protos}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        if sd.get("protos") is not None:
            self.protos = dict(sd["protos"])
