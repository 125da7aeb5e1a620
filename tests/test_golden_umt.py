"""UMT through the real Trainer vs. the plain two-phase loop (tests/reference/umt.py): teachers trained in the
teacher phase, then frozen while the multimodal model trains with the feature distillation; the phase switch,
the freezing and the student's start checked on both sides."""
import pytest
import torch

from golden import run_golden, tiny_config
from reference import umt as reference
from trainables.balancers.umt import distillation_loss, teacher_epochs
from trainables.config import build_trial_config
from trainables.errors import ConfigError
from trainables.trainer import Trainer


@pytest.mark.parametrize("fusion, setting, params, epochs, switch", [
    ("concat", "multimodal", {}, 6, 3),
    ("late", "multimodal+unimodal",
     {"teacher_fraction": 0.4, "distill_weight": 3.0, "teacher_mode": "train", "student_init": "teacher"}, 5, 2),
])
def test_umt_matches_the_two_phase_loop(fusion, setting, params, epochs, switch):
    raw = tiny_config({"name": "umt", **params}, epochs=epochs, loss_setting=setting,
                      model={"feature_dim": 16, "fusion": fusion})
    trainer, ref = run_golden(raw, reference.train, **params)  # 24 / 20 optimizer steps over both phases
    h = trainer.history
    assert [r["umt_distilling"] for r in h] == [0.0] * switch + [1.0] * (epochs - switch)
    assert all("umt_teacher_loss_audio" in r and "umt_distill_audio" not in r for r in h[:switch])
    assert all(r["umt_distill_audio"] > 0 and r["umt_distill_visual"] > 0 and "umt_teacher_loss_audio" not in r
               for r in h[switch:])
    # the teacher phase leaves the model alone: its evaluations are the untrained model's
    assert len({(r["val_acc"], r["test_acc"]) for r in h[:switch]}) == 1
    # frozen teachers: their weights are as at the switch; in eval mode their BatchNorm statistics too
    teachers = trainer.extra.state_dict()
    moved = {k for k, v in ref.frozen_teachers.items() if not torch.equal(v, teachers[k])}
    if params.get("teacher_mode") == "train":  # batch statistics: the running ones move, never a weight
        assert moved and all("running_" in k or "num_batches" in k for k in moved)
    else:
        assert not moved
    assert not any(p.requires_grad for p in trainer.extra.parameters())


def test_umt_needs_both_phases():
    with pytest.raises(ConfigError, match="^epochs: balancer 'umt' needs a teacher phase and a distillation phase"):
        Trainer(build_trial_config(tiny_config({"name": "umt"}, epochs=1)))
    from study.config import load_study_config  # refused when a study is validated, before any record or trial

    with pytest.raises(ConfigError, match="^methods.umt: epochs: balancer 'umt' needs a teacher phase"):
        load_study_config(None, raw={"name": "b", "mode": "benchmark", "methods": ["umt"], "trial": {"epochs": 1}})


def test_teacher_epochs_and_distillation_loss_by_hand():
    assert [teacher_epochs(0.5, e) for e in (2, 3, 5, 12, 100)] == [1, 2, 3, 6, 50]  # round half up
    assert teacher_epochs(0.01, 10) == 1 and teacher_epochs(0.99, 10) == 9  # both phases keep an epoch
    z = {"audio": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "visual": torch.zeros(2, 2)}
    t = {"audio": torch.tensor([[1.0, 0.0], [3.0, 0.0]]), "visual": torch.ones(2, 2)}
    d = distillation_loss(z, t)  # mean over batch and features: (0 + 4 + 0 + 16) / 4, (1 * 4) / 4
    assert float(d["audio"]) == 5.0 and float(d["visual"]) == 1.0


def test_umt_resumes_from_a_checkpoint_in_either_phase(tmp_path):
    """Teachers, their optimizer state and the phase travel in the checkpoint (the teachers are `extra`)."""
    raw = tiny_config({"name": "umt", "student_init": "teacher"}, epochs=4)
    full = Trainer(build_trial_config(raw)).fit()["history"]
    strip = lambda h: [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in h]  # noqa: E731
    for stop in (1, 2):  # inside the teacher phase; at the switch (the student starts from the teachers next)
        first = Trainer(build_trial_config(raw))
        for _ in range(stop):
            first.train_epoch()
        first.save(tmp_path / "ckpt.pt")
        resumed = Trainer(build_trial_config(raw))
        resumed.load(tmp_path / "ckpt.pt")
        assert strip(resumed.fit()["history"]) == strip(full)
