"""The multimodal trainer: one readable loop that fires events for balancers and never names a method.

Runs in-process (`mmstudy debug`, a notebook, a debugger) and under Ray Tune through a thin adapter.
Model selection is on the validation split; the test metrics of the best validation epoch are the result.
"""
from __future__ import annotations

import math
import random
import time
from functools import partial
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, Subset

from trainables.balancers.base import State
from trainables.balancers.registry import build_balancer
from trainables.config import TrialConfig
from trainables.contribution import CoalitionAccuracy
from trainables.data.base import DatasetBundle, model_input
from trainables.data.on_device import device_data, with_device_augmentation
from trainables.data.registry import build_dataset
from trainables.dynamics import DynamicsTracker
from trainables.metrics import accuracy, macro_f1
from trainables.rng import rng_state, set_rng_state
from trainables.models import build_model
from trainables.precision import Precision


class TrialDiverged(RuntimeError):
    """The loss became NaN or infinite: the trial ends with status `diverged`."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from trainables.errors import ConfigError

        raise ConfigError("device: 'cuda' requested but no GPU is visible; allowed here: auto, cpu")
    return torch.device(name)


def holdout_split(dataset, fraction: float, seed: int) -> tuple[Any, Any]:
    """(rest, held-out): a seeded `fraction` of the training split held out for a balancer (G-Blending's
    V), both in dataset order; (dataset, None) for fraction 0."""
    if fraction <= 0:
        return dataset, None
    n_hold = max(1, round(fraction * len(dataset)))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(dataset, sorted(order[n_hold:])), Subset(dataset, sorted(order[:n_hold]))


def select_modalities(available: list[str], wanted: list[str] | None) -> list[str]:
    if not wanted:
        return list(available)
    unknown = [m for m in wanted if m not in available]
    if unknown or len(set(wanted)) != len(wanted):
        from trainables.errors import ConfigError

        raise ConfigError(f"modalities: {wanted} is not a subset of the dataset's modalities; allowed: {available}")
    return [m for m in available if m in wanted]


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seeds every RNG. Deterministic kernels on CPU (same seed, same metrics); on a GPU the fast
    cuDNN autotuned kernels are kept instead (runs are seeded but not bit-identical)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = not deterministic


def mixed_cross_entropy(logits: torch.Tensor, targets: list[tuple[float, torch.Tensor]]) -> torch.Tensor:
    """sum_k w_k * CE(logits, y_k): plain CE for one target, the mixup loss for two."""
    return sum(w * F.cross_entropy(logits, y) for w, y in targets)


class Trainer:
    def __init__(self, cfg: TrialConfig, data: DatasetBundle | None = None):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        seed_everything(cfg.seed, deterministic=self.device.type == "cpu")
        # A shared, pre-built dataset is used only if it was built from this trial's dataset config
        # (a study may vary dataset fields per trial).
        same = data is not None and (not data.spec or data.spec == cfg.to_dict()["dataset"])
        self.data = data if same else build_dataset(cfg.dataset.name, cfg.dataset_params())
        self.modalities = select_modalities(self.data.modality_names, cfg.modalities)
        specs = {m: self.data.modalities[m] for m in self.modalities}
        self.balancer = build_balancer(cfg.balancer.name, cfg.balancer_params(), self.modalities)
        self.train_set, holdout = holdout_split(self.data.train, self.balancer.holdout_fraction, cfg.seed)
        self.model = build_model(specs, self.data.num_classes, cfg.model).to(self.device)
        self.precision = Precision(cfg.precision, self.device)  # validated before anything is built on it
        if self.device.type == "cuda" and self.precision.name != "fp32":  # NHWC for tensor-core convolutions;
            self.model.use_channels_last()                                  # fp32 keeps the NCHW path as it was
        if cfg.compile:
            self.model.compile_encoders()
        self.balancer.bind_model(self.model)
        extra = self.balancer.extra_modules()
        self.extra = extra.to(self.device) if extra is not None else nn.Module()
        params = [*self.model.parameters(), *self.extra.parameters()]
        o = cfg.optim
        if o.name == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        else:
            self.optimizer = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=o.lr_step, gamma=o.lr_gamma)
        pin = self.device.type == "cuda"
        # dataset.on_device: a prepared cache held on the device, augmented there (None: the loader path)
        self.on_device = device_data(self.data, getattr(cfg.dataset_params(), "on_device", False), self.device)
        if self.on_device is not None and holdout is not None:
            from trainables.errors import ConfigError

            raise ConfigError(f"dataset.on_device: not supported with balancer '{cfg.balancer.name}', which holds "
                              "out part of the training split; allowed: false")
        self.eval_loaders = {
            split: self.on_device.loader(split, 2 * o.batch_size) if self.on_device else
            DataLoader(getattr(self.data, split), batch_size=2 * o.batch_size, shuffle=False,
                       num_workers=cfg.num_workers, pin_memory=pin)
            for split in ("val", "test")
        }
        steps = math.ceil(len(self.train_set) / o.batch_size)
        self.state = State(
            model=self.model, optimizer=self.optimizer, modalities=self.modalities,
            num_classes=self.data.num_classes, num_epochs=cfg.epochs, steps_per_epoch=steps,
            loss_setting=cfg.loss_setting, device=self.device, train_loader=self._train_loader(0),
            model_input=self._to_device, optimize=self.optimize, autocast=self.precision.autocast, holdout_loader=None if holdout is None else
            DataLoader(holdout, batch_size=2 * o.batch_size, shuffle=False, num_workers=cfg.num_workers, pin_memory=pin),
        )
        probe_inputs, probe_labels = next(iter(DataLoader(self.data.val, batch_size=min(64, len(self.data.val)))))
        self.dynamics = DynamicsTracker(self._to_device(probe_inputs), probe_labels.to(self.device), seed=cfg.seed)
        self.history: list[dict[str, Any]] = []
        self.predictions: dict[str, dict[str, torch.Tensor]] = {}  # split -> the latest epoch's label, prediction
        # the test split's labels and fused predictions at the best validation epoch (`best`'s rule): a paired
        # per-example comparison of methods needs them, and they travel with the checkpoint
        self.best_test_predictions: dict[str, torch.Tensor] | None = None
        self.epoch = 0  # next epoch to run (0-based)
        self.balancer.on_fit_start(self.state)

    # ------------------------------------------------------------------ data
    def _train_loader(self, epoch: int) -> DataLoader:
        # A generator seeded per epoch makes the shuffle order reproducible after a resume.
        gen = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        if self.on_device is not None:  # same order (same permutation); crops and flips from `gen` too
            return self.on_device.loader("train", self.cfg.optim.batch_size, gen)
        loader = DataLoader(self.train_set, batch_size=self.cfg.optim.batch_size,
                            sampler=RandomSampler(self.train_set, generator=gen), num_workers=self.cfg.num_workers,
                            pin_memory=self.device.type == "cuda", drop_last=False)
        return with_device_augmentation(loader, self.data, self.device, gen)  # dataset.augment_on_device

    def _to_device(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: model_input(inputs[m], self.data.modalities[m], self.device) for m in self.modalities}

    # ------------------------------------------------------------------ training
    def train_step(self, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> float:
        s, b = self.state, self.balancer
        s.inputs, s.labels = self._to_device(inputs), labels.to(self.device)
        s.targets, s.unimodal_targets, s.loss_terms = [(1.0, s.labels)], {}, {}
        b.on_batch_start(s)
        loss = b.train_step(s, self.joint_step)  # the joint step below, or a method's own sub-steps
        b.after_step(s)
        s.step += 1
        return loss

    def joint_step(self) -> float:
        """Forward all modalities, the loss, one backward and one optimizer step, with the events between."""
        s, b = self.state, self.balancer
        with self.precision.autocast():  # forward and loss only; backward and after_backward hooks run in fp32
            s.features = b.transform_features(self.model.encode(s.inputs), training=True)
            b.after_encode(s)
            s.fused_logits = self.model.fuse(s.features)
            probe_only = self.cfg.loss_setting == "multimodal"
            s.unimodal_logits = self.model.unimodal_logits(s.features, detach_probe=probe_only)
            objective = mixed_cross_entropy(s.fused_logits, s.targets)
            uni = {m: mixed_cross_entropy(s.unimodal_logits[m], s.unimodal_targets.get(m, s.targets))
                   for m in self.modalities}
            if not probe_only:
                objective = objective + sum(uni.values())
            s.loss = objective
            b.after_loss(s)  # balancers may add terms to s.loss
        if not torch.isfinite(s.loss):
            raise TrialDiverged(f"loss is {float(s.loss.detach())} at epoch {s.epoch + 1}, step {s.step}")
        total = s.loss + (sum(uni.values()) if probe_only and self.model.unimodal_head == "separate" else 0.0)
        self.optimize(total, lambda: b.after_backward(s))  # balancers may change gradients
        return float(s.loss.detach())

    def optimize(self, loss: torch.Tensor, modify_gradients: Callable[[], None] | None = None) -> None:
        """One optimizer update from `loss`: the joint step's, or each sub-step of a balancer that updates
        several times per batch (`Balancer.train_step`), so precision scaling works the same for both."""
        if not torch.isfinite(loss):
            raise TrialDiverged(f"loss is {float(loss.detach())} at epoch {self.state.epoch + 1}, step {self.state.step}")
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.backward(loss)
        if self.precision.unscale(self.optimizer) and modify_gradients is not None:
            modify_gradients()  # skipped on an fp16 overflow step, which the GradScaler skips too
        self.precision.step(self.optimizer)

    def train_epoch(self) -> dict[str, Any]:
        start = time.perf_counter()
        s = self.state
        s.epoch = self.epoch
        s.train_loader = self._train_loader(self.epoch)
        self.model.train()
        self.extra.train()
        self.balancer.reset_epoch_metrics()
        self.balancer.on_epoch_start(s)
        losses, n = 0.0, 0
        step_times: list[float] = []
        tick = time.perf_counter()
        for inputs, labels in s.train_loader:
            losses += self.train_step(inputs, labels) * len(labels)
            n += len(labels)
            step_times.append(time.perf_counter() - tick)  # train_step syncs (it reads the loss)
            tick = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.balancer.on_epoch_end(s)
        record: dict[str, Any] = {"epoch": self.epoch + 1, "train_loss": losses / max(n, 1), "lr": lr,
                                  "precision": self.precision.name}
        if self.cfg.compile and self.epoch == 0 and len(step_times) > 1:
            # the first step's extra time over a typical step: torch.compile's tracing and code generation
            record["compile_time_s"] = max(step_times[0] - float(np.median(step_times[1:])), 0.0)
        for split in ("val", "test"):
            record.update({f"{split}_{k}": v for k, v in self.evaluate(split).items()})
        record.update(self.dynamics.measure(self.model, self.epoch))
        record.update(self.balancer.epoch_metrics())
        record["epoch_time_s"] = time.perf_counter() - start
        self.history.append(record)
        if self.best()["epoch"] == record["epoch"]:
            self.best_test_predictions = self.predictions["test"]
        self.epoch += 1
        return record

    def fit(self, on_epoch: Callable[[dict[str, Any], "Trainer"], None] | None = None) -> dict[str, Any]:
        while self.epoch < self.cfg.epochs:
            record = self.train_epoch()
            if on_epoch is not None:
                on_epoch(record, self)
        return self.result()

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict(self, split: str, coalitions: CoalitionAccuracy | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        self.model.eval()
        self.extra.eval()
        fused, uni, labels = [], {m: [] for m in self.modalities}, []
        for inputs, y in self.eval_loaders[split]:
            with self.precision.autocast():
                feats = self.balancer.transform_features(self.model.encode(self._to_device(inputs)), training=False)
                fused.append(self.balancer.predict_logits(self.model, feats).argmax(1).cpu())
                if coalitions is not None:  # the prediction with modalities masked: Shapley contributions
                    coalitions.add(partial(self.balancer.predict_logits, self.model), feats, y)
                for m, logits in self.model.unimodal_logits(feats).items():
                    uni[m].append(logits.argmax(1).cpu())
            labels.append(y)
        return torch.cat(fused), {m: torch.cat(v) for m, v in uni.items()}, torch.cat(labels)

    def evaluate(self, split: str) -> dict[str, float]:
        coalitions = CoalitionAccuracy(self.modalities)
        fused, uni, labels = self.predict(split, coalitions)
        self.predictions[split] = {"label": labels, "prediction": fused}
        out = {"acc": accuracy(fused, labels), "f1": macro_f1(fused, labels, self.data.num_classes)}
        out.update({f"acc_{m}": accuracy(p, labels) for m, p in uni.items()})
        out.update(coalitions.metrics())  # shapley_<m>, imbalance (trainables.contribution)
        return out

    def best(self) -> dict[str, Any]:
        """The epoch with the best selection metric (earliest on ties) and its test metrics."""
        if not self.history:
            return {}
        key = f"{self.cfg.selection}_acc"
        best = max(self.history, key=lambda r: (r[key], -r["epoch"]))
        out = {k: v for k, v in best.items() if k == "epoch" or k.startswith(("val_", "test_"))}
        out["selection"] = self.cfg.selection
        return out

    def result(self) -> dict[str, Any]:
        return {"config": self.cfg.to_dict(), "history": self.history, "best": self.best()}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(), "extra": self.extra.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "balancer": self.balancer.state_dict(), "epoch": self.epoch, "step": self.state.step,
            "history": self.history, "dynamics_prev": self.dynamics.prev, "rng": rng_state(),
            "grad_scaler": self.precision.state_dict(), "best_test_predictions": self.best_test_predictions,
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.model.load_state_dict(sd["model"])
        self.extra.load_state_dict(sd["extra"])
        self.optimizer.load_state_dict(sd["optimizer"])
        self.scheduler.load_state_dict(sd["scheduler"])
        self.balancer.load_state_dict(sd["balancer"])
        self.epoch, self.state.step, self.history = sd["epoch"], sd["step"], list(sd["history"])
        self.dynamics.prev = dict(sd["dynamics_prev"])
        self.precision.load_state_dict(sd.get("grad_scaler", {}))
        self.best_test_predictions = sd.get("best_test_predictions")  # absent in checkpoints before issue 24
        if "rng" in sd:  # torch, NumPy and Python streams (checkpoints before issue 17 hold torch's only)
            set_rng_state(sd["rng"])
        else:
            torch.set_rng_state(sd["torch_rng"].cpu())

    def save(self, path: str) -> None:
        torch.save(self.state_dict(), path)

    def load(self, path: str) -> None:
        # weights_only: a checkpoint is data, never code to execute.
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))
