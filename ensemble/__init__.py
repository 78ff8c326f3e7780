"""Particle ensembles on Ray actors: repulsion, pruning, selection (DESIGN.md, "Ensemble").

Not built yet: this package is reserved by the layout and filled by the ensemble issue.
"""
