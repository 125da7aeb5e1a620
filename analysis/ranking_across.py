"""`mmstudy report STUDY STUDY ...`: the methods of several benchmark studies (one per dataset) ranked within each
study and across them (Demšar 2006): Friedman's test over the studies (scipy.stats.friedmanchisquare), Nemenyi's
post-hoc p-values and the critical-difference diagram (scikit-posthocs).

Each study contributes its Table I (analysis.benchmark): a method's score is its rank-1 confirmation's mean test
accuracy; joint training enters under one name, `joint training (reference)` (each study's reference); a method
whose confirmation diverged or failed ranks last in that study. Only methods with a score in every study are
ranked (a block design needs every method in every block): the others are listed with the studies they lack,
never imputed.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats

from analysis.stats import ALPHA, FAILED
from trainables.errors import ConfigError

REFERENCE = "joint training (reference)"
FILES = ("ranks.csv", "ranking.md", "critical_difference.png")
# The study fields that make a benchmark's protocol (budget, search, confirmation, selection): the datasets may
# differ between the studies ranked together, these should not
PROTOCOL_KEYS = ("num_samples", "trial.epochs", "searcher", "searcher_options", "sampler_seed", "scheduler", "asha",
                 "shared_space", "data_seed", "confirm", "metric", "loss_settings")


def study_scores(trials: pd.DataFrame, metric: str | list[str], mode: str | list[str]) -> pd.Series:
    """Method -> its score in one study: the reported row's mean test accuracy; -inf when its confirmation
    diverged or failed; absent when it has no confirmed result. The reference is REFERENCE; the study's other
    joint-training baselines are candidates for it, not methods, and are left out. attrs["reference"]: the
    reference's own label."""
    from analysis.benchmark import benchmark_table

    table = benchmark_table(trials, metric, mode, predictions={})  # the ranking needs no per-example test
    scores: dict[str, float] = {}
    reference = "none finished"
    for _, r in table.iterrows():
        if r["role"] == "joint":
            continue
        name = REFERENCE if r["role"] == "baseline" else str(r["method"])
        reference = str(r["method"]) if r["role"] == "baseline" else reference
        if r["verdict"] in FAILED:
            scores[name] = -math.inf
        elif r["n"] > 0 and pd.notna(r["acc"]):
            scores[name] = float(r["acc"])
    out = pd.Series(scores, dtype=float)
    out.attrs["reference"] = reference
    return out


@dataclass
class AcrossStudies:
    scores: pd.DataFrame  # methods x studies, NaN where a study lacks the method
    ranks: pd.DataFrame  # the methods every study has x studies (1 = best), then "mean rank"; best mean rank first
    missing: dict[str, list[str]]  # method -> the studies without a score for it
    friedman_statistic: float | None
    friedman_p: float | None
    nemenyi: pd.DataFrame | None  # pairwise p-values over the ranked methods
    critical_difference: float | None
    note: str  # why a test was not run, else ""


def rank_across(scores: dict[str, pd.Series], alpha: float = ALPHA) -> AcrossStudies:
    """`scores`: study name -> study_scores. Ranks within each study (higher score better, ties averaged), then
    Friedman over the studies on the methods every study has, Nemenyi's pairwise p-values and the critical
    difference q_alpha * sqrt(k (k + 1) / (6 N)), q_alpha the studentized range quantile / sqrt(2) (Demšar)."""
    frame = pd.DataFrame(scores)
    complete = frame.dropna()
    missing = {m: [s for s in frame.columns if pd.isna(frame.at[m, s])] for m in frame.index if m not in complete.index}
    ranks = complete.apply(lambda col: pd.Series(stats.rankdata(-col.to_numpy(), method="average"), index=col.index))
    k, n = len(complete), len(frame.columns)
    ranks["mean rank"] = ranks.mean(axis=1) if k else pd.Series(dtype=float)
    ranks = ranks.sort_values("mean rank", kind="stable")
    result = AcrossStudies(frame, ranks, missing, None, None, None, None, "")
    if k < 3 or n < 2:
        result.note = (f"Friedman's test needs 3 or more methods present in every study and 2 or more studies "
                       f"(here {k} methods, {n} studies): not run.")
        return result
    blocks = ranks.drop(columns="mean rank")
    if (blocks.nunique(axis=0) == 1).all():
        result.note = "Every method ties in every study: Friedman's test is undefined."
        return result
    res = stats.friedmanchisquare(*blocks.to_numpy())  # one sample per method, over the studies (blocks)
    result.friedman_statistic, result.friedman_p = float(res.statistic), float(res.pvalue)
    import scikit_posthocs as sp

    result.nemenyi = sp.posthoc_nemenyi_friedman(blocks.T)  # rows: studies (blocks), columns: methods
    q = stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2)
    result.critical_difference = float(q * math.sqrt(k * (k + 1) / (6 * n)))
    if n < 5:
        result.note = (f"With {n} studies Friedman's chi-square approximation is rough and Nemenyi's test has little "
                       "power: read the ranks, not only the p-values.")
    return result


def cd_figure(result: AcrossStudies, title: str):
    """The critical-difference diagram (scikit-posthocs): mean ranks, methods joined where Nemenyi finds no
    difference at alpha, the critical difference drawn above the axis."""
    if result.nemenyi is None:
        return None
    import scikit_posthocs as sp

    fig, ax = plt.subplots(figsize=(8, 2.5 + 0.2 * len(result.ranks)))
    sp.critical_difference_diagram(result.ranks["mean rank"], result.nemenyi, ax=ax, cd=result.critical_difference)
    ax.set_title(title, fontsize=10, pad=28)  # above the diagram's own "CD = ..." label
    fig.tight_layout()
    return fig


def protocol_differences(configs: dict[str, dict[str, Any]]) -> list[str]:
    """Each protocol field (PROTOCOL_KEYS) whose value differs between the studies' snapshots, with its value per
    study: ranks across studies of different budgets mix the data's effect with the budget's, so the report says so."""
    def value(config: dict[str, Any], key: str) -> Any:
        for part in key.split("."):
            config = config.get(part) if isinstance(config, dict) else None
        return config

    lines = []
    for key in PROTOCOL_KEYS:
        values = {name: value(config or {}, key) for name, config in configs.items()}
        if len({json.dumps(v, sort_keys=True, default=str) for v in values.values()}) > 1:
            lines.append(f"`{key}`: " + "; ".join(f"{json.dumps(v, sort_keys=True, default=str)} ({name})"
                                                   for name, v in values.items()))
    return lines


def _percent(value: float) -> str:
    return "diverged" if value == -math.inf else ("–" if pd.isna(value) else f"{100 * value:.2f}")


def ranking_markdown(result: AcrossStudies, studies: list[str], references: dict[str, str], command: str,
                     differences: list[str] = ()) -> str:
    lines = [f"# Methods ranked across {len(studies)} benchmark studies", "", f"Produced by: `{command}`", "",
             "Per study, each method's rank-1 confirmation's mean test accuracy (Table I of its report), ranked "
             "within the study (1 = best, ties averaged; a diverged or failed confirmation ranks last). Joint "
             f"training enters as `{REFERENCE}`, each study's reference ("
             + "; ".join(f"{s}: `{references[s]}`" for s in studies) + "). "
             "Only methods with a result in every study are ranked; the others are listed below.", ""]
    if differences:
        lines += ["**The studies' protocols differ**, so the ranks mix the effect of the data with that of the "
                  "protocol:", "", *(f"- {d}" for d in differences), ""]
    headers = ["Method", *(f"{s}: rank (acc %)" for s in studies), "Mean rank"]
    lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for method, r in result.ranks.iterrows():
        cells = [f"{r[s]:g} ({_percent(result.scores.at[method, s])})" for s in studies]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {r['mean rank']:.2f} |")
    lines.append("")
    if result.friedman_p is not None:
        k, n = len(result.ranks), len(studies)
        lines += [f"Friedman's test over {n} studies and {k} methods: chi-square = {result.friedman_statistic:.3f}, "
                  f"p = {result.friedman_p:.4g}. Nemenyi's critical difference at alpha = {ALPHA}: "
                  f"{result.critical_difference:.2f} ranks (methods whose mean ranks differ by less are joined in the "
                  "diagram).", "", "![critical difference diagram](critical_difference.png)", ""]
    if result.note:
        lines += [result.note, ""]
    if result.missing:
        lines += ["Not ranked (no result in every study):", ""]
        lines += [f"- `{m}`: missing from {', '.join(lacks)}; "
                  + ", ".join(f"{s} {_percent(result.scores.at[m, s])} %" for s in studies if s not in lacks)
                  for m, lacks in result.missing.items()]
        lines.append("")
    return "\n".join(lines)


def _folder_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "study"


def build_ranking_report(studies: list[str], out_dir: str | None = None, tracking_uri: str | None = None,
                         command: str | None = None) -> dict[str, Any]:
    """Load every study (each must be a benchmark study with a finished trial), then write ranks.csv,
    ranking.md and critical_difference.png into `out_dir` (default ./report/<first study>-and-<N-1>-more).
    Nothing is written until every study has been read."""
    import shlex

    from analysis.load import load_study
    from analysis.report import status_counts, study_metric
    from study.records import check_writable, existing_store

    try:
        import scikit_posthocs  # noqa: F401 -- the optional extra this command needs, checked before any work
    except ImportError:
        raise ConfigError("study: ranking several studies needs scikit-posthocs (pip install 'mmstudy[ranking]')") \
            from None
    frames = []
    for study in studies:
        existing_store(study, tracking_uri)
        trials = load_study(study, tracking_uri)
        mode = (trials.attrs.get("config") or {}).get("mode", "search")
        if mode != "benchmark":
            raise ConfigError(f"study: '{study}' is a {mode} study; several studies are ranked only in benchmark mode "
                              "(allowed: studies with mode: benchmark)")
        if status_counts(trials).get("finished", 0) == 0:
            raise ConfigError(f"study: '{study}' has no finished trial yet; nothing to rank")
        frames.append(trials)
    names = [f.attrs["study"] for f in frames]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"study: '{twice[0]}' is given twice (each study once)")
    out = Path(out_dir) if out_dir else Path("report") / f"{_folder_name(names[0])}-and-{len(names) - 1}-more"
    check_writable(out, "--out")
    scores, references = {}, {}
    for name, trials in zip(names, frames):
        scores[name] = study_scores(trials, *study_metric(trials.attrs["config"]))
        references[name] = scores[name].attrs["reference"]
    result = rank_across(scores)
    out.mkdir(parents=True, exist_ok=True)
    command = command or "mmstudy report " + " ".join(shlex.quote(a) for a in studies) + (
        f" --out {shlex.quote(str(out_dir))}" if out_dir else "")
    table = result.ranks.join(result.scores.add_suffix(" acc"), how="outer")
    table.index.name = "method"
    table.to_csv(out / "ranks.csv")
    written = ["ranks.csv"]
    fig = cd_figure(result, f"Mean rank over {len(names)} studies (critical difference, Nemenyi, alpha {ALPHA})")
    if fig is not None:
        fig.savefig(out / "critical_difference.png", dpi=130)
        plt.close(fig)
        written.append("critical_difference.png")
    differences = protocol_differences({name: trials.attrs.get("config") for name, trials in zip(names, frames)})
    (out / "ranking.md").write_text(ranking_markdown(result, names, references, command, differences))
    written.append("ranking.md")
    return {"out_dir": str(out), "files": written, "result": result}
