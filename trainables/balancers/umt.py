"""UMT -- Uni-Modal Teacher (Du et al., ICML 2023, "On Uni-Modal Feature Learning in Supervised Multi-Modal
Learning"; first as arXiv 2106.11059, "Improving Multi-Modal Learning with Uni-Modal Teachers").

No code by the authors was found (docs/balancers.md, UMT, lists the searches). Read: the paper's abstract, the
project spec (../shared/specs/methods.md: "distil frozen unimodal teachers' features into the multimodal
encoders (MSE, weight lambda)"), and as cross-checks GeWu-Lab/BalanceBenchmark `balancemm/trainer/UMT_trainer.py`
and `unimodal_trainer.py` (commit 4c1482fca5aaa8d4278af8e26020daa039e3ccf3) and openclimatefix/pvnet's
`unimodal_teacher` model (PR #145). The method: train unimodal models first; then train the multimodal model on
its fused loss plus lambda * sum_m MSE(z_m, t_m), z_m the multimodal encoder m's pooled feature (the input of the
fusion) and t_m the frozen unimodal teacher's feature of the same sample.

A study trial is one training run, so the teachers are trained inside it, in two phases:
1. teacher phase, epochs [0, T) with T = `teacher_epochs(teacher_fraction, E)`: per modality a unimodal model
   -- a copy of the model's initial encoder m and of its initial unimodal head m, owned by this balancer
   (`extra_modules`) -- trains on CE(head(enc(x_m)), y). The multimodal model is not touched (it keeps its
   initial weights, so its evaluations in these epochs are those of the untrained model).
2. distillation phase, epochs [T, E): the teachers are frozen (no gradient; eval mode by default) and the
   multimodal model trains from its initial weights (the paper's student; `student_init: teacher` starts its
   encoders from the teachers' instead) with the trainer's joint step plus lambda * sum_m MSE.
The loss MSE is the mean over the batch and the feature dimensions (torch's `mse_loss`, as BalanceBenchmark).
Both phases add unimodal supervision (the teachers' CE, then their features): compare UMT with joint training
under `loss_setting: multimodal+unimodal`, not only with the multimodal loss alone.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from trainables.balancers.base import Balancer, State, StepAverager

# ----------------------------------------------------------------------------- pure functions


def teacher_epochs(fraction: float, num_epochs: int) -> int:
    """T = round(fraction * E), kept in [1, E - 1] so both phases have at least one epoch."""
    return max(1, min(num_epochs - 1, math.floor(fraction * num_epochs + 0.5)))


def distillation_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per modality MSE(z_m, t_m): the mean squared difference over the batch and the feature dimensions."""
    return {m: F.mse_loss(student[m], teacher[m]) for m in teacher}


class Teachers(nn.Module):
    """The unimodal models: per modality an encoder and a linear head."""

    def __init__(self, encoders: dict[str, nn.Module], heads: dict[str, nn.Module]):
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.heads = nn.ModuleDict(heads)

    def features(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: enc(inputs[m]) for m, enc in self.encoders.items()}


# ----------------------------------------------------------------------------- params


class UMTParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    teacher_fraction: float = Field(0.5, gt=0, lt=1, description="share of the trial's epochs that train the "
                                    "teachers (0.5: teachers and student train equally long)")
    distill_weight: float = Field(10.0, ge=0, le=1e4, description="lambda, the weight of sum_m MSE(z_m, t_m) "
                                  "(BalanceBenchmark's `scaling` 10; the paper's value was not available here)")
    teacher_mode: Literal["eval", "train"] = Field("eval", description="frozen teachers' mode while distilling: "
                                                   "eval (running BatchNorm statistics) or train (batch statistics, "
                                                   "as BalanceBenchmark's teachers run)")
    student_init: Literal["scratch", "teacher"] = Field("scratch", description="the student's encoders start from "
                                                        "the model's initial weights or from the teachers'")


# ----------------------------------------------------------------------------- balancer


class UMT(Balancer):
    name = "umt"
    adds_unimodal_supervision = True  # the teachers' CE, then their features distilled into the student
    Params = UMTParams

    def __init__(self, params: UMTParams, modalities: list[str]):
        super().__init__(params, modalities)
        self.teachers: Teachers | None = None
        self.switch = 1  # T, set in on_fit_start
        self.distilling = False
        self.avg = StepAverager()

    def bind_model(self, model: nn.Module) -> None:
        self.teachers = Teachers({m: copy.deepcopy(model.encoder(m)) for m in self.modalities},
                                 {m: copy.deepcopy(model.heads[m]) for m in self.modalities})

    def extra_modules(self) -> nn.Module:
        return self.teachers

    @classmethod
    def check_trial(cls, trial) -> None:
        if trial.epochs < 2:
            raise ValueError(f"epochs: balancer 'umt' needs a teacher phase and a distillation phase (got "
                             f"{trial.epochs} epoch); allowed: 2 or more")

    def on_fit_start(self, state: State) -> None:
        self.switch = teacher_epochs(self.p.teacher_fraction, state.num_epochs)

    def on_epoch_start(self, state: State) -> None:
        self.distilling = state.epoch >= self.switch
        self.teachers.requires_grad_(not self.distilling)  # frozen once distillation starts (also after a resume)
        if not self.distilling:
            return
        self.teachers.train(self.p.teacher_mode == "train")  # the trainer put every extra module in train mode
        if state.epoch == self.switch and self.p.student_init == "teacher":
            for m in self.modalities:
                state.model.encoder(m).load_state_dict(self.teachers.encoders[m].state_dict())

    # ------------------------------------------------------------------ training
    def train_step(self, state: State, joint_step: Callable[[], float]) -> float:
        return joint_step() if self.distilling else self.teacher_step(state)

    def teacher_step(self, state: State) -> float:
        """Each teacher on its own CE, one optimizer step for all (they share no parameter); the multimodal
        model has no gradient, so the optimizer leaves it as it is."""
        y = state.labels
        with state.autocast():
            logits = {m: self.teachers.heads[m](z) for m, z in self.teachers.features(state.inputs).items()}
            losses = {m: F.cross_entropy(logits[m], y) for m in self.modalities}
            loss = sum(losses.values())
        state.loss = loss
        state.optimize(loss)
        for m in self.modalities:
            self.avg.add(**{f"umt_teacher_loss_{m}": float(losses[m].detach()),
                            f"umt_teacher_acc_{m}": float((logits[m].argmax(1) == y).float().mean())})
        return float(loss.detach())

    def after_loss(self, state: State) -> None:
        """Distillation phase (the joint step): + lambda * sum_m MSE(z_m, t_m), teachers without gradient."""
        with torch.no_grad():
            targets = self.teachers.features(state.inputs)
        terms = distillation_loss(state.features, targets)
        state.loss = state.loss + self.p.distill_weight * sum(terms.values())
        self.avg.add(**{f"umt_distill_{m}": float(v.detach()) for m, v in terms.items()})

    # ------------------------------------------------------------------ records
    def epoch_metrics(self) -> dict[str, Any]:
        return {"umt_distilling": float(self.distilling), "umt_teacher_epochs": float(self.switch),
                **self.avg.means()}

    def reset_epoch_metrics(self) -> None:
        self.avg.reset()
