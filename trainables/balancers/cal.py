"""CAL -- Contribution-Guided Asymmetric Learning (Xu et al., arXiv 2510.26289).

THIS IS A READING OF THE ABSTRACT: the full text and code were not available. What the abstract says:
a contribution W^m from information quantity I(m) and confidence D(m); asymmetric gradient acceleration of
high-contribution modalities; a contribution-aware Asymmetric Information Bottleneck (AIB) compressing the
noise of low-contribution modalities. Our reading (every constant a field):
- I(m): Shapley marginal value under zero masking, for two modalities
  0.5 * [(v(m) - v(none)) + (v(both) - v(other))], v = mean log-probability of the true class.
- D(m): inverse normalised entropy of the unimodal softmax, entropy clamped from below (`entropy_floor`).
- W^m = softmax_m(T * I~(m) * D~(m)), ~ = normalised over modalities (so W sums to 1), computed per step
  on the features the fused head sees (the AIB samples in training).
- After `warmup_epochs`: the gradient reaching each encoder output z_m is scaled by (1 + W^m) (identity
  forward), never below 1. The scaling sits on z_m, before the AIB heads, so everything that reaches the
  encoder through z_m -- the fused CE through the sample, the KL through mu and log sigma^2, the unimodal
  CEs -- is accelerated alike; the heads' own gradients are not scaled.
- AIB: variational head per modality, z' = mu + sigma * eps in training and mu at evaluation;
  loss += sum_m beta0 * (1 - W^m) * KL(N(mu, sigma^2) || N(0, I)).
- Total: CE(fused) + gamma_uni * sum_m CE_m + AIB. The unimodal CEs are the trainer's under
  `loss_setting: multimodal+unimodal` (weight 1, topped up here to gamma_uni); under `multimodal` they are
  left out, as for every method's non-`*` rows (gamma_uni then has no effect; `cal_uni_weight` records 0).
Noise (eps) comes from `Balancer.randn` (the balancer's generator).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from trainables.balancers.base import Balancer, State, StepAverager
from trainables.precision import upcast


def shapley_two(v_none: float, v_a: float, v_v: float, v_both: float) -> tuple[float, float]:
    """Exact two-player Shapley values."""
    return 0.5 * ((v_a - v_none) + (v_both - v_v)), 0.5 * ((v_v - v_none) + (v_both - v_a))


def confidence(logits: torch.Tensor, entropy_floor: float) -> float:
    """D = 1 / max(H(softmax) / log K, floor), H averaged over the batch."""
    probs = F.softmax(upcast(logits.detach()), 1)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1).mean() / math.log(logits.shape[1])
    return 1.0 / max(float(entropy), entropy_floor)


def contribution_weights(info: list[float], conf: list[float], temperature: float) -> list[float]:
    """W = softmax(T * I~ * D~) with I~ = I / sum|I| and D~ = D / sum D."""
    i_norm = sum(abs(x) for x in info) + 1e-12
    d_norm = sum(conf) + 1e-12
    scores = torch.tensor([temperature * (i / i_norm) * (d / d_norm) for i, d in zip(info, conf)])
    return [float(w) for w in torch.softmax(scores, 0)]


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)), summed over dimensions, averaged over the batch."""
    return (0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)).mean()


def scale_gradient_of(x: torch.Tensor, scale: float) -> None:
    """From now on the gradient reaching `x`, summed over all of its uses, is multiplied by `scale`
    (the forward pass is untouched)."""
    x.register_hook(lambda grad: grad * scale)


class CALParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(1.0, gt=0, le=1000)
    entropy_floor: float = Field(0.3, gt=0, le=1)
    warmup_epochs: int = Field(1, ge=0)
    beta0: float = Field(1e-3, ge=0, description="AIB weight")
    gamma_uni: float = Field(1.0, ge=0, le=100, description="weight of the unimodal CEs under loss_setting "
                             "multimodal+unimodal (no effect under multimodal, which leaves them out)")
    aib: bool = True
    acceleration: bool = True


class VariationalHeads(nn.Module):
    def __init__(self, dims: dict[str, int]):
        super().__init__()
        self.mu = nn.ModuleDict({m: nn.Linear(d, d) for m, d in dims.items()})
        self.logvar = nn.ModuleDict({m: nn.Linear(d, d) for m, d in dims.items()})


class CAL(Balancer):
    name = "cal"
    Params = CALParams
    two_modalities_only = True  # the Shapley value is written for two modalities

    def __init__(self, params: CALParams, modalities: list[str]):
        super().__init__(params, modalities)
        self.heads: VariationalHeads | None = None
        self.stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.weights = {m: 1.0 / len(modalities) for m in modalities}
        self.uni_weight = params.gamma_uni
        self.avg = StepAverager()

    def bind_model(self, model: nn.Module) -> None:
        self.heads = VariationalHeads({m: model.encoder(m).out_dim for m in self.modalities})

    def extra_modules(self) -> nn.Module | None:
        return self.heads

    def on_fit_start(self, state: State) -> None:
        self.uni_weight = self.p.gamma_uni if state.loss_setting == "multimodal+unimodal" else 0.0

    def transform_features(self, feats, training):
        """At evaluation z' = mu. In training the heads are applied in `after_encode`, after the
        acceleration has been attached to the encoder outputs."""
        if training or not self.p.aib or self.heads is None:
            return feats
        return {m: self.heads.mu[m](z) for m, z in feats.items()}

    def _sample(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for m, z in feats.items():
            mu, logvar = self.heads.mu[m](z), self.heads.logvar[m](z).clamp(-10, 10)
            self.stats[m] = (mu, logvar)
            out[m] = mu + self.randn(mu) * (0.5 * logvar).exp()
        return out

    @torch.no_grad()
    def _contributions(self, state: State) -> list[float]:
        a, v = self.modalities
        feats, y = {m: z.detach() for m, z in state.features.items()}, state.labels

        def value(keep: set[str]) -> float:
            masked = {m: (z if m in keep else torch.zeros_like(z)) for m, z in feats.items()}
            return float(F.log_softmax(upcast(state.model.fuse(masked)), 1).gather(1, y[:, None]).mean())

        info = shapley_two(value(set()), value({a}), value({v}), value({a, v}))
        conf = [confidence(state.model.unimodal_logits(feats)[m], self.p.entropy_floor) for m in self.modalities]
        return contribution_weights(list(info), conf, self.p.temperature)

    def after_encode(self, state: State) -> None:
        encoded = state.features  # the encoder outputs z_m
        if self.p.aib and self.heads is not None:
            state.features = self._sample(encoded)
        self.weights = dict(zip(self.modalities, self._contributions(state)))
        accelerating = self.p.acceleration and state.epoch >= self.p.warmup_epochs
        if accelerating:
            for m, z in encoded.items():
                scale_gradient_of(z, 1.0 + self.weights[m])
        self.avg.add(cal_accelerating=float(accelerating), **{f"cal_w_{m}": w for m, w in self.weights.items()})

    def after_loss(self, state: State) -> None:
        if state.loss_setting == "multimodal+unimodal" and self.p.gamma_uni != 1.0:
            # the trainer added sum_m CE_m with weight 1; make it gamma_uni
            uni = sum(w * F.cross_entropy(state.unimodal_logits[m], y)
                      for m in self.modalities for w, y in state.unimodal_targets.get(m, state.targets))
            state.loss = state.loss + (self.p.gamma_uni - 1.0) * uni
        if not self.p.aib or not self.stats:
            return
        kl = sum(self.p.beta0 * (1 - self.weights[m]) * gaussian_kl(*self.stats[m]) for m in self.modalities)
        state.loss = state.loss + kl
        state.loss_terms["cal_kl"] = float(kl.detach())
        self.avg.add(cal_kl=float(kl.detach()))

    def epoch_metrics(self) -> dict[str, Any]:
        return {"cal_uni_weight": self.uni_weight, **self.avg.means()}

    def reset_epoch_metrics(self) -> None:
        self.avg.reset()
