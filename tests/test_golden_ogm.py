"""OGM and OGM-GE through the real Trainer vs the authors' loop (tests/reference/ogm.py)."""
import pytest

from golden import run_golden, tiny_config
from reference import ogm


@pytest.mark.parametrize("name", ["ogm", "ogm_ge"])
def test_ogm_matches_the_reference_in_and_out_of_the_window(name):
    # 6 epochs x 4 steps; modulation in epochs 1..3 (0-based, `ends` inclusive): epochs 0, 4, 5 plain.
    params = {"alpha": 2.0, "modulation_starts": 1, "modulation_ends": 3}
    trainer, _ = run_golden(tiny_config({"name": name, **params}, epochs=6), ogm.train,
                            alpha=2.0, starts=1, ends=3, ge=name == "ogm_ge")
    active = [r["ogm_active"] for r in trainer.history]
    assert active == [0.0, 1.0, 1.0, 1.0, 0.0, 0.0]  # the `<= ends` epoch (3) is modulated
    coeffs = [min(r["ogm_coeff_audio"], r["ogm_coeff_visual"]) for r in trainer.history[1:4]]
    assert max(coeffs) < 0.9  # the modulation really scaled a modality in the window
