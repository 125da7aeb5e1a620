"""CREMA-D in the reference layout, on a fixture written by the test (tiny wavs and jpgs)."""
import json

import numpy as np
import pytest

from dataset_fixtures import write_crema_d
from study.cli import main
from trainables.config import build_trial_config
from trainables.errors import ConfigError
from trainables.data.crema_d import HOP, N_FFT, SAMPLE_RATE, log_spectrogram
from trainables.data.registry import build_dataset


def reference_log_spectrogram(wave: np.ndarray) -> np.ndarray:
    """librosa.stft's algorithm written out in numpy: centred, zero-padded, periodic Hann, rfft."""
    x = np.tile(wave, int(np.ceil(3 * SAMPLE_RATE / len(wave))))[: 3 * SAMPLE_RATE]
    x = np.clip(x, -1, 1)
    x = np.pad(x, N_FFT // 2, mode="constant")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
    n_frames = 1 + (len(x) - N_FFT) // HOP
    frames = np.stack([x[i * HOP: i * HOP + N_FFT] * window for i in range(n_frames)], axis=1)
    return np.log(np.abs(np.fft.rfft(frames, axis=0)) + 1e-7)


def test_spectrogram_matches_a_reference_stft():
    rng = np.random.default_rng(0)
    wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(20000) / SAMPLE_RATE) + 0.05 * rng.standard_normal(20000))
    ours = log_spectrogram(wave.astype(np.float32))
    ref = reference_log_spectrogram(wave.astype(np.float64))
    assert ours.shape == (1, 257, 188) and ref.shape == (257, 188)
    mask = ref > -8  # compare where the magnitude is not at the 1e-7 floor
    assert np.allclose(ours[0].numpy()[mask], ref[mask], atol=2e-3)


def test_loading_gives_reference_shapes_and_a_fixed_validation_split(tmp_path):
    root = write_crema_d(tmp_path / "crema")
    cfg = build_trial_config({"dataset": {"name": "crema_d", "root": str(root), "image_size": 32}})
    bundle = build_dataset("crema_d", cfg.dataset_params())
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (11, 1, 6)
    inputs, label = bundle.train[0]
    assert inputs["audio"].shape == (1, 257, 188) and inputs["visual"].shape == (3, 3, 32, 32)
    assert 0 <= int(label) < 6
    again = build_dataset("crema_d", cfg.dataset_params())
    assert again.val.items == bundle.val.items


def test_debug_trains_on_the_fixture(tmp_path):
    root = write_crema_d(tmp_path / "crema")
    rc = main(["debug", "--dataset", "crema_d", "--epochs", "1", "--out", str(tmp_path / "out"), "--device", "cpu",
               f"dataset.root={root}", "dataset.image_size=32", "optim.batch_size=4", "model.feature_dim=8"])
    assert rc == 0
    payload = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert payload["config"]["dataset"]["name"] == "crema_d" and "test_acc_visual" in payload["best"]


def test_a_folder_in_the_wrong_layout_says_what_was_expected(tmp_path):
    (tmp_path / "wrong").mkdir()
    cfg = build_trial_config({"dataset": {"name": "crema_d", "root": str(tmp_path / "wrong")}})
    with pytest.raises(ConfigError, match=r"dataset.root: expected .*train.csv .*CREMA-D"):
        build_dataset("crema_d", cfg.dataset_params())
