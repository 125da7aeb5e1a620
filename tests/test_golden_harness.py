"""The golden harness itself: a plain loop matches the `none` balancer, and a wrong step does not."""
import pytest

from dataset_fixtures import write_crema_d
from golden import crema_d_config, run_golden, tiny_config
from reference import plain


def test_plain_loop_matches_the_trainer_with_no_balancer():
    trainer, ref = run_golden(tiny_config({"name": "none"}), plain)
    assert trainer.state.step == 20 and len(ref.batches) == 5


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


def test_crema_d_fixture_runs_through_the_real_loader(tmp_path):
    root = write_crema_d(tmp_path / "crema")
    trainer, ref = run_golden(crema_d_config(root, {"name": "none"}, epochs=2), plain, min_steps=6)
    visual = ref.batches[0][0][0]["visual"]
    assert ref.raw_batches[0][0][0]["visual"].dtype.is_floating_point is False  # uint8 from the loader
    assert visual.dtype.is_floating_point and float(visual.abs().max()) < 10  # normalised, not 0-255
