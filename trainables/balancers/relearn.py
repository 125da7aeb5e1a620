"""Diagnosing & Re-learning (Wei et al., ECCV 2024, "Diagnosing and Re-learning for Balanced Multimodal
Learning").

Authors' code read: github.com/GeWu-Lab/Diagnosing_Relearning_ECCV2024 at commit
025085ea82ed784c6ab6e5fb1b08bfe498dd0fc7 (code/ours.py: `reinit_score`, `purity_score`, `reinit`, `main`).
What it does, and what this balancer does:
- The initial weights are kept. Training is plain joint training (fused CE).
- After epoch e (0-based) with e % `reinit_every` == 0 and e > 0, at most `reinit_times` times: each encoder's
  pooled features (eval mode, no gradient) over the whole training loader and over a held-out part of the
  training data are min-max scaled to [-1, 1] per dimension (each set on its own), clustered by KMeans into
  K = number of classes, and scored by purity against the labels. w_m = tanh(`move_lambda` * |purity_train -
  purity_heldout|), and every parameter of encoder m becomes w_m * theta_init + (1 - w_m) * theta (buffers and
  optimizer state untouched). A well-fit encoder that generalises (small gap) is barely touched; one that
  memorises is pulled back toward its initialisation.
- Held-out data: the authors split CREMA-D's training csv into my_train (5954) and val (744, 11%) and train
  on my_train only. Here the trainer holds out a seeded `holdout_fraction` (default 0.11) of the training
  split (`Balancer.holdout_fraction`, State.holdout_loader) and trains on the rest; validation and test are
  never used.
Judgement calls: the code re-initialises after validating epoch e; here it happens at the start of epoch e + 1
(the same trajectory, and epoch e's metrics describe the model as trained, as in the code). KMeans is a short
torch KMeans (k-means++ seeding from a generator seeded with `kmeans_seed`, Lloyd steps until the assignment
is stable) instead of sklearn's (greedy k-means++, random_state=0): no new dependency, and a seeded init an
independent reference can reproduce draw for draw; purity only needs the cluster assignment.
"""
from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from trainables.balancers.base import Balancer, State, StepAverager
from trainables.precision import upcast

# ----------------------------------------------------------------------------- pure functions


def minmax_scale(x: torch.Tensor) -> torch.Tensor:
    """Per column to [-1, 1] (sklearn's MinMaxScaler(feature_range=(-1, 1)); a constant column maps to -1)."""
    lo, hi = x.min(0).values, x.max(0).values
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    return (x - lo) / span * 2 - 1


def kmeans(x: torch.Tensor, k: int, generator: torch.Generator, max_iter: int = 300) -> torch.Tensor:
    """Cluster index per row: k-means++ seeding (first centre uniform, then proportional to the squared
    distance to the nearest centre), then Lloyd steps until the assignment stops changing."""
    n = x.shape[0]
    centres = [x[int(torch.randint(n, (1,), generator=generator))]]
    for _ in range(1, k):
        d2 = torch.cdist(x, torch.stack(centres)).pow(2).min(1).values
        if float(d2.sum()) <= 0:
            idx = int(torch.randint(n, (1,), generator=generator))
        else:
            idx = int(torch.multinomial(d2 / d2.sum(), 1, generator=generator))
        centres.append(x[idx])
    c = torch.stack(centres)
    assign = torch.cdist(x, c).argmin(1)
    for _ in range(max_iter):
        for j in range(k):
            members = x[assign == j]
            if len(members):
                c[j] = members.mean(0)
        new = torch.cdist(x, c).argmin(1)
        if torch.equal(new, assign):
            break
        assign = new
    return assign


def purity(labels: torch.Tensor, clusters: torch.Tensor) -> float:
    """Share of samples whose label is their cluster's majority label."""
    hits = sum(int(torch.bincount(labels[clusters == c]).max()) for c in clusters.unique())
    return hits / len(labels)


def relearn_weight(purity_train: float, purity_heldout: float, move_lambda: float) -> float:
    """w = tanh(lambda * |purity_train - purity_heldout|)."""
    return float(torch.tanh(torch.tensor(move_lambda * abs(purity_train - purity_heldout))))


@torch.no_grad()
def pull_toward(params: list[torch.nn.Parameter], initial: list[torch.Tensor], weight: float) -> None:
    """theta <- w * theta_init + (1 - w) * theta, in place."""
    for p, p0 in zip(params, initial):
        p.copy_(weight * p0 + (1 - weight) * p)


# ----------------------------------------------------------------------------- params


class RelearnParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    move_lambda: float = Field(3.0, ge=0, le=100, description="w = tanh(move_lambda * purity gap) (code: 3)")
    reinit_every: int = Field(20, ge=1, description="diagnose after epochs e % reinit_every == 0, e > 0 (code: 20)")
    reinit_times: int = Field(3, ge=0, description="at most this many re-initialisations (code: 3)")
    holdout_fraction: float = Field(0.11, gt=0, lt=1, description="held-out share of the training split "
                                    "(code: CREMA-D's 744 of 6699 training clips)")
    kmeans_seed: int = Field(0, ge=0, description="seed of the k-means++ initialisation (code: random_state=0)")


# ----------------------------------------------------------------------------- balancer


class Relearn(Balancer):
    name = "relearn"
    Params = RelearnParams

    def __init__(self, params: RelearnParams, modalities: list[str]):
        super().__init__(params, modalities)
        self.holdout_fraction = params.holdout_fraction  # the trainer holds this share of the training split out
        self.initial: dict[str, list[torch.Tensor]] = {}
        self.done = 0
        self.avg = StepAverager()

    def _params(self, state: State, m: str) -> list[torch.nn.Parameter]:
        return list(state.model.encoder(m).parameters())

    def on_fit_start(self, state: State) -> None:
        if getattr(state, "holdout_loader", None) is None:
            from trainables.errors import ConfigError

            raise ConfigError("balancer.name: 'relearn' needs a held-out part of the training split, which this "
                              "trainer does not provide (Balancer.holdout_fraction)")
        if not self.initial:
            self.initial = {m: [p.detach().clone() for p in self._params(state, m)] for m in self.modalities}

    def _seeded(self) -> torch.Generator:
        """A fresh generator per clustering, as the code's KMeans(random_state=0) each time."""
        return torch.Generator().manual_seed(self.p.kmeans_seed)

    @torch.no_grad()
    def _features(self, state: State, loader) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        model = state.model
        was_training = model.training
        model.eval()
        feats, labels = {m: [] for m in self.modalities}, []
        for inputs, y in loader:
            z = model.encode(state.model_input(inputs))
            for m in self.modalities:
                feats[m].append(upcast(z[m]).cpu())
            labels.append(y.cpu())
        model.train(was_training)
        return {m: torch.cat(v) for m, v in feats.items()}, torch.cat(labels)

    def on_epoch_start(self, state: State) -> None:
        last = state.epoch - 1
        if last <= 0 or last % self.p.reinit_every != 0 or self.done >= self.p.reinit_times:
            return
        self.done += 1
        train_z, train_y = self._features(state, state.train_loader)
        hold_z, hold_y = self._features(state, state.holdout_loader)
        values: dict[str, float] = {"relearn_count": float(self.done)}
        for m in self.modalities:
            p_train = purity(train_y, kmeans(minmax_scale(train_z[m]), state.num_classes, self._seeded()))
            p_hold = purity(hold_y, kmeans(minmax_scale(hold_z[m]), state.num_classes, self._seeded()))
            w = relearn_weight(p_train, p_hold, self.p.move_lambda)
            pull_toward(self._params(state, m), self.initial[m], w)
            values.update({f"relearn_purity_train_{m}": p_train, f"relearn_purity_heldout_{m}": p_hold,
                           f"relearn_weight_{m}": w})
        self.avg.add(**values)

    def epoch_metrics(self) -> dict[str, Any]:
        return {"relearn_count": float(self.done), **self.avg.means()}

    def reset_epoch_metrics(self) -> None:
        self.avg.reset()

    def state_dict(self) -> dict[str, Any]:
        return {"initial": self.initial, "done": self.done}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        if sd.get("initial"):
            self.initial = {m: list(v) for m, v in sd["initial"].items()}
        self.done = int(sd.get("done", self.done))
