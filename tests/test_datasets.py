"""Kinetics-Sounds, UCF-101 and CMU-MOSI in their published layouts, and `mmstudy prepare` for every
file-backed dataset, on fixtures written by the tests."""
import json

import numpy as np
import pytest
import torch

from dataset_fixtures import write_cmu_mosi, write_crema_d, write_kinetics_sounds, write_ucf101
from study.cli import main
from trainables.config import build_trial_config
from trainables.errors import ConfigError
from trainables.data.registry import build_dataset

WRITERS = {"crema_d": write_crema_d, "kinetics_sounds": write_kinetics_sounds, "ucf101": write_ucf101,
           "cmu_mosi": write_cmu_mosi}
SMALL = {"crema_d": {"image_size": 32}, "kinetics_sounds": {"image_size": 32}, "ucf101": {"image_size": 32},
         "cmu_mosi": {}}


def bundle(name, root, **extra):
    cfg = build_trial_config({"dataset": {"name": name, "root": str(root), **SMALL[name], **extra}})
    return build_dataset(name, cfg.dataset_params())


def prepare(name, src, dst, *extra):
    return main(["prepare", name, "--src", str(src), "--dst", str(dst), "--quiet", "--workers", "1", *extra])


def test_kinetics_sounds_shapes_official_val_split_and_class_list(tmp_path):
    b = bundle("kinetics_sounds", write_kinetics_sounds(tmp_path / "ks"))
    assert (len(b.train), len(b.val), len(b.test)) == (10, 4, 4)  # the val list is used, not carved
    assert b.num_classes == 31 and b.info["classes"][1] == "class 1"
    inputs, label = b.val[0]
    assert inputs["audio"].shape == (1, 33, 20) and inputs["visual"].shape == (3, 3, 32, 32)
    assert b.modalities["audio"].kind == "spectrogram" and b.modalities["visual"].kind == "frames"
    # evaluation picks the middle frame of each of 3 segments of 10 frames: 1-based 1, 4, 7 (reference rule)
    from trainables.data.frames import segment_indices

    assert segment_indices(10, 3, train=False) == [0, 3, 6]
    picks = {tuple(segment_indices(10, 3, train=True, generator=torch.Generator().manual_seed(s))) for s in range(40)}
    assert all(0 <= a <= 2 and 3 <= b_ <= 5 and 6 <= c <= 8 for a, b_, c in picks) and len(picks) > 1


def test_kinetics_sounds_34_classes_from_another_list_and_bad_labels(tmp_path):
    root = write_kinetics_sounds(tmp_path / "ks", classes=34)
    assert bundle("kinetics_sounds", root).num_classes == 34
    (root / "ks_audio" / "test_1fps_path.txt").write_text("x/clip 40\n")
    with pytest.raises(ConfigError, match=r"test_1fps_path.txt line 1: .*label in 0..33"):
        bundle("kinetics_sounds", root)


def test_ucf101_rgb_and_two_channel_flow_with_carved_validation(tmp_path):
    b = bundle("ucf101", write_ucf101(tmp_path / "ucf"))
    assert (len(b.train), len(b.val), len(b.test)) == (9, 1, 4) and b.num_classes == 3
    inputs, _ = b.test[1]
    assert inputs["visual"].shape == (3, 3, 32, 32) and inputs["flow"].shape == (2, 3, 32, 32)
    assert b.test.clips[1].label == 1  # HandstandPushups in the list -> HandStandPushups in classInd
    # frames leave the loader as uint8; the trainer normalises flow with the reference's (0.1307, 0.3081)
    assert inputs["flow"].dtype == torch.uint8 and b.modalities["flow"].normalize == ((0.1307,) * 2, (0.3081,) * 2)
    from trainables.data.base import model_input

    flow = model_input(inputs["flow"].unsqueeze(0), b.modalities["flow"], torch.device("cpu"))
    assert torch.allclose(flow, (inputs["flow"].float().unsqueeze(0) / 255 - 0.1307) / 0.3081)


def test_device_side_normalisation_equals_the_reference_totensor_normalize():
    """uint8 frames normalised on the device give the reference pipeline's ToTensor + Normalize values."""
    from PIL import Image
    from torchvision import transforms as T

    from trainables.data.base import ModalitySpec, model_input
    from trainables.data.frames import IMAGENET_MEAN, IMAGENET_NORMALIZE, IMAGENET_STD, imagenet_transform

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    reference = T.Compose([T.Resize((32, 32)), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(img)
    ours = imagenet_transform(train=False, size=32)(img)
    assert ours.dtype == torch.uint8
    spec = ModalitySpec("frames", (3, 1, 32, 32), IMAGENET_NORMALIZE)
    batch = model_input(ours[None, :, None], spec, torch.device("cpu"))  # 1 x C x T x H x W
    assert torch.allclose(batch[0, :, 0], reference, atol=1e-6)


def test_cmu_mosi_three_sequence_modalities_binary_labels(tmp_path):
    b = bundle("cmu_mosi", write_cmu_mosi(tmp_path / "mosi"))
    assert (len(b.train), len(b.val), len(b.test)) == (16, 6, 6) and b.num_classes == 2
    assert {m: s.shape for m, s in b.modalities.items()} == {"text": (8, 300), "audio": (8, 5), "visual": (8, 20)}
    assert all(s.kind == "sequence" for s in b.modalities.values())
    labels = [c.label for c in b.test.clips]
    assert labels == [0, 0, 0, 1, 1, 1]  # scores linspace(-3, 3, 6): negative below 0
    assert torch.isfinite(b.train[0][0]["audio"]).all()  # -inf set to 0 as the reference does


def test_mosi_pickle_that_would_run_code_is_refused(tmp_path):
    import os
    import pickle

    root = tmp_path / "mosi"
    root.mkdir()

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (root / "mosi_data.pkl").write_bytes(pickle.dumps({"train": Boom()}))
    with pytest.raises(ConfigError, match="refusing to load"):
        bundle("cmu_mosi", root)


@pytest.mark.parametrize("name", ["crema_d", "kinetics_sounds", "ucf101", "cmu_mosi"])
def test_prepared_cache_gives_the_raw_tensors(tmp_path, name, capsys):
    src = WRITERS[name](tmp_path / "raw")
    assert prepare(name, src, tmp_path / "cache") == 0
    assert f"dataset.root={tmp_path / 'cache'}" in capsys.readouterr().out
    raw, cached = bundle(name, src), bundle(name, tmp_path / "cache")
    assert cached.info["source"] == "prepared" and raw.info["source"] == "raw"
    assert [len(getattr(cached, s)) for s in ("train", "val", "test")] == [len(getattr(raw, s)) for s in
                                                                          ("train", "val", "test")]
    assert cached.modalities == raw.modalities and cached.num_classes == raw.num_classes
    for split in ("val", "test"):  # evaluation transforms are deterministic: identical tensors
        for i in range(len(getattr(raw, split))):
            (a, la), (b, lb) = getattr(raw, split)[i], getattr(cached, split)[i]
            assert int(la) == int(lb) and all(torch.equal(a[m], b[m]) for m in a)
    torch.manual_seed(3)
    a, _ = raw.train[0]
    torch.manual_seed(3)
    b, _ = cached.train[0]
    assert all(torch.equal(a[m], b[m]) for m in a)  # the same augmentation draws give the same tensors


def test_prepare_is_resumable_idempotent_and_lists_corrupt_files(tmp_path, capsys):
    src = write_kinetics_sounds(tmp_path / "raw")
    (src / "ks_visual" / "train" / "kstrain003" / "frame_00002.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (src / "ks_audio" / "test" / "kstest001.npy").unlink()
    dst = tmp_path / "cache"
    assert prepare("kinetics_sounds", src, dst) == 0
    manifest = json.loads((dst / "manifest.json").read_text())
    assert manifest["complete"] and manifest["counts"] == {"written": 16, "cached": 0, "skipped": 2}
    assert {(s["split"], s["clip"]) for s in manifest["skipped"]} == {("train", "kstrain003"), ("test", "kstest001")}
    assert "kstest001" in (dst / "skipped.txt").read_text()
    assert manifest["splits"]["train"]["count"] == 9 and manifest["splits"]["train"]["skipped"] == 1
    import hashlib

    listed = hashlib.sha256((src / "ks_audio" / "train_1fps_path.txt").read_bytes()).hexdigest()
    assert manifest["split_files"]["ks_audio/train_1fps_path.txt"] == listed
    assert manifest["modalities"]["visual"]["dtype"] == "uint8"

    # interrupted: a clip's files are gone and the manifest says incomplete -> training refuses, rerun finishes
    (dst / "audio" / "val" / "ksval002.npy").unlink()
    manifest["complete"] = False
    (dst / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="incomplete .* run the same mmstudy prepare command again"):
        bundle("kinetics_sounds", dst)
    capsys.readouterr()
    assert prepare("kinetics_sounds", src, dst) == 0
    assert "(1 written, 15 already there, 2 skipped)" in capsys.readouterr().out
    assert prepare("kinetics_sounds", src, dst) == 0
    assert "(0 written, 16 already there, 2 skipped)" in capsys.readouterr().out
    # killed after the last clip but before the final manifest: only the in-progress header is on disk
    header = {k: manifest[k] for k in ("format", "dataset", "source", "options")}
    (dst / "manifest.json").write_text(json.dumps({**header, "complete": False}))
    assert prepare("kinetics_sounds", src, dst) == 0
    assert "(0 written, 16 already there, 2 skipped)" in capsys.readouterr().out
    assert json.loads((dst / "manifest.json").read_text())["modalities"] == manifest["modalities"]
    b = bundle("kinetics_sounds", dst)
    assert len(b.train) + len(b.val) + len(b.test) == 16


def test_prepare_user_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    src = write_crema_d(tmp_path / "raw")
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    cases = [
        (["synthetic"], "DATASET: 'synthetic' has no files to prepare; allowed: cmu_mosi, crema_d, kinetics_sounds"),
        (["crema_d", "fsp=2"], "dataset.fsp: unknown key; did you mean 'dataset.fps'?"),
        (["crema_d", "split=2"], "dataset.split: unknown key"),
    ]
    for argv, message in cases:
        rc = main(["prepare", argv[0], "--src", str(src), "--dst", str(tmp_path / "new"), "--quiet", *argv[1:]])
        assert rc == 2 and message in capsys.readouterr().err
    assert main(["prepare", "crema_d", "--src", str(src), "--dst", str(full), "--quiet"]) == 2
    assert "is not empty and holds no manifest.json" in capsys.readouterr().err
    assert main(["prepare", "crema_d", "--src", str(tmp_path / "nowhere"), "--dst", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dataset.root: expected" in err and "mmstudy prepare crema_d" in err
    assert not (tmp_path / "new").exists()
    # a cache made with fps=1 cannot silently serve fps=2, and cannot be extended with another frame size
    assert prepare("crema_d", src, tmp_path / "cache") == 0
    with pytest.raises(ConfigError, match=r"dataset.fps: the prepared cache .* was made with fps=1 \(got 2\)"):
        bundle("crema_d", tmp_path / "cache", fps=2)
    assert prepare("crema_d", src, tmp_path / "cache", "--frame-size", "16") == 2
    assert "frame_size: " in capsys.readouterr().err


def test_frame_size_shrinks_the_cache_and_keeps_the_tensor_shapes(tmp_path):
    src = write_ucf101(tmp_path / "raw")
    assert prepare("ucf101", src, tmp_path / "cache", "--frame-size", "12") == 0
    arr = np.load(tmp_path / "cache" / "flow" / "train" / f"{bundle('ucf101', src).train.clips[0].id}.npy")
    assert arr.dtype == np.uint8 and arr.shape[1:] == (12, 16, 2)  # 30 x 40 -> short side 12, u and v
    assert bundle("ucf101", tmp_path / "cache").modalities == bundle("ucf101", src).modalities


@pytest.mark.parametrize("name", ["kinetics_sounds", "ucf101", "cmu_mosi"])
def test_wrong_layout_names_the_expected_file_and_how_to_prepare(tmp_path, name):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as err:
        bundle(name, tmp_path / "empty")
    text = str(err.value)
    assert text.startswith(f"dataset.root: expected {tmp_path / 'empty'}/") and "\n" not in text
    assert f"mmstudy prepare {name} --src" in text and "docs/datasets.md" in text


@pytest.mark.parametrize("name,prepared", [("kinetics_sounds", True), ("ucf101", False), ("cmu_mosi", True)])
def test_debug_trains_on_each_layout(tmp_path, name, prepared):
    root = WRITERS[name](tmp_path / "raw")
    if prepared:
        assert prepare(name, root, tmp_path / "cache") == 0
        root = tmp_path / "cache"
    overrides = [f"dataset.{k}={v}" for k, v in SMALL[name].items()]
    rc = main(["debug", "--dataset", name, "--epochs", "1", "--out", str(tmp_path / "out"), "--device", "cpu",
               f"dataset.root={root}", "optim.batch_size=4", "model.feature_dim=8", "num_workers=2", *overrides])
    assert rc == 0
    payload = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert payload["config"]["dataset"]["name"] == name and "test_f1" in payload["best"]


@pytest.mark.integration
def test_a_study_trains_from_a_prepared_cache_with_worker_processes(tmp_path, ray_local):
    """Real Ray Tune + Optuna + MLflow: the bundle shipped through the object store holds the clip index
    (not the samples), and each trial's DataLoader reads the cache with worker processes."""
    import pickle

    from mlflow.tracking import MlflowClient

    from study.config import load_study_config
    from study.runner import run_study

    assert prepare("kinetics_sounds", write_kinetics_sounds(tmp_path / "raw"), tmp_path / "cache") == 0
    cached = bundle("kinetics_sounds", tmp_path / "cache")
    assert len(pickle.dumps(cached)) < 20_000  # the index only: 18 clips of 3 x 32 x 32 frames would be more
    raw = {"name": "ks_prepared", "storage_path": str(tmp_path / "runs"),
           "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "num_samples": 2, "max_concurrent": 2,
           "search_space": "ogm_ge", "scheduler": "none", "baseline": {"enabled": False}, "confirm": {"top_k": 0},
           "trial": {"epochs": 1, "num_workers": 2, "model": {"feature_dim": 8}, "optim": {"batch_size": 4},
                     "dataset": {"name": "kinetics_sounds", "root": str(tmp_path / "cache"), "image_size": 32}}}
    cfg = load_study_config(None, raw=raw)
    results = run_study(cfg).results
    assert len(results) == 2 and not results.errors
    client = MlflowClient(cfg.resolved_tracking_uri())
    info = json.loads((cfg.study_dir() / "study.json").read_text())
    parent = client.get_run(info["parent_run_id"])
    assert parent.data.tags["mmstudy.dataset"] == f"kinetics_sounds:{tmp_path / 'cache'}"
    runs = client.search_runs([info["experiment_id"]],
                              filter_string=f"tags.`mlflow.parentRunId` = '{info['parent_run_id']}'")
    assert len(runs) == 2 and all(r.data.params["num_workers"] == "2" for r in runs)
    assert all(0 <= r.data.metrics["best_test_acc"] <= 1 for r in runs)
