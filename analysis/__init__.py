"""Study results to pandas, figures and tables in the style of the papers, and a report a person reads.

    from analysis import load_study, study_summary
    trials = load_study("runs/quickstart")
    print(study_summary(trials, "val_acc", "max").text)   # the confirmed best against joint training, with CIs
"""
from analysis.load import load_histories, load_study, resolve_study
from analysis.summary import StudySummary, study_summary

__all__ = ["StudySummary", "load_histories", "load_study", "resolve_study", "study_summary"]
