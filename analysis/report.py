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

from analysis.importance import param_importances
from analysis.load import load_histories, load_study
from analysis.plots import dynamics_figure, importance_figure, sensitivity_figure
from analysis.tables import comparison_table, modalities_of, to_markdown, trial_label
from search_spaces import load_space
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


def pick_dynamics_trials(trials: pd.DataFrame) -> dict[str, str]:
    """The best trial by validation accuracy and, when the study has one, the best `none` baseline."""
    done = trials[trials["status"] == "finished"].sort_values("best_val_acc", ascending=False)
    chosen: dict[str, str] = {}
    if done.empty:
        return chosen
    best = done.iloc[0]
    chosen[best["trial_id"]] = f"best: {trial_label(best)}"
    baseline = done[(done["balancer"] == "none") & (done["trial_id"] != best["trial_id"])]
    if not baseline.empty:
        chosen[baseline.iloc[0]["trial_id"]] = "baseline: none"
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
    written: list[str] = []

    written += _save(sensitivity_figure(trials, space, name), out, "sensitivity", pdf=True)

    table = comparison_table(trials, order=list((config.get("variants") or {}).keys()))
    table.to_csv(out / "comparison.csv", index=False)
    (out / "comparison.md").write_text(to_markdown(table))
    written += ["comparison.csv", "comparison.md"]

    mods = modalities_of(trials)
    picks = pick_dynamics_trials(trials)
    keys = [f"{k}_{m}" for k in ("rlc", "dgr", "rs") for m in mods]
    history = load_histories(trials[trials["trial_id"].isin(list(picks))], keys)
    baseline_note = "" if any(v.startswith("baseline") for v in picks.values()) else " (no `none` trial in this study)"
    if history[keys].notna().any().any():
        written += _save(dynamics_figure(history, picks, mods, f"{name}: training dynamics, best trial vs baseline"
                                         f"{baseline_note}"), out, "dynamics")

    importances = param_importances(trials, space) if config.get("mode") == "search" else {}
    written += _save(importance_figure(importances, f"{name}: hyperparameter importance (Optuna fANOVA)"),
                     out, "importance")

    command = command or "mmstudy report " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    (out / "report.md").write_text(render_markdown(name, config, counts, table, written, importances, command, attrs))
    written.append("report.md")
    if log_to_mlflow:
        try:
            MlflowClient(tracking_uri=attrs["tracking_uri"]).log_artifacts(attrs["parent_run_id"], str(out), "report")
        except Exception as err:  # noqa: BLE001
            print(f"mmstudy: warning: report written to {out} but not logged to MLflow ({str(err).splitlines()[0][:200]})")
    return {"out_dir": str(out), "files": written, "counts": counts}


def render_markdown(name, config, counts, table, written, importances, command, attrs) -> str:
    lines = [f"# Study report: {name}", "",
             f"Produced by: `{command}`", "",
             "Numbers are test metrics at each trial's best validation epoch (model selection on the validation "
             "split), mean ± std over the trial's seeds.", "",
             "Trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) +
             (" — the study is still running; this report covers what has finished." if counts.get("running") else ""),
             ""]
    if "sensitivity.png" in written:
        lines += ["## Sensitivity (RedReg Fig. 4/5 style)", "", "![sensitivity](sensitivity.png)", ""]
    else:
        lines += ["## Sensitivity", "", "_No numeric parameter varied across finished trials._", ""]
    lines += ["## Comparison (Table I style)", "", to_markdown(table), ""]
    lines += ["## Training dynamics (Fig. 1/3 style)", ""]
    lines += (["![dynamics](dynamics.png)", ""] if "dynamics.png" in written
              else ["_No RLC/DGR/RS traces were logged for the chosen trials._", ""])
    if importances:
        lines += ["## Hyperparameter importance", "", "![importance](importance.png)", "",
                  "| parameter | importance |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in importances.items()] + [""]
    else:
        lines += ["## Hyperparameter importance", "",
                  "_Not computed: needs a search-mode study with at least 3 finished trials, a varied parameter "
                  "and some spread in their scores._", ""]
    lines += ["## Study config", "", "```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(), "```", "",
              f"MLflow: tracking URI `{attrs['tracking_uri']}`, parent run `{attrs['parent_run_id']}`.", ""]
    return "\n".join(lines)
