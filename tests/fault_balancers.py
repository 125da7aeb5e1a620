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


class PlacementParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    folder: str
    hold_s: float = 0.5  # per epoch, so that trials placed together really overlap


class RecordPlacement(Balancer):
    """Records, per epoch, when and where the trial ran (pid, the GPU ids Ray gave it): the resource tests
    read these files to see which trials ran at the same time."""

    name = "record_placement"
    Params = PlacementParams

    def on_epoch_start(self, state):
        import json
        import os
        import time

        import ray
        from ray import tune

        start = time.time()
        time.sleep(self.p.hold_s)
        row = {"pid": os.getpid(), "trial": tune.get_context().get_trial_id(), "start": start, "end": time.time(),
               "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
        with open(Path(self.p.folder) / f"{os.getpid()}-{start:.6f}.json", "w") as fh:
            json.dump(row, fh)
