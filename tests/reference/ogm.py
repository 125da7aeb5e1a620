"""OGM / OGM-GE as the authors' loop does it, written from GeWu-Lab/OGM-GE_CVPR2022 @ 343dc1d (main.py,
train_epoch): scores are batch sums of the unimodal true-class softmax, the modality with ratio > 1 gets
coeff = 1 - tanh(alpha * relu(ratio)), applied to the 4-D (conv) gradients of its encoder in epochs
starts <= epoch <= ends; OGM-GE replaces each such gradient by grad * coeff + N(0, std(grad) + 1e-8),
for both encoders. The noise comes from `ref.generator` (the injected stream)."""
from __future__ import annotations

import math

import torch

from reference import backward_passes, true_class_score


def train(ref, alpha: float, starts: int, ends: int, ge: bool):
    a, v = ref.modalities
    for epoch in range(ref.num_epochs):
        for _, labels, _, uni in backward_passes(ref, epoch):
            # scores as Python floats: the coefficients in float64, as the project's
            score_a, score_v = true_class_score(uni[a], labels), true_class_score(uni[v], labels)
            ratio_v = score_v / score_a
            ratio_a = 1 / ratio_v
            if ratio_v > 1:
                coeff = {a: 1.0, v: 1 - math.tanh(alpha * max(ratio_v, 0.0))}
            elif ratio_a > 1:
                coeff = {a: 1 - math.tanh(alpha * max(ratio_a, 0.0)), v: 1.0}
            else:
                coeff = {a: 1.0, v: 1.0}
            if starts <= epoch <= ends:
                for name, p in ref.model.named_parameters():
                    m = name.split(".")[1] if name.startswith("encoders.") else None
                    if m is None or p.grad.dim() != 4:
                        continue
                    if ge:
                        noise = torch.zeros_like(p.grad).normal_(0, p.grad.std().item() + 1e-8,
                                                                 generator=ref.generator)
                        p.grad = p.grad * coeff[m] + noise
                    else:
                        p.grad *= coeff[m]
            ref.optimizer.step()
        ref.scheduler.step()
        yield
