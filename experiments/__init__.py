"""Experiment scripts: `python -m experiments.<name>` (each takes --smoke and --out)."""
