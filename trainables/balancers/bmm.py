"""Balanced Multimodal Mixup (B-MM; "Mixup Helps Understanding Multimodal Video Better", Sec. 3.3).

The paper's equations were lost in extraction; what is [text] and what is our [reading]:
- [text] after each epoch, over the whole training set, with one modality masked to zero, the imbalance
  factor rho = sum_i s_i^a / sum_i s_i^v, s_i^m = softmax(g(z_m, other zeroed))[y_i]; rho > 1: audio strong.
- [text] a tanh keeps the mixing degree in [0, 1), monotonic, alpha controls it, used in the next epoch.
  [reading] delta = tanh(alpha * (rho_s - 1)), rho_s = max(rho, 1/rho) (0 when balanced);
  `degree: tanh_ratio` is the literal OGM-style tanh(alpha * rho_s).
- [text] mixup on the weak modality's input only, labels mixed with it.
  [reading] x~_weak = (1 - delta) x_weak + delta x_weak[pi], y~ = (1 - delta) y + delta y[pi]; strong unchanged.
- [text] `warmup_epochs` of plain training first; the degree changes per epoch, not per step.
"""
from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from trainables.balancers.base import State
from trainables.balancers.mm import MultimodalMixup, mix, mixup_targets, permutation, sample_lambda
from trainables.metrics import true_class_score


def imbalance_factor(score_a: float, score_v: float) -> float:
    """rho = sum s^a / sum s^v."""
    return score_a / max(score_v, 1e-12)


def mixing_degree(rho: float, alpha: float, mode: str = "tanh_excess") -> float:
    rho_s = max(rho, 1.0 / max(rho, 1e-12))
    return math.tanh(alpha * (rho_s - 1.0)) if mode == "tanh_excess" else math.tanh(alpha * rho_s)


@torch.no_grad()
def masked_modality_scores(model, loader, modalities: list[str], to_model_input, device,
                           use_accuracy: bool = False) -> dict[str, float]:
    """sum_i of the true-class probability (or correctness) of the fused head with all other modalities zeroed.

    `to_model_input` is the trainer's one input path (`State.model_input`: device, float, normalisation),
    so rho is measured on exactly the tensors the model trains on."""
    was_training = model.training
    model.eval()
    totals = {m: 0.0 for m in modalities}
    for inputs, labels in loader:
        feats, labels = model.encode(to_model_input(inputs)), labels.to(device)
        for m in modalities:
            only_m = {k: (v if k == m else torch.zeros_like(v)) for k, v in feats.items()}
            logits = model.fuse(only_m)
            if use_accuracy:
                totals[m] += float((logits.argmax(1) == labels).sum())
            else:
                totals[m] += true_class_score(logits, labels)
    model.train(was_training)
    return totals


class BMMParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(1.0, gt=0, le=100, description="controls the mixing degree")
    warmup_epochs: int = Field(5, ge=0, description="plain training epochs before mixing")
    degree: Literal["tanh_excess", "tanh_ratio"] = "tanh_excess"
    score: Literal["probability", "accuracy"] = "probability"
    level: Literal["feature", "input"] = "feature"
    random_degree: bool = Field(False, description="[unknown in the paper] draw lambda ~ Beta and scale by delta")


class BalancedMultimodalMixup(MultimodalMixup):
    """Builds on MM (same input/feature level hooks); what is mixed, and how much, differs."""

    name = "bmm"
    Params = BMMParams
    two_modalities_only = True

    def __init__(self, params: BMMParams, modalities: list[str]):
        super().__init__(params, modalities)
        self.rho = 1.0
        self.delta = 0.0  # degree used during the current epoch
        self.next_delta = 0.0

    def weak_modality(self) -> str:
        a, v = self.modalities
        return v if self.rho > 1 else a

    def on_epoch_start(self, state: State) -> None:
        self.delta = self.next_delta if state.epoch >= self.p.warmup_epochs else 0.0

    def _mix(self, state: State, tensors: dict[str, torch.Tensor]) -> None:
        if self.delta <= 0 or self.rho == 1.0:
            return
        weak = self.weak_modality()
        delta = self.delta * (1 - sample_lambda(1.0, self.rand())) if self.p.random_degree else self.delta
        perm = permutation(len(state.labels), state.labels.device, self.generator)
        tensors[weak] = mix(tensors[weak], 1 - delta, perm)
        state.targets = mixup_targets(state.labels, 1 - delta, perm)
        state.unimodal_targets = {m: (state.targets if m == weak else [(1.0, state.labels)]) for m in self.modalities}
        self.avg.add(bmm_step_degree=delta)

    def on_epoch_end(self, state: State) -> None:
        scores = masked_modality_scores(state.model, state.train_loader, self.modalities, state.model_input,
                                        state.device, use_accuracy=self.p.score == "accuracy")
        a, v = self.modalities
        self.rho = imbalance_factor(scores[a], scores[v])
        self.next_delta = mixing_degree(self.rho, self.p.alpha, self.p.degree)

    def epoch_metrics(self) -> dict[str, Any]:
        return {"bmm_imbalance": self.rho, "bmm_degree": self.delta, "bmm_next_degree": self.next_delta,
                **self.avg.means()}

    def state_dict(self) -> dict[str, Any]:
        return {"rho": self.rho, "delta": self.delta, "next_delta": self.next_delta}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.rho, self.delta, self.next_delta = sd.get("rho", 1.0), sd.get("delta", 0.0), sd.get("next_delta", 0.0)
