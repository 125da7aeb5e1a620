"""What a trial's numbers depend on beyond its config, and what a re-run that differs in it means.

A trial on one CPU core and a re-run on all cores add the same numbers in another order, and the last digits
drift into different accuracies within a few epochs; so do another GPU, other library versions or other
code. Each trial records this provenance on its MLflow run (`mmstudy.provenance`), and
`mmstudy debug --from-run` compares it with its own, applies what it can, and says what is left.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

PACKAGES = ("torch", "torchvision", "ray", "optuna", "mlflow", "numpy")
# Measured, not assumed: two H100 runs of one seeded 3-epoch ResNet-18 trial (docs/benchmarks.md, "A real
# ResNet-18 run on a GPU") had identical validation accuracies and test accuracies 0.02 apart.
GPU_TOLERANCE = "about 0.02 accuracy (two H100 runs of one seeded trial, docs/benchmarks.md)"


def collect(trainer, seeds: list[int]) -> dict[str, Any]:
    """The provenance of a built trainer (after its seeding set the determinism flags) in this process."""
    device = trainer.device
    precision = getattr(trainer, "precision", None)
    return {
        "threads": torch.get_num_threads(),
        "device": device.type,
        "device_name": device_name(device),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "precision": getattr(precision, "name", None) or getattr(trainer.cfg, "precision", "fp32"),
        "versions": package_versions(),
        "git": git_state(),
        "seeds": list(seeds),
        "dataset": dataset_identity(trainer.data.spec or trainer.cfg.to_dict()["dataset"], trainer.data),
        "from_epoch": trainer.epoch,  # > 0: recorded when the trial continued from a checkpoint
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device.index if device.index is not None else torch.cuda.current_device())
    return cpu_model()


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


@functools.lru_cache(maxsize=1)
def git_state() -> dict[str, Any]:
    """The commit of the checkout this package is imported from, and whether its tracked files differ from
    it (with a hash of that diff, so two dirty trees can be told apart). Untracked files are not counted.
    No git, or a package that is not in a checkout (an installed wheel, a cluster's shipped copy): unknown."""
    here = Path(__file__).resolve().parent
    unknown = {"commit": None, "dirty": None, "diff_sha256": None}

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=20)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode or git("ls-files", "--error-unmatch", "__init__.py").returncode:
            return unknown
        diff = git("diff", "HEAD", "--no-ext-diff", "--no-color")
    except (OSError, subprocess.SubprocessError):
        return unknown
    if diff.returncode:
        return {**unknown, "commit": head.stdout.strip()}
    return {"commit": head.stdout.strip(), "dirty": bool(diff.stdout),
            "diff_sha256": hashlib.sha256(diff.stdout.encode()).hexdigest()[:12] if diff.stdout else None}


def dataset_identity(spec: dict[str, Any], data) -> dict[str, Any]:
    """Name, generator size and seed or the root folder, the split sizes, and for a prepared cache the hash
    of its manifest (the clips and options it holds; its creation time and resume counts left out)."""
    out: dict[str, Any] = {"name": spec.get("name")}
    for key in ("size", "seed", "root"):
        if spec.get(key) is not None:
            out[key] = spec[key]
    out["samples"] = {split: len(getattr(data, split)) for split in ("train", "val", "test")}
    if spec.get("root"):
        from trainables.data.clips import MANIFEST

        path = Path(spec["root"]) / MANIFEST
        if path.is_file():
            try:
                manifest = json.loads(path.read_text())
                identity = {k: v for k, v in manifest.items() if k not in ("created", "counts")}
                out["manifest_sha256"] = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
            except (OSError, ValueError):
                out["manifest_sha256"] = "unreadable"
    return out


# ------------------------------------------------------------------ comparing a re-run with its trial
def differences(trial: dict[str, Any], here: dict[str, Any]) -> list[str]:
    """What differs between a trial's provenance and a re-run's, each with what it means for the numbers."""
    out: list[str] = []
    if trial.get("device") != here["device"]:
        out.append(f"the trial ran on {_where(trial)}, this run on {_where(here)}: other kernels, not bit-identical")
    elif here["device"] == "cuda" and trial.get("device_name") != here["device_name"]:
        out.append(f"another GPU model ({here['device_name']}; the trial: {trial.get('device_name')})")
    elif trial.get("cpu_capability") != here["cpu_capability"]:
        out.append(f"another CPU instruction set ({here['cpu_capability']}; the trial: {trial.get('cpu_capability')}): "
                   "vectorised kernels round differently, not bit-identical")
    if trial.get("threads") != here["threads"]:
        out.append(f"{_threads(here['threads'])} (the trial: {trial.get('threads')}): CPU reductions add in "
                   "another order, so the numbers drift apart within a few epochs")
    for key, what in (("precision", "precision"), ("deterministic_algorithms", "deterministic algorithms"),
                      ("cudnn_deterministic", "cudnn.deterministic"), ("cudnn_benchmark", "cudnn.benchmark")):
        if trial.get(key) != here[key]:
            out.append(f"{what} {here[key]} (the trial: {trial.get(key)})")
    versions = [f"{name} {version} (the trial: {trial.get('versions', {}).get(name)})"
                for name, version in here["versions"].items() if trial.get("versions", {}).get(name) != version]
    if versions:
        out.append("other library versions: " + ", ".join(versions))
    out.extend(_code_differences(trial.get("git") or {}, here["git"]))
    if trial.get("seeds") != here["seeds"]:
        out.append(f"seeds {here['seeds']} (the trial: {trial.get('seeds')})")
    if trial.get("dataset") != here["dataset"]:
        keys = sorted(k for k in {*here["dataset"], *(trial.get("dataset") or {})}
                      if (trial.get("dataset") or {}).get(k) != here["dataset"].get(k))
        out.append("another dataset (" + ", ".join(
            f"{k} {here['dataset'].get(k)}; the trial: {(trial.get('dataset') or {}).get(k)}" for k in keys) + ")")
    return out


def _threads(n: int) -> str:
    return f"{n} torch thread{'' if n == 1 else 's'}"


def _where(p: dict[str, Any]) -> str:
    return f"{p.get('device')} ({p.get('device_name')})"


def _code_differences(trial: dict[str, Any], here: dict[str, Any]) -> list[str]:
    out = []
    if trial.get("commit") is None or here["commit"] is None:
        which = [name for name, p in (("the trial", trial), ("here", here)) if p.get("commit") is None]
        out.append(f"code version unknown ({' and '.join(which)}: not a git checkout)")
    elif trial["commit"] != here["commit"]:
        out.append(f"other code: commit {here['commit'][:10]} (the trial: {trial['commit'][:10]})")
    if trial.get("dirty") and not (trial.get("commit") == here["commit"]
                                   and trial.get("diff_sha256") == here["diff_sha256"]):
        out.append("the trial ran on a tree with uncommitted changes that this tree does not have")
    elif here["dirty"] and not trial.get("dirty"):
        out.append("this tree has uncommitted changes the trial did not have")
    return out


def verdict(trial_id: str, trial: dict[str, Any] | None, here: dict[str, Any],
            config_changes: list[str] = ()) -> tuple[bool, str]:
    """(exact, the one line `mmstudy debug --from-run` prints before it trains)."""
    if trial is None:
        return False, (f"cannot tell whether this reproduces trial {trial_id}: its run records no provenance "
                       f"(trials record it since issue 17); this run: {_threads(here['threads'])} on {_where(here)}")
    diffs = ([f"config changed here: {', '.join(config_changes)}"] if config_changes else []) + differences(trial, here)
    gpu = here["device"] == "cuda" or trial.get("device") == "cuda"
    if not diffs and not gpu and here["deterministic_algorithms"]:
        note = ""
        if here["git"]["dirty"]:
            note = " -- both on the same uncommitted changes"
        return True, f"reproduces trial {trial_id} exactly (CPU, deterministic){note}"
    if gpu:
        diffs.append(f"a GPU run is seeded but not bit-identical: expect differences of {GPU_TOLERANCE}")
    elif not here["deterministic_algorithms"]:
        diffs.append("deterministic algorithms are off: not bit-identical")
    return False, f"does not reproduce trial {trial_id} exactly: " + "; ".join(diffs)


def applied_settings(trial: dict[str, Any] | None, threads: int | None, cuda_available: bool) -> dict[str, Any]:
    """What a re-run sets before it builds anything: the thread count (`--threads` wins) and the device type
    (a CPU trial re-runs on the CPU even where a GPU is free; a GPU trial on a GPU where there is one)."""
    out: dict[str, Any] = {}
    if threads is not None:
        out["threads"] = threads
    elif trial and trial.get("threads"):
        out["threads"] = int(trial["threads"])
    if trial and trial.get("device") in ("cpu", "cuda"):
        out["device"] = "cuda" if trial["device"] == "cuda" and cuda_available else "cpu"
    return out


def to_json(provenance: dict[str, Any]) -> str:
    return json.dumps(provenance, sort_keys=True, default=str)
