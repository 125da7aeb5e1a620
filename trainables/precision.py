"""Mixed precision for one trial: the autocast dtype, and a GradScaler where fp16 needs one.

Only the forward pass and the loss run under autocast. Parameters, their gradients and optimizer state stay
fp32, and every balancer hook that runs after the backward pass (OGM's scores, InfoReg's Fisher trace,
RedReg's monitor and projection) runs outside autocast, in fp32 (docs/balancers.md, "Precision").
A measurement taken of autocast outputs (a score, an entropy, a probability) is `upcast` first.
"""
from __future__ import annotations

import contextlib

import torch

from trainables.errors import ConfigError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(name: str, device: torch.device) -> str:
    """`auto`: bf16 on a CUDA device that supports it, else fp32 (CPU runs stay bit-deterministic)."""
    cuda = device.type == "cuda"
    if name == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if name == "fp16" and not cuda:
        raise ConfigError(f"precision: 'fp16' needs a CUDA device (this trial runs on {device.type}); "
                          "allowed here: auto, fp32, bf16")
    if name == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ConfigError("precision: 'bf16' is not supported by this GPU; allowed here: auto, fp32, fp16")
    return name


def upcast(x: torch.Tensor) -> torch.Tensor:
    """`x` in at least float32: autocast's bf16/fp16 outputs are raised to float32 before a balancer
    measures them; float32 stays as it is, and float64 (the golden tests' dtype) is never lowered."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class Precision:
    """What the trainer needs: `autocast()` around forward + loss, `backward`, `unscale` and `step`."""

    def __init__(self, name: str, device: torch.device):
        self.name = resolve_precision(name, device)
        self.device_type = device.type
        self.dtype = DTYPES[self.name]
        self.scaler = torch.amp.GradScaler(device.type) if self.name == "fp16" else None

    def autocast(self):
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> bool:
        """Gradients back at their true scale before balancers read or change them; False when an fp16
        overflow makes this step one the scaler will skip (balancers then leave it alone)."""
        if self.scaler is None:
            return True
        self.scaler.unscale_(optimizer)
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads else True

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, sd: dict) -> None:
        if self.scaler is not None and sd:
            self.scaler.load_state_dict(sd)
