"""UME through the real Trainer vs. M separate unimodal runs (tests/reference/ume.py): the same weights after
every epoch, the same ensemble scores and validation accuracy; and the combination rule by hand."""
import pytest
import torch

from golden import default_dtype, run_golden, tiny_config
from reference import ume as reference
from trainables.balancers.ume import ensemble_logits
from trainables.config import build_trial_config
from trainables.data.base import model_input
from trainables.trainer import Trainer


def _val_inputs(trainer):
    x, y = next(iter(torch.utils.data.DataLoader(trainer.data.val, batch_size=len(trainer.data.val))))
    return {m: model_input(x[m], trainer.data.modalities[m], trainer.device) for m in trainer.modalities}, y


@pytest.mark.parametrize("fusion, head, setting, combine", [
    ("concat", "separate", "multimodal", "logits"),
    ("late", "fused_block", "multimodal+unimodal", "probs"),
])
def test_ume_matches_separate_unimodal_runs(fusion, head, setting, combine):
    raw = tiny_config({"name": "ume", "combine": combine}, epochs=5, loss_setting=setting,
                      model={"feature_dim": 16, "fusion": fusion, "unimodal_head": head})
    trainer, ref = run_golden(raw, reference.train)  # 5 epochs x 4 batches = 20 optimizer steps
    # every epoch trained both unimodal models on their own loss
    assert all(r["ume_loss_audio"] > 0 and r["ume_loss_visual"] > 0 for r in trainer.history)
    # the prediction is the reference's ensemble, and so is the validation accuracy the trainer selects on
    with default_dtype():  # the models were built in the golden runs' float64
        inputs, labels = _val_inputs(trainer)
        trainer.model.eval()
        with torch.no_grad():
            ours = trainer.balancer.predict_logits(trainer.model, trainer.model.encode(inputs))
        theirs = reference.ensemble_scores(ref, inputs, combine)
    assert float((ours - theirs).abs().max()) <= 1e-6
    acc = float((theirs.argmax(1) == labels).float().mean())
    assert trainer.history[-1]["val_acc"] == pytest.approx(acc)


def test_ume_leaves_the_fusion_head_untouched():
    raw = tiny_config({"name": "ume"}, epochs=1)
    trainer = Trainer(build_trial_config(raw))
    before = {k: v.clone() for k, v in trainer.model.fusion.state_dict().items()}
    trainer.train_epoch()
    assert all(torch.equal(before[k], v) for k, v in trainer.model.fusion.state_dict().items())


def test_ensemble_logits_by_hand():
    a = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    v = torch.tensor([[0.0, 1.0], [4.0, 0.0]])
    assert ensemble_logits([a, v], "logits").tolist() == [[1.0, 0.5], [2.0, 0.0]]
    # softmax rows: a -> (0.881, 0.119), (0.5, 0.5); v -> (0.269, 0.731), (0.982, 0.018)
    probs = ensemble_logits([a, v], "probs")
    assert probs[0].tolist() == pytest.approx([0.5749, 0.4251], abs=1e-4)
    assert probs[1].tolist() == pytest.approx([0.7410, 0.2590], abs=1e-4)
    # where the two rules disagree: a confident modality dominates the logit mean, not the probability mean
    # (logit mean (2, 3); probability mean about (0.64, 0.36))
    sure, leaning = torch.tensor([[0.0, 9.0]]), torch.tensor([[3.0, 0.0]])
    assert ensemble_logits([sure, leaning, leaning], "logits").argmax(1).item() == 1
    assert ensemble_logits([sure, leaning, leaning], "probs").argmax(1).item() == 0
    half = torch.tensor([[1.0, 2.0]], dtype=torch.bfloat16)
    assert ensemble_logits([half, half], "logits").dtype == torch.float32
    assert ensemble_logits([a.double(), v.double()], "logits").dtype == torch.float64
