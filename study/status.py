"""How a trial ended, from its last reported result: the one rule the MLflow writer, `sync` and the console share.

Tune says only "terminated" for a trial that finished and for one ASHA stopped early, and a diverged trial
reports NaN and returns; the study needs the difference, so it is read off the last result.
"""
from __future__ import annotations

from typing import Any


def trial_status(last: dict[str, Any], epochs: int) -> tuple[str, str]:
    """(status, reason): 'diverged', 'pruned' (stopped by the scheduler before `epochs`) or 'finished'."""
    if last.get("diverged"):
        return "diverged", str(last.get("status_reason", "loss is not finite"))
    done = int(last.get("training_iteration", 0))
    if done < epochs:
        return "pruned", f"stopped by the scheduler after epoch {done}"
    return "finished", ""
