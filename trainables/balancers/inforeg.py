"""InfoReg (Huang et al., CVPR 2025): slow the modality that absorbs information fastest during the early
"prime learning window", with a proximal pull toward an anchor of its parameters.

Paper: the window comes from the trace of each modality's Fisher information. Authors' code (main.py,
train_epoch): per-epoch Fisher trace (sum over conv/linear layers of the mean squared gradient, averaged
over the epoch); k = (tr1 - tr2) / tr1 over sliding means of 10 epochs (k = 1 in epoch 0); the window is
open while k > 0.04; the dominant modality's gradient gets + beta * (w - w_anchor), beta = c_m * exp(tanh(s_dom - s_weak))
with c_audio = 0.95, c_visual = 0.1; the anchor is a copy taken at each epoch start.
Code oddities are switches: `visual_branch: false` reproduces the code's branch that never fires;
`score: sum` its batch sums (tanh saturates); `window_from: first` its audio-only Fisher trace.
"""
from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from trainables.balancers.base import Balancer, State, StepAverager
from trainables.balancers.redreg import sliding_means


def fisher_trace(params: list[torch.nn.Parameter]) -> float:
    """sum over conv/linear weight tensors of mean(grad^2): the code's empirical Fisher trace."""
    return float(sum(p.grad.pow(2).mean() for p in params if p.grad is not None and p.dim() >= 2))


def window_indicator(traces: list[float], window: int) -> float:
    """k = (tr1 - tr2) / tr1 from sliding means of the trace history; 1 before two epochs exist."""
    means = sliding_means(traces, window)
    if means is None:
        return 1.0
    tr1, tr2 = means
    return (tr1 - tr2) / tr1 if tr1 else 0.0


def regulation_strength(coef: float, s_dom: float, s_weak: float) -> float:
    return coef * math.exp(math.tanh(s_dom - s_weak))


class InfoRegParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threshold: float = Field(0.04, ge=-10, le=10, description="window open while k > threshold")
    window: int = Field(10, ge=1, description="epochs in each sliding mean of the Fisher trace")
    coef_first: float = Field(0.95, ge=0, description="c for the first modality (audio)")
    coef_second: float = Field(0.1, ge=0, description="c for the second modality (visual)")
    score: Literal["sum", "mean"] = "sum"
    visual_branch: bool = Field(True, description="false reproduces the authors' code, where it never fires")
    window_from: Literal["each", "first"] = Field("each", description="'first': the code's audio-only trace")


class InfoReg(Balancer):
    name = "inforeg"
    Params = InfoRegParams
    two_modalities_only = True

    def __init__(self, params: InfoRegParams, modalities: list[str]):
        super().__init__(params, modalities)
        self.traces: dict[str, list[float]] = {m: [] for m in modalities}
        self.epoch_fisher = {m: 0.0 for m in modalities}
        self.steps = 0
        self.anchor: dict[str, list[torch.Tensor]] = {}
        self.open: dict[str, bool] = {m: True for m in modalities}
        self.avg = StepAverager()

    def on_epoch_start(self, state: State) -> None:
        self.anchor = {m: [p.detach().clone() for p in state.model.encoder(m).parameters()] for m in self.modalities}
        ks = {m: window_indicator(self.traces[m], self.p.window) for m in self.modalities}
        first = self.modalities[0]
        self.open = {m: (ks[first] if self.p.window_from == "first" else ks[m]) > self.p.threshold
                     for m in self.modalities}
        self.k = ks
        self.epoch_fisher = {m: 0.0 for m in self.modalities}
        self.steps = 0

    def after_backward(self, state: State) -> None:
        a, v = self.modalities
        for m in self.modalities:
            self.epoch_fisher[m] += fisher_trace(list(state.model.encoder(m).parameters()))
        self.steps += 1
        probs = {m: F.softmax(state.unimodal_logits[m].detach().float(), 1).gather(1, state.labels[:, None])
                 for m in self.modalities}
        s = {m: float(p.sum() if self.p.score == "sum" else p.mean()) for m, p in probs.items()}
        fired = None
        if s[a] > s[v] and self.open[a]:
            fired, beta = a, regulation_strength(self.p.coef_first, s[a], s[v])
        elif s[v] > s[a] and self.open[v] and self.p.visual_branch:
            fired, beta = v, regulation_strength(self.p.coef_second, s[v], s[a])
        if fired is not None:
            with torch.no_grad():
                for p, anchor in zip(state.model.encoder(fired).parameters(), self.anchor[fired]):
                    if p.grad is not None:
                        p.grad.add_(p.detach() - anchor, alpha=beta)
        self.avg.add(**{f"inforeg_fired_{m}": float(fired == m) for m in self.modalities})

    def on_epoch_end(self, state: State) -> None:
        for m in self.modalities:
            self.traces[m].append(self.epoch_fisher[m] / max(self.steps, 1))

    def epoch_metrics(self) -> dict[str, Any]:
        out = self.avg.means()
        for m in self.modalities:
            out[f"inforeg_window_open_{m}"] = float(self.open[m])
            if self.traces[m]:
                out[f"inforeg_fisher_{m}"] = self.traces[m][-1]
        return out

    def reset_epoch_metrics(self) -> None:
        self.avg.reset()

    def state_dict(self) -> dict[str, Any]:
        return {"traces": self.traces}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.traces = {m: list(v) for m, v in sd.get("traces", {}).items()} or self.traces
