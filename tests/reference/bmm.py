"""Reference loop for B-MM (Balanced Multimodal Mixup), written from the reading in ../shared/specs/methods.md.

No public code exists for B-MM; this follows the spec's [text]/[reading] lines:
- after each epoch, over the whole training set (model-ready inputs, eval mode, no grad), with the other
  modality's features zeroed: rho = sum_i s_i^a / sum_i s_i^v, s_i^m = softmax(g(z_m, other zeroed))[y_i];
- the next epoch's degree delta = tanh(alpha (max(rho, 1/rho) - 1)) (0 when balanced);
- the first `warmup_epochs` epochs train plainly; afterwards each step mixes only the weak modality
  (visual if rho > 1, else audio): z~_weak = (1 - delta) z_weak + delta z_weak[pi], labels
  (1 - delta) y + delta y[pi]; the strong modality and its unimodal target are left alone.

Noise: one pi = torch.randperm(B, generator=ref.generator) per mixing step (the degree itself is not random).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from reference.mm import logits_of, mixed_task_loss


@torch.no_grad()
def imbalance(ref, batches) -> float:
    """rho over `batches` (every training sample once)."""
    a, v = ref.modalities
    ref.model.eval()
    sums = {a: 0.0, v: 0.0}
    for inputs, y in batches:
        z = {m: ref.model.encoder(m)(inputs[m]) for m in ref.modalities}
        for m in (a, v):
            alone = {k: (z[k] if k == m else torch.zeros_like(z[k])) for k in z}
            sums[m] += float(F.softmax(ref.model.fuse(alone), dim=1)[torch.arange(len(y)), y].sum())
    ref.model.train()
    return sums[a] / sums[v]


def train(ref, alpha: float = 1.0, warmup_epochs: int = 5, rho_batches=None):
    """`rho_batches(epoch)` gives the batches rho is measured on (default: that epoch's training batches,
    already model-ready); a test passes the raw loader batches to show what skipping normalisation does."""
    a, v = ref.modalities
    rho, next_delta = 1.0, 0.0
    ref.rhos, ref.deltas = [], []  # per epoch, for the test to read
    for epoch in range(ref.num_epochs):
        delta = next_delta if epoch >= warmup_epochs else 0.0
        ref.deltas.append(delta)
        weak = v if rho > 1 else a
        ref.model.train()
        for inputs, y in ref.batches[epoch]:
            z = {m: ref.model.encoder(m)(inputs[m]) for m in ref.modalities}
            targets = {m: [(1.0, y)] for m in ref.modalities}
            fused_targets = [(1.0, y)]
            if delta > 0 and rho != 1.0:
                pi = torch.randperm(len(y), generator=ref.generator)
                z[weak] = (1 - delta) * z[weak] + delta * z[weak][pi]
                fused_targets = targets[weak] = [(1 - delta, y), (delta, y[pi])]
            fused, uni = logits_of(ref, z)
            loss = mixed_task_loss(ref, fused, uni, fused_targets, targets)
            ref.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            ref.optimizer.step()
        ref.scheduler.step()
        rho = imbalance(ref, rho_batches(epoch) if rho_batches else ref.batches[epoch])
        ref.rhos.append(rho)
        next_delta = math.tanh(alpha * (max(rho, 1 / rho) - 1))
        yield
