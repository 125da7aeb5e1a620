"""InfoReg (Huang et al., CVPR 2025): slow the modality that absorbs information fastest during the early
"prime learning window", with a proximal pull toward an anchor of its parameters.

Read against the authors' code (GeWu-Lab/InfoReg_CVPR2025, main.py train_epoch; commits 41d887f and
ea7b9d5): per epoch, each encoder's Fisher trace (sum over conv/linear weights of mean(grad^2), from the
gradient AFTER the proximal term is added, averaged over the epoch's steps) is appended to a history that
starts with `window` zeros; k = (tr1 - tr2) / tr1 with tr1, tr2 the sums of the last `window` values and of
the `window` before, shifted by one, each divided by `window` (k = 1 in epoch 0). The zeros keep the
window open for about `window` epochs (k is then the newest trace's share of all traces so far). The window
is open while k > threshold; the more confident modality's encoder gradient gets + beta * (w - w_anchor),
beta = c_m * exp(tanh(s_dom - s_weak)), c_audio = 0.95, c_visual = 0.1; the anchor is a copy of the
encoder taken at each epoch start. Code oddities are switches: `visual_branch: false` reproduces 41d887f's
branch that never fires; `score: sum` its batch sums (tanh saturates); `window_from: first` its
audio-only Fisher trace; `history: available` the means over stored traces only (no zeros; the window then
closes as soon as the trace falls, usually at epoch 2).
"""
from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from trainables.balancers.base import Balancer, State, StepAverager
from trainables.metrics import true_class_probs


def fisher_trace(params: list[torch.nn.Parameter]) -> float:
    """sum over conv/linear weight tensors of mean(grad^2): the code's empirical Fisher trace."""
    return float(sum(p.grad.pow(2).mean() for p in params if p.grad is not None and p.dim() >= 2))


def window_indicator(traces: list[float], window: int, zeros: bool = True) -> float:
    """k = (tr1 - tr2) / tr1; 1 before any trace exists (epoch 0).

    zeros=True (authors' code): the history starts with `window` zeros and both sums are divided by
    `window`. zeros=False: means over the stored values only (at most `window`); 1 until two exist."""
    hist = [0.0] * window + list(traces) if zeros else list(traces)
    if not traces or len(hist) < 2:
        return 1.0
    last, before = hist[-window:], hist[-window - 1:-1]
    tr1 = sum(last) / (window if zeros else len(last))
    tr2 = sum(before) / (window if zeros else len(before))
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
    history: Literal["zeros", "available"] = Field(
        "zeros", description="'zeros': the code's trace history starting with `window` zeros (window open "
                             "~`window` epochs); 'available': means over stored traces only")


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
        self.k: dict[str, float] = {m: 1.0 for m in modalities}
        self.avg = StepAverager()

    def on_epoch_start(self, state: State) -> None:
        self.anchor = {m: [p.detach().clone() for p in state.model.encoder(m).parameters()] for m in self.modalities}
        ks = {m: window_indicator(self.traces[m], self.p.window, self.p.history == "zeros") for m in self.modalities}
        first = self.modalities[0]
        self.open = {m: (ks[first] if self.p.window_from == "first" else ks[m]) > self.p.threshold
                     for m in self.modalities}
        self.k = ks
        self.epoch_fisher = {m: 0.0 for m in self.modalities}
        self.steps = 0

    def after_backward(self, state: State) -> None:
        a, v = self.modalities
        probs = {m: true_class_probs(state.unimodal_logits[m], state.labels) for m in self.modalities}
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
        # The trace reads the gradient the optimizer will apply (proximal term included), as the code does.
        for m in self.modalities:
            self.epoch_fisher[m] += fisher_trace(list(state.model.encoder(m).parameters()))
        self.steps += 1
        self.avg.add(**{f"inforeg_fired_{m}": float(fired == m) for m in self.modalities})

    def on_epoch_end(self, state: State) -> None:
        for m in self.modalities:
            self.traces[m].append(self.epoch_fisher[m] / max(self.steps, 1))

    def epoch_metrics(self) -> dict[str, Any]:
        out = self.avg.means()
        for m in self.modalities:
            out[f"inforeg_window_open_{m}"] = float(self.open[m])
            out[f"inforeg_k_{m}"] = self.k[m]
            if self.traces[m]:
                out[f"inforeg_fisher_{m}"] = self.traces[m][-1]
        return out

    def reset_epoch_metrics(self) -> None:
        self.avg.reset()

    def state_dict(self) -> dict[str, Any]:
        return {"traces": self.traces}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.traces = {m: list(v) for m, v in sd.get("traces", {}).items()} or self.traces
