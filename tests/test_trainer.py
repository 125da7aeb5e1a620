import math

import pytest
import torch
import torch.nn.functional as F

from conftest import small_overrides
from trainables.config import build_trial_config
from trainables.metrics import macro_f1
from trainables.trainer import Trainer, TrialDiverged, mixed_cross_entropy


def _trainer(**extra):
    return Trainer(build_trial_config(small_overrides(**extra)))


def test_mixed_cross_entropy_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y1, y2 = torch.tensor([0, 1]), torch.tensor([1, 1])
    ce1 = (-math.log(math.e**2 / (math.e**2 + 1)) - math.log(math.e / (1 + math.e))) / 2
    ce2 = (-math.log(1 / (math.e**2 + 1)) - math.log(math.e / (1 + math.e))) / 2
    got = mixed_cross_entropy(logits, [(0.3, y1), (0.7, y2)])
    assert float(got) == pytest.approx(0.3 * ce1 + 0.7 * ce2, rel=1e-6)


def test_evaluate_matches_a_manual_pass_over_the_split():
    t = _trainer()
    t.train_epoch()
    t.model.eval()
    inputs, labels = t.data.test.inputs, t.data.test.labels
    with torch.no_grad():
        feats = t.model.encode({m: x.float() for m, x in inputs.items()})
        fused = t.model.fuse(feats).argmax(1)
        uni = {m: v.argmax(1) for m, v in t.model.unimodal_logits(feats).items()}
    got = t.evaluate("test")
    assert got["acc"] == pytest.approx(float((fused == labels).float().mean()))
    assert got["f1"] == pytest.approx(macro_f1(fused, labels, t.data.num_classes))
    for m in ("audio", "visual"):
        assert got[f"acc_{m}"] == pytest.approx(float((uni[m] == labels).float().mean()))


def test_best_is_selected_on_validation_and_reports_that_epochs_test_metrics():
    t = _trainer(epochs=3)
    result = t.fit()
    history = result["history"]
    best_val = max(r["val_acc"] for r in history)
    chosen = min(r["epoch"] for r in history if r["val_acc"] == best_val)
    row = history[chosen - 1]
    assert result["best"]["epoch"] == chosen
    assert result["best"]["test_acc"] == row["test_acc"] and result["best"]["selection"] == "val"


def test_same_seed_same_metrics_and_different_seed_differs():
    a = _trainer(epochs=2).fit()["history"]
    b = _trainer(epochs=2).fit()["history"]
    c = _trainer(epochs=2, seed=1).fit()["history"]
    assert a == [dict(r, epoch_time_s=x["epoch_time_s"]) for r, x in zip(b, a)]
    assert [r["train_loss"] for r in a] != [r["train_loss"] for r in c]


def test_resume_from_checkpoint_reproduces_an_uninterrupted_run(tmp_path):
    full = _trainer(epochs=3, balancer={"name": "redreg", "R": -1.0}).fit()["history"]
    first = _trainer(epochs=3, balancer={"name": "redreg", "R": -1.0})
    first.train_epoch()
    first.save(tmp_path / "ckpt.pt")
    resumed = _trainer(epochs=3, balancer={"name": "redreg", "R": -1.0})
    resumed.load(tmp_path / "ckpt.pt")
    history = resumed.fit()["history"]
    strip = lambda h: [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in h]  # noqa: E731
    assert strip(history) == strip(full)


def test_nan_loss_raises_diverged():
    raw = small_overrides()
    raw["dataset"]["noise"] = 1e39  # overflows float32: inputs become inf, the loss NaN
    t = Trainer(build_trial_config(raw))
    with pytest.raises(TrialDiverged, match="loss is nan at epoch 1"):
        t.train_epoch()


@pytest.mark.parametrize("setting", ["multimodal", "multimodal+unimodal"])
def test_loss_settings_differ_only_in_unimodal_terms(setting):
    t = _trainer(loss_setting=setting)
    inputs, labels = next(iter(t.state.train_loader))
    t.train_step(inputs, labels)
    s = t.state
    fused = F.cross_entropy(s.fused_logits, s.labels)
    uni = sum(F.cross_entropy(s.unimodal_logits[m], s.labels) for m in t.modalities)
    expected = fused if setting == "multimodal" else fused + uni
    assert float(s.loss) == pytest.approx(float(expected), rel=1e-5)
