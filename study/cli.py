"""The `mmstudy` command line. User errors print one line and exit 2; nothing is half-written."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from study.credentials import adopt, redact_text
from trainables.balancers.plugin_trust import plugins_allowed
from trainables.balancers.registry import balancer_names
from trainables.config import build_trial_config
from trainables.errors import ConfigError


def _debug(args: argparse.Namespace) -> int:
    from study.debug import apply_flags, run_debug, run_from_run

    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads: must be at least 1 (got {args.threads})")
    flags = {"balancer": args.balancer, "dataset": args.dataset, "epochs": args.epochs, "seed": args.seed,
             "device": args.device}
    if args.out is not None:
        from study.records import check_writable

        check_writable(Path(args.out), "--out")
    if args.from_run:
        run_from_run(args.from_run, args.tracking_uri, flags, args.overrides, args.threads, args.out)
        return 0
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    run_debug(build_trial_config(apply_flags({}, flags), args.overrides), args.out)
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from trainables.config import format_validation_error, parse_overrides
    from trainables.data.prepare import prepare
    from trainables.data.registry import dataset_layout, dataset_params_model

    dataset, overrides = args.dataset[0], args.dataset[1:]
    layout_cls = dataset_layout(dataset)
    model = dataset_params_model(dataset)
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers: must be at least 1 (got {args.workers})")
    if args.frame_size < 0:
        raise ConfigError(f"--frame-size: must be 0 (keep the original size) or a positive side (got {args.frame_size})")
    try:
        params = model(**{**parse_overrides(overrides), "root": args.src})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, prefix="dataset", model=model)) from None
    manifest = prepare(layout_cls(params), args.dst, frame_size=args.frame_size, workers=args.workers,
                       progress=not args.quiet)
    counts = manifest["counts"]
    per_split = ", ".join(f"{name} {entry['count']}" for name, entry in manifest["splits"].items())
    print(f"prepared {dataset} in {args.dst}: {per_split} clips ({counts['written']} written, "
          f"{counts['cached']} already there, {counts['skipped']} skipped)")
    if manifest["skipped"]:
        print(f"skipped clips and why: {args.dst}/skipped.txt (also in manifest.json)")
    print(f"train on it with dataset.name={dataset} dataset.root={args.dst}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="mmstudy", description="Hyperparameter studies for balanced multimodal learning: "
                                                        "Ray Tune + Optuna + MLflow. Every command takes --help.")
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser("debug", help="train one trial in-process (no Ray), print a per-epoch table")
    d.add_argument("--balancer", help=f"balancer name ({', '.join(balancer_names())}) or pkg.mod:Class")
    d.add_argument("--dataset", help="dataset name (default: synthetic)")
    d.add_argument("--epochs", type=int)
    d.add_argument("--seed", type=int)
    d.add_argument("--device", help="auto|cpu|cuda (default auto: a GPU when there is one)")
    d.add_argument("--out", help="directory for metrics.json")
    d.add_argument("--from-run", help="MLflow run id of a trial: re-run its exact resolved config")
    d.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLflow's own)")
    d.add_argument("--threads", type=int, help="torch CPU threads (default: with --from-run the trial's own "
                                               "count, so a CPU trial's numbers are reproduced exactly)")
    d.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=0.01 model.fusion=film")
    d.set_defaults(func=_debug)

    p = sub.add_parser("prepare", help="cache a raw dataset's decoded tensors (.npy) with a manifest; resumable")
    # One positional list (DATASET then key=value options) so options may come before or after the flags.
    p.add_argument("dataset", nargs="+", metavar="DATASET [key=value ...]",
                   help="crema_d, kinetics_sounds, ucf101 or cmu_mosi, then dataset options, e.g. fps=2 (crema_d), "
                        "split=2 (ucf101), aligned=false (cmu_mosi)")
    p.add_argument("--src", required=True, help="the raw dataset folder (its published layout, docs/datasets.md)")
    p.add_argument("--dst", required=True, help="the cache folder (new, or one this command started before)")
    p.add_argument("--frame-size", type=int, default=0,
                   help="store frames with this short side (0: original size, tensors identical to the raw layout)")
    p.add_argument("--workers", type=int, help="decoding processes (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_prepare)
    _add_study_commands(sub)
    for name in ("debug", "resume", "sync", "list", "report"):  # the commands that read configs from records
        sub.choices[name].add_argument(
            "--allow-plugin", action="store_true",
            help="import a balancer plug-in (package.module:Class) named by the study folder or MLflow run read "
                 "(refused by default: records are data, anyone with write access to them could name any module)")
    for command in sub.choices.values():
        command.set_defaults(command_parser=command)
    return parser


def _add_study_commands(sub) -> None:
    from study.commands import add_commands

    add_commands(sub)


class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line with exit status 2, like every other user error (`--help` has the usage)."""

    def error(self, message: str):
        message = redact_text(message).replace("\n", "\\n")  # it quotes arguments: a URI's password among them
        print(f"mmstudy: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args, _ = parser.parse_known_args(argv)  # which command (usage errors and --help end here)
    # The command's own parser reads its arguments intermixed: key=value options may follow the flags.
    args = args.command_parser.parse_intermixed_args(argv[1:])
    try:
        if getattr(args, "tracking_uri", None):  # its credentials are used, never stored or printed
            args.tracking_uri = adopt(args.tracking_uri, "--tracking-uri")
        with plugins_allowed(getattr(args, "allow_plugin", False)):
            return int(args.func(args) or 0)
    except ConfigError as err:  # one line, whatever a value quoted in it held; no secret of a URI in it
        message = redact_text(str(err)).replace("\r", "\\r").replace("\n", "\\n")
        print(f"mmstudy: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mmstudy: interrupted", file=sys.stderr)
        return 130


def entry_point() -> None:
    """The `mmstudy` console script."""
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
