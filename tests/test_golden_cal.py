"""CAL (our reading) through the real Trainer vs an independent reference loop (tests/reference/cal.py),
the same AIB noise on both sides."""
import pytest

from golden import run_golden, tiny_config
from reference import cal


def assert_phases(trainer, ref, warmup_epochs):
    accelerating = [r["cal_accelerating"] for r in trainer.history]
    assert accelerating == [0.0] * warmup_epochs + [1.0] * (len(accelerating) - warmup_epochs)
    assert all(r["cal_kl"] > 0 for r in trainer.history)  # the bottleneck is on throughout
    per_epoch = [ref.weights[i:i + trainer.state.steps_per_epoch]
                 for i in range(0, len(ref.weights), trainer.state.steps_per_epoch)]
    for record, steps in zip(trainer.history, per_epoch):
        for m in trainer.modalities:
            assert record[f"cal_w_{m}"] == pytest.approx(sum(w[m] for w in steps) / len(steps), rel=1e-5)


def test_cal_matches_the_reference_under_the_multimodal_loss():
    params = {"warmup_epochs": 1, "beta0": 0.05, "temperature": 1.0}
    trainer, ref = run_golden(tiny_config({"name": "cal", **params}, epochs=5), cal.train, **params)
    assert_phases(trainer, ref, 1)
    assert all(r["cal_uni_weight"] == 0.0 for r in trainer.history)


def test_cal_matches_the_reference_with_weighted_unimodal_losses():
    """gamma_uni = 0.5 under `multimodal+unimodal`: CE(fused) + 0.5 sum_m CE_m + AIB, not the trainer's 1."""
    params = {"warmup_epochs": 2, "beta0": 0.05, "temperature": 5.0, "gamma_uni": 0.5}
    trainer, ref = run_golden(tiny_config({"name": "cal", **params}, epochs=6, loss_setting="multimodal+unimodal"),
                              cal.train, **params)
    assert_phases(trainer, ref, 2)
    assert all(r["cal_uni_weight"] == 0.5 for r in trainer.history)
    weights = [w for step in ref.weights for w in step.values()]
    assert max(weights) - min(weights) > 0.05  # the contributions really differ between modalities
