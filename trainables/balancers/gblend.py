"""G-Blending (Wang, Tran & Feiszli, CVPR 2020, "What Makes Training Multi-modal Classification Networks Hard?").

No code by the authors was found. Read: the paper's method (Sec. 3, online Gradient-Blending) as we know it,
the unofficial timeseriesAI/tsai `tsai/callback/gblend.py` (commit 41e3107e79c8c6517b98d480fabef46456d8538d)
and GeWu-Lab/BalanceBenchmark `balancemm/trainer/GBlending_trainer.py` (commit
4c1482fca5aaa8d4278af8e26020daa039e3ccf3), whose pitfalls we avoid: it measures on the validation split,
sums (not averages) the losses over batches of sets of different sizes, takes the first snapshot after one
epoch of training, and takes |G| so a head whose held-out loss rose still gets weight.

Online G-Blend, per super-epoch of `super_epoch` epochs: for each head k (each modality's unimodal head and
the fused head) a copy of the current model is trained on the training part T' for `super_epoch` epochs with
CE of head k alone (a fresh optimizer of the same kind and current hyperparameters); before and after, its
mean CE on T' and on the held-out part V of the TRAINING split (never validation or test) give
  O = L_V - L_T',  dG = max(0, L_V(before) - L_V(after)),  dO = O(after) - O(before),
  w_k = max(floor, dG / max(dO^2, eps)),  normalised to sum to 1  (w_k ∝ G/O^2, the paper's Eq. for w*).
The model then trains for the super-epoch on T' with loss sum_k w_k CE_k.
Under `loss_setting: multimodal` only the fused head's CE trains the model (the unimodal heads are detached
probes), so the blend has one term: no estimate is made and the weight is 1 (joint training on T').
"""
from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from trainables.balancers.base import Balancer, State

FUSED = "fused"


def head_logits(model: nn.Module, inputs: dict[str, torch.Tensor], head: str) -> torch.Tensor:
    """The logits of one head: the fused head over all encoders, or one modality's unimodal head."""
    if head == FUSED:
        return model.fuse(model.encode(inputs))
    if model.unimodal_head == "fused_block":  # the fusion's own block W_m
        return model.unimodal_logits(model.encode(inputs))[head]
    return model.heads[head](model.encoder(head)(inputs[head]))


@torch.no_grad()
def mean_loss(model: nn.Module, batches, to_model, head: str) -> float:
    """Mean CE of `head` over a set of batches (eval mode)."""
    model.eval()
    total, n = 0.0, 0
    for inputs, labels in batches:
        inputs, labels = to_model(inputs), labels.to(next(model.parameters()).device)
        total += float(F.cross_entropy(head_logits(model, inputs, head), labels, reduction="sum"))
        n += len(labels)
    return total / max(n, 1)


def blend_weights(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]],
                  eps: float = 1e-8, floor: float = 1e-8) -> dict[str, float]:
    """w_k ∝ dG_k / dO_k^2 from (L_T', L_V) before and after a super-epoch, normalised to sum to 1."""
    raw = {}
    for k, (lt1, lv1) in before.items():
        lt2, lv2 = after[k]
        gain = max(0.0, lv1 - lv2)
        d_over = (lv2 - lt2) - (lv1 - lt1)
        raw[k] = max(floor, gain / max(d_over ** 2, eps))
    total = sum(raw.values())
    return {k: v / total for k, v in raw.items()}


def fresh_optimizer(like: torch.optim.Optimizer, params) -> torch.optim.Optimizer:
    """An optimizer of the same class with the first group's current hyperparameters, no state."""
    accepted = inspect.signature(type(like)).parameters
    group = {k: v for k, v in like.param_groups[0].items() if k in accepted and k != "params"}
    return type(like)(params, **group)


class GBlendParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    super_epoch: int = Field(10, ge=1, le=10000, description="epochs per weight estimate (BalanceBenchmark: 10)")
    holdout_fraction: float = Field(0.1, gt=0, lt=1, description="fraction of the training split held out as V "
                                    "(tsai: 0.1)")
    eps: float = Field(1e-8, gt=0, description="lower bound of dO^2")


class GBlend(Balancer):
    name = "gblend"
    Params = GBlendParams

    def __init__(self, params: GBlendParams, modalities: list[str]):
        super().__init__(params, modalities)
        self.holdout_fraction = params.holdout_fraction
        self.heads = [*modalities, FUSED]
        self.weights = {k: 1.0 / len(self.heads) for k in self.heads}
        self.estimate: dict[str, float] = {}

    def _estimate(self, state: State) -> None:
        before, after = {}, {}
        for head in self.heads:
            model = copy.deepcopy(state.model)
            optimizer = fresh_optimizer(state.optimizer, model.parameters())
            before[head] = (mean_loss(model, state.train_loader, state.model_input, head),
                            mean_loss(model, state.holdout_loader, state.model_input, head))
            for _ in range(self.p.super_epoch):
                model.train()
                for inputs, labels in state.train_loader:
                    loss = F.cross_entropy(head_logits(model, state.model_input(inputs), head), labels.to(state.device))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
            after[head] = (mean_loss(model, state.train_loader, state.model_input, head),
                           mean_loss(model, state.holdout_loader, state.model_input, head))
        self.weights = blend_weights(before, after, self.p.eps)
        self.estimate = {f"gblend_{part}_{k}": v for k in self.heads for part, v in
                         (("dG", max(0.0, before[k][1] - after[k][1])),
                          ("dO", (after[k][1] - after[k][0]) - (before[k][1] - before[k][0])))}
        state.model.train()

    def on_fit_start(self, state: State) -> None:
        if state.loss_setting != "multimodal+unimodal":
            self.weights = {k: float(k == FUSED) for k in self.heads}

    def on_epoch_start(self, state: State) -> None:
        if state.loss_setting == "multimodal+unimodal" and state.epoch % self.p.super_epoch == 0:
            self._estimate(state)

    def after_loss(self, state: State) -> None:
        fused = sum(w * F.cross_entropy(state.fused_logits, y) for w, y in state.targets)
        if state.loss_setting != "multimodal+unimodal":
            state.loss = fused  # one term: weight 1
            return
        state.loss = self.weights[FUSED] * fused + sum(
            self.weights[m] * sum(w * F.cross_entropy(state.unimodal_logits[m], y)
                                  for w, y in state.unimodal_targets.get(m, state.targets))
            for m in self.modalities)

    def epoch_metrics(self) -> dict[str, Any]:
        return {**{f"gblend_w_{k}": w for k, w in self.weights.items()}, **self.estimate}

    def state_dict(self) -> dict[str, Any]:
        return {"weights": dict(self.weights)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weights = dict(state.get("weights", self.weights))
