"""Whole runs the CLI and the app start: an experiment, the connector ablation, the classic lesson."""
