"""MMPareto through the real Trainer matches the authors' loop (separate backward passes) step for step."""
import pytest

from golden import run_golden, tiny_config
from reference import mmpareto
from trainables.balancers.mmpareto import min_norm_two, pareto_weights
import torch


def _conflict_fracs(history, modality):
    return [r[f"mmpareto_conflict_{modality}"] for r in history]


@pytest.mark.parametrize("variant, ref_params", [
    ("code", {}),
    ("paper", {"agree_when": "ge", "rescale_scope": "encoder"}),
])
def test_mmpareto_matches_the_authors_loop(variant, ref_params):
    raw = tiny_config({"name": "mmpareto", "variant": variant}, loss_setting="multimodal+unimodal")
    trainer, ref = run_golden(raw, mmpareto.train, **ref_params)
    conflicts = [f for m in trainer.modalities for f in _conflict_fracs(trainer.history, m)]
    # both branches ran: some steps agreed (equal weights), some conflicted (min-norm weights)
    assert 0 < sum(conflicts) < len(conflicts), conflicts
    assert any(abs(r[f"mmpareto_alpha_mm_{m}"] - 0.5) > 0.01 for r in trainer.history for m in trainer.modalities)
    # the recorded weight is the multimodal gradient's: the min-norm point is symmetric in its two gradients,
    # so only this record tells g_mm from g_u
    steps = trainer.state.steps_per_epoch
    for e, record in enumerate(trainer.history):
        for m in trainer.modalities:
            expected = sum(k[m] for k in ref.alpha_mm[e * steps:(e + 1) * steps]) / steps
            assert record[f"mmpareto_alpha_mm_{m}"] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("fusion", ["concat", "late"])
def test_mmpareto_without_unimodal_losses_matches_the_authors_loop(fusion):
    raw = tiny_config({"name": "mmpareto"}, loss_setting="multimodal", model={"feature_dim": 16, "fusion": fusion})
    trainer, _ = run_golden(raw, mmpareto.train)
    ratios = [r[f"mmpareto_norm_ratio_{m}"] for r in trainer.history for m in trainer.modalities]
    assert all(abs(x - 1.5) < 1e-4 for x in ratios), ratios  # g_u = 0: gamma * g_mm


def test_min_norm_weights_by_hand():
    # x1 = (1, 0), x2 = (-1, 1): c = (2 - (-1)) / (1 + 2 + 2) = 0.6, |0.6 x1 + 0.4 x2| = |(0.2, 0.4)|
    assert min_norm_two(1.0, -1.0, 2.0) == pytest.approx((0.6, 0.4))
    assert min_norm_two(1.0, 1.0, 4.0) == (0.999, 0.001)  # x1 is itself the min-norm point
    a_mm, a_u, cos = pareto_weights(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]), "gt")
    assert (a_mm, a_u) == (0.5, 0.5) and cos == pytest.approx(2 ** -0.5)
    assert pareto_weights(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), "ge")[:2] == (0.5, 0.5)
    assert pareto_weights(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), "gt")[:2] == (0.5, 0.5)  # c = 1/2
