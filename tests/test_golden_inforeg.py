"""InfoReg through the real Trainer vs the authors' loop (tests/reference/inforeg.py)."""
from golden import run_golden, tiny_config
from reference import inforeg


def test_inforeg_matches_the_reference_with_the_window_open_then_closed():
    # window 2 and threshold 0.3 so that the prime-learning window closes within 6 epochs (defaults: 10, 0.04)
    params = {"window": 2, "threshold": 0.3, "coef_first": 0.95, "coef_second": 0.5}
    trainer, _ = run_golden(tiny_config({"name": "inforeg", **params}, epochs=6), inforeg.train,
                            threshold=0.3, window=2, coef={"audio": 0.95, "visual": 0.5})
    h = trainer.history
    open_a = [r["inforeg_window_open_audio"] for r in h]
    fired = [r["inforeg_fired_audio"] + r["inforeg_fired_visual"] for r in h]
    assert open_a[0] == 1.0 and 0.0 in open_a, open_a  # open at the start, closed later
    assert any(f > 0 for f in fired) and any(f == 0 for f in fired), fired  # regulated, then not
