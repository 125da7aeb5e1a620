"""Ray's OptunaSearch, told that a diverged trial failed.

A diverged trial reports NaN (so Tune's metric check passes and the trial ends cleanly, without the retries
a crash gets); Optuna refuses a NaN told as COMPLETE, which would leave the trial RUNNING in its study and
its region unexplored-but-unpenalised. Telling it as an error marks it FAIL, as a crash would be.
"""
from __future__ import annotations

from ray.tune.search.optuna import OptunaSearch


class DivergenceAwareOptunaSearch(OptunaSearch):
    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result and result.get("diverged"):
            return super().on_trial_complete(trial_id, result=None, error=True)
        return super().on_trial_complete(trial_id, result=result, error=error)
