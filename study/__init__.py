"""The study runner: Ray Tune + Optuna search, MLflow logging, and the `mmstudy` CLI."""
