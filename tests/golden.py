"""Golden-trajectory harness: a balancer run through the real Trainer vs. an independent reference loop.

How a golden test reads:

    trainer, result = run_golden(tiny_config({"name": "ogm", "alpha": 0.8}, epochs=5), reference.ogm.train)
    assert phases_seen_in(trainer.history)          # e.g. the window was open and closed

`run_golden` builds the project's `Trainer` from a config, deep-copies its initial model (and the balancer's
extra modules) into a `Reference` with an identically configured optimizer, and hands the reference loop
the very batches the trainer's own train loader yields in each epoch (recorded once and replayed to
both sides; made model-ready for the reference by
`trainables.data.base.model_input`, not by the trainer). Both sides draw their noise from their own
`torch.Generator` seeded with the same `noise_seed` (`Balancer.generator` on the project side,
`Reference.generator` on the reference side), so stochastic methods are compared exactly. After every
epoch every parameter and buffer must agree within `tol`.

Both sides run in float64: torch's default dtype is float64 while the run is built and trained
(`default_dtype`, restored afterwards, also when the run fails), so the models and extra modules are made in
it, the recorded batches are made model-ready in it and the optimizer state follows the parameters;
`assert_same` checks that every tensor compared is in it. Why: the two sides compute the same maths in
different orders (hooks vs. explicit terms, other summation orders, other kernels per CPU), so they drift
apart by a few roundings per step. In float32 that is ~1e-7, and sooner or later a ReLU input or a max-pool
tie lies within 1e-7 of its kink and the rounding flips it: the sides then differ by ~1e-4 on one CPU and not
on another (issue 21: AVX2 and the generic kernels failed tests that AVX-512 passed). In float64 the drift is
~1e-16 relative per step; the worst agreement measured over every golden run (20-40 steps) is 3.3e-14,
natively (AVX-512), under ATEN_CPU_CAPABILITY=avx2 and under =default. A kink lying within 3e-14 of a rounding
is ~1e6 times rarer than one within 1e-7. `TOL = 1e-9` leaves over four orders of magnitude above that drift
and stays far under what a wrong method leaves: in the mutation sweep of issue 21 (per balancer a sign flip,
swapped modalities, an off-by-one in a window or schedule; clip bounds, entropy floors) every mutation that
changes training left a difference of at least 4.7e-5 where its test failed (those that change only a record
are caught by the tests' assertions on the records).

A reference loop (tests/reference/<method>.py) is a generator `train(ref, **params)` that trains
`ref.model` on `ref.batches[epoch]` with `ref.optimizer` and `yield`s once at the end of each epoch; it
may import the project's model/data classes but never its balancer.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from trainables.config import build_trial_config
from trainables.data.base import DatasetBundle, ModalitySpec, MultimodalTensorDataset, model_input
from trainables.data.registry import registered_dataset
from trainables.trainer import Trainer

DTYPE = torch.float64
TOL = 1e-9


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype = DTYPE) -> Iterator[None]:
    """torch's default dtype set to `dtype` inside the block, restored after it (also when it fails), so
    the rest of the test session keeps float32. `build` and the epochs that follow it belong inside."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def tiny_config(balancer: dict[str, Any], epochs: int = 5, n_train: int = 64, batch_size: int = 16,
                **extra: Any) -> dict[str, Any]:
    """A raw config for a few-second run: 64 synthetic samples in batches of 16 (4 steps an epoch), a
    16-wide CNN, SGD with momentum (so a wrong gradient also leaves a trace in the momentum buffer)."""
    raw = {"seed": 0, "epochs": epochs, "device": "cpu",
           "dataset": {"name": "synthetic", "size": "tiny", "n_train": n_train, "n_val": 16, "n_test": 16},
           "model": {"feature_dim": 16},
           "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": batch_size},
           "balancer": balancer}
    return _merge(raw, extra)


def crema_d_config(root, balancer: dict[str, Any], epochs: int = 3, **extra: Any) -> dict[str, Any]:
    """A raw config on a CREMA-D fixture written with tests/dataset_fixtures.write_crema_d(root): real
    loader, uint8 frames normalised on the device -- the case where a balancer that skips `model_input`
    sees different tensors than the model."""
    raw = {"seed": 0, "epochs": epochs, "device": "cpu",
           "dataset": {"name": "crema_d", "root": str(root), "image_size": 32},
           "model": {"feature_dim": 8},
           "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 4},
           "balancer": balancer}
    return _merge(raw, extra)


class VectorPairParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    audio_signal: float = 0.0
    visual_signal: float = 2.0
    scale: float = 1.0


def _vector_pair(p: VectorPairParams) -> DatasetBundle:
    gen = torch.Generator().manual_seed(5)

    def split(n):
        y = torch.randint(3, (n,), generator=gen)
        onehot = F.one_hot(y, 6).to(torch.get_default_dtype())
        return MultimodalTensorDataset({m: p.scale * (torch.randn(n, 6, generator=gen) + signal * onehot)
                                        for m, signal in (("audio", p.audio_signal), ("visual", p.visual_signal))}, y)
    return DatasetBundle("vector_pair", {m: ModalitySpec("vector", (6,)) for m in ("audio", "visual")}, 3,
                         split(64), split(16), split(16))


@contextlib.contextmanager
def vector_pair_dataset() -> Iterator[None]:
    """Registers `vector_pair` while the block runs: 'audio' and 'visual', 6-d vectors, 3 classes, each unit
    noise plus `<m>_signal` on its class's coordinate, all times `scale`. Its two-layer MLP encoders learn
    within a few steps, so a 20-step golden run reaches states the synthetic benchmark's CNNs do not: a
    confident modality (ARL's entropy floor), fusion gradients beyond AGM's clipping bounds."""
    with registered_dataset("vector_pair", VectorPairParams, _vector_pair):
        yield


def vector_pair_config(balancer: dict[str, Any], epochs: int = 5, fusion: str = "concat", lr: float = 0.05,
                       **dataset: float) -> dict[str, Any]:
    """A raw config on `vector_pair` (inside `vector_pair_dataset()`): 64 samples in batches of 16."""
    return {"seed": 0, "epochs": epochs, "device": "cpu", "dataset": {"name": "vector_pair", **dataset},
            "model": {"feature_dim": 16, "fusion": fusion},
            "optim": {"name": "sgd", "lr": lr, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 16},
            "balancer": balancer}


def _merge(raw: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    return raw


@dataclass
class Reference:
    """What a reference loop gets: copies of the trainer's initial modules and the same data."""

    model: nn.Module  # the trainer's MultimodalNet at initialisation (deep copy)
    extra: nn.Module  # the balancer's extra modules at initialisation (deep copy; empty Module if none)
    optimizer: torch.optim.Optimizer  # same class and hyperparameters, over model then extra parameters
    scheduler: torch.optim.lr_scheduler.LRScheduler  # StepLR as the trainer's; step it once per epoch
    batches: list[list[tuple[dict[str, torch.Tensor], torch.Tensor]]]  # per epoch: (model-ready inputs, labels)
    raw_batches: list[list[tuple[dict[str, torch.Tensor], torch.Tensor]]]  # per epoch, as the loader yields them
    modalities: list[str]
    num_classes: int
    num_epochs: int
    steps_per_epoch: int
    loss_setting: str
    unimodal_head: str
    generator: torch.Generator  # the noise source, seeded like the project balancer's

    def forward(self, inputs: dict[str, torch.Tensor]):
        """Features, fused logits and per-modality logits, as a plain loop computes them."""
        feats = {m: self.model.encoder(m)(inputs[m]) for m in self.modalities}
        return feats, self.model.fuse(feats), self.model.unimodal_logits(
            feats, detach_probe=self.loss_setting == "multimodal")

    def task_loss(self, fused: torch.Tensor, uni: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """CE(fused) + sum_m CE_m: the unimodal terms train the encoders under `multimodal+unimodal`, only
        the (detached) probe heads under `multimodal` (and nothing for `fused_block` heads, which are the
        fusion's own weights). The plain objective every balancer starts from."""
        loss = F.cross_entropy(fused, labels)
        if self.loss_setting == "multimodal" and self.unimodal_head == "fused_block":
            return loss
        return loss + sum(F.cross_entropy(uni[m], labels) for m in self.modalities)


def epoch_batches(trainer: Trainer, epoch: int) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """The batches the trainer's train loader yields in `epoch` (it is re-seeded per epoch)."""
    return [(inputs, labels) for inputs, labels in trainer._train_loader(epoch)]


def build(raw: dict[str, Any], noise_seed: int = 1234) -> tuple[Trainer, Reference]:
    """Trainer and Reference in torch's current default dtype: call it inside `default_dtype()`."""
    trainer = Trainer(build_trial_config(raw))
    trainer.balancer.generator = torch.Generator().manual_seed(noise_seed)
    model, extra = copy.deepcopy(trainer.model), copy.deepcopy(trainer.extra)
    params = [*model.parameters(), *extra.parameters()]
    o = trainer.cfg.optim
    optimizer = (torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
                 if o.name == "sgd" else torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay))
    specs = trainer.data.modalities
    raw_batches = [epoch_batches(trainer, e) for e in range(trainer.cfg.epochs)]
    # Training augmentation (CREMA-D's random crops and flips) draws from torch's global RNG, so a second
    # pass over a loader yields other pixels: the trainer trains on the recorded batches instead (a list
    # per epoch, iterable as often as a balancer reads `state.train_loader`).
    trainer._train_loader = raw_batches.__getitem__
    ready = [[({m: model_input(x[m], specs[m], torch.device("cpu")) for m in trainer.modalities}, y) for x, y in epoch]
             for epoch in raw_batches]
    ref = Reference(
        model=model, extra=extra, optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.StepLR(optimizer, step_size=o.lr_step, gamma=o.lr_gamma),
        batches=ready, raw_batches=raw_batches, modalities=list(trainer.modalities),
        num_classes=trainer.data.num_classes, num_epochs=trainer.cfg.epochs, steps_per_epoch=len(raw_batches[0]),
        loss_setting=trainer.cfg.loss_setting, unimodal_head=trainer.cfg.model.unimodal_head, generator=torch.Generator().manual_seed(noise_seed))
    return trainer, ref


def max_difference(a: nn.Module, b: nn.Module) -> tuple[float, str]:
    """The largest |a - b| over parameters and float buffers (BatchNorm statistics), and where it is."""
    worst, where = 0.0, ""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name, ta in sa.items():
        if not ta.is_floating_point():  # e.g. BatchNorm's num_batches_tracked: equal or infinitely far
            diff = 0.0 if torch.equal(ta, sb[name]) else float("inf")
        else:
            diff = float((ta - sb[name]).abs().max()) if ta.numel() else 0.0
        if not diff <= worst:  # NaN counts as the worst
            worst, where = diff, name
    return worst, where


def assert_same(ref: Reference, trainer: Trainer, when: str, tol: float = TOL) -> None:
    for label, a, b in (("model", ref.model, trainer.model), ("extra", ref.extra, trainer.extra)):
        dtypes = {t.dtype for t in [*a.state_dict().values(), *b.state_dict().values()] if t.is_floating_point()}
        assert dtypes <= {torch.get_default_dtype()}, f"{when}: {label} holds {dtypes}, not the run's dtype"
        diff, where = max_difference(a, b)
        assert diff <= tol, f"{when}: {label}.{where} differs by {diff:.3g} (> {tol}) from the reference"


def run_golden(raw: dict[str, Any], reference: Callable[..., Iterator[Any]], noise_seed: int = 1234,
               tol: float = TOL, min_steps: int = 20, dtype: torch.dtype = DTYPE,
               **reference_params: Any) -> tuple[Trainer, Reference]:
    """Trains both sides epoch by epoch from the same start, in `dtype`, and asserts they agree after every
    epoch.

    Returns the trainer (its `history` holds the balancer's per-epoch metrics, so a test can assert that
    the method's phases really occurred) and the reference (whatever state the loop kept on it). Their
    tensors stay in `dtype`; torch's default dtype is restored when this returns or fails."""
    with default_dtype(dtype):
        trainer, ref = build(raw, noise_seed)
        assert_same(ref, trainer, "at initialisation", tol)
        loop = reference(ref, **reference_params)
        for epoch in range(trainer.cfg.epochs):
            trainer.train_epoch()
            next(loop)
            assert_same(ref, trainer, f"after epoch {epoch + 1} (step {trainer.state.step})", tol)
    assert trainer.state.step >= min_steps, f"{trainer.state.step} optimizer steps; a golden run needs >= {min_steps}"
    return trainer, ref
