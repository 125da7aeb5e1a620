"""Noise floor of a study config: how much joint training varies from seed to seed, and the smallest
difference to it that the study, with its seeds, can detect.

Trains the study's baseline (its trial config with `balancer: none`, its first loss setting) in-process,
one seed after another, and prints per seed the validation accuracy per epoch (the last two epochs within
`--plateau` points = plateaued), the best-validation epoch's test accuracy and modality gap, and the epoch
time; then the seed-to-seed std (ddof=1) with its 95 % t-interval, and the smallest true difference a
two-sided Welch/t-test at alpha 0.05 detects with 80 % power between the study's confirmation seeds and
its baseline seeds (analysis.stats.detectable_difference).

    OMP_NUM_THREADS=1 python benchmarks/noise_floor.py study/configs/quickstart.yaml --seeds 1000 1001 1002 1003 1004
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from analysis.stats import detectable_difference, seed_summary  # noqa: E402
from study.config import load_study_config  # noqa: E402
from trainables.config import build_trial_config  # noqa: E402
from trainables.data.registry import build_dataset  # noqa: E402
from trainables.trainer import Trainer  # noqa: E402


def study_seed_counts(cfg) -> tuple[int, int]:
    """(seeds of the configuration compared, seeds of the baseline) in this study: a search compares its
    confirmed configurations (confirm.seeds) with the baseline's seeds; other modes run every trial, the
    `none` one included, with the study's seeds."""
    confirming = getattr(cfg, "confirming", lambda: False)()
    n_config = len(cfg.confirm.seeds) if confirming else len(cfg.seeds)
    has_baseline = getattr(cfg, "has_baseline", lambda: False)()
    n_base = len(cfg.baseline_seeds()) if has_baseline else len(cfg.seeds)
    return n_config, n_base


def gap(record: dict, split: str) -> float:
    accs = [v for k, v in record.items() if k.startswith(f"{split}_acc_")]
    return max(accs) - min(accs)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a study config (study/configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="study overrides key=value, e.g. trial.epochs=8")
    parser.add_argument("--seeds", type=int, nargs="+",
                        help="training seeds to measure (default: the study's baseline seeds; more seeds, a better std)")
    parser.add_argument("--loss-setting", help="default: the study's first loss setting")
    parser.add_argument("--plateau", type=float, default=2.0, help="points: last two epochs' val acc within this")
    parser.add_argument("--power", type=float, default=0.8)
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    cfg = load_study_config(args.config, args.overrides)
    loss = args.loss_setting or cfg.loss_settings[0]
    raw = dict(cfg.trial, balancer={"name": "none"}, loss_setting=loss)
    if not args.seeds:
        has_baseline = getattr(cfg, "has_baseline", lambda: False)()
        args.seeds = cfg.baseline_seeds() if has_baseline else list(cfg.seeds)
    configs = [build_trial_config(raw, {"seed": s}) for s in args.seeds]
    data = build_dataset(configs[0].dataset.name, configs[0].dataset_params())
    print(f"{cfg.name}: baseline `none`, {configs[0].epochs} epochs, dataset {configs[0].to_dict()['dataset']}, "
          f"optim {configs[0].to_dict()['optim']}, loss {loss}, torch threads {torch.get_num_threads()}")
    seeds_out = []
    for seed, tcfg in zip(args.seeds, configs):
        start, cpu_start = time.perf_counter(), time.process_time()
        trainer = Trainer(tcfg, data=data)
        trainer.fit()
        cpu = time.process_time() - cpu_start
        best = next(r for r in trainer.history if r["epoch"] == trainer.best()["epoch"])
        vals = [r["val_acc"] for r in trainer.history]
        plateau = len(vals) >= 2 and abs(vals[-1] - vals[-2]) * 100 <= args.plateau
        row = {"seed": seed, "val_acc": vals, "best_epoch": best["epoch"], "best_val_acc": best["val_acc"],
               "test_acc": best["test_acc"], "test_gap": gap(best, "test"), "plateaued": plateau,
               "epoch_s": statistics.fmean(r["epoch_time_s"] for r in trainer.history),
               "epoch_cpu_s": cpu / len(trainer.history), "seconds": time.perf_counter() - start}
        seeds_out.append(row)
        print(f"  seed {seed}: val acc by epoch {' '.join(f'{100 * v:.1f}' for v in vals)} "
              f"({'plateaued' if plateau else 'NOT plateaued'}); best epoch {row['best_epoch']}: test acc "
              f"{100 * row['test_acc']:.2f}, gap {100 * row['test_gap']:.2f}; {row['epoch_s']:.1f} s/epoch wall, "
              f"{row['epoch_cpu_s']:.1f} s/epoch CPU", flush=True)

    n_confirm, n_base = study_seed_counts(cfg)
    out = {"config": args.config, "overrides": args.overrides, "loss_setting": loss, "seeds": seeds_out, "n_confirm": n_confirm,
           "n_baseline": n_base, "plateaued_all": all(r["plateaued"] for r in seeds_out)}
    for key in ("test_acc", "test_gap"):
        s = seed_summary([r[key] for r in seeds_out])
        mdd = detectable_difference(s.std, n_confirm, n_base, power=args.power) if s.std else float("nan")
        out[key] = {"mean": s.mean, "std": s.std, "ci": [s.ci_low, s.ci_high], "detectable": mdd}
        detect = (f"{100 * mdd:.2f} points" if mdd == mdd else "none (a side has fewer than 2 seeds: no test)")
        print(f"{key}: {s.text()} (mean ± std [95 % CI], n = {s.n}); smallest difference detectable at "
              f"{args.power:.0%} power with {n_confirm} vs {n_base} seeds: {detect}")
    out["epoch_cpu_s"] = statistics.fmean(r["epoch_cpu_s"] for r in seeds_out)
    print(f"plateaued on every seed: {out['plateaued_all']}; mean epoch time "
          f"{statistics.fmean(r['epoch_s'] for r in seeds_out):.1f} s wall, {out['epoch_cpu_s']:.1f} s CPU "
          f"(CPU time = an uncontended core's wall time on a shared machine)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
