"""Study results to pandas, figures and tables in the style of the papers, and a report a person reads."""
from analysis.load import load_histories, load_study, resolve_study

__all__ = ["load_histories", "load_study", "resolve_study"]
