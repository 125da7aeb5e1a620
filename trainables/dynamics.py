"""Training-dynamics traces logged for every balancer (RedReg's Fig. 1/3), so a method can be compared
with the `none` baseline on the same axes:

- RLC_m = ||f_e - f_{e-1}|| / (||z_e - z_{e-1}|| + eps): how strongly modality m's features drive its
  logits, measured on a fixed probe batch between consecutive epochs.
- DGR_m = growth rate of the mean true-class probability of modality m (Eq. 16, epoch granularity).
- RS_m = redundancy score of modality m's encoder (Eq. 20) on the probe batch.
"""
from __future__ import annotations

import torch

from trainables.metrics import growth_rate, redundancy_score, true_class_prob


def representation_logit_coupling(f_now, f_prev, z_now, z_prev, eps: float = 1e-8) -> float:
    return float((f_now - f_prev).norm() / ((z_now - z_prev).norm() + eps))


class DynamicsTracker:
    def __init__(self, probe_inputs: dict[str, torch.Tensor], probe_labels: torch.Tensor, sigma: float = 0.03,
                 seed: int = 0):
        self.inputs, self.labels, self.sigma, self.seed = probe_inputs, probe_labels, sigma, seed
        self.prev: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}

    @torch.no_grad()
    def measure(self, model, epoch: int) -> dict[str, float]:
        was_training = model.training
        model.eval()
        feats = model.encode(self.inputs)
        logits = model.unimodal_logits(feats)
        out: dict[str, float] = {}
        gen = torch.Generator(device=self.labels.device).manual_seed(self.seed * 7919 + epoch)
        for m in model.modality_names:
            z, f = feats[m], logits[m]
            p = true_class_prob(f, self.labels)
            if m in self.prev:
                f_prev, z_prev, p_prev = self.prev[m]
                out[f"rlc_{m}"] = representation_logit_coupling(f, f_prev, z, z_prev)
                out[f"dgr_{m}"] = growth_rate(p, p_prev)
            x = self.inputs[m]
            e1 = torch.randn(x.shape, generator=gen, device=x.device) * self.sigma
            e2 = torch.randn(x.shape, generator=gen, device=x.device) * self.sigma
            enc = model.encoder(m)
            out[f"rs_{m}"] = float(redundancy_score(enc(x + e1), enc(x + e2), x + e1, x + e2))
            self.prev[m] = (f.clone(), z.clone(), p)
        model.train(was_training)
        return out
