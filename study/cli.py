"""The `mmstudy` command line. User errors print one line and exit 2; nothing is half-written."""
from __future__ import annotations

import argparse
import sys

from trainables.config import ConfigError, build_trial_config


def _debug(args: argparse.Namespace) -> int:
    from study.debug import run_debug

    raw: dict = {}
    if args.from_run:
        from study.tracking import trial_config_from_run

        raw = trial_config_from_run(args.from_run, args.tracking_uri)
    flags = {"balancer": args.balancer, "dataset": args.dataset, "epochs": args.epochs, "seed": args.seed,
             "device": args.device}
    for key, value in flags.items():
        if value is None:
            continue
        if key in ("balancer", "dataset"):
            if raw.get(key, {}).get("name") != value:
                raw[key] = {"name": value}
        else:
            raw[key] = value
    cfg = build_trial_config(raw, args.overrides)
    run_debug(cfg, args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="mmstudy", description="Hyperparameter studies for balanced multimodal learning: "
                                                        "Ray Tune + Optuna + MLflow. Every command takes --help.")
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser("debug", help="train one trial in-process (no Ray), print a per-epoch table")
    d.add_argument("--balancer", help="balancer name (none, redreg, ogm, ogm_ge, mm, bmm, inforeg, cal) or pkg.mod:Class")
    d.add_argument("--dataset", help="dataset name (default: synthetic)")
    d.add_argument("--epochs", type=int)
    d.add_argument("--seed", type=int)
    d.add_argument("--device", help="auto|cpu|cuda (default auto: a GPU when there is one)")
    d.add_argument("--out", help="directory for metrics.json")
    d.add_argument("--from-run", help="MLflow run id of a trial: re-run its exact resolved config")
    d.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLflow's own)")
    d.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=0.01 model.fusion=film")
    d.set_defaults(func=_debug)
    _add_study_commands(sub)
    return parser


def _add_study_commands(sub) -> None:
    from study.commands import add_commands

    add_commands(sub)


class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line with exit status 2, like every other user error (`--help` has the usage)."""

    def error(self, message: str):
        print(f"mmstudy: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as err:
        print(f"mmstudy: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mmstudy: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
