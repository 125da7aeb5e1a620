"""Metrics of predictions (accuracy, macro-F1: Eq. 32-33 of the RedReg paper) and the per-modality
measures that balancers and the dynamics traces share (true-class probability, growth rate, redundancy
score): one home each, so every balancer reads confidence the same way.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from trainables.precision import upcast


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    idx = labels.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def accuracy(preds: torch.Tensor, labels: torch.Tensor) -> float:
    return float((preds == labels).float().mean()) if len(labels) else 0.0


def macro_f1(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Mean over classes present in labels or predictions of 2PR/(P+R); a class never predicted
    nor present is skipped (as scikit-learn does with labels=observed classes)."""
    cm = confusion_matrix(preds, labels, num_classes).double()
    tp = cm.diag()
    predicted = cm.sum(0)
    actual = cm.sum(1)
    present = (predicted + actual) > 0
    f1 = torch.where(predicted + actual > 0, 2 * tp / (predicted + actual).clamp(min=1), torch.zeros_like(tp))
    return float(f1[present].mean()) if present.any() else 0.0


def modality_gap(accuracies: Iterable[float]) -> float | None:
    """The modality gap: the largest minus the smallest unimodal head accuracy (|audio - visual| for two
    modalities); None with fewer than two. The trainable reports it per seed, the report derives it for
    trials recorded before that."""
    accs = list(accuracies)
    return max(accs) - min(accs) if len(accs) >= 2 else None


def true_class_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """softmax(logits)[i, y_i] per sample, detached and in at least float32 (a measurement, never a loss)."""
    return F.softmax(upcast(logits.detach()), dim=1).gather(1, labels[:, None]).squeeze(1)


def true_class_prob(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The batch mean of the true-class probability (RedReg Eq. 14: p_m)."""
    return float(true_class_probs(logits, labels).mean())


def true_class_score(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The batch sum of the true-class probability (s_m of OGM-GE's and InfoReg's code)."""
    return float(true_class_probs(logits, labels).sum())


def growth_rate(p_now: float, p_prev: float, eps: float = 1e-8) -> float:
    """RedReg Eq. 16: S = (pbar_t - pbar_{t-1}) / (|pbar_{t-1}| + eps)."""
    return (p_now - p_prev) / (abs(p_prev) + eps)


def redundancy_score(z1: torch.Tensor, z2: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, eps: float = 1e-8,
                     reduce: str = "sum") -> torch.Tensor:
    """RedReg Eq. 20: ||Z1 - Z2||^2 / (||x1 - x2||^2 + eps); `reduce='mean'` is the authors' code (means)."""
    agg = torch.sum if reduce == "sum" else torch.mean
    return agg(upcast(z1 - z2) ** 2) / (agg(upcast(x1 - x2) ** 2) + eps)
