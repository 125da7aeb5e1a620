"""`mmstudy run | resume | sync | list | report | ui`: the study subcommands (argparse wiring and what they
print; the work is in runner, records and analysis)."""
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
    _summary(run_study(cfg, args.config, verbose=args.verbose, shared_group=args.shared_group))
    return 0


def _resume(args: argparse.Namespace) -> int:
    from study.runner import resume_study

    _summary(resume_study(args.study_dir, verbose=args.verbose, shared_group=args.shared_group))
    return 0


def _summary(outcome) -> None:
    study, results = outcome.study, outcome.results
    cfg = study.config
    print(f"\nstudy '{study.name}': {len(results)} trials, {len(results.errors)} errored")
    print(f"top trials by {cfg.metric.name} ({cfg.metric.mode}); test accuracy at each seed's best validation "
          f"epoch, mean over seeds:")
    print(top_trials_table(results.get_dataframe(), cfg.metric.name, cfg.metric.mode))
    if outcome.summary is not None:
        print(f"\n{outcome.summary.text}")
    print(f"\nMLflow: `mmstudy ui {study.dir}`  (experiment {study.info['experiment_name']})")
    print(f"report: `mmstudy report {study.dir}`")


def top_trials_table(frame, metric: str, mode: str, k: int = 5) -> str:
    """The study's own trials, best first by its metric and mode, with their sampled point."""
    import pandas as pd

    from study.records import rank

    ranked = rank(frame, metric, mode).head(k)
    if ranked.empty:
        return "no trial reported the study's metric"
    keep = ["trial_id", *[c for c in ranked if c.startswith("config/point/")], "training_iteration", metric,
            "best_val_acc", "best_test_acc", "best_test_acc_std"]
    table = ranked[list(dict.fromkeys(c for c in keep if c in ranked))].dropna(axis=1, how="all")
    table = table.drop(columns=["config/point/sweep_param"], errors="ignore")
    table = table.rename(columns=lambda c: c.replace("config/point/", "").replace("balancer.", "")
                         .replace("training_iteration", "epochs"))
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4f}".format):
        return table.to_string(index=False)


def _list(args: argparse.Namespace) -> int:
    import sys

    from study.records import scan_studies

    rows, skipped = scan_studies(args.storage_path, args.shared_group)
    for note in skipped:
        print(f"mmstudy: note: {note}", file=sys.stderr)
    if not rows:
        print(f"no studies under '{args.storage_path}'")
        return 0
    print(f"{'name':<28} {'status':<10} {'trials':>6} {'done':>5} {'metric (mode)':<22} {'best':>8} {'its_test':>9}  "
          f"folder")
    for r in rows:
        best = r["best"] or {}
        fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else "-"  # noqa: E731
        print(f"{r['name']:<28} {r['status']:<10} {r['trials']:>6} {r['with_results']:>5} "
              f"{r['metric'] + ' (' + r['mode'] + ')':<22} {fmt(best.get(r['metric'])):>8} "
              f"{fmt(best.get('best_test_acc')):>9}  {r['dir']}")
        if r.get("note"):
            print(f"{'':<28} {r['note']}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from analysis.report import build_report
    from study.records import STUDY_FILE, check_writable, existing_store, open_study

    if len(args.study) > 1:  # several benchmark studies: the methods ranked across them
        from analysis.ranking_across import build_ranking_report

        for study in args.study:
            if (Path(study) / STUDY_FILE).is_file():
                open_study(study, args.shared_group)  # trusted, with a readable study.json
        result = build_ranking_report(args.study, args.out, args.tracking_uri)
        print(f"ranking of {len(args.study)} studies written to {result['out_dir']}:")
        for name in result["files"]:
            print(f"  {name}")
        return 0
    args.study = args.study[0]
    is_folder = (Path(args.study) / STUDY_FILE).is_file()
    if is_folder:
        open_study(args.study, args.shared_group)  # trusted, with a readable study.json
    out = Path(args.out) if args.out is not None else default_report_dir(args.study, is_folder)
    check_writable(out, "--out")
    existing_store(args.study, args.tracking_uri)
    result = build_report(args.study, str(out), args.tracking_uri, log_to_mlflow=not args.no_mlflow)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(result["counts"].items()))
    print(f"report for {args.study} ({counts}) written to {result['out_dir']}:")
    for name in result["files"]:
        print(f"  {name}")
    return 0


def default_report_dir(study: str, is_folder: bool):
    """STUDY_DIR/report for a study folder; ./report/<name> for an MLflow experiment name -- never a folder named
    by the run's `mmstudy.study_dir` tag, which anyone who can write to a shared tracking server can set."""
    import re
    from pathlib import Path

    if is_folder:
        return Path(study) / "report"
    safe = re.sub(r"[^\w.-]+", "_", study).strip("._") or "study"
    return Path("report") / safe


def _sync(args: argparse.Namespace) -> int:
    from study import records

    study = records.open_study(args.study_dir, args.shared_group)
    counts = records.sync(study)
    print(f"synced {counts['trials']} trials into MLflow ({study.info['tracking_uri']}): {counts['epochs_logged']} "
          f"epochs logged, {counts['closed']} runs closed")
    return 0


def _ui(args: argparse.Namespace) -> int:
    from study.ui import open_ui

    return open_ui(args.study, host=args.host, port=args.port, shared_group=args.shared_group)


def _verbosity(parser) -> None:
    parser.add_argument("-v", action="count", dest="verbose", default=0,
                        help="Ray Tune's own progress tables instead of the compact view (-vv: more)")
    parser.add_argument("--verbose", type=int, dest="verbose", help="Tune verbosity 0-3 (0: the compact view)")


def _shared_group(parser) -> None:
    parser.add_argument("--shared-group", metavar="GROUP",
                        help="also trust study folders GROUP can write (a study run with --shared-group GROUP); "
                             "without it only folders that you alone can write are read (docs/reliability.md)")


def add_commands(sub) -> None:
    r = sub.add_parser("run", help="run a study: Ray Tune + Optuna (+ ASHA), logged to MLflow")
    r.add_argument("config", help="study YAML, e.g. study/configs/smoke.yaml")
    r.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    r.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    r.add_argument("--shared-group", metavar="GROUP", help="open the study folder to GROUP on purpose (group-owned, "
                                                           "g+rwx; others then resume it with the same flag)")
    _verbosity(r)
    r.add_argument("overrides", nargs="*", help="dotted key=value, e.g. num_samples=20 trial.epochs=8")
    r.set_defaults(func=_run)

    s = sub.add_parser("resume", help="continue an interrupted study (finished trials are not re-run)")
    s.add_argument("study_dir")
    _shared_group(s)
    _verbosity(s)
    s.set_defaults(func=_resume)

    rp = sub.add_parser("report", help="sensitivity/dynamics/importance figures, Table-I comparison, report.md")
    rp.add_argument("study", nargs="+", help="a study folder (runs/NAME) or an MLflow experiment name; several "
                    "benchmark studies: their methods ranked across them (Friedman, critical-difference diagram)")
    rp.add_argument("--out", help="output folder (default: STUDY_DIR/report; ./report/NAME for an experiment name; "
                    "several studies: ./report/FIRST-and-N-more)")
    _shared_group(rp)
    rp.add_argument("--tracking-uri", help="MLflow tracking URI (default: the study's own)")
    rp.add_argument("--no-mlflow", action="store_true", help="do not log the report on the parent run")
    rp.set_defaults(func=_report)

    sy = sub.add_parser("sync", help="bring a study's results into MLflow after the tracking server was down")
    sy.add_argument("study_dir")
    _shared_group(sy)
    sy.set_defaults(func=_sync)

    ls = sub.add_parser("list", help="studies with status, trial counts and best result by their metric")
    ls.add_argument("--storage-path", default=os.environ.get("MMSTUDY_STORAGE", "runs"))
    _shared_group(ls)
    ls.set_defaults(func=_list)

    ui = sub.add_parser("ui", help="MLflow's UI on a study's store, opened on its runs table")
    ui.add_argument("study", nargs="?", help="a study folder or experiment name (default: the default store)")
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1, this machine only)")
    ui.add_argument("--port", type=int, default=5000)
    _shared_group(ui)
    ui.set_defaults(func=_ui)
