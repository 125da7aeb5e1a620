"""PMR through the real Trainer vs. the plain loop written from the authors' code (tests/reference/pmr.py)."""
import pytest

from golden import run_golden, tiny_config
from reference import pmr as reference


@pytest.mark.parametrize("fusion,setting,fraction", [("concat", "multimodal", 0.1),
                                                     ("late", "multimodal+unimodal", 0.5)])
def test_pmr_matches_the_authors_loop(fusion, setting, fraction):
    params = {"alpha": 1.5, "momentum": 0.3, "modulation_starts": 1, "modulation_ends": 3, "proto_fraction": fraction}
    raw = tiny_config({"name": "pmr", **params}, epochs=5, model={"feature_dim": 16, "fusion": fusion},
                      loss_setting=setting)
    trainer, _ = run_golden(raw, reference.train, **params)
    active = [r["pmr_active"] for r in trainer.history]
    assert active == [0.0, 1.0, 1.0, 1.0, 0.0]  # the window, both ends inclusive
    pushed = [r["pmr_coeff_audio"] + r["pmr_coeff_visual"] for r in trainer.history]
    assert all(p > 0 for p in pushed[1:4]) and pushed[0] == pushed[4] == 0.0
