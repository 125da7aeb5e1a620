"""Diagnosing & Re-learning through the real Trainer vs. the plain loop written from the authors' code
(tests/reference/relearn.py), with the held-out part of the training split fed to both sides."""
import pytest
import torch

from golden import assert_same, build, default_dtype, tiny_config
from reference import relearn as reference
from trainables.data.base import model_input


@pytest.mark.parametrize("fusion,setting", [("concat", "multimodal"), ("late", "multimodal+unimodal")])
def test_relearn_matches_the_authors_loop(fusion, setting):
    params = {"move_lambda": 3.0, "reinit_every": 1, "reinit_times": 2, "kmeans_seed": 0}
    raw = tiny_config({"name": "relearn", "holdout_fraction": 0.25, **params}, epochs=5, n_train=96,
                      model={"feature_dim": 16, "fusion": fusion}, loss_setting=setting)
    with default_dtype():  # float64, as run_golden
        trainer, ref = build(raw)
        specs = trainer.data.modalities
        holdout = [({m: model_input(x[m], specs[m], torch.device("cpu")) for m in trainer.modalities}, y)
                   for x, y in trainer.state.holdout_loader]
        assert sum(len(y) for _, y in holdout) == 24 and len(trainer.train_set) == 72  # 25% held out, never trained on
        assert_same(ref, trainer, "at initialisation")
        loop = reference.train(ref, holdout, **params)
        for epoch in range(trainer.cfg.epochs):
            trainer.train_epoch()
            next(loop)
            assert_same(ref, trainer, f"after epoch {epoch + 1}")
        assert trainer.state.step >= 20
    h = trainer.history
    assert [r["relearn_count"] for r in h] == [0.0, 0.0, 1.0, 2.0, 2.0]  # after epochs 1 and 2, then no more
    weights = [h[e][f"relearn_weight_{m}"] for e in (2, 3) for m in ("audio", "visual")]
    assert all(0 <= w < 1 for w in weights) and any(w > 0 for w in weights)  # a real pull toward the init
