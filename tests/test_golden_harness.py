"""The golden harness itself: a plain loop matches the `none` balancer, and a wrong step does not."""
import pytest
import torch

from dataset_fixtures import write_crema_d
from golden import crema_d_config, run_golden, tiny_config
from reference import plain


def test_plain_loop_matches_the_trainer_with_no_balancer_in_float64():
    trainer, ref = run_golden(tiny_config({"name": "none"}), plain)
    assert trainer.state.step == 20 and len(ref.batches) == 5
    assert {p.dtype for p in [*trainer.model.parameters(), *ref.model.parameters()]} == {torch.float64}
    assert {x.dtype for epoch in ref.batches for inputs, _ in epoch for x in inputs.values()} == {torch.float64}
    assert torch.get_default_dtype() == torch.float32  # restored for the rest of the session


def test_float32_the_training_dtype_matches_bit_for_bit():
    """The dtype studies train in: with no balancer both sides run the same kernels in the same order, so
    they agree exactly on any CPU (a balancer's reordered arithmetic is what float64 is for)."""
    trainer, _ = run_golden(tiny_config({"name": "none"}), plain, dtype=torch.float32, tol=0.0)
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}


def test_a_reference_that_differs_by_one_step_fails():
    def skips_last_step(ref):
        loop = plain(ref)
        for epoch in range(ref.num_epochs):
            if epoch == ref.num_epochs - 1:
                ref.batches[epoch] = ref.batches[epoch][:-1]
            next(loop)
            yield

    with pytest.raises(AssertionError, match="after epoch 5"):
        run_golden(tiny_config({"name": "none"}), skips_last_step)
    assert torch.get_default_dtype() == torch.float32  # restored after a failing run too


def test_crema_d_fixture_runs_through_the_real_loader(tmp_path):
    root = write_crema_d(tmp_path / "crema")
    trainer, ref = run_golden(crema_d_config(root, {"name": "none"}, epochs=2), plain, min_steps=6)
    visual = ref.batches[0][0][0]["visual"]
    assert ref.raw_batches[0][0][0]["visual"].dtype.is_floating_point is False  # uint8 from the loader
    assert visual.dtype == torch.float64 and float(visual.abs().max()) < 10  # normalised, not 0-255
