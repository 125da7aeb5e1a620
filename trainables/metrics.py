"""Classification metrics from predictions: accuracy and macro-F1 (Eq. 32-33 of the RedReg paper)."""
from __future__ import annotations

import torch


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
