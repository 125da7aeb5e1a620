"""UME -- Uni-Modal Ensemble (Du et al., ICML 2023, "On Uni-Modal Feature Learning in Supervised Multi-Modal
Learning", Sec. "Uni-Modal Ensemble"): the simple baseline a reviewer asks for first.

No code by the authors was found (docs/balancers.md, UME, lists the searches); GeWu-Lab/BalanceBenchmark
has no UME. Read: the paper's abstract and the project spec (../shared/specs/methods.md): each modality's model
is trained alone -- its own encoder and head, its own unimodal loss, no joint training and no fused loss --
and the prediction combines the unimodal outputs.

Here every modality's model is its encoder and its unimodal head (`model.unimodal_logits`: the separate
linear head, or the fused head's block W_m with `unimodal_head: fused_block`). One optimizer step per batch on
sum_m CE(head_m(z_m), y): the modalities share no parameter (except the `concat` block's shared bias under
`fused_block`), so the sum's gradient is each model's own, exactly as M separate runs with the same optimizer
settings would take. The fusion head is neither trained nor used; `loss_setting` changes nothing (there is no
fused loss to add the unimodal ones to). This method adds unimodal supervision: compare it with joint training
under `loss_setting: multimodal+unimodal`, not only with the multimodal loss alone.

Prediction (`predict_logits`, so also the Shapley coalition metrics): the mean over modalities of the
unimodal logits (`combine: logits`, our reading of "averages the unimodal predictions"), or of their softmax
probabilities (`combine: probs`).
Judgement call: the trainer selects one epoch for the whole ensemble by its validation accuracy; separately
trained models would each be selected at their own best epoch.
"""
from __future__ import annotations

from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from trainables.balancers.base import Balancer, State, StepAverager


def ensemble_logits(unimodal: list[torch.Tensor], combine: str) -> torch.Tensor:
    """The ensemble's scores: mean_m logits_m (`logits`) or mean_m softmax(logits_m) (`probs`); argmax of
    either is the prediction. Half-precision logits are averaged in fp32; fp32 and fp64 keep their dtype."""
    scores = [u.to(torch.promote_types(u.dtype, torch.float32)) for u in unimodal]
    if combine == "probs":
        scores = [s.softmax(1) for s in scores]
    return torch.stack(scores).mean(0)


class UMEParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    combine: Literal["logits", "probs"] = Field("logits", description="average the unimodal logits or their "
                                                                      "softmax probabilities")


class UME(Balancer):
    name = "ume"
    adds_unimodal_supervision = True  # each modality's model trains on CE(head_m(z_m), y) alone
    Params = UMEParams

    def __init__(self, params: UMEParams, modalities: list[str]):
        super().__init__(params, modalities)
        self.avg = StepAverager()

    def train_step(self, state: State, joint_step: Callable[[], float]) -> float:
        """Each modality's encoder and head on its own CE; one optimizer step for all (no shared parameter)."""
        model, y = state.model, state.labels
        with state.autocast():
            state.features = model.encode(state.inputs)
            state.unimodal_logits = model.unimodal_logits(state.features)
            losses = {m: F.cross_entropy(state.unimodal_logits[m], y) for m in self.modalities}
            loss = sum(losses.values())
        state.loss = loss
        state.optimize(loss)
        self.avg.add(**{f"ume_loss_{m}": float(v.detach()) for m, v in losses.items()})
        return float(loss.detach())

    def predict_logits(self, model: nn.Module, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        uni = model.unimodal_logits(feats)
        return ensemble_logits([uni[m] for m in self.modalities], self.p.combine)

    def epoch_metrics(self) -> dict[str, Any]:
        return self.avg.means()

    def reset_epoch_metrics(self) -> None:
        self.avg.reset()
