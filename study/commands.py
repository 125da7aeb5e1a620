"""`mmstudy run | resume | list`: the study subcommands (argparse wiring only; the work is in runner)."""
from __future__ import annotations

import argparse
import os


def _run(args: argparse.Namespace) -> int:
    from study.config import load_study_config
    from study.runner import run_study

    overrides = list(args.overrides)
    if args.address:
        overrides.append(f"ray_address={args.address}")
    if args.tracking_uri:
        overrides.append(f"tracking_uri={args.tracking_uri}")
    cfg = load_study_config(args.config, overrides)
    results = run_study(cfg, args.config, verbose=args.verbose)
    _summary(cfg.name, cfg.resolved_experiment(), cfg.study_dir(), results, cfg.metric.name, cfg.metric.mode)
    return 0


def _resume(args: argparse.Namespace) -> int:
    from study.runner import read_study_file, resume_study

    info = read_study_file(args.study_dir)
    results = resume_study(args.study_dir, verbose=args.verbose)
    metric = info["config"]["metric"]
    _summary(info["name"], info["experiment_name"], args.study_dir, results, metric["name"], metric["mode"])
    return 0


def _summary(name, experiment, study_dir, results, metric, mode) -> None:
    from study.runner import top_trials_table

    print(f"\nstudy '{name}': {len(results)} trials, {len(results.errors)} errored")
    print("top trials (selected on validation; test accuracy at the best validation epoch, mean over seeds):")
    print(top_trials_table(results, metric, mode))
    print(f"MLflow experiment: {experiment}  (browse with `mlflow ui` in this directory)")
    print(f"study folder: {study_dir}  (report: `mmstudy report {study_dir}`)")


def _list(args: argparse.Namespace) -> int:
    from study.runner import list_studies

    rows = list_studies(args.storage_path)
    if not rows:
        print(f"no studies under '{args.storage_path}'")
        return 0
    print(f"{'name':<28} {'status':<10} {'trials':>6} {'done':>5} {'best_val':>9} {'its_test':>9}  folder")
    for r in rows:
        fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else "-"  # noqa: E731
        print(f"{r['name']:<28} {r['status']:<10} {r['trials']:>6} {r['with_results']:>5} "
              f"{fmt(r['best_val_acc']):>9} {fmt(r['best_test_acc']):>9}  {r['dir']}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from analysis.report import build_report

    result = build_report(args.study, args.out, args.tracking_uri, log_to_mlflow=not args.no_mlflow)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(result["counts"].items()))
    print(f"report for {args.study} ({counts}) written to {result['out_dir']}:")
    for name in result["files"]:
        print(f"  {name}")
    return 0


def _sync(args: argparse.Namespace) -> int:
    from pathlib import Path

    from study.config import load_study_config
    from study.runner import read_study_file
    from study.tracking import connect, sync_study

    info = read_study_file(args.study_dir)
    connect(info["tracking_uri"])
    cfg = load_study_config(None, raw=info["config"])
    counts = sync_study(Path(args.study_dir), info, cfg.base_trial(), list(cfg.seeds))
    if info.get("status") == "finished":
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=info["tracking_uri"])
        client.set_tag(info["parent_run_id"], "mmstudy.status", "finished")
        client.set_terminated(info["parent_run_id"], status="FINISHED")
    print(f"synced {counts['trials']} trials into MLflow ({info['tracking_uri']}): {counts['epochs_logged']} "
          f"epochs logged, {counts['closed']} runs closed")
    return 0


def add_commands(sub) -> None:
    r = sub.add_parser("run", help="run a study: Ray Tune + Optuna (+ ASHA), logged to MLflow")
    r.add_argument("config", help="study YAML, e.g. study/configs/smoke.yaml")
    r.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    r.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    r.add_argument("--verbose", type=int, default=1, help="Tune verbosity 0-3")
    r.add_argument("overrides", nargs="*", help="dotted key=value, e.g. num_samples=20 trial.epochs=8")
    r.set_defaults(func=_run)

    s = sub.add_parser("resume", help="continue an interrupted study (finished trials are not re-run)")
    s.add_argument("study_dir")
    s.add_argument("--verbose", type=int, default=1)
    s.set_defaults(func=_resume)

    rp = sub.add_parser("report", help="sensitivity/dynamics/importance figures, Table-I comparison, report.md")
    rp.add_argument("study", help="a study folder (runs/NAME) or an MLflow experiment name")
    rp.add_argument("--out", help="output folder (default: STUDY_DIR/report)")
    rp.add_argument("--tracking-uri", help="MLflow tracking URI (default: the study's own)")
    rp.add_argument("--no-mlflow", action="store_true", help="do not log the report on the parent run")
    rp.set_defaults(func=_report)

    sy = sub.add_parser("sync", help="bring a study's results into MLflow after the tracking server was down")
    sy.add_argument("study_dir")
    sy.set_defaults(func=_sync)

    ls = sub.add_parser("list", help="studies with status, trial counts and best result")
    ls.add_argument("--storage-path", default=os.environ.get("MMSTUDY_STORAGE", "runs"))
    ls.set_defaults(func=_list)
