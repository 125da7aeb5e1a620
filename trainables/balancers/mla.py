"""MLA -- Multimodal Learning with Alternating Unimodal Adaptation (Zhang, Yoon, Bansal & Yao, CVPR 2024,
"Multimodal Representation Learning by Alternating Unimodal Adaptation").

Authors' code read: github.com/Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation at commit
ab6c184579f9ff390e9c9b8216c9900c2a43545b (main.py `train_epoch` / `valid` with `--gs_flag --dynamic`,
utils/utils.py `GSPlugin`, models/basic_model.py). What it does, and what this balancer does:
- One classifier head shared by all modalities (the code's `fc_out`, resized to one modality's feature width).
  Per batch, one forward pass of every encoder; then, in turn for each modality m (audio, visual[, text]):
  CE(head(z_m), y), backward, the gradient modification of the head, an optimizer step. So each batch makes
  M optimizer steps and every encoder is trained only through its own turn.
- Gradient modification (`GSPlugin.before_update`): a projector P (d x d, identity at the start, one for the
  whole training) is updated with the mean head input r of the current turn, k = P r^T,
  P <- P - k k^T / (alpha + r k), then P <- P / ||P||_F, and the head's weight gradient becomes g P^T; alpha =
  0.1 ** (1 + batch_index / len(loader)); never on the first turn of the training. In the code this branch
  never runs: it tests the parameter name `module.weight`, which an nn.Linear's `weight` never matches (and as
  written its denominator alpha + k r is a d x d matrix divided elementwise). `projection: true` (the
  `paper` variant) runs it with the scalar denominator r k, our reading of the paper (its text was not
  available here); the default follows the code as it runs: no projection.
- Test time: the prediction is sum_m w_m head(z_m) with w = softmax over modalities of -H_m (the code's
  exp(max H - H_m) / sum). The code's H_m is the entropy of the softmax over the BATCH dimension of m's
  logits, summed over the batch: one weight per modality per evaluation batch (`entropy: batch`); the
  paper's is per sample over the classes (`entropy: sample`). `test_fusion: mean` is the code's fixed
  fusion with equal weights.
Project mapping (docs/balancers.md, MLA): the shared head is this balancer's extra module; the model's own
per-modality heads (`acc_<m>`) and its fusion head are trained on each turn like the joint step trains them
(probes on detached features under `loss_setting: multimodal`; under `multimodal+unimodal` head m's CE also
trains encoder m in m's turn). The fusion head is always a detached probe and never part of the prediction.
"""
from __future__ import annotations

from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from trainables.balancers.base import Balancer, State, StepAverager, variant_defaults
from trainables.precision import upcast

PAPER_VARIANT = {"projection": True, "entropy": "sample"}

# ----------------------------------------------------------------------------- pure functions


def batch_entropy(logits: torch.Tensor) -> torch.Tensor:
    """The code's uncertainty: -sum p log p with p the softmax over the batch dimension (dim 0), summed over
    batch and classes (one number). log_softmax instead of the code's log(softmax): same value, no 0 * -inf."""
    logp = F.log_softmax(upcast(logits), dim=0)
    return -(logp.exp() * logp).sum()


def sample_entropy(logits: torch.Tensor) -> torch.Tensor:
    """The paper's uncertainty: each sample's entropy of its softmax over the classes (B values)."""
    logp = F.log_softmax(upcast(logits), dim=1)
    return -(logp.exp() * logp).sum(1)


def fusion_weights(outputs: list[torch.Tensor], entropy: str) -> torch.Tensor:
    """w_m = exp(max_j H_j - H_m) / sum_k exp(max_j H_j - H_k) = softmax(-H) over modalities: M weights
    (batch entropy) or M x B (sample entropy)."""
    fn = batch_entropy if entropy == "batch" else sample_entropy
    return torch.softmax(-torch.stack([fn(o) for o in outputs]), dim=0)


def fuse_outputs(outputs: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """sum_m w_m * out_m (a weight per modality, or per modality and sample)."""
    return sum(w.reshape(-1, 1) * upcast(o) for w, o in zip(weights, outputs))


def projector_update(P: torch.Tensor, r: torch.Tensor, alpha: float) -> torch.Tensor:
    """P <- P - k k^T / (alpha + r k), k = P r^T (r: 1 x d mean head input), then divided by ||P||_F."""
    k = torch.mm(P, r.t())
    P = P - torch.mm(k, k.t()) / (alpha + torch.mm(r, k))
    return P / torch.norm(P, p="fro")


def projection_alpha(base: float, batch_index: int, num_batches: int) -> float:
    """alpha = base ** (1 + batch_index / num_batches) (the code: base 0.1)."""
    return base ** (batch_index / num_batches + 1)


# ----------------------------------------------------------------------------- params


class MLAParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    variant: Literal["paper", "code"] = "code"
    projection: bool = Field(False, description="project the shared head's weight gradient with P (paper; "
                                                "the code's branch never runs)")
    projection_alpha: float = Field(0.1, gt=0, lt=1, description="alpha = projection_alpha ** (1 + b / batches)")
    entropy: Literal["batch", "sample"] = Field("batch", description="test-time uncertainty: softmax over the "
                                                                     "batch (code) or per sample (paper)")
    test_fusion: Literal["dynamic", "mean"] = Field("dynamic", description="entropy-weighted (code --dynamic) "
                                                                           "or equal weights (code's fixed)")

    _apply_variant = variant_defaults("paper", PAPER_VARIANT)


# ----------------------------------------------------------------------------- balancer


class MLA(Balancer):
    name = "mla"
    adds_unimodal_supervision = True  # each encoder is trained only by CE(shared head(z_m), y), in its turn
    Params = MLAParams

    def __init__(self, params: MLAParams, modalities: list[str]):
        super().__init__(params, modalities)
        self.head: nn.Linear | None = None
        self.P: torch.Tensor | None = None
        self.turns = 0  # optimizer steps (modality turns) so far: the code's exp_count
        self.batch_index = 0
        self.grad_ratio = 1.0
        self.avg = StepAverager()

    def bind_model(self, model: nn.Module) -> None:
        from trainables.errors import ConfigError

        if model.unimodal_head == "fused_block":
            raise ConfigError("model.unimodal_head: 'fused_block' cannot be used with balancer 'mla' (its fused "
                              "head is only a probe, so its blocks are no per-modality heads); allowed: separate")
        dims = {m: model.encoder(m).out_dim for m in self.modalities}
        if len(set(dims.values())) != 1:
            raise ConfigError(f"model: balancer 'mla' shares one head across modalities and needs encoders of "
                              f"one feature width (got {dims}); allowed: equal encoder widths")
        self.head = nn.Linear(dims[self.modalities[0]], model.num_classes)

    def extra_modules(self) -> nn.Module | None:
        return self.head

    def on_fit_start(self, state: State) -> None:
        if self.P is None:
            self.P = torch.eye(self.head.in_features, device=state.device)

    def on_epoch_start(self, state: State) -> None:
        self.batch_index = 0

    def train_step(self, state: State, joint_step: Callable[[], float]) -> float:
        """One forward pass of every encoder, then one optimizer step per modality in turn."""
        model, y = state.model, state.labels
        with state.autocast():
            feats = model.encode(state.inputs)
            own = model.unimodal_logits(feats, detach_probe=state.loss_setting == "multimodal")
            fused_probe = model.fuse({m: z.detach() for m, z in feats.items()})
        state.features = feats
        outputs, objective = [], 0.0
        for i, m in enumerate(self.modalities):
            with state.autocast():
                out = self.head(feats[m])  # the head as the previous turns left it
                loss = F.cross_entropy(out, y)
                own_loss = F.cross_entropy(own[m], y)
                total = loss + own_loss
                if i == len(self.modalities) - 1:  # the fusion head: a probe on the detached features
                    total = total + F.cross_entropy(fused_probe, y)
            self.grad_ratio = 1.0
            state.optimize(total, lambda: self._modify_head_gradient(feats[m], state))
            self.turns += 1
            outputs.append(out.detach())
            objective += float(loss.detach()) + (float(own_loss.detach()) if state.loss_setting != "multimodal" else 0.0)
            self.avg.add(**{f"mla_loss_{m}": float(loss.detach()), f"mla_grad_ratio_{m}": self.grad_ratio,
                            f"mla_acc_{m}": float((out.argmax(1) == y).float().mean())})
        weights = fusion_weights(outputs, self.p.entropy)
        self.avg.add(**{f"mla_weight_{m}": float(w.mean()) for m, w in zip(self.modalities, weights)},
                     mla_probe_fused_acc=float((fused_probe.argmax(1) == y).float().mean()))
        self.batch_index += 1
        return objective / len(self.modalities)

    def _modify_head_gradient(self, z: torch.Tensor, state: State) -> None:
        """The gradient modification of the shared head (when `projection`); records |g P^T| / |g|."""
        if not self.p.projection or self.turns == 0:
            return
        alpha = projection_alpha(self.p.projection_alpha, self.batch_index, state.steps_per_epoch)
        self.P = projector_update(self.P, upcast(z.detach()).mean(0, keepdim=True), alpha)
        grad = self.head.weight.grad
        new = torch.mm(grad, self.P.t())
        self.head.weight.grad = new
        self.grad_ratio = float(new.norm() / grad.norm().clamp_min(1e-12))

    def predict_logits(self, model: nn.Module, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        outputs = [self.head(feats[m]) for m in self.modalities]
        if self.p.test_fusion == "mean":
            return torch.stack([upcast(o) for o in outputs]).mean(0)
        return fuse_outputs(outputs, fusion_weights(outputs, self.p.entropy))

    def epoch_metrics(self) -> dict[str, Any]:
        return self.avg.means()

    def reset_epoch_metrics(self) -> None:
        self.avg.reset()

    def state_dict(self) -> dict[str, Any]:
        return {"P": self.P, "turns": self.turns}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        if sd.get("P") is not None:
            self.P, self.turns = sd["P"], int(sd["turns"])
