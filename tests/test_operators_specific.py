"""Operator-specific facts: protocol defaults, exact equivalences and closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import operators
from operators import OperatorInputError
from operators.convolution import reflect_indices
from operators.linalg import cg
from operators.motion_kernel import motion_kernel

GEN = torch.Generator


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=GEN().manual_seed(seed), dtype=torch.float64)


# -- protocol defaults (docs/operators.md) ---------------------------------------------------
def test_defaults_follow_the_reference_protocol():
    gaussian = operators.build("gaussian_blur")
    assert gaussian.input_shape == (3, 256, 256) and gaussian.sigma == 0.05
    assert gaussian.kernel.shape == (61, 61) and gaussian.std == 3.0 and gaussian.pad == 30
    motion = operators.build("motion_blur")
    assert motion.kernel.shape == (61, 61) and motion.intensity == 0.5
    assert operators.build("super_resolution").output_shape == (3, 64, 64)
    assert operators.build("phase_retrieval").output_shape == (3, 384, 384)
    assert operators.build("hdr").factor == 2.0
    random_mask = operators.build("inpaint_random")
    assert 0.70 <= random_mask.drop_fraction <= 0.71
    box = operators.build("inpaint_box").mask[0]
    rows, cols = torch.nonzero(box == 0, as_tuple=True)
    assert rows.max() - rows.min() + 1 == 128 and cols.max() - cols.min() + 1 == 128
    assert 32 <= rows.min() < 96 and 32 <= cols.min() < 96


def test_nonlinear_blur_refuses_without_weights_unless_asked_for_random_init():
    with pytest.raises(OperatorInputError, match=r"GOPRO_wVAE\.pth"):
        operators.build("nonlinear_blur")


# -- convolution -----------------------------------------------------------------------------
def test_reflect_indices_match_torch_reflect_padding():
    x = _randn(2, 3, 7, 9)
    rows, cols = reflect_indices(7, 5), reflect_indices(9, 5)
    torch.testing.assert_close(
        x.index_select(-2, rows).index_select(-1, cols), F.pad(x, (5, 5, 5, 5), mode="reflect")
    )


@pytest.mark.parametrize("name", ["gaussian_blur", "motion_blur"])
def test_fft_convolution_equals_direct_convolution_with_the_same_padding(name):
    fft = operators.build(name, shape=(3, 64, 80), method="fft").double()
    direct = operators.build(name, shape=(3, 64, 80), method="direct").double()
    assert fft.method == "fft" and direct.method == "direct"
    x, v = _randn(2, 3, 64, 80), _randn(2, 3, 64, 80, seed=1)
    reference = F.conv2d(
        F.pad(x.reshape(6, 1, 64, 80), (30, 30, 30, 30), mode="reflect"), fft.kernel[None, None]
    ).view_as(x)
    torch.testing.assert_close(fft(x), reference, rtol=0, atol=1e-12)
    torch.testing.assert_close(direct(x), reference, rtol=0, atol=1e-12)
    torch.testing.assert_close(fft.adjoint(v), direct.adjoint(v), rtol=0, atol=1e-12)


def test_auto_method_uses_fft_for_large_kernels_only():
    assert operators.build("gaussian_blur", shape=(1, 64, 64)).method == "fft"
    assert operators.build("gaussian_blur", shape=(1, 64, 64), kernel_size=5).method == "direct"


def test_gaussian_kernel_is_normalised_and_has_the_requested_spread():
    kernel = operators.build("gaussian_blur").kernel
    assert kernel.sum().item() == pytest.approx(1.0, abs=1e-12)
    offsets = torch.arange(61, dtype=torch.float64) - 30
    variance = (kernel.sum(1) * offsets**2).sum()
    assert variance.item() == pytest.approx(9.0, rel=1e-6)  # std 3, tails beyond 10 std vanish


def test_blur_preserves_constant_images():
    op = operators.build("motion_blur", shape=(1, 40, 40), kernel_size=31).double()
    torch.testing.assert_close(
        op(torch.full((1, 1, 40, 40), 0.3, dtype=torch.float64)),
        torch.full((1, 1, 40, 40), 0.3, dtype=torch.float64),
    )


def test_kernel_larger_than_the_image_is_refused():
    with pytest.raises(OperatorInputError, match="padding 30"):
        operators.build("gaussian_blur", shape=(3, 16, 16))
    with pytest.raises(OperatorInputError, match="odd"):
        operators.build("gaussian_blur", kernel_size=60)


# -- motion kernels --------------------------------------------------------------------------
def test_motion_kernel_is_a_seeded_normalised_nonnegative_kernel():
    k0 = motion_kernel(61, 0.5, GEN().manual_seed(0))
    again = motion_kernel(61, 0.5, GEN().manual_seed(0))
    k1 = motion_kernel(61, 0.5, GEN().manual_seed(1))
    torch.testing.assert_close(k0, again, rtol=0, atol=0)
    assert not torch.allclose(k0, k1)
    for k in (k0, k1):
        assert (k >= 0).all() and k.sum().item() == pytest.approx(1.0, abs=1e-12)


def test_motion_kernels_are_centred_blurs_not_points():
    coords = torch.arange(61, dtype=torch.float64) - 30
    for seed in range(10):
        k = motion_kernel(61, 0.5, GEN().manual_seed(seed))
        row, col = (k.sum(1) * coords).sum(), (k.sum(0) * coords).sum()
        assert abs(row) < 3 and abs(col) < 3  # the trajectory is centred on its mean
        assert (k > 1e-4).sum() >= 5  # spread over several pixels


def test_motion_intensity_out_of_range_is_refused():
    with pytest.raises(OperatorInputError, match="intensity"):
        operators.build("motion_blur", intensity=1.5)


# -- super-resolution --------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 64, 48), (1, 32, 32)])
def test_super_resolution_equals_torch_resampling(shape):
    x = _randn(2, *shape)
    bicubic = operators.build("super_resolution", shape=shape, factor=4).double()
    expected = F.interpolate(x, scale_factor=0.25, mode="bicubic", antialias=True)
    torch.testing.assert_close(bicubic(x), expected, rtol=0, atol=1e-12)
    average = operators.build("super_resolution", shape=shape, factor=4, mode="average").double()
    torch.testing.assert_close(average(x), F.avg_pool2d(x, 4), rtol=0, atol=1e-12)


def test_super_resolution_refuses_a_factor_that_does_not_divide():
    with pytest.raises(OperatorInputError, match="factor"):
        operators.build("super_resolution", shape=(3, 30, 30), factor=4)


# -- masks ----------------------------------------------------------------------------------------
def test_box_corners_cover_the_reference_range():
    corners = set()
    for seed in range(200):
        mask = operators.build("inpaint_box", shape=(1, 16, 16), box=4, margin=2, seed=seed).mask
        rows, cols = torch.nonzero(mask[0] == 0, as_tuple=True)
        corners.add((int(rows.min()), int(cols.min())))
    assert {r for r, _ in corners} == set(range(2, 10))  # [margin, size - margin - box)


def test_random_mask_is_shared_by_all_channels_and_drops_the_requested_fraction():
    op = operators.build("inpaint_random", shape=(3, 64, 64)).double()
    y = op(torch.ones(1, 3, 64, 64, dtype=torch.float64))
    assert torch.equal(y[0, 0], y[0, 1]) and torch.equal(y[0, 0], y[0, 2])
    dropped = (y[0, 0] == 0).double().mean().item()
    assert dropped == pytest.approx(op.drop_fraction, abs=1 / 4096)


# -- nonlinear tasks -----------------------------------------------------------------------
def test_phase_retrieval_equals_numpy_fft_magnitude():
    op = operators.build("phase_retrieval", shape=(1, 16, 16)).double()
    x = _randn(1, 1, 16, 16)
    padded = np.pad((x[0, 0].numpy() + 1) / 2, 4)
    expected = np.abs(np.fft.fftshift(np.fft.fft2(padded, norm="ortho")))
    np.testing.assert_allclose(op(x)[0, 0].numpy(), expected, rtol=1e-12, atol=1e-12)


def test_phase_retrieval_is_invariant_under_the_180_degree_flip():
    op = operators.build("phase_retrieval", shape=(3, 32, 24)).double()
    x = _randn(2, 3, 32, 24)
    torch.testing.assert_close(op(x), op(torch.flip(x, dims=(-2, -1))), rtol=0, atol=1e-12)


def test_hdr_clips_twice_the_image():
    op = operators.build("hdr", shape=(1, 1, 5)).double()
    x = torch.tensor([[[[-0.9, -0.3, 0.0, 0.4, 0.6]]]], dtype=torch.float64)
    expected = torch.tensor([[[[-1.0, -0.6, 0.0, 0.8, 1.0]]]], dtype=torch.float64)
    torch.testing.assert_close(op(x), expected)


# -- conjugate gradients ---------------------------------------------------------------------
def test_cg_solves_batched_spd_systems_independently():
    a = _randn(3, 20, 20)
    spd = a @ a.transpose(1, 2) + torch.eye(20, dtype=torch.float64) * torch.tensor(
        [0.1, 1.0, 10.0], dtype=torch.float64
    ).view(3, 1, 1)
    b = _randn(3, 20, seed=2)
    x = cg(lambda v: (spd @ v.unsqueeze(-1)).squeeze(-1), b, tol=1e-12, max_iter=500)
    torch.testing.assert_close(x, torch.linalg.solve(spd, b), rtol=1e-8, atol=1e-10)
    alone = cg(lambda v: (spd[1:2] @ v.unsqueeze(-1)).squeeze(-1), b[1:2], tol=1e-12, max_iter=500)
    torch.testing.assert_close(alone[0], x[1], rtol=1e-10, atol=1e-12)


def test_cg_rejects_bad_settings():
    with pytest.raises(ValueError, match="tol"):
        cg(lambda v: v, torch.ones(1, 3), tol=0.0)
