"""The plug-in interface the trainer calls: a balancer reacts to a few named events on a shared State.

The trainer never mentions a method by name. Each hook receives the State and may change what the
event is about (the batch, the features, the loss, the gradients). Hooks default to doing nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from pydantic import BaseModel, ConfigDict, model_validator
from torch import nn


def variant_defaults(variant: str, defaults: dict[str, Any]):
    """A Params validator: `variant: <variant>` switches these fields' defaults (the paper's or the authors'
    code's reading); fields given explicitly keep their values."""
    def apply(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("variant") == variant:
            data = {**defaults, **data}
        return data
    return model_validator(mode="before")(classmethod(apply))


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class State:
    """What a balancer may read or change during training."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    modalities: list[str]
    num_classes: int
    num_epochs: int
    steps_per_epoch: int
    loss_setting: str
    device: torch.device
    train_loader: Any = None
    # Batches of the held-out part of the training split (never val or test), when the balancer asks for
    # one with `holdout_fraction` (G-Blending's V); None otherwise. `train_loader` then yields the rest.
    holdout_loader: Any = None
    # A loader batch as the model takes it (on the device, float, normalised): the one input path, so a
    # balancer that reads batches itself (e.g. B-MM's epoch-end scores) sees exactly what the model trains on.
    model_input: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None
    # For a balancer's own sub-steps (`Balancer.train_step`): one optimizer update from a loss, with an
    # optional gradient edit between backward and step (`optimize(loss, modify_gradients)`), and the
    # trial's precision context for forward passes (`with state.autocast(): ...`).
    optimize: Callable[..., None] | None = None
    autocast: Callable[[], Any] | None = None
    epoch: int = 0  # 0-based
    step: int = 0  # global optimisation step, 0-based
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    labels: torch.Tensor | None = None
    # The loss target as a mixture: [(weight, labels)], so mixup needs no special loss code.
    targets: list[tuple[float, torch.Tensor]] = field(default_factory=list)
    unimodal_targets: dict[str, list[tuple[float, torch.Tensor]]] = field(default_factory=dict)
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    fused_logits: torch.Tensor | None = None
    unimodal_logits: dict[str, torch.Tensor] = field(default_factory=dict)
    loss: torch.Tensor | None = None
    loss_terms: dict[str, float] = field(default_factory=dict)

    @property
    def total_steps(self) -> int:
        return self.num_epochs * self.steps_per_epoch


class Balancer:
    """Base class: subclass, set `name` and `Params`, override the hooks you need."""

    name = "none"
    Params: type[BaseModel] = NoParams
    two_modalities_only = False
    # Where a stochastic balancer draws its noise: None = torch's global RNG (seeded by the trainer); a
    # test sets a seeded generator so an independent reference step can draw exactly the same numbers.
    generator: torch.Generator | None = None
    # > 0: the trainer holds out this seeded fraction of the training split (State.holdout_loader) and
    # trains on the rest.
    holdout_fraction: float = 0.0
    # True when the method itself trains the encoders with a supervised loss on each modality alone, under any
    # loss_setting (every method does under `multimodal+unimodal`): the benchmark report marks such rows, since
    # joint training with the multimodal loss alone is then not a like-for-like reference.
    adds_unimodal_supervision: bool = False

    def __init__(self, params: BaseModel, modalities: list[str]):
        if self.two_modalities_only and len(modalities) != 2:
            from trainables.balancers.registry import balancer_class, balancer_names
            from trainables.errors import ConfigError

            any_count = [n for n in balancer_names() if not balancer_class(n).two_modalities_only]
            raise ConfigError(
                f"balancer.name: '{self.name}' is defined for exactly 2 modalities (dataset has {len(modalities)}: "
                f"{modalities}); use one of: {', '.join(any_count)}"
            )
        self.p = params
        self.modalities = modalities

    def randn(self, like: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like `like`, from `generator` (drawn on its device, then moved)."""
        if self.generator is None:
            return torch.randn(like.shape, device=like.device, dtype=like.dtype)
        return torch.randn(like.shape, generator=self.generator, device=self.generator.device).to(like)

    def rand(self) -> float:
        """One uniform draw in [0, 1) from `generator`."""
        return float(torch.rand((), generator=self.generator))

    @classmethod
    def check_trial(cls, trial) -> None:
        """Refuse, when the trial config is validated (before any study record or Ray), a trial this method
        cannot run: raise ValueError('<field>: ... (allowed: ...)'). `trial` is the TrialConfig being built."""

    # --- modules the balancer owns (trained with the model, applied at evaluation too) ---
    def bind_model(self, model: nn.Module) -> None:
        """Called once with the built model, before `extra_modules` (e.g. to size a head)."""

    def extra_modules(self) -> nn.Module | None:
        return None

    def transform_features(self, feats: dict[str, torch.Tensor], training: bool) -> dict[str, torch.Tensor]:
        return feats

    def predict_logits(self, model: nn.Module, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """Evaluation: the logits the prediction is taken from (the fused head; MLA weighs its modalities'
        outputs instead)."""
        return model.fuse(feats)

    # --- events, in the order the trainer fires them ---
    def on_fit_start(self, state: State) -> None: ...
    def on_epoch_start(self, state: State) -> None: ...
    def on_batch_start(self, state: State) -> None: ...

    def train_step(self, state: State, joint_step: Callable[[], float]) -> float:
        """One batch's updates; returns its training loss. Default: the trainer's joint step (forward,
        `after_encode`, `after_loss`, one backward, `after_backward`, one optimizer step). A method that
        updates the model several times per batch (alternating modalities: MLA, ReconBoost) overrides this
        with its own sub-steps, each through `state.optimize(loss, modify_gradients)`."""
        return joint_step()

    # fired by the joint step only:
    def after_encode(self, state: State) -> None: ...
    def after_loss(self, state: State) -> None: ...
    def after_backward(self, state: State) -> None: ...
    def after_step(self, state: State) -> None: ...
    def on_epoch_end(self, state: State) -> None: ...

    # --- what the balancer records ---
    def epoch_metrics(self) -> dict[str, float]:
        """Per-epoch dynamics for the history (averages over the epoch's steps); reset by the trainer."""
        return {}

    def reset_epoch_metrics(self) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class StepAverager:
    """Accumulates per-step scalars into per-epoch means."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, **values: float) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
            self.counts[key] = self.counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}

    def reset(self) -> None:
        self.sums.clear()
        self.counts.clear()
