"""RedReg, paper variant, as a plain loop written from the paper (Xia et al., Algorithm 1, Eq. 14-31;
/work/shared/papers/redreg_adaptive_redundancy_regulation.txt): after backward, p_m = batch mean of the
true-class softmax (Eq. 14); for t >= 2 the more confident modality's monitor r = red - gamma * max(S, 0)
(Eq. 20-21: red = ||E(x+e1) - E(x+e2)||^2 / (||e1 - e2||^2 + eps) on pooled features, encoder in eval mode;
S the growth of the sliding mean of p over L steps, Eq. 15-16) and the gate 1[r > R] * 1[cos(z_a, z_v) >=
tau(t)] (Eq. 23-25, tau linear in the step) decide whether its encoder gradient becomes
g + beta * (d - <d, g> / (||g||^2 + eps) g), d = w - w_anchor over the whole encoder (Eq. 27-30); the anchor
is an EMA (0.99) of the encoder after every step. Noise comes from `ref.generator` (e1, then e2)."""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from reference import backward_passes


def _mean(xs):
    return sum(xs) / len(xs)


def true_class_mean(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """p_m (Eq. 14; the code's confidence): the batch mean of the true-class softmax, in fp32."""
    return float(torch.softmax(logits.detach(), 1)[torch.arange(len(labels)), labels].mean())


def train(ref, gamma: float, beta: float, R: float, tau_min: float, tau_max: float, window: int,
          sigma: float = 0.03, eps: float = 1e-8, warmup_steps: int = 2, momentum: float = 0.99, log=None):
    a, v = ref.modalities
    enc_params = {m: [p for p in ref.model.encoder(m).parameters()] for m in ref.modalities}
    anchor = {m: [p.detach().clone() for p in enc_params[m]] for m in ref.modalities}
    hist = {m: [] for m in ref.modalities}
    total, t = ref.num_epochs * ref.steps_per_epoch, 0
    for epoch in range(ref.num_epochs):
        for inputs, labels, feats, uni in backward_passes(ref, epoch):
            p = {m: true_class_mean(uni[m], labels) for m in ref.modalities}
            for m in ref.modalities:
                hist[m] = (hist[m] + [p[m]])[-(window + 1):]
            if t >= warmup_steps:
                dom = a if p[a] >= p[v] else v
                h = hist[dom]
                if len(h) < 2:
                    growth = 0.0
                else:
                    now, prev = _mean(h[-window:]), _mean(h[-window - 1:-1])
                    growth = (now - prev) / (abs(prev) + eps)
                x = inputs[dom]
                e1 = sigma * torch.randn(x.shape, generator=ref.generator)
                e2 = sigma * torch.randn(x.shape, generator=ref.generator)
                enc = ref.model.encoder(dom)
                enc.eval()
                with torch.no_grad():
                    x1, x2 = x + e1, x + e2
                    red = float(((enc(x1) - enc(x2)) ** 2).sum() / (((x1 - x2) ** 2).sum() + eps))
                enc.train()
                r = red - gamma * max(growth, 0.0)
                sim = float(F.cosine_similarity(feats[a].detach(), feats[v].detach(), dim=1).mean())
                tau = tau_min + min(t / total, 1.0) * (tau_max - tau_min)
                gate = r > R and sim >= tau
                if log is not None:
                    log.append({"step": t, "gate": gate, "r": r, "sim": sim, "tau": tau})
                if gate:
                    with torch.no_grad():
                        g = [w.grad for w in enc_params[dom]]
                        d = [w - w0 for w, w0 in zip(enc_params[dom], anchor[dom])]
                        dot = sum((di * gi).sum() for di, gi in zip(d, g))
                        gg = sum((gi * gi).sum() for gi in g)
                        for w, di, gi in zip(enc_params[dom], d, g):
                            w.grad = gi + beta * (di - dot / (gg + eps) * gi)
            ref.optimizer.step()
            with torch.no_grad():
                for m in ref.modalities:
                    for w0, w in zip(anchor[m], enc_params[m]):
                        w0.mul_(momentum).add_(w, alpha=1 - momentum)
            t += 1
        ref.scheduler.step()
        yield


def train_code(ref, W: int = 10, gamma: float = 0.6, R: float = 0.15, beta_scale: float = 0.9,
               thr_min: float = 0.2, thr_max: float = 0.5, sigma: float = 0.03, eps: float = 1e-12,
               ema_momentum: float = 0.9, p_start: float = 0.6, p_end: float = 0.1, warm_phase: float = 0.3,
               log=None):
    """RedReg as the authors' code runs it, written from xia-zhe/RedReg @ b620a46 (main_RedReg.py,
    train_epoch). Per epoch: fresh confidence histories and red EMAs (start 0), an anchor copy of the
    model, AGREE_THR linear in the epoch, a modality-dropout probability ramped over int(0.3 * epochs)
    epochs. Per step: one uniform u drops audio (u < p/2) or visual (p/2 <= u < p); the growth of the mean
    true-class probability over windows of W (1.0 while the history has <= W values); red of BOTH
    encoders on the undropped inputs (eval mode, feature maps, means not sums, noisy frames clamped to
    [0, 1]), each divided by its EMA; the less confident modality's rival gets beta = exp(0.9 tanh(gap))
    if its r > R, times 1[cos(z_a, z_v) > AGREE_THR]; after backward (CE fused + both unimodal CEs) each
    encoder tensor's grad += beta * (d - <d,g>/(|g|^2 + eps) g), d = w - w_anchor."""
    a, v = ref.modalities
    for epoch in range(ref.num_epochs):
        hist = {a: [], v: []}
        ema = {a: 0.0, v: 0.0}
        agree_thr = thr_min + (thr_max - thr_min) * epoch / max(1, ref.num_epochs - 1)
        phase_ep = max(1, int(ref.num_epochs * warm_phase))
        drop_p = p_start + (p_end - p_start) * min(1.0, epoch / phase_ep)
        anchor = copy.deepcopy(ref.model)
        ref.model.train()
        for inputs, labels in ref.batches[epoch]:
            u = float(torch.rand((), generator=ref.generator))
            dropped = {a: u < drop_p * 0.5, v: drop_p * 0.5 <= u < drop_p}
            x_in = {m: torch.zeros_like(inputs[m]) if dropped[m] else inputs[m] for m in ref.modalities}
            feats, fused, uni = ref.forward(x_in)
            prob, growth, r = {}, {}, {}
            for m in ref.modalities:
                prob[m] = true_class_mean(uni[m], labels)
                hist[m].append(prob[m])
                h = hist[m]
                growth[m] = 1.0 if len(h) <= W else (sum(h[-W:]) / W - sum(h[-W - 1:-1]) / W) / (
                    abs(sum(h[-W - 1:-1]) / W) + eps)
            for m in ref.modalities:
                enc = ref.model.encoder(m)
                enc.eval()
                with torch.no_grad():
                    x1 = inputs[m] + torch.randn(inputs[m].shape, generator=ref.generator) * sigma
                    x2 = inputs[m] + torch.randn(inputs[m].shape, generator=ref.generator) * sigma
                    if m == v:  # the code's aug_image clamps
                        x1, x2 = x1.clamp(0.0, 1.0), x2.clamp(0.0, 1.0)
                    num = (enc.feature_map(x1) - enc.feature_map(x2)).pow(2).mean()
                    red = float(num / ((x1 - x2).pow(2).mean() + eps))
                enc.train()
                ema[m] = ema_momentum * ema[m] + (1 - ema_momentum) * red
                r[m] = red / (ema[m] + eps) - gamma * max(growth[m], 0.0)
            beta = {a: 0.0, v: 0.0}
            if prob[a] < prob[v] and r[v] > R:
                beta[v] = math.exp(beta_scale * math.tanh(max(prob[v] - prob[a], 0.0)))
            elif prob[v] < prob[a] and r[a] > R:
                beta[a] = math.exp(beta_scale * math.tanh(max(prob[a] - prob[v], 0.0)))
            with torch.no_grad():
                sim = float((F.normalize(feats[a].flatten(1), dim=1) @ F.normalize(feats[v].flatten(1), dim=1).t())
                            .diag().mean())
            agree = 1.0 if sim > agree_thr else 0.0
            beta = {m: b * agree for m, b in beta.items()}
            if log is not None:
                log.append({"epoch": epoch, "beta": dict(beta), "r": dict(r), "prob": dict(prob), "sim": sim,
                            "thr": agree_thr,
                            "dropped": [m for m in ref.modalities if dropped[m]]})
            loss = ref.task_loss(fused, uni, labels)
            ref.optimizer.zero_grad()
            loss.backward()
            with torch.no_grad():
                for m in ref.modalities:
                    for w, w0 in zip(ref.model.encoder(m).parameters(), anchor.encoder(m).parameters()):
                        d, g = w - w0, w.grad
                        if g.abs().sum() != 0:
                            d = d - ((d * g).sum() / ((g * g).sum() + eps)) * g
                        w.grad = g + beta[m] * d
            ref.optimizer.step()
        ref.scheduler.step()
        yield
