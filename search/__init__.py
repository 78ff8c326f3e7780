"""Hyperparameter search with Ray Tune + Optuna + ASHA (DESIGN.md, "Search").

Not built yet: this package is reserved by the layout and filled by the search issue.
"""
