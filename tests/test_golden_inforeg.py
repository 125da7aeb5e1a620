"""InfoReg through the real Trainer vs the authors' loop (tests/reference/inforeg.py)."""
import pytest

from golden import run_golden, tiny_config
from reference import inforeg


def test_inforeg_matches_the_reference_with_the_window_open_then_closed():
    # window 2 and threshold 0.3 so that the prime-learning window closes within 6 epochs (defaults: 10, 0.04)
    params = {"window": 2, "threshold": 0.3, "coef_first": 0.95, "coef_second": 0.5}
    log = []
    trainer, ref = run_golden(tiny_config({"name": "inforeg", **params}, epochs=6), inforeg.train,
                              threshold=0.3, window=2, coef={"audio": 0.95, "visual": 0.5}, log=log)
    h = trainer.history
    open_a = [r["inforeg_window_open_audio"] for r in h]
    fired = [r["inforeg_fired_audio"] + r["inforeg_fired_visual"] for r in h]
    assert open_a[0] == 1.0 and 0.0 in open_a, open_a  # open at the start, closed later
    assert any(f > 0 for f in fired) and any(f == 0 for f in fired), fired  # regulated, then not
    # the Fisher traces (gradients after the proximal term): ours is the per-step mean, the code's the sum
    for record, ref_epoch in zip(h, log):
        for m in ("audio", "visual"):
            assert record[f"inforeg_fisher_{m}"] * ref.steps_per_epoch == pytest.approx(ref_epoch["trace"][m], rel=1e-4)
            assert record[f"inforeg_k_{m}"] == pytest.approx(ref_epoch["k"][m], rel=1e-4, abs=1e-6)
