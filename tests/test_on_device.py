"""dataset.on_device (issue 13): a prepared CREMA-D cache held on the device (here: the CPU) gives the loader
path's batches -- same order, same crop and flip distribution, same statistics."""
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import ks_2samp

from dataset_fixtures import write_crema_d
from trainables.config import build_trial_config
from trainables.data import on_device
from trainables.data.base import model_input
from trainables.data.crema_d import CremaDLayout, CremaDParams
from trainables.data.on_device import crop_resize_flip, device_data, random_resized_crop_boxes
from trainables.data.prepare import prepare
from trainables.data.registry import build_dataset
from trainables.errors import ConfigError
from trainables.trainer import Trainer


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("crema")
    raw = write_crema_d(base / "raw", n_train=24, n_test=8)
    prepare(CremaDLayout(CremaDParams(root=str(raw))), base / "prepared", workers=1, progress=False)
    return base / "prepared"


def _cfg(root, on_device, augment_on_device=False, **extra):
    raw = {"device": "cpu", "epochs": 1, "model": {"feature_dim": 8}, "optim": {"batch_size": 8},
           "dataset": {"name": "crema_d", "root": str(root), "image_size": 32, "on_device": on_device,
                       "augment_on_device": augment_on_device}}
    raw.update(extra)
    return build_trial_config(raw)


# ------------------------------------------------------------------ the crop itself


@pytest.mark.parametrize("height, width", [(30, 40), (256, 341), (100, 20)])
def test_crop_boxes_follow_torchvisions_random_resized_crop_distribution(height, width):
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    n = 4000
    ours = random_resized_crop_boxes(n, height, width, torch.Generator().manual_seed(1)).double()
    image = torch.zeros(3, height, width)
    ref = torch.tensor([RandomResizedCrop.get_params(image, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(n)]).double()
    for name, a, b in (("area", ours[:, 2] * ours[:, 3], ref[:, 2] * ref[:, 3]),
                       ("log aspect", (ours[:, 3] / ours[:, 2]).log(), (ref[:, 3] / ref[:, 2]).log()),
                       ("top", ours[:, 0] / height, ref[:, 0] / height), ("left", ours[:, 1] / width, ref[:, 1] / width)):
        assert ks_2samp(a.numpy(), b.numpy()).pvalue > 1e-3, f"{name} distribution differs"
    assert (ours[:, 0] + ours[:, 2] <= height).all() and (ours[:, 1] + ours[:, 3] <= width).all()
    assert (ours >= 0).all() and (ours[:, 2:] > 0).all()


def test_crop_resize_flip_matches_pil_for_enlarged_crops():
    from torchvision.transforms import functional as TF

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    boxes = torch.tensor([[0, 0, 30, 40], [3, 5, 12, 20], [10, 17, 20, 23], [0, 0, 7, 9]])
    flips = torch.tensor([False, True, False, True])
    frames = torch.from_numpy(image).permute(2, 0, 1)[None].repeat(4, 1, 1, 1)
    ours = crop_resize_flip(frames, boxes, flips, 48)
    for k, (top, left, h, w) in enumerate(boxes.tolist()):
        ref = TF.resized_crop(Image.fromarray(image), top, left, h, w, [48, 48], Image.BILINEAR)
        ref = np.asarray(ref.transpose(Image.FLIP_LEFT_RIGHT) if flips[k] else ref)
        diff = np.abs(ours[k].permute(1, 2, 0).numpy().astype(int) - ref.astype(int))
        # PIL crops first and repeats the crop's edge pixel; roi_align reads up to half a source pixel beyond
        # the crop: only the outer output rows/columns within that half pixel may differ
        my, mx = math.ceil(48 / (2 * h)) + 1, math.ceil(48 / (2 * w)) + 1
        assert diff[my:-my, mx:-mx].max() <= 1, f"box {k}: interior differs from PIL by {diff.max()}"
        assert diff.mean() < 3, f"box {k}: mean difference {diff.mean()}"


# ------------------------------------------------------------------ the on-device splits against the loader


@pytest.mark.parametrize("path", ["on_device", "augment_on_device"])
def test_device_batches_have_the_loader_paths_order_and_statistics(prepared, path):
    """on_device: the whole split on the device; augment_on_device: the loader hands out uncropped frames and
    the crops and flips run on the device. Either way: the loader path's order, spectrograms and pixel
    statistics."""
    trainer_loader = Trainer(_cfg(prepared, False))
    trainer_device = Trainer(_cfg(prepared, path == "on_device", augment_on_device=path == "augment_on_device"))
    assert trainer_loader.on_device is None and (trainer_device.on_device is not None) == (path == "on_device")
    spec = trainer_loader.data.modalities["visual"]
    stats = {"loader": [], "device": []}
    for epoch in range(12):
        for name, trainer in (("loader", trainer_loader), ("device", trainer_device)):
            batches = list(trainer._train_loader(epoch))
            labels = torch.cat([y for _, y in batches])
            if name == "loader":
                order, audio = labels, torch.cat([x["audio"] for x, _ in batches])
            else:  # the same permutation, the same (un-augmented) spectrograms
                assert torch.equal(labels, order)
                assert torch.equal(torch.cat([x["audio"] for x, _ in batches]), audio)
            for x, _ in batches:
                assert x["visual"].dtype == torch.uint8 and x["visual"].shape[1:] == (3, 3, 32, 32)
                stats[name].append(model_input(x["visual"], spec, torch.device("cpu")))
    loader, device = torch.cat(stats["loader"]), torch.cat(stats["device"])
    for dims in ((0, 2, 3, 4),):
        assert torch.allclose(loader.mean(dims), device.mean(dims), atol=0.02)
        assert torch.allclose(loader.std(dims), device.std(dims), rtol=0.03)
    # crops vary the content: per-sample means spread alike on both paths
    spread = [t.mean((1, 2, 3, 4)).std() for t in (loader, device)]
    assert spread[1] == pytest.approx(float(spread[0]), rel=0.15)


def test_on_device_evaluation_splits_match_the_loader(prepared):
    trainer_loader, trainer_device = Trainer(_cfg(prepared, False)), Trainer(_cfg(prepared, True))
    for split in ("val", "test"):
        (xl, yl), = list(trainer_loader.eval_loaders[split])[:1]
        (xd, yd), = list(trainer_device.eval_loaders[split])[:1]
        assert torch.equal(yl, yd) and torch.equal(xl["audio"], xd["audio"])
        diff = (xl["visual"].int() - xd["visual"].int()).abs().float()
        assert xd["visual"].shape == xl["visual"].shape and diff.mean() < 2.0


@pytest.mark.parametrize("on_device, augment", [(True, False), (False, True)])
def test_a_trial_trains_on_the_device_paths(prepared, on_device, augment):
    history = Trainer(_cfg(prepared, on_device, augment_on_device=augment, epochs=2)).fit()["history"]
    assert all(math.isfinite(r["train_loss"]) for r in history)


# ------------------------------------------------------------------ choosing the path, memory checked up front


def test_on_device_values_are_validated(prepared):
    with pytest.raises(ConfigError, match=r"^dataset.on_device: must be one of: auto, true, false \(got 'maybe'\)$"):
        _cfg(prepared, "maybe")
    assert _cfg(prepared, "true").dataset.params()["on_device"] is True


def test_auto_is_the_loader_path_on_the_cpu(prepared):
    assert Trainer(_cfg(prepared, "auto")).on_device is None


def test_true_on_a_raw_layout_is_a_one_line_error(tmp_path):
    raw = write_crema_d(tmp_path / "raw")
    with pytest.raises(ConfigError, match=r"^dataset.on_device: true but it needs a prepared cache"):
        Trainer(_cfg(raw, True))


def test_a_dataset_that_does_not_fit_is_an_error_for_true_and_the_loader_for_auto(prepared, monkeypatch):
    bundle = build_dataset("crema_d", _cfg(prepared, True).dataset_params())
    need = on_device.required_bytes(bundle)
    monkeypatch.setattr(on_device, "free_bytes", lambda device: need)  # only half of it may be used
    with pytest.raises(ConfigError, match=r"^dataset.on_device: true but it needs .* GiB, more than 50% of the"):
        device_data(bundle, True, torch.device("cpu"))
    monkeypatch.setattr(on_device, "free_bytes", lambda device: 2 * need)
    data = device_data(bundle, True, torch.device("cpu"))
    assert data is not None and data.nbytes == need


def test_frames_of_different_sizes_are_a_one_line_error_for_true(prepared, tmp_path):
    import shutil

    copy = tmp_path / "prepared"
    shutil.copytree(prepared, copy)
    one = sorted((copy / "visual" / "train").glob("*.npy"))[-1]
    np.save(one, np.zeros((3, 20, 40, 3), dtype=np.uint8))
    bundle = build_dataset("crema_d", _cfg(copy, True).dataset_params())
    with pytest.raises(ConfigError, match=r"^dataset.on_device: the prepared visual arrays differ in shape "
                                          r"\(\(3, 30, 40, 3\) vs \(3, 20, 40, 3\)\) and the on-device path needs one"):
        device_data(bundle, True, torch.device("cpu"))
