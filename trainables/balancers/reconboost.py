"""ReconBoost (Hua et al., ICML 2024, "ReconBoost: Boosting Can Achieve Modality Reconcilement").

Read: the authors' code, huacong/ReconBoost at commit 14ab57ac26e0ad7badb29c4e08ec4ca9d4bb0932 (train.py
`main`, train_MSA.py, models/dynamic_net.py `DynamicNet`, schedule.py `schedule_model`). The paper's full text
was not available here (abstract only); docs/balancers.md says where that matters.

The code trains in stages. Stage s picks modality m = modalities[s % M] (schedule.py's fixed mode), then
1. m's turn (`epochs_per_stage` epochs): only m's learner f_m is trained, on the boosting loss
   mean_i (1/C) (-w1 + w2 p_-m(y_i)) log softmax(f_m)(y_i), where p_-m is the softmax of the ensemble of the
   other modalities' learners already trained (boost_rate * sum, no gradient; 1 while there is none: the
   code's constant c0), plus alpha * MSE(softmax f_m, softmax f_prev) against the modality trained in the
   previous stage (memory consolidation; the code detaches both sides, so it moves nothing);
2. global rectification (`correct_epochs` epochs): CE(boost_rate * sum_k f_k, y) over the learners trained so
   far, boost_rate (a learnable scalar, initial 1.0) included.
Each phase starts a fresh SGD optimizer in the code: here the trainer's optimizer state is cleared at each
phase start (`reset_optimizer`). The prediction is boost_rate * sum_k f_k over the learners trained so far.

Learners in this project's model: f_m is the fused head's block for m (`Fusion.block_logits`): for `concat`
W_m z_m + b / M (the blocks share the bias, as the code's learners share one head), for `sum`/`late` m's own
linear map (the code's `common_space: False`). The ensemble sum is then the fused head itself (x M for
`late`, which averages). `film`/`gated` have no per-modality block: refused.
"""
from __future__ import annotations

from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from trainables.balancers.base import Balancer, State, StepAverager
from trainables.precision import upcast


def boosting_loss(logits: torch.Tensor, labels: torch.Tensor, p_join: torch.Tensor, w1: float, w2: float
                  ) -> torch.Tensor:
    """mean_i (1/C) (-w1 + w2 p_join_i[y_i]) log softmax(logits)_i[y_i], written as the code writes it:
    -w1 (t * log p).mean(-1) + w2 (t * p_join * log p).mean(-1) with one-hot t, averaged over the batch
    (the same arithmetic, so a golden run stays bit-close). p_join is the softmax of the other learners'
    ensemble, or ones of shape (B, 1) while there is none. A sample the others already get right
    (p_join[y] near 1) weighs w1 - w2, a missed one w1."""
    t = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    log_p = logits.log_softmax(1)
    return (-w1 * (t * log_p).mean(-1) + w2 * (t * p_join * log_p).mean(-1)).mean()


class BoostRate(nn.Module):
    """The ensemble's learnable scale (the code's `DynamicNet.boost_rate`), trained in the rectification."""

    def __init__(self, value: float):
        super().__init__()
        self.boost_rate = nn.Parameter(torch.tensor(float(value)))


class ReconBoostParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs_per_stage: int = Field(4, ge=1, le=1000, description="epochs of a modality's turn (code 4)")
    correct_epochs: int = Field(4, ge=0, le=1000, description="global rectification epochs per stage (code 4)")
    weight1: float = Field(5.0, ge=0, le=100, description="CE weight of the learner (code 5 on CREMA-D)")
    weight2: float = Field(1.0, ge=0, le=100, description="reconcilement weight on the others' true-class prob")
    alpha: float = Field(0.5, ge=0, le=100, description="memory consolidation weight (code 0.5)")
    boost_rate: float = Field(1.0, gt=0, le=100, description="initial ensemble scale (learnable)")
    consolidation: Literal["detached", "gradient"] = Field(
        "detached", description="code: both sides detached (no gradient); gradient: through the current learner")
    reset_optimizer: bool = Field(True, description="fresh optimizer state at each phase (code: a new SGD)")


class ReconBoost(Balancer):
    name = "reconboost"
    adds_unimodal_supervision = True  # each learner f_m(z_m) is trained on the labelled boosting loss alone
    Params = ReconBoostParams

    def __init__(self, params: ReconBoostParams, modalities: list[str]):
        super().__init__(params, modalities)
        self.rate = BoostRate(params.boost_rate)
        self.avg = StepAverager()
        self.stage, self.boosting = 0, True

    # ------------------------------------------------------------------ schedule
    def phase(self, epoch: int) -> tuple[int, bool, bool]:
        """(stage, whether this epoch is a modality's turn, whether it starts a phase)."""
        stage, within = divmod(epoch, self.p.epochs_per_stage + self.p.correct_epochs)
        return stage, within < self.p.epochs_per_stage, within in (0, self.p.epochs_per_stage)

    def turn(self, stage: int) -> str:
        return self.modalities[stage % len(self.modalities)]

    def members(self, stages: int) -> list[str]:
        """Modalities whose learner was trained in the first `stages` stages (the code's ensemble)."""
        done = {self.turn(k) for k in range(min(stages, len(self.modalities)))}
        return [m for m in self.modalities if m in done]

    # ------------------------------------------------------------------ modules
    @classmethod
    def check_trial(cls, trial) -> None:
        from trainables.models.fusion import FUSIONS

        if not FUSIONS[trial.model.fusion].supports_block_logits:
            allowed = ", ".join(k for k, v in FUSIONS.items() if v.supports_block_logits)
            raise ValueError(f"model.fusion: '{trial.model.fusion}' has no per-modality block to serve as "
                             f"ReconBoost's learner; allowed with balancer 'reconboost': {allowed}")

    def extra_modules(self) -> nn.Module:
        return self.rate

    def ensemble(self, model: nn.Module, feats: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
        return self.rate.boost_rate * sum(model.fusion.block_logits(feats, k) for k in names)

    def predict_logits(self, model: nn.Module, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """The boosted ensemble of the learners trained so far (what the code evaluates after each stage)."""
        return self.ensemble(model, feats, self.members(self.stage + 1))

    # ------------------------------------------------------------------ training
    def on_epoch_start(self, state: State) -> None:
        self.stage, self.boosting, starts = self.phase(state.epoch)
        if starts and self.p.reset_optimizer:
            state.optimizer.state.clear()  # the code builds a new SGD for each phase

    def train_step(self, state: State, joint_step: Callable[[], float]) -> float:
        return self.boost_step(state) if self.boosting else self.rectify_step(state)

    def _unimodal(self, state: State, feats: dict[str, torch.Tensor], names: list[str]) -> tuple[Any, Any]:
        """(objective term, probe term): per-modality CE that trains the encoders under
        `multimodal+unimodal`; under `multimodal` the separate heads learn as probes on detached features."""
        model, y = state.model, state.labels
        if state.loss_setting == "multimodal+unimodal":
            heads = {k: model.fusion.block_logits(feats, k) if model.unimodal_head == "fused_block"
                     else model.heads[k](feats[k]) for k in names}
            return sum(F.cross_entropy(heads[k], y) for k in names), 0.0
        if model.unimodal_head == "separate":
            return 0.0, sum(F.cross_entropy(model.heads[k](feats[k].detach()), y) for k in names)
        return 0.0, 0.0

    def boost_step(self, state: State) -> float:
        model, y, m, p = state.model, state.labels, self.turn(self.stage), self.p
        others = [k for k in self.members(self.stage) if k != m]
        prev = self.modalities[(self.modalities.index(m) - 1) % len(self.modalities)]
        with state.autocast():
            with torch.no_grad():  # the code's DynamicNet.forward(mask_model=m)
                if others:
                    joint = self.ensemble(model, {k: model.encoder(k)(state.inputs[k]) for k in others}, others)
                    p_join = upcast(joint).softmax(1)
                else:  # no other learner yet: the code's constant c0, a (B, 1) logit whose softmax is 1
                    p_join = torch.ones(len(y), 1, device=y.device)
            feats = {m: model.encoder(m)(state.inputs[m])}
            logits = model.fusion.block_logits(feats, m)
            boost = boosting_loss(upcast(logits), y, p_join, p.weight1, p.weight2)
            loss = boost
            if self.stage > 0:  # the code adds the consolidation term from stage 1 on
                with torch.no_grad():
                    prev_logits = model.fusion.block_logits({prev: model.encoder(prev)(state.inputs[prev])}, prev)
                current = upcast(logits).softmax(1)
                consolidation = F.mse_loss(current if p.consolidation == "gradient" else current.detach(),
                                           upcast(prev_logits).softmax(1))
                loss = loss + p.alpha * consolidation
                self.avg.add(reconboost_consolidation=consolidation.detach())
            uni, probe = self._unimodal(state, feats, [m])
            loss = loss + uni
        state.loss = loss
        state.optimize(loss + probe)
        p_true = p_join.gather(1, y[:, None]).mean() if others else 1.0  # the others' true-class probability
        self.avg.add(**{f"reconboost_boost_loss_{m}": boost.detach(), "reconboost_p_others": p_true})
        return float(loss.detach())

    def rectify_step(self, state: State) -> float:
        model, y = state.model, state.labels
        names = self.members(self.stage + 1)
        with state.autocast():  # the code's DynamicNet.forward_grad over the learners added so far
            feats = {k: model.encoder(k)(state.inputs[k]) for k in names}
            ce = F.cross_entropy(self.ensemble(model, feats, names), y)
            uni, probe = self._unimodal(state, feats, names)
            loss = ce + uni
        state.loss = loss
        state.optimize(loss + probe)
        self.avg.add(reconboost_rectify_loss=ce.detach())
        return float(loss.detach())

    # ------------------------------------------------------------------ records
    def epoch_metrics(self) -> dict[str, float]:
        out = {f"reconboost_turn_{m}": float(self.boosting and m == self.turn(self.stage)) for m in self.modalities}
        out.update(reconboost_stage=float(self.stage), reconboost_rectifying=float(not self.boosting),
                   reconboost_boost_rate=float(self.rate.boost_rate.detach()), **self.avg.means())
        return out

    def reset_epoch_metrics(self) -> None:
        self.avg.reset()
