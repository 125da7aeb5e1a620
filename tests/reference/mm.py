"""Reference loop for MM (Multimodal Mixup), written from the reading in ../shared/specs/methods.md.

There is no public code for MM or B-MM ("Mixup Helps Understanding Multimodal Video Better"; its equations
were lost in extraction), so this follows the spec's [text] and [reading] lines, not any implementation:
per batch one lambda ~ Beta(alpha, alpha) and one permutation pi, shared by every modality;
h~ = lambda h + (1 - lambda) h[pi] on the encoders' features (or on the model-ready inputs for
`level="input"`); loss = lambda CE(g(h~), y) + (1 - lambda) CE(g(h~), y[pi]); every step from epoch
`warmup_epochs` (0 in the paper); no mixing at evaluation.

Noise: per mixing step one uniform from `ref.generator` turned into lambda by the Beta quantile
(scipy.stats.beta.ppf), then pi = torch.randperm(B, generator=ref.generator) -- the same draws, in the same
order, as the project's balancer makes from its own identically seeded generator.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.stats import beta as beta_distribution


def mixture_ce(logits: torch.Tensor, targets: list[tuple[float, torch.Tensor]]) -> torch.Tensor:
    """sum_k w_k CE(logits, y_k)."""
    return sum(w * F.cross_entropy(logits, y) for w, y in targets)


def mixed_task_loss(ref, fused: torch.Tensor, uni: dict[str, torch.Tensor], fused_targets, uni_targets) -> torch.Tensor:
    """The plain objective (see golden.Reference.task_loss) with mixed targets: the fused CE, plus the
    per-modality CEs unless they are the fused head's own blocks under the `multimodal` loss."""
    loss = mixture_ce(fused, fused_targets)
    if ref.loss_setting == "multimodal" and ref.unimodal_head == "fused_block":
        return loss
    return loss + sum(mixture_ce(uni[m], uni_targets[m]) for m in ref.modalities)


def logits_of(ref, feats: dict[str, torch.Tensor]):
    fused = ref.model.fuse(feats)
    return fused, ref.model.unimodal_logits(feats, detach_probe=ref.loss_setting == "multimodal")


def train(ref, alpha: float = 1.0, level: str = "feature", warmup_epochs: int = 0):
    for epoch in range(ref.num_epochs):
        ref.model.train()
        for inputs, y in ref.batches[epoch]:
            mixing = epoch >= warmup_epochs
            if mixing:
                lam = float(beta_distribution.ppf(float(torch.rand((), generator=ref.generator)), alpha, alpha))
                pi = torch.randperm(len(y), generator=ref.generator)
                if level == "input":
                    inputs = {m: lam * x + (1 - lam) * x[pi] for m, x in inputs.items()}
            feats = {m: ref.model.encoder(m)(inputs[m]) for m in ref.modalities}
            if mixing and level == "feature":
                feats = {m: lam * h + (1 - lam) * h[pi] for m, h in feats.items()}
            targets = [(lam, y), (1 - lam, y[pi])] if mixing else [(1.0, y)]
            fused, uni = logits_of(ref, feats)
            loss = mixed_task_loss(ref, fused, uni, targets, {m: targets for m in ref.modalities})
            ref.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            ref.optimizer.step()
        ref.scheduler.step()
        yield
