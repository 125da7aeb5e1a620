"""MM through the real Trainer vs an independent reference loop (tests/reference/mm.py), same noise."""
import pytest

from golden import run_golden, tiny_config
from reference import mm


@pytest.mark.parametrize("level", ["feature", "input"])
def test_mm_matches_the_reference_step_for_step(level):
    params = {"alpha": 0.4, "level": level, "warmup_epochs": 1}
    trainer, ref = run_golden(tiny_config({"name": "mm", **params}, epochs=6), mm.train, **params)
    lambdas = [record.get("mm_lambda") for record in trainer.history]
    assert lambdas[0] is None and all(0 < lam < 1 for lam in lambdas[1:])  # plain epoch, then mixing every step


def test_mm_matches_under_the_unimodal_loss_setting():
    params = {"alpha": 1.0}
    run_golden(tiny_config({"name": "mm", **params}, loss_setting="multimodal+unimodal"), mm.train, **params)
