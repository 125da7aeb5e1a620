"""Fault-injection balancers for the reliability tests (importable by Ray workers: tests/ is on sys.path)."""
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from trainables.balancers.base import Balancer


class CrashParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    marker: str
    at_epoch: int = 1  # 0-based epoch whose first step raises
    always: bool = False


class CrashAtEpoch(Balancer):
    """Raises inside a training step of `at_epoch`: once (then a retry from the checkpoint succeeds), or always."""

    name = "crash_at_epoch"
    Params = CrashParams

    def after_backward(self, state):
        if state.epoch != self.p.at_epoch:
            return
        marker = Path(self.p.marker)
        if self.p.always or not marker.exists():
            marker.write_text("crashed")
            raise RuntimeError(f"injected fault at epoch {state.epoch + 1}")
