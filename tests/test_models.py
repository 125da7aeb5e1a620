import pytest
import torch

from trainables.config import ModelConfig
from trainables.errors import ConfigError
from trainables.data.base import ModalitySpec
from trainables.models import build_model

SPECS = {"audio": ModalitySpec("spectrogram", (1, 16, 12)), "visual": ModalitySpec("frames", (3, 2, 12, 12))}


def _batch(b=4):
    torch.manual_seed(0)
    return {"audio": torch.randn(b, 1, 16, 12), "visual": torch.randn(b, 3, 2, 12, 12)}


@pytest.mark.parametrize("fusion", ["concat", "sum", "film", "gated", "late"])
def test_fusion_shapes_and_gradients_reach_both_encoders(fusion):
    model = build_model(SPECS, 5, ModelConfig(fusion=fusion, feature_dim=8, fusion_dim=16))
    logits = model(_batch())
    assert logits.shape == (4, 5)
    logits.sum().backward()
    for m in SPECS:
        grads = [p.grad for p in model.encoder(m).parameters() if p.grad is not None]
        assert grads and any(float(g.abs().sum()) > 0 for g in grads), f"{fusion}: no gradient in {m} encoder"


@pytest.mark.parametrize("fusion", ["concat", "sum", "late"])
def test_fused_block_logits_recompose_the_fused_head(fusion):
    model = build_model(SPECS, 5, ModelConfig(fusion=fusion, feature_dim=8, unimodal_head="fused_block"))
    feats = model.encode(_batch())
    blocks = model.unimodal_logits(feats)
    total = blocks["audio"] + blocks["visual"]
    expected = model.fuse(feats) * (2 if fusion == "late" else 1)
    assert torch.allclose(total, expected, atol=1e-6)


@pytest.mark.parametrize("fusion", ["film", "gated"])
def test_conditioning_fusions_really_mix_modalities(fusion):
    """Changing the conditioning modality alone changes the output (the fusion is not bypassed)."""
    model = build_model(SPECS, 5, ModelConfig(fusion=fusion, feature_dim=8)).eval()
    feats = model.encode(_batch())
    changed = dict(feats, audio=feats["audio"] + 1.0)
    assert not torch.allclose(model.fuse(feats), model.fuse(changed))


def test_film_needs_two_modalities():
    specs = dict(SPECS, text=ModalitySpec("vector", (7,)))
    with pytest.raises(ConfigError, match="exactly 2 modalities"):
        build_model(specs, 3, ModelConfig(fusion="film"))


def test_resnet18_encoders_follow_the_reference_layout():
    specs = {"audio": ModalitySpec("spectrogram", (1, 64, 48)), "visual": ModalitySpec("frames", (3, 2, 32, 32))}
    model = build_model(specs, 6, ModelConfig(encoder="resnet18"))
    assert model.encoder("audio").trunk[0].in_channels == 1  # 1-channel stem for spectrograms
    x = {"audio": torch.randn(2, 1, 64, 48), "visual": torch.randn(2, 3, 2, 32, 32)}
    fmap = model.encoder("visual").feature_map(x["visual"])
    assert fmap.shape[:3] == (2, 512, 2)  # B x D x T x h x w: frame-wise 2D ResNet
    feats = model.encode(x)
    assert feats["audio"].shape == (2, 512) and feats["visual"].shape == (2, 512)
