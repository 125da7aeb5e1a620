"""`mmstudy debug`: one trial in-process, no Ray -- the place to set a breakpoint."""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from trainables.config import TrialConfig
from trainables.trainer import Trainer


def format_row(record: dict[str, Any], modalities: list[str]) -> str:
    cols = [f"{record['epoch']:>5d}", f"{record['train_loss']:>10.4f}", f"{record['val_acc']:>8.4f}",
            f"{record['val_f1']:>7.4f}", *[f"{record[f'val_acc_{m}']:>9.4f}" for m in modalities],
            f"{record['test_acc']:>8.4f}"]
    return " ".join(cols)


def header(modalities: list[str]) -> str:
    names = ["epoch", "train_loss", "val_acc", "val_f1", *[f"val_{m[:5]}" for m in modalities], "test_acc"]
    widths = [5, 10, 8, 7, *[9] * len(modalities), 8]
    return " ".join(f"{n:>{w}}" for n, w in zip(names, widths))


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".metrics-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2, default=_jsonable)
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def run_debug(cfg: TrialConfig, out_dir: str | None, progress: bool = True) -> dict[str, Any]:
    trainer = Trainer(cfg)  # builds data, model and balancer: every config error surfaces before any file
    mods = trainer.modalities
    out = Path(out_dir) if out_dir else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    print(f"device={trainer.device} dataset={cfg.dataset.name} balancer={cfg.balancer.name} "
          f"fusion={cfg.model.fusion} loss={cfg.loss_setting} selection={cfg.selection}", flush=True)
    print(header(mods), flush=True)
    bar = None
    if progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=cfg.epochs * trainer.state.steps_per_epoch, desc="train", leave=False, file=sys.stderr)

    def on_epoch(record: dict[str, Any], t: Trainer) -> None:
        if bar is not None:
            bar.update(t.state.steps_per_epoch)
            bar.clear()
        print(format_row(record, mods), flush=True)
        if out is not None:
            write_json_atomic(out / "metrics.json", t.result())

    result = trainer.fit(on_epoch)
    if bar is not None:
        bar.close()
    best = result["best"]
    print(f"best epoch {best['epoch']} (selected on {best['selection']}): val_acc={best['val_acc']:.4f} "
          f"test_acc={best['test_acc']:.4f} test_f1={best['test_f1']:.4f} "
          + " ".join(f"test_acc_{m}={best[f'test_acc_{m}']:.4f}" for m in mods), flush=True)
    if out is not None:
        write_json_atomic(out / "metrics.json", result)
        print(f"wrote {out / 'metrics.json'}")
    return result
