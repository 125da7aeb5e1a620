"""B-MM through the real Trainer vs an independent reference loop (tests/reference/bmm.py), same noise;
on the synthetic benchmark and on a CREMA-D fixture whose frames are normalised on the way in."""
import pytest
import torch

from dataset_fixtures import write_crema_d
from golden import build, crema_d_config, default_dtype, run_golden, tiny_config
from reference import bmm
from trainables.balancers.bmm import masked_modality_scores


def assert_phases(trainer, ref, warmup_epochs):
    """Warm-up epochs train plainly; every later epoch mixes with the degree measured at the end of the one
    before; rho is re-measured at every epoch end."""
    degrees = [r["bmm_degree"] for r in trainer.history]
    assert degrees[:warmup_epochs] == [0.0] * warmup_epochs
    assert all(d > 0 for d in degrees[warmup_epochs:]), degrees
    for before, now in zip(trainer.history, trainer.history[1:]):
        if now["epoch"] > warmup_epochs:
            assert now["bmm_degree"] == before["bmm_next_degree"]
    assert len({round(r["bmm_imbalance"], 9) for r in trainer.history}) == len(trainer.history)  # re-measured
    assert [r["bmm_imbalance"] for r in trainer.history] == pytest.approx(ref.rhos, rel=1e-5)
    assert degrees == pytest.approx(ref.deltas, rel=1e-5, abs=1e-9)


def test_bmm_matches_the_reference_on_the_synthetic_benchmark():
    params = {"alpha": 2.0, "warmup_epochs": 2}
    trainer, ref = run_golden(tiny_config({"name": "bmm", **params}, epochs=6), bmm.train, **params)
    assert_phases(trainer, ref, 2)


def test_bmm_matches_the_reference_on_normalised_crema_d(tmp_path):
    root = write_crema_d(tmp_path / "crema")
    params = {"alpha": 2.0, "warmup_epochs": 2}
    trainer, ref = run_golden(crema_d_config(root, {"name": "bmm", **params}, epochs=7), bmm.train, **params)
    assert_phases(trainer, ref, 2)


def test_bmm_measures_rho_on_the_tensors_the_model_trains_on(tmp_path):
    """On CREMA-D the loader yields uint8 frames; the model sees them scaled and normalised. B-MM's scores
    must be those of the normalised frames, which differ from the raw ones on this fixture."""
    root = write_crema_d(tmp_path / "crema")
    with default_dtype():
        trainer, ref = build(crema_d_config(root, {"name": "bmm", "warmup_epochs": 0}, epochs=1))
        trainer.train_epoch()
        raw = [(x, y) for epoch in ref.raw_batches for x, y in epoch]
        assert raw[0][0]["visual"].dtype == torch.uint8
        args = (trainer.model, raw, trainer.modalities)
        ours = masked_modality_scores(*args, trainer.state.model_input, trainer.device)
        as_floats = masked_modality_scores(*args, lambda x: {m: t.double() for m, t in x.items()}, trainer.device)
    assert trainer.balancer.rho == pytest.approx(ours["audio"] / ours["visual"], rel=1e-6)
    assert abs(ours["visual"] - as_floats["visual"]) > 1e-3 * ours["visual"]
