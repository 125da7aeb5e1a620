"""`mmstudy prepare`: decode a raw dataset once into per-clip .npy files plus a manifest.

Why: decoding audio and running the STFT every epoch (and JPEG decoding on slow shared storage) starves a
GPU. The cache is written clip by clip with atomic renames, so an interrupted run is resumed by running the
same command again; unreadable or missing files are skipped and listed instead of ending the run; the
manifest (counts, skipped clips, checksums of the split files) is marked complete only at the end.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from trainables.errors import ConfigError
from trainables.data.clips import CACHE_FORMAT, MANIFEST, Clip, Layout, as_read, read_manifest


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as fh:
        np.save(fh, np.ascontiguousarray(array))
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def prepare_clip(layout: Layout, clip: Clip, dst: Path, frame_size: int) -> tuple[Clip, str, dict[str, Any]]:
    """Decode one clip and write one .npy per modality: ("cached"|"written"|"skipped", {"reason": ...})."""
    if not clip.id or "/" in clip.id or "\\" in clip.id or clip.id.startswith("."):
        return clip, "skipped", {"reason": f"clip id {clip.id!r} is not a plain file name"}
    if all((dst / m / clip.split / f"{clip.id}.npy").is_file() for m in layout.modality_names):
        return clip, "cached", {}
    try:
        sample = layout.read(clip)
        arrays = {m: (v.to_array(frame_size) if hasattr(v, "to_array") else np.asarray(v))
                  for m, v in sample.items()}
        layout.to_tensors(as_read(arrays, layout.frame_modalities), train=False)  # unusable clips are not cached
    except Exception as err:  # noqa: BLE001 -- any unreadable file is reported, not fatal
        return clip, "skipped", {"reason": f"{type(err).__name__}: {err}".splitlines()[0][:300]}
    for m, array in arrays.items():
        _atomic_save(dst / m / clip.split / f"{clip.id}.npy", array)
    return clip, "written", {}


def _one_thread() -> None:
    """Each decoding process uses one thread: N processes x all-core torch/BLAS threads thrash the CPU."""
    import torch

    torch.set_num_threads(1)


def _prepare_chunk(args) -> list[tuple[Clip, str, dict[str, Any]]]:
    layout, clips, dst, frame_size = args
    return [prepare_clip(layout, c, dst, frame_size) for c in clips]


def _check_destination(layout: Layout, src: Path, dst: Path, options: dict[str, Any]) -> None:
    """`dst` is new, empty, or a cache of the same dataset made with the same options (then it is resumed)."""
    if src.resolve() == dst.resolve():
        raise ConfigError("--dst: must differ from --src (the cache is written next to, not into, the raw data)")
    if dst.exists() and not dst.is_dir():
        raise ConfigError(f"--dst: {dst} exists and is not a folder")
    previous = read_manifest(dst) if dst.is_dir() else None
    if previous is None:
        if dst.is_dir() and any(dst.iterdir()):
            raise ConfigError(f"--dst: {dst} is not empty and holds no {MANIFEST}; choose an empty or new folder")
        return
    if previous["dataset"] != layout.name:
        raise ConfigError(f"--dst: {dst} holds a prepared {previous['dataset']!r}, not {layout.name!r}")
    for key, value in options.items():
        if previous["options"].get(key) != value:
            raise ConfigError(f"{key}: {dst} was prepared with {key}={previous['options'].get(key)!r} (got "
                              f"{value!r}); use a new --dst or the same options")


def prepare(layout: Layout, dst: Path, frame_size: int = 0, workers: int | None = None,
            progress: bool = True) -> dict[str, Any]:
    """Write (or finish, or confirm) the cache of `layout` in `dst`; returns the manifest."""
    from tqdm import tqdm

    src, dst = layout.root, Path(dst).expanduser()
    layout.check()
    options = {**layout.cache_options(), "frame_size": frame_size}
    _check_destination(layout, src, dst, options)
    index = layout.index()
    dst.mkdir(parents=True, exist_ok=True)
    base = {"format": CACHE_FORMAT, "dataset": layout.name, "source": str(src.resolve()), "options": options,
            "complete": False}
    _atomic_write_text(dst / MANIFEST, json.dumps(base, indent=1))

    clips = [c for split in index.splits.values() for c in split]
    workers = max(1, min(workers or os.cpu_count() or 1, 32))
    chunks = [clips[i:i + 16] for i in range(0, len(clips), 16)]
    results: list[tuple[Clip, str, dict[str, Any]]] = []
    bar = tqdm(total=len(clips), desc=f"prepare {layout.name}", unit="clip", disable=not progress)
    jobs = ((layout, chunk, dst, frame_size) for chunk in chunks)
    if workers == 1:
        done_iter = map(_prepare_chunk, jobs)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=workers, initializer=_one_thread)
        done_iter = pool.map(_prepare_chunk, jobs)
    try:
        for chunk_result in done_iter:
            results.extend(chunk_result)
            bar.update(len(chunk_result))
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)

    kept = {c for c, status, _ in results if status != "skipped"}
    first = next((c for c, status, _ in results if status != "skipped"), None)
    if first is None:
        raise ConfigError(f"--src: no clip of {src} could be read (first reason: "
                          f"{next((i['reason'] for _, s, i in results if s == 'skipped'), 'no clips')})")
    # Shapes from the files themselves (header only), so a run that finds every clip already cached needs no
    # record of what an earlier, interrupted run wrote.
    headers = {m: np.load(dst / m / first.split / f"{first.id}.npy", mmap_mode="r") for m in layout.modality_names}
    shapes = {m: {"shape": list(a.shape), "dtype": str(a.dtype)} for m, a in headers.items()}
    skipped = [{"split": c.split, "clip": c.id, "reason": info["reason"]} for c, s, info in results if s == "skipped"]
    manifest = {
        **base, "complete": True, "modalities": shapes, "classes": index.classes,
        "splits": {name: {"count": sum(c in kept for c in split),
                          "skipped": sum(c not in kept for c in split),
                          "clips": [[c.id, c.label] for c in split if c in kept]}
                   for name, split in index.splits.items()},
        "skipped": skipped,
        "split_files": {str(p.relative_to(src)): sha256(p) for p in index.split_files},
        "counts": {s: sum(1 for _, st, _ in results if st == s) for s in ("written", "cached", "skipped")},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _atomic_write_text(dst / "skipped.txt", "".join(f"{s['split']}/{s['clip']}\t{s['reason']}\n" for s in skipped))
    _atomic_write_text(dst / MANIFEST, json.dumps(manifest, indent=1))
    return manifest
