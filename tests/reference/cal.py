"""Reference loop for CAL (Contribution-Guided Asymmetric Learning), written from the reading in
../shared/specs/methods.md.

Neither the full text nor code of CAL is public (only its abstract), so this follows the spec's reading:
- AIB: per modality a variational head (mu_m, log sigma_m^2) on the encoder output z_m;
  z'_m = mu_m + sigma_m * eps in training (eps ~ N(0, I) from `ref.generator`, audio's draw first).
- I(m): two-player Shapley value of v(S) = mean_i log softmax(g(z' with the modalities outside S zeroed))[y_i]:
  I(m) = 0.5 [(v({m}) - v({})) + (v({a, v}) - v({other}))].
- D(m) = 1 / max(H_m / log K, floor), H_m the batch-mean entropy of softmax(f_m(z'_m)).
- W^m = softmax_m(T * (I(m) / sum|I|) * (D(m) / sum D)).
- From epoch `warmup_epochs` on, the gradient reaching z_m is (1 + W^m) times larger (identity forward):
  written here as z_m + W^m (z_m - stop_grad(z_m)), before the heads, so the sampling path and the KL
  are accelerated alike.
- Loss: CE(fused) + gamma_uni sum_m CE_m (only under `multimodal+unimodal`; under `multimodal` the
  per-modality heads are detached probes with weight 1) + sum_m beta0 (1 - W^m) KL(N(mu, sigma^2) || N(0, I)).
The reference applies no clamp to log sigma^2 (the spec names none).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag e^logvar) || N(0, I)) per sample, averaged over the batch."""
    return 0.5 * (mu ** 2 + torch.exp(logvar) - 1.0 - logvar).sum(dim=1).mean()


@torch.no_grad()
def contributions(ref, z: dict[str, torch.Tensor], y: torch.Tensor, temperature: float, floor: float) -> dict:
    a, v = ref.modalities

    def value(keep) -> float:
        feats = {m: (z[m] if m in keep else torch.zeros_like(z[m])) for m in ref.modalities}
        return float(F.log_softmax(ref.model.fuse(feats), dim=1)[torch.arange(len(y)), y].mean())

    v0, va, vv, vav = value(()), value((a,)), value((v,)), value((a, v))
    info = {a: 0.5 * ((va - v0) + (vav - vv)), v: 0.5 * ((vv - v0) + (vav - va))}
    conf = {}
    for m, logits in ref.model.unimodal_logits(z).items():
        p = F.softmax(logits, dim=1)
        h = float((-(p * torch.log(p.clamp_min(1e-12))).sum(dim=1)).mean()) / math.log(logits.shape[1])
        conf[m] = 1.0 / max(h, floor)
    i_sum, d_sum = abs(info[a]) + abs(info[v]) + 1e-12, conf[a] + conf[v] + 1e-12
    scores = torch.tensor([temperature * (info[m] / i_sum) * (conf[m] / d_sum) for m in (a, v)])
    w = torch.softmax(scores, dim=0)
    return {a: float(w[0]), v: float(w[1])}


def train(ref, temperature: float = 1.0, entropy_floor: float = 0.3, warmup_epochs: int = 1,
          beta0: float = 1e-3, gamma_uni: float = 1.0):
    heads = ref.extra  # .mu[m], .logvar[m]: the balancer's initial heads, copied by the harness
    ref.weights = []  # per step, for the test to read
    for epoch in range(ref.num_epochs):
        ref.model.train()
        for inputs, y in ref.batches[epoch]:
            z = {m: ref.model.encoder(m)(inputs[m]) for m in ref.modalities}
            mu = {m: heads.mu[m](z[m]) for m in ref.modalities}
            eps = {m: torch.randn(mu[m].shape, generator=ref.generator) for m in ref.modalities}
            logvar = {m: heads.logvar[m](z[m]) for m in ref.modalities}
            sampled = {m: mu[m] + eps[m] * torch.exp(0.5 * logvar[m]) for m in ref.modalities}
            w = contributions(ref, sampled, y, temperature, entropy_floor)
            ref.weights.append(w)
            if epoch >= warmup_epochs:  # the same forward values, the gradient into z_m times (1 + W^m)
                z = {m: z[m] + w[m] * (z[m] - z[m].detach()) for m in ref.modalities}
                mu = {m: heads.mu[m](z[m]) for m in ref.modalities}
                logvar = {m: heads.logvar[m](z[m]) for m in ref.modalities}
                sampled = {m: mu[m] + eps[m] * torch.exp(0.5 * logvar[m]) for m in ref.modalities}
            fused = ref.model.fuse(sampled)
            loss = F.cross_entropy(fused, y)
            if ref.loss_setting == "multimodal+unimodal":
                uni = ref.model.unimodal_logits(sampled)
                loss = loss + gamma_uni * sum(F.cross_entropy(uni[m], y) for m in ref.modalities)
            loss = loss + sum(beta0 * (1 - w[m]) * kl_to_standard_normal(mu[m], logvar[m]) for m in ref.modalities)
            if ref.loss_setting == "multimodal" and ref.unimodal_head == "separate":  # the probes
                probe = ref.model.unimodal_logits(sampled, detach_probe=True)
                loss = loss + sum(F.cross_entropy(probe[m], y) for m in ref.modalities)
            ref.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            ref.optimizer.step()
        ref.scheduler.step()
        yield
