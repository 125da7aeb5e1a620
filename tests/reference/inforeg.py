"""InfoReg as the authors' loop does it, written from GeWu-Lab/InfoReg_CVPR2025 main.py (train_epoch,
@ ea7b9d5; 41d887f differs only in the threshold and the visual branch): a trace history per modality that
starts with `window` zeros; at each epoch start k = (tr1 - tr2) / tr1 (tr1 = sum of the last `window`
traces / window, tr2 = the `window` before shifted by one / window; k = 1 in epoch 0) and an anchor copy of
the model; per step, after backward, the more confident modality (batch sums of the true-class softmax)
gets grad += beta * (w - w_anchor) on its encoder while k > threshold, beta = c * exp(tanh(gap)); then
the squared gradients of the encoders' Conv2d/Linear weights are accumulated (the code's FIM, after the
proximal term); the epoch's trace is sum over layers of mean(accumulated grad^2) (not divided by steps)."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from reference import backward_passes, true_class_score


def train(ref, threshold: float, window: int, coef: dict[str, float], k_from_first: bool = False, log=None):
    a, v = ref.modalities
    traces = {m: [0.0] * window for m in ref.modalities}
    for epoch in range(ref.num_epochs):
        ks = {}
        for m in ref.modalities:
            if epoch == 0:
                ks[m] = 1.0
            else:
                tr1 = sum(traces[m][-window:]) / window
                tr2 = sum(traces[m][-window - 1:-1]) / window
                ks[m] = (tr1 - tr2) / tr1
        if k_from_first:
            ks = {m: ks[a] for m in ref.modalities}
        anchor = copy.deepcopy(ref.model)
        layers = {m: [mod for mod in ref.model.encoder(m).modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
                  for m in ref.modalities}
        fim = {m: [torch.zeros_like(mod.weight) for mod in layers[m]] for m in ref.modalities}
        for _, labels, _, uni in backward_passes(ref, epoch):
            score = {m: true_class_score(uni[m], labels) for m in ref.modalities}
            beta = {a: 0.0, v: 0.0}
            if score[a] > score[v] and ks[a] > threshold:
                beta[a] = coef[a] * math.exp(math.tanh(score[a] - score[v]))
            elif score[a] < score[v] and ks[v] > threshold:
                beta[v] = coef[v] * math.exp(math.tanh(score[v] - score[a]))
            with torch.no_grad():
                for m in ref.modalities:
                    for w, w0 in zip(ref.model.encoder(m).parameters(), anchor.encoder(m).parameters()):
                        w.grad += beta[m] * (w - w0)
                for m in ref.modalities:
                    for acc, mod in zip(fim[m], layers[m]):
                        acc += mod.weight.grad * mod.weight.grad
            ref.optimizer.step()
        for m in ref.modalities:
            traces[m].append(sum(float(acc.mean()) for acc in fim[m]))
        if log is not None:
            log.append({"k": ks, "trace": {m: traces[m][-1] for m in ref.modalities}})
        ref.scheduler.step()
        yield
