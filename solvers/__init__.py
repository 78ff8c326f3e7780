"""Posterior samplers for inverse problems with diffusion priors (DESIGN.md, "Solver").

``solvers.priors`` holds the prior (denoiser) adapters. Importing this package stays light: no
ray, mlflow, diffusers or transformers.
"""
