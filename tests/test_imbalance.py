"""The synthetic benchmark must reproduce modality imbalance (issue 2, (a)-(c))."""
import pytest
import torch

from trainables.config import build_trial_config
from trainables.trainer import Trainer

EPOCHS = 12


@pytest.fixture(scope="module")
def runs():
    out = {}
    for name, mods in (("audio", ["audio"]), ("visual", ["visual"]), ("joint", None)):
        t = Trainer(build_trial_config({"epochs": EPOCHS, "modalities": mods}))
        t.fit()
        out[name] = t
    return out


def _probs(t: Trainer) -> torch.Tensor:
    t.model.eval()
    with torch.no_grad():
        return torch.softmax(t.model(t._to_device(t.data.test.inputs)), 1)


def test_a_audio_alone_learns_faster_than_visual_alone(runs):
    audio, visual = runs["audio"].history, runs["visual"].history
    early = slice(0, 3)
    assert sum(r["val_acc"] for r in audio[early]) > sum(r["val_acc"] for r in visual[early]) + 0.3


def test_b_joint_training_leaves_the_visual_branch_under_trained(runs):
    alone = runs["visual"].history[-1]["test_acc"]
    joint_visual = runs["joint"].history[-1]["test_acc_visual"]
    assert joint_visual <= alone - 0.15, (joint_visual, alone)


def test_c_using_both_modalities_well_beats_joint_training(runs):
    labels = runs["joint"].data.test.labels
    late = (_probs(runs["audio"]) + _probs(runs["visual"])).argmax(1)
    late_acc = float((late == labels).float().mean())
    joint_acc = runs["joint"].history[-1]["test_acc"]
    assert late_acc > joint_acc + 0.03, (late_acc, joint_acc)
