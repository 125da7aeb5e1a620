"""RedReg: adaptive redundancy regulation (Xia et al.; Section III, Algorithm 1, Eq. 14-31).

Per step, after the backward pass: the dominant modality's redundancy monitor r_m (Eq. 21) and the
co-information gate (Eq. 23-25) decide whether its encoder gradient gets a braking term toward an anchor,
projected off the task gradient so the task's first-order descent is unchanged (Eq. 27-31).

`variant: paper` (default) follows the paper; `variant: code` switches every point where the authors'
public code (main_RedReg.py) differs -- each is also a field of its own (see docs/balancers.md).
"""
from __future__ import annotations

import math
from collections import deque
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from trainables.balancers.base import Balancer, State, StepAverager, variant_defaults
# Eq. 14 (p_m), Eq. 16 (S) and Eq. 20 (red_m) live in metrics.py: the dynamics traces use them too.
from trainables.metrics import growth_rate, redundancy_score, true_class_prob
from trainables.models.encoders import FramesEncoder
from trainables.precision import upcast

# ----------------------------------------------------------------------------- pure functions


def sliding_means(history: list[float], window: int) -> tuple[float, float] | None:
    """Eq. 15 at t and t-1: the means of the last L values and of the L values before the newest."""
    if len(history) < 2:
        return None
    return sum(history[-window:]) / len(history[-window:]), sum(history[-window - 1:-1]) / len(history[-window - 1:-1])


def redundancy_monitor(red: float, growth: float, gamma: float) -> float:
    """Eq. 21: r = red - gamma * max(S, 0)."""
    return red - gamma * max(growth, 0.0)


def co_information(z_a: torch.Tensor, z_v: torch.Tensor) -> float:
    """Eq. 23: mean diagonal cosine similarity of paired, l2-normalised features."""
    return float(F.cosine_similarity(upcast(z_a.detach()), upcast(z_v.detach()), dim=1).mean())


def tau_schedule(t: float, horizon: float, tau_min: float, tau_max: float) -> float:
    """Eq. 24: tau(t) = tau_min + (t / T)(tau_max - tau_min); hits tau_min at t=0, tau_max at t=T."""
    frac = 0.0 if horizon <= 0 else min(max(t / horizon, 0.0), 1.0)
    return tau_min + frac * (tau_max - tau_min)


def gate_value(is_dominant: bool, r: float, R: float, sim: float, tau: float, use_monitor: bool = True,
               use_gate: bool = True, strict_sim: bool = False) -> float:
    """Eq. 25: 1[m dominant] * 1[r > R] * 1[sim >= tau]; the ablations drop a factor."""
    monitor_ok = (r > R) if use_monitor else True
    sim_ok = ((sim > tau) if strict_sim else (sim >= tau)) if use_gate else True
    return float(is_dominant and monitor_ok and sim_ok)


def orthogonal_correction(d: list[torch.Tensor], g: list[torch.Tensor], eps: float = 1e-8) -> list[torch.Tensor]:
    """Eq. 28-29 over the flattened tensors: d_perp = d - (<d,g> / (||g||^2 + eps)) g."""
    dot = sum(torch.sum(di * gi) for di, gi in zip(d, g))
    gg = sum(torch.sum(gi * gi) for gi in g)
    coef = dot / (gg + eps)
    return [di - coef * gi for di, gi in zip(d, g)]


def corrected_gradient(g: list[torch.Tensor], d: list[torch.Tensor], beta: float, gate: float,
                       per_tensor: bool = False, eps: float = 1e-8) -> list[torch.Tensor]:
    """Eq. 30: g~ = g + beta * gate * d_perp (projection over the whole encoder, or per tensor)."""
    if gate == 0.0:
        return [gi.clone() for gi in g]
    d_perp = ([orthogonal_correction([di], [gi], eps)[0] for di, gi in zip(d, g)] if per_tensor
              else orthogonal_correction(d, g, eps))
    return [gi + beta * gate * dp for gi, dp in zip(g, d_perp)]


def adaptive_beta(beta: float, p_dominant: float, p_weak: float) -> float:
    """The authors' code: beta_eff = exp(beta * tanh(p_dom - p_weak)), in [1, e^beta]."""
    return math.exp(beta * math.tanh(p_dominant - p_weak))


def modality_dropout_prob(epoch: int, num_epochs: int, start: float, end: float, frac: float) -> float:
    """The authors' code (not in the paper): p falls linearly from `start` to `end` over the first
    max(1, int(frac * num_epochs)) epochs."""
    ramp = max(1, int(frac * num_epochs))
    return start + (end - start) * min(epoch / ramp, 1.0)


# ----------------------------------------------------------------------------- params

CODE_VARIANT = {
    "gamma": 0.6, "growth_warmup": "one", "rs_features": "feature_map", "rs_reduce": "mean",
    "rs_normalise": "ema", "beta_mode": "adaptive", "tau_schedule": "epoch", "gate_compare": "gt",
    "anchor": "epoch_copy", "projection": "tensor", "modality_dropout": True, "warmup_steps": 0, "eps": 1e-12,
    "growth_history": "epoch", "rs_clamp_frames": True,
}


class RedRegParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    variant: Literal["paper", "code"] = "paper"
    gamma: float = Field(0.5, ge=0, le=100, description="monitor trade-off (Eq. 21)")
    beta: float = Field(0.9, ge=0, le=100, description="correction strength (Eq. 30)")
    R: float = Field(0.15, ge=-100, le=100, description="monitor threshold (Eq. 25)")
    tau_min: float = Field(0.2, gt=0, lt=1)
    tau_max: float = Field(0.5, gt=0, lt=1)
    window: int = Field(10, ge=1, le=100000, description="sliding length L (Eq. 15)")
    sigma: float = Field(0.03, gt=0, description="noise std for the redundancy score (Eq. 17)")
    eps: float = Field(1e-8, gt=0)
    warmup_steps: int = Field(2, ge=0, description="plain steps before regulation (Algorithm 1, t < 2)")
    monitor: Literal["on", "off"] = "on"
    gate: Literal["on", "off"] = "on"
    monitor_every: int = Field(1, ge=1, description="recompute red_m every k steps (reused in between)")
    monitor_samples: int = Field(0, ge=0, description="sub-sample the batch for red_m (0 = whole batch)")
    dominant: Literal["confidence"] | str = Field("confidence", description="larger p_m, or a modality name")
    anchor: Literal["ema", "epoch_copy"] = "ema"
    anchor_momentum: float = Field(0.99, ge=0, lt=1, description="'slowly updated anchor' (ema)")
    projection: Literal["encoder", "tensor"] = "encoder"
    beta_mode: Literal["fixed", "adaptive"] = "fixed"
    tau_schedule: Literal["step", "epoch"] = "step"
    gate_compare: Literal["ge", "gt"] = "ge"
    growth_warmup: Literal["available", "one"] = "available"
    rs_features: Literal["pooled", "feature_map"] = "pooled"
    rs_reduce: Literal["sum", "mean"] = "sum"
    rs_normalise: Literal["none", "ema"] = "none"
    rs_ema_momentum: float = Field(0.9, ge=0, lt=1)
    rs_clamp_frames: bool = Field(False, description="the code clamps noisy frames to [0, 1] (after normalisation)")
    growth_history: Literal["run", "epoch"] = Field("run", description="'epoch': the code restarts the p history "
                                                                       "(and the red_m EMA) every epoch")
    rs_eval_mode: bool = Field(True, description="encoders in eval mode for the noisy passes (no BN side effects)")
    modality_dropout: bool = False
    dropout_start: float = Field(0.6, ge=0, le=1)
    dropout_end: float = Field(0.1, ge=0, le=1)
    dropout_frac: float = Field(0.3, gt=0, le=1)

    _apply_variant = variant_defaults("code", CODE_VARIANT)

    @model_validator(mode="after")
    def _check(self) -> "RedRegParams":
        if not self.tau_min < self.tau_max:
            raise ValueError(f"tau_min ({self.tau_min}) must be < tau_max ({self.tau_max}); allowed: 0 < tau_min < tau_max < 1")
        return self


# ----------------------------------------------------------------------------- balancer


class RedReg(Balancer):
    name = "redreg"
    Params = RedRegParams
    two_modalities_only = True  # the co-information gate compares two modalities (Eq. 23)

    def __init__(self, params: RedRegParams, modalities: list[str]):
        super().__init__(params, modalities)
        if params.dominant != "confidence" and params.dominant not in modalities:
            from trainables.errors import ConfigError

            raise ConfigError(f"balancer.dominant: '{params.dominant}' is not a modality; allowed: confidence, "
                              + ", ".join(modalities))
        self.p_history: dict[str, deque] = {m: deque(maxlen=params.window + 1) for m in modalities}
        self.rs_ema: dict[str, float] = {}
        self.last_red: dict[str, float] = {}
        self.clean_inputs: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, list[torch.Tensor]] = {}
        self.avg = StepAverager()
        self.dominant_counts = {m: 0 for m in modalities}

    # anchors ---------------------------------------------------------------
    def _encoder_params(self, state: State, m: str) -> list[torch.nn.Parameter]:
        return [p for p in state.model.encoder(m).parameters() if p.requires_grad]

    def _copy_anchor(self, state: State) -> None:
        self.anchor = {m: [p.detach().clone() for p in self._encoder_params(state, m)] for m in self.modalities}

    def on_fit_start(self, state: State) -> None:
        if not self.anchor:
            self._copy_anchor(state)

    def on_epoch_start(self, state: State) -> None:
        if self.p.anchor == "epoch_copy":
            self._copy_anchor(state)
        if self.p.growth_history == "epoch":
            for h in self.p_history.values():
                h.clear()
            self.rs_ema.clear()

    def after_step(self, state: State) -> None:
        if self.p.anchor == "ema":
            mom = self.p.anchor_momentum
            with torch.no_grad():
                for m in self.modalities:
                    for a, w in zip(self.anchor[m], self._encoder_params(state, m)):
                        a.mul_(mom).add_(w.detach(), alpha=1 - mom)

    # code-only modality dropout ------------------------------------------
    def on_batch_start(self, state: State) -> None:
        if not self.p.modality_dropout:
            return
        prob = modality_dropout_prob(state.epoch, state.num_epochs, self.p.dropout_start, self.p.dropout_end,
                                     self.p.dropout_frac)
        self.clean_inputs = dict(state.inputs)  # the monitor measures the real inputs, as the code does
        u = self.rand()  # one draw, as the code: modality i is dropped when i * p/n <= u < (i + 1) * p/n
        if u < prob:
            m = self.modalities[min(int(u / prob * len(self.modalities)), len(self.modalities) - 1)]
            state.inputs[m] = torch.zeros_like(state.inputs[m])

    # the monitor -----------------------------------------------------------
    @torch.no_grad()
    def redundancy(self, state: State, m: str) -> float:
        """red_m (Eq. 20) on the step's inputs before any modality dropout; raw, not EMA-normalised."""
        x = self.clean_inputs[m] if self.p.modality_dropout else state.inputs[m]
        if self.p.monitor_samples and self.p.monitor_samples < len(x):
            x = x[: self.p.monitor_samples]
        enc = state.model.encoder(m)
        was_training = enc.training
        if self.p.rs_eval_mode:
            enc.eval()
        x1 = x + self.p.sigma * self.randn(x)
        x2 = x + self.p.sigma * self.randn(x)
        if self.p.rs_clamp_frames and isinstance(enc, FramesEncoder):
            x1, x2 = x1.clamp(0.0, 1.0), x2.clamp(0.0, 1.0)
        view = enc.feature_map if self.p.rs_features == "feature_map" else enc
        if self.p.rs_eval_mode:  # eval mode: each sample's features ignore the rest of the batch, so one 2B pass
            z1, z2 = view(torch.cat([x1, x2])).chunk(2)
        else:  # train-mode BatchNorm normalises by batch statistics: a joint batch would change both copies
            z1, z2 = view(x1), view(x2)
        red = float(redundancy_score(z1, z2, x1, x2, self.p.eps, self.p.rs_reduce))
        enc.train(was_training)
        return red

    def monitored_redundancy(self, state: State, dom: str) -> float:
        """The dominant modality's red_m, measured every `monitor_every` steps (reused in between). With
        `rs_normalise: ema` (the code) every modality is measured, each EMA (momentum `rs_ema_momentum`,
        starting from 0) updated, and red_m divided by its EMA."""
        if dom in self.last_red and state.step % self.p.monitor_every != 0:
            return self.last_red[dom]
        for m in (self.modalities if self.p.rs_normalise == "ema" else [dom]):
            red = self.redundancy(state, m)
            if self.p.rs_normalise == "ema":
                mom = self.p.rs_ema_momentum
                self.rs_ema[m] = mom * self.rs_ema.get(m, 0.0) + (1 - mom) * red
                red = red / (self.rs_ema[m] + self.p.eps)
            self.last_red[m] = red
        return self.last_red[dom]

    def growth(self, m: str) -> float:
        hist = list(self.p_history[m])
        if self.p.growth_warmup == "one" and len(hist) <= self.p.window:
            return 1.0
        means = sliding_means(hist, self.p.window)
        return 0.0 if means is None else growth_rate(means[0], means[1], self.p.eps)

    def tau(self, state: State) -> float:
        if self.p.tau_schedule == "epoch":
            return tau_schedule(state.epoch, max(state.num_epochs - 1, 1), self.p.tau_min, self.p.tau_max)
        return tau_schedule(state.step, state.total_steps, self.p.tau_min, self.p.tau_max)

    def after_backward(self, state: State) -> None:
        probs = {m: true_class_prob(state.unimodal_logits[m], state.labels) for m in self.modalities}
        for m in self.modalities:
            self.p_history[m].append(probs[m])
        if state.step < self.p.warmup_steps:
            return
        dom = max(self.modalities, key=lambda m: probs[m]) if self.p.dominant == "confidence" else self.p.dominant
        weak = next(m for m in self.modalities if m != dom)
        self.dominant_counts[dom] += 1
        growth = {m: self.growth(m) for m in self.modalities}
        if self.p.monitor == "on":
            r = redundancy_monitor(self.monitored_redundancy(state, dom), growth[dom], self.p.gamma)
        else:
            r = math.inf
        a, v = self.modalities
        sim = co_information(state.features[a], state.features[v])
        tau = self.tau(state)
        gate = gate_value(True, r, self.p.R, sim, tau, self.p.monitor == "on", self.p.gate == "on",
                          strict_sim=self.p.gate_compare == "gt")
        if gate:
            beta = adaptive_beta(self.p.beta, probs[dom], probs[weak]) if self.p.beta_mode == "adaptive" else self.p.beta
            pairs = [(i, p) for i, p in enumerate(self._encoder_params(state, dom)) if p.grad is not None]
            g = [p.grad for _, p in pairs]
            d = [p.detach() - self.anchor[dom][i] for i, p in pairs]
            new = corrected_gradient(g, d, beta, gate, per_tensor=self.p.projection == "tensor", eps=self.p.eps)
            for (_, p), gn in zip(pairs, new):
                p.grad.copy_(gn)
        values = {"gate_open": gate, "redreg_sim": sim, "redreg_tau": tau}
        if math.isfinite(r):
            values["redreg_r"] = r
            values[f"redreg_rs_{dom}"] = self.last_red[dom]
        values.update({f"redreg_dgr_{m}": growth[m] for m in self.modalities})
        values.update({f"redreg_p_{m}": probs[m] for m in self.modalities})
        self.avg.add(**values)

    # records -----------------------------------------------------------------
    def epoch_metrics(self) -> dict[str, Any]:
        means = self.avg.means()
        out = {("gate_open_frac" if k == "gate_open" else k): v for k, v in means.items()}
        out.setdefault("gate_open_frac", 0.0)
        total = sum(self.dominant_counts.values())
        if total:
            out["dominant"] = max(self.dominant_counts, key=self.dominant_counts.get)
            out.update({f"dominant_frac_{m}": c / total for m, c in self.dominant_counts.items()})
        return out

    def reset_epoch_metrics(self) -> None:
        self.avg.reset()
        self.dominant_counts = {m: 0 for m in self.modalities}

    def state_dict(self) -> dict[str, Any]:
        return {"p_history": {m: list(h) for m, h in self.p_history.items()}, "rs_ema": dict(self.rs_ema),
                "last_red": dict(self.last_red), "anchor": self.anchor}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        for m, h in sd.get("p_history", {}).items():
            self.p_history[m] = deque(h, maxlen=self.p.window + 1)
        self.rs_ema, self.last_red = dict(sd.get("rs_ema", {})), dict(sd.get("last_red", {}))
        if sd.get("anchor"):
            self.anchor = {m: list(v) for m, v in sd["anchor"].items()}
