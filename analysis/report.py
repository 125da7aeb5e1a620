"""`mmstudy report STUDY`: figures, tables and a report.md, also logged on the study's parent MLflow run."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import yaml
from mlflow.tracking import MlflowClient

from analysis.features import feature_pictures
from analysis.load import load_histories, load_study
from analysis.plots import (contour_figure, contour_pairs, dynamics_figure, importance_figure, pareto_figure,
                            sensitivity_figure, slice_figure)
from analysis.sensitivity import Sensitivity, analyse, findings, sensitivity_table
from analysis.summary import study_summary
from analysis.tables import (baseline_for, comparison_table, finished, modalities_of, study_margin,
                             to_markdown, trial_label)
from search_spaces import load_space
from study.credentials import redact_text
from trainables.errors import ConfigError


def _save(fig, out: Path, name: str, pdf: bool = False) -> list[str]:
    written = []
    if fig is None:
        return written
    fig.savefig(out / f"{name}.png", dpi=130)
    written.append(f"{name}.png")
    if pdf:
        fig.savefig(out / f"{name}.pdf")
        written.append(f"{name}.pdf")
    plt.close(fig)
    return written


def status_counts(trials: pd.DataFrame) -> dict[str, int]:
    return dict(sorted(trials["status"].value_counts().to_dict().items())) if not trials.empty else {}


def study_metric(config: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The study's metric(s) and mode(s) from its config: one `{name, mode}` or a list of them."""
    raw = config.get("metric") or {"name": "val_acc", "mode": "max"}
    items = raw if isinstance(raw, list) else [raw]
    names = [m["name"] if isinstance(m, dict) else str(m) for m in items]
    modes = [m.get("mode", "max") if isinstance(m, dict) else "max" for m in items]
    if isinstance(raw, dict) and isinstance(raw.get("name"), list):  # {name: [a, b], mode: [max, min]}
        names, modes = list(raw["name"]), list(raw.get("mode") or ["max"] * len(raw["name"]))
    return names, modes


def pick_dynamics_trials(trials: pd.DataFrame, best_trial_id: str | None = None) -> dict[str, str]:
    """The study's result (the summary's best trial) and the joint-training baseline of its loss setting."""
    done = finished(trials)
    chosen: dict[str, str] = {}
    if done.empty:
        return chosen
    match = done[done["trial_id"] == best_trial_id]
    best = match.iloc[0] if not match.empty else done.iloc[0]
    chosen[best["trial_id"]] = f"best: {trial_label(best)}"
    baseline = baseline_for(done, best.get("loss_setting"))
    if baseline is not None and baseline["trial_id"] != best["trial_id"]:
        chosen[baseline["trial_id"]] = "baseline: none (joint training)"
    return chosen


def build_report(study: str, out_dir: str | None = None, tracking_uri: str | None = None,
                 log_to_mlflow: bool = True, command: str | None = None) -> dict[str, Any]:
    trials = load_study(study, tracking_uri)
    attrs = trials.attrs
    name = attrs["study"]
    counts = status_counts(trials)
    if trials.empty or counts.get("finished", 0) == 0:
        detail = ", ".join(f"{n} {s}" for s, n in counts.items()) or "no trials yet"
        raise ConfigError(f"study '{name}' has no finished trial yet ({detail}); nothing to report")
    out = Path(out_dir) if out_dir else Path(attrs.get("study_dir") or ".") / "report"
    out.mkdir(parents=True, exist_ok=True)
    config = attrs["config"]
    space = load_space(config.get("search_space"))
    metrics, modes = study_metric(config)
    command = command or redact_text("mmstudy report " + " ".join(shlex.quote(a) for a in sys.argv[2:]))
    if config.get("mode") == "benchmark":  # Table I of the tuned methods, their tuning cost, accuracy vs gap
        from analysis.benchmark import benchmark_report

        written, summary = benchmark_report(trials, out, counts, command, metrics, modes)
        log_report(attrs, out, log_to_mlflow)
        return {"out_dir": str(out), "files": written, "counts": counts, "summary": summary}
    summary = study_summary(trials, metrics, modes)  # the one ranking rule; its best is the first metric's
    written: list[str] = []

    if len(metrics) > 1:
        written += _save(pareto_figure(trials, metrics, modes, name), out, "pareto", pdf=True)
    sens = analyse(trials, config, space, metrics[0], modes[0], history=load_histories)
    written += sensitivity_files(sens, space, name, out)

    table = comparison_table(trials, order=list((config.get("variants") or {}).keys()), metric=metrics, mode=modes)
    table.to_csv(out / "comparison.csv", index=False)
    (out / "comparison.md").write_text(to_markdown(table))
    written += ["comparison.csv", "comparison.md"]

    mods = modalities_of(trials)
    picks = pick_dynamics_trials(trials, summary.best_trial_id)
    keys = [f"{k}_{m}" for k in ("rlc", "dgr", "rs") for m in mods]
    history = load_histories(trials[trials["trial_id"].isin(list(picks))], keys)
    baseline_note = "" if any(v.startswith("baseline") for v in picks.values()) else " (no joint-training baseline finished)"
    if history[keys].notna().any().any():
        written += _save(dynamics_figure(history, picks, mods, f"{name}: training dynamics, best trial vs baseline"
                                         f"{baseline_note}"), out, "dynamics")

    feature_files, feature_text = feature_pictures(trials, summary, out)  # MM/B-MM Fig. 4/5 (analysis.features)
    written += feature_files
    (out / "report.md").write_text(render_markdown(name, config, counts, table, written, sens, command, attrs,
                                                   summary, metrics, modes, feature_text))
    written.append("report.md")
    log_report(attrs, out, log_to_mlflow)
    return {"out_dir": str(out), "files": written, "counts": counts, "summary": summary}


CONTOUR_SUFFIX = {"multimodal": "mm", "multimodal+unimodal": "mm_um"}


def sensitivity_files(sens: Sensitivity | None, space, name: str, out: Path) -> list[str]:
    """sensitivity.png/.pdf and sensitivity.csv; for a search also Optuna's slice plot, contour plots of the two most
    important parameters and of each constrained pair (one per loss setting when the search ran both), and the
    fANOVA importance plot -- all on the trials' values at the common fidelity."""
    written = _save(sensitivity_figure(sens, space, name), out, "sensitivity", pdf=True)
    if sens is None:
        return written
    sensitivity_table(sens).to_csv(out / "sensitivity.csv", index=False)
    written.append("sensitivity.csv")
    written += _save(slice_figure(sens, name), out, "slice")
    settings = sens.settings if len(sens.settings) > 1 else [None]
    for pair in contour_pairs(sens, space):
        for setting in settings:
            stem = "_".join(["contour", *(p.replace("balancer.", "").replace(".", "_") for p in pair)]
                            + ([CONTOUR_SUFFIX.get(setting, setting)] if setting else []))
            written += _save(contour_figure(sens, space, pair, name, setting), out, stem)
    written += _save(importance_figure(sens, name), out, "importance")
    return written


def sensitivity_section(written: list[str], sens: Sensitivity | None) -> list[str]:
    """The report's sensitivity section: the figure, which parameters matter (analysis.sensitivity.findings),
    and the interaction plots."""
    if "sensitivity.png" not in written:
        return ["## Sensitivity", "", "_No numeric parameter varied across the compared trials._", ""]
    lines = ["## Sensitivity (RedReg Fig. 4/5 style)", "", "![sensitivity](sensitivity.png)", "", *findings(sens), "",
             "The numbers behind the figure: `sensitivity.csv`" + (" (each point's own t-interval too: "
             "`point_low`, `point_high`)." if sens.kind == "grid" else "."), ""]
    extra = [f for f in written if f == "slice.png" or f.startswith("contour_")]
    if extra:
        lines += ["### Every trial and interactions (Optuna's slice and contour plots, values at the same epoch)", ""]
        lines += [f"![{f[:-4]}]({f})" for f in extra] + [""]
    return lines


def log_report(attrs: dict[str, Any], out: Path, log_to_mlflow: bool = True) -> None:
    """The report folder as the parent run's `report/` artifacts (a warning, not a failure, when MLflow is down)."""
    if log_to_mlflow:
        try:
            MlflowClient(tracking_uri=attrs["tracking_uri"]).log_artifacts(attrs["parent_run_id"], str(out), "report")
        except Exception as err:  # noqa: BLE001
            print(f"mmstudy: warning: report written to {out} but not logged to MLflow ({str(err).splitlines()[0][:200]})")


def render_markdown(name, config, counts, table, written, sens, command, attrs, summary, metrics, modes,
                    feature_text: str = "") -> str:
    objective = ", ".join(f"`{m}` ({o})" for m, o in zip(metrics, modes))
    lines = [f"# Study report: {name}", "", summary.text, "",
             f"Produced by: `{command}`", "",
             f"Trials are ranked by {objective} on the validation split, at each trial's best validation epoch "
             "(trials that ran every epoch before those ASHA stopped early"
             + ("; several metrics: Pareto fronts first, each in the order of the first metric, which also picks "
                "the best" if len(metrics) > 1 else "") + "); every number is a test metric at each "
             "seed's best validation epoch, in percent: mean ± sample std [95 % t-interval] over the trial's seeds "
             "(n seeds; one seed shows no spread; an accuracy's interval is cut at 0 and 100). Δ vs joint: the difference to the joint-training baseline of the "
             "same loss setting, Welch's 95 % interval, Welch's test Holm-corrected over every finished trial compared "
             "with that baseline (shown in the table or not); \"within noise\" when the interval covers 0. Verdict: TOST equivalence at a "
             f"±{100 * study_margin(config):g}-point margin (its p Holm-corrected over the same trials) first, then the sign of a significant difference, else inconclusive.", "",
             "Trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) +
             (" — the study is still running; this report covers what has finished." if counts.get("running") else ""),
             ""]
    if "pareto.png" in written:
        lines += ["## Pareto front (multi-objective search)", "", "![pareto](pareto.png)", "",
                  "Each trial at its selected (best validation) epoch; the red line joins the non-dominated trials; "
                  "the star is joint training, the mean over its seeds with 95 % t-interval bars.", ""]
    lines += sensitivity_section(written, sens)
    lines += ["## Comparison (Table I style)", "", to_markdown(table), ""]
    lines += ["## Training dynamics (Fig. 1/3 style)", ""]
    lines += (["![dynamics](dynamics.png)", ""] if "dynamics.png" in written
              else ["_No RLC/DGR/RS traces were logged for the chosen trials._", ""])
    if sens is not None and sens.kind == "search":
        lines += ["## Hyperparameter importance", ""]
        if sens.importances:
            lines += ["![importance](importance.png)", "",
                      f"Optuna's fANOVA on the {len(sens.points)} trials' `{sens.column}` at epoch "
                      f"{sens.fidelity.epoch} (ASHA-stopped trials included):", "", "| parameter | importance |", "|---|---|"]
            lines += [f"| {k} | {v:.3f} |" for k, v in sens.importances.items()] + [""]
        else:
            lines += ["_Not computed: needs at least 3 compared trials, a varied parameter and some spread in "
                      "their values._", ""]
    if feature_text:
        lines += [feature_text.rstrip(), ""]
    lines += ["## Study config", "", "```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(), "```", "",
              f"MLflow: tracking URI `{attrs['tracking_uri']}`, parent run `{attrs['parent_run_id']}`.", ""]
    return "\n".join(lines)
