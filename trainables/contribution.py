"""How much each modality contributes to the fused prediction: Shapley values over modality coalitions, and
an imbalance degree derived from them (evaluation only; nothing here trains).

The value of a coalition S is the fused head's accuracy when only the modalities in S are present; the
others are masked by zeroing their pooled features before fusion. So one encoder pass per batch serves all
2^M coalitions (two modalities: 4 fused passes; three: 8). BalanceBenchmark (GeWu-Lab/BalanceBenchmark,
balancemm/evaluation/modalitys.py, commit 4c1482f) computes the same Shapley sum over coalitions but masks
by zeroing the raw input of the absent modalities and runs it on the test loader after training; here it
is computed per epoch on the validation and test splits, and the epoch is still selected on validation
accuracy alone.

    phi_m = sum over S ⊆ M \\ {m} of |S|! (|M| - |S| - 1)! / |M|! * (v(S ∪ {m}) - v(S))

Efficiency: sum_m phi_m = v(M) - v(∅) (the fused accuracy minus the accuracy of the head on no input).
Imbalance degree: the mean absolute pairwise difference of the Shapley values over their sum,
sum_{i<j} |phi_i - phi_j| / ((|M| - 1) * sum_m phi_m); for two modalities |phi_a - phi_v| / (phi_a + phi_v):
0 when both contribute equally, 1 when one modality carries all of it.
"""
from __future__ import annotations

import math
from itertools import combinations
from math import factorial
from typing import Callable

import torch


def coalitions(modalities: list[str]) -> list[frozenset[str]]:
    """Every subset of the modalities, the empty one included (2^M)."""
    return [frozenset(c) for r in range(len(modalities) + 1) for c in combinations(modalities, r)]


def masked(features: dict[str, torch.Tensor], present: frozenset[str]) -> dict[str, torch.Tensor]:
    """The features with every modality outside `present` replaced by zeros."""
    return {m: f if m in present else torch.zeros_like(f) for m, f in features.items()}


def shapley_values(values: dict[frozenset[str], float], modalities: list[str]) -> dict[str, float]:
    """Exact Shapley value of each modality from the value of every coalition."""
    n = len(modalities)
    out = {}
    for m in modalities:
        others = [o for o in modalities if o != m]
        out[m] = sum(factorial(len(s)) * factorial(n - len(s) - 1) / factorial(n) * (values[s | {m}] - values[s])
                     for s in coalitions(others))
    return out


def imbalance_degree(shapley: dict[str, float]) -> float:
    """sum_{i<j} |phi_i - phi_j| / ((M - 1) * sum phi); NaN when the contributions sum to <= 0."""
    phis = list(shapley.values())
    total = sum(phis)
    if len(phis) < 2 or total <= 0:
        return float("nan")
    spread = sum(abs(a - b) for a, b in combinations(phis, 2))
    return spread / ((len(phis) - 1) * total)


class CoalitionAccuracy:
    """Accumulates, batch by batch, how many samples the fused head gets right under each coalition."""

    def __init__(self, modalities: list[str]):
        self.modalities = list(modalities)
        self.subsets = coalitions(self.modalities)
        self.correct = {s: 0 for s in self.subsets}
        self.total = 0

    @torch.no_grad()
    def add(self, fuse: Callable[[dict[str, torch.Tensor]], torch.Tensor], features: dict[str, torch.Tensor],
            labels: torch.Tensor) -> None:
        labels = labels.to(next(iter(features.values())).device)
        for s in self.subsets:
            self.correct[s] += int((fuse(masked(features, s)).argmax(1) == labels).sum())
        self.total += len(labels)

    def values(self) -> dict[frozenset[str], float]:
        return {s: c / max(self.total, 1) for s, c in self.correct.items()}

    def metrics(self) -> dict[str, float]:
        """`shapley_<m>` per modality and `imbalance`, for one split's evaluation."""
        phi = shapley_values(self.values(), self.modalities)
        out = {f"shapley_{m}": v for m, v in phi.items()}
        degree = imbalance_degree(phi) if len(phi) > 1 else math.nan  # one modality: nothing to be imbalanced against
        if not math.isnan(degree):  # undefined (no positive contribution yet) is left out, never logged as NaN
            out["imbalance"] = degree
        return out
