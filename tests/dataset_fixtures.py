"""Tiny datasets written in each published layout (wavs, jpgs, spectrogram .npy files, feature pickles)."""
from __future__ import annotations

import pickle

import numpy as np
from PIL import Image
from scipy.io import wavfile

from trainables.data.crema_d import CLASSES as CREMA_CLASSES


def _jpgs(folder, n, size=(30, 40), mode="RGB", seed=0, name="frame_{:05d}.jpg", start=1):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    shape = (*size, 3) if mode == "RGB" else size
    for f in range(n):
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode=mode).save(folder / name.format(f + start))


def write_crema_d(root, n_train=12, n_test=6, fps=1):
    (root / "AudioWAV").mkdir(parents=True)
    rows = {"train": [], "test": []}
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            clip, label = f"{1000 + i}_{split}", CREMA_CLASSES[i % 6]
            rate = 16000
            t = np.arange(rate // 2) / rate
            wave = (0.4 * np.sin(2 * np.pi * (200 + 100 * (i % 6)) * t) * 32767).astype(np.int16)
            wavfile.write(root / "AudioWAV" / f"{clip}.wav", rate, wave)
            _jpgs(root / f"Image-{fps:02d}-FPS" / clip, 3, seed=i, name="{:05d}.jpg", start=0)
            rows[split].append(f"{clip},{label}")
    for split, lines in rows.items():
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def write_kinetics_sounds(root, counts=(("train", 10), ("val", 4), ("test", 4)), classes=31, frames=10):
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    (root / "class.txt").write_text(",".join(f"class {c}" for c in range(classes)))
    for split, n in counts:
        lines = []
        for i in range(n):
            clip = f"ks{split}{i:03d}"
            (root / "ks_audio" / split).mkdir(parents=True, exist_ok=True)
            np.save(root / "ks_audio" / split / f"{clip}.npy", rng.standard_normal((33, 20)).astype(np.float32))
            _jpgs(root / "ks_visual" / split / clip, frames, seed=i)
            lines.append(f"/data/ks/{split}/{clip} {i % classes}")
        (root / "ks_audio" / f"{split}_1fps_path.txt").write_text("\n".join(lines) + "\n")
    return root


def write_ucf101(root, n_train=10, n_test=4, classes=("ApplyEyeMakeup", "HandStandPushups", "YoYo")):
    root.mkdir(parents=True)
    (root / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)))
    for split, n, name in (("train", n_train, "trainlist01.txt"), ("test", n_test, "testlist01.txt")):
        lines = []
        for i in range(n):
            cls = classes[i % len(classes)]
            folder_cls = "HandstandPushups" if cls == "HandStandPushups" else cls  # the official lists' spelling
            video = f"v_{folder_cls}_g{i:02d}_c01_{split}"
            _jpgs(root / "ucf101-frames-1fps" / "video-set" / video, 6, seed=i, name="img_{:05d}.jpg")
            _jpgs(root / "u" / video, 7, mode="L", seed=100 + i, name="frame{:05d}.jpg")
            _jpgs(root / "v" / video, 7, mode="L", seed=200 + i, name="frame{:05d}.jpg")
            lines.append(f"{folder_cls}/{video}.avi" + (f" {i % len(classes) + 1}" if split == "train" else ""))
        (root / name).write_text("\n".join(lines) + "\n")
    return root


def write_cmu_mosi(root, counts=(("train", 16), ("valid", 6), ("test", 6)), length=8):
    rng = np.random.default_rng(2)
    root.mkdir(parents=True)
    data = {}
    for split, n in counts:
        audio = rng.standard_normal((n, length, 5)).astype(np.float32)
        audio[0, 0, 0] = -np.inf  # the published features have a few -inf values
        data[split] = {"text": rng.standard_normal((n, length, 300)).astype(np.float32), "audio": audio,
                       "vision": rng.standard_normal((n, length, 20)).astype(np.float32),
                       "labels": np.linspace(-3, 3, n, dtype=np.float32).reshape(n, 1, 1),
                       "id": np.array([[f"vid{i}".encode(), b"0", b"1"] for i in range(n)])}
    with (root / "mosi_data.pkl").open("wb") as fh:
        pickle.dump(data, fh)
    return root
