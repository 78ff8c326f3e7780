"""PSLD (solvers/psld.py): the gluing gradient against a closed form on the GMM's linear
decoder, the paper's A^T form on masks, gamma = 0 is Latent-DPS, refusals."""

from __future__ import annotations

import pytest
import torch

import solvers
from solvers import SolverInputError
from solvers.priors.gmm import mcgdiff_problem
from tests.operator_cases import build_small
from tests.problem_batches import IMAGE, LatentImageMixture

F64 = torch.float64


@pytest.mark.parametrize("sigma", [0.1, 2.0, 30.0])
def test_gluing_gradient_matches_the_closed_form_on_the_linear_decoder(sigma: float) -> None:
    """decode(z) = D z + b, encode = D^-1 (x - b): the gluing gap is
    z0 - encode(x + A^+ (y - A x)) = -D^-1 A^+ (y - A (D z0 + b)), its norm differentiated by
    autograd through the denoiser with a dense pseudo-inverse (torch.linalg.pinv)."""
    p = mcgdiff_problem(8, 2, 0, latent=True)
    prior, op, y = p.prior, p.operator, p.y
    solver = solvers.build("psld", "gmm", cg_tol=1e-14)
    solver.init(prior, op, y, n=5)
    x = 6.0 * torch.randn(5, 8, generator=torch.Generator().manual_seed(1), dtype=F64)

    x_in = x.clone().requires_grad_(True)
    z0 = prior.denoise(x_in, sigma)
    got = solver.gluing_grad(op, y, z0, prior.decode(z0), x_in)

    x_ref = x.clone().requires_grad_(True)
    z_ref = prior.denoise(x_ref, sigma)
    A, D, b = op.A, prior.decoder, prior.bias
    gap = -(y - (z_ref @ D.T + b) @ A.T) @ torch.linalg.pinv(A).T @ torch.linalg.inv(D).T
    (want,) = torch.autograd.grad(gap.norm(dim=1).sum(), x_ref)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
    assert want.abs().max() > 1e-3  # the term is not trivially zero here


def test_on_masks_the_glued_image_is_the_papers_projection() -> None:
    """For inpainting A A^T = I, so x + A^+ (y - A x) = A^T y + (I - A^T A) x (Algorithm 2)."""
    prior = LatentImageMixture()
    op = build_small("inpaint_random", shape=IMAGE, seed=0, drop=0.5)
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(3, *IMAGE, generator=gen, dtype=F64)
    y = op.measure(torch.randn(1, *IMAGE, generator=gen, dtype=F64), gen)
    solver = solvers.build("psld", cg_iters=1)
    solver.init(prior, op, y, n=3)
    want = prior.encode(op.adjoint(y.expand(3, *op.output_shape)) + image - op.normal(image))
    torch.testing.assert_close(solver.glued_latent(op, y, image), want, rtol=0, atol=1e-12)


def test_gamma_zero_is_latent_dps() -> None:
    p = mcgdiff_problem(8, 2, 0, latent=True)
    gmm = dict(solvers.presets("psld")["gmm"].overrides, num_steps=12)
    dps_fields = {k: v for k, v in gmm.items() if k != "gamma"}
    psld = solvers.build("psld", **{**gmm, "gamma": 0.0}).sample(p.prior, p.operator, p.y, 4, 3)
    ldps = solvers.build("latent_dps", **dps_fields).sample(p.prior, p.operator, p.y, 4, 3)
    assert torch.equal(psld.samples, ldps.samples) and psld.nfe == ldps.nfe
    glued = solvers.build("psld", **gmm).sample(p.prior, p.operator, p.y, 4, 3)
    assert (glued.samples - ldps.samples).abs().amax(1).min() > 1e-6


def test_refusals_name_the_fix() -> None:
    pixel = mcgdiff_problem(8, 2, 0)
    with pytest.raises(SolverInputError, match="needs a latent prior"):
        solvers.build("psld").init(pixel.prior, pixel.operator, pixel.y)
    prior = LatentImageMixture()
    phase = build_small("phase_retrieval", shape=IMAGE)
    with pytest.raises(SolverInputError, match="linear operator"):
        solvers.build("psld").init(prior, phase, torch.zeros(1, *phase.output_shape, dtype=F64))
    latent = mcgdiff_problem(8, 2, 0, latent=True)
    with pytest.raises(SolverInputError, match="tuned for the 'inpaint_box'"):
        solvers.build("psld", "sd/inpaint_box").init(latent.prior, latent.operator, latent.y)
    with pytest.raises(solvers.SolverConfigError, match="gamma"):
        solvers.build("psld", gamma=-1.0)
