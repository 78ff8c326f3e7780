"""The bkse non-linear blur operator: architecture layout, weight loading, forward contract."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

import operators
from operators import OperatorInputError
from operators.kernel_wizard import KernelWizard
from operators.nonlinear_blur import NonlinearBlur

TINY = {"nf": 4, "front_RBs": 1, "back_RBs": 1, "kernel_dim": 8}
SHAPE = (3, 32, 32)

# Keys and shapes of the official GOPRO_wVAE.pth state dict (bkse repository head:
# models/kernel_encoding/kernel_wizard.py, models/backbones/{resnet,unet_parts}.py with
# options/generate_blur/default.yml: nf 64, front_RBs 10, back_RBs 20, kernel_dim 512, VAE on,
# norm none, so no norm parameters and no bias next to the (identity) norm layers).
OFFICIAL_KEYS = {
    "feature_extractor.0.weight": (64, 3, 3, 3),
    "feature_extractor.0.bias": (64,),
    "feature_extractor.4.weight": (64, 64, 3, 3),
    "feature_extractor.6.conv1.weight": (64, 64, 3, 3),
    "feature_extractor.15.conv2.bias": (64,),
    "kernel_extractor.model.1.weight": (64, 128, 7, 7),
    "kernel_extractor.model.4.weight": (128, 64, 3, 3),
    "kernel_extractor.model.13.weight": (1024, 512, 3, 3),
    "kernel_extractor.model.16.weight": (1024, 1024, 3, 3),
    "kernel_extractor.model.19.conv_block.1.weight": (1024, 1024, 3, 3),
    "kernel_extractor.model.22.conv_block.5.weight": (1024, 1024, 3, 3),
    "adapter.model.down.0.weight": (64, 64, 4, 4),
    "adapter.model.up.1.weight": (128, 64, 4, 4),
    "adapter.model.up.1.bias": (64,),
    "adapter.model.submodule.down.1.weight": (128, 64, 4, 4),
    "adapter.model.submodule.up.1.weight": (256, 64, 4, 4),
    "adapter.model.submodule.submodule.submodule.up.1.weight": (1024, 256, 4, 4),
    "adapter.model.submodule.submodule.submodule.submodule.down.1.weight": (512, 512, 4, 4),
    "adapter.model.submodule.submodule.submodule.submodule.up.1.weight": (1024, 512, 4, 4),
    "recon_trunk.0.conv1.weight": (64, 64, 3, 3),
    "recon_trunk.19.conv2.bias": (64,),
    "recon_trunk.20.weight": (256, 64, 3, 3),
    "recon_trunk.23.weight": (256, 64, 3, 3),
    "recon_trunk.26.weight": (64, 64, 3, 3),
    "recon_trunk.28.weight": (3, 64, 3, 3),
    "recon_trunk.28.bias": (3,),
}
NOT_IN_OFFICIAL = (
    "kernel_extractor.model.1.bias",  # no bias beside a norm layer
    "adapter.model.submodule.up.1.bias",
    "adapter.model.submodule.up.1.double_conv.0.weight",  # the older DoubleConv U-Net
)


def tiny(shape=SHAPE, **overrides) -> NonlinearBlur:
    return NonlinearBlur(shape=shape, **{"random_init": True, **TINY, **overrides})


def images(batch: int = 2, shape=SHAPE, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, *shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def official_layout() -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):  # names and shapes only, no 460 MB allocation
        network = KernelWizard()
    return {k: tuple(v.shape) for k, v in network.state_dict().items()}


# -- refusing to run without the trained network -------------------------------------------
def test_refuses_to_build_without_weights():
    pattern = r"GOPRO_wVAE\.pth.*weights=PATH.*random_init=True for tests only"
    with pytest.raises(OperatorInputError, match=pattern):
        NonlinearBlur()
    with pytest.raises(OperatorInputError, match=pattern):
        operators.build("nonlinear_blur", shape=SHAPE)


def test_refuses_weights_and_random_init_together(tmp_path):
    with pytest.raises(OperatorInputError, match="not both"):
        tiny(weights=tmp_path / "w.pth")


def test_missing_weights_file_names_the_path(tmp_path):
    path = tmp_path / "GOPRO_wVAE.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        NonlinearBlur(weights=path)


# -- state-dict layout of the official checkpoint ------------------------------------------
def test_default_architecture_has_the_official_keys_and_shapes():
    layout = official_layout()
    for key, shape in OFFICIAL_KEYS.items():
        assert layout.get(key) == shape, key
    for key in NOT_IN_OFFICIAL:
        assert key not in layout
    assert len(layout) == 159
    assert next(iter(layout)) == "feature_extractor.0.weight"
    assert list(layout)[-1] == "recon_trunk.28.bias"


def test_small_network_with_the_official_depths_has_the_official_key_order():
    op = tiny(front_RBs=10, back_RBs=20)
    assert list(op.blur_model.state_dict()) == list(official_layout())
    assert set(op.state_dict()) == {"kernel_code"} | {
        f"blur_model.{k}" for k in op.blur_model.state_dict()
    }


# -- loading weights from a file -----------------------------------------------------------
def test_weights_file_round_trip_gives_identical_outputs(tmp_path):
    source = tiny(seed=3)
    state = source.blur_model.state_dict()
    x = images()
    expected = source(x)
    variants = {
        "plain.pth": state,
        "nested.pth": {"state_dict": state, "iter": 5},
        "data_parallel.pth": {f"module.{k}": v for k, v in state.items()},
    }
    for name, checkpoint in variants.items():
        torch.save(checkpoint, tmp_path / name)
        loaded = NonlinearBlur(shape=SHAPE, weights=tmp_path / name, seed=3, **TINY)
        torch.testing.assert_close(loaded.kernel_code, source.kernel_code, rtol=0, atol=0)
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
        assert all(p.device.type == "cpu" and not p.requires_grad for p in loaded.parameters())


def test_weights_of_another_architecture_are_refused(tmp_path):
    torch.save(tiny().blur_model.state_dict(), tmp_path / "small.pth")
    with pytest.raises(OperatorInputError, match="do not fit a KernelWizard"):
        NonlinearBlur(shape=SHAPE, weights=tmp_path / "small.pth", **{**TINY, "nf": 8})


def test_a_file_without_a_state_dict_is_refused(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(OperatorInputError, match="state dict"):
        NonlinearBlur(shape=SHAPE, weights=tmp_path / "list.pth", **TINY)


# -- kernel code and seeding -----------------------------------------------------------------
def test_kernel_code_is_scaled_randn_from_the_seed():
    op = tiny(shape=(3, 256, 256), kernel_dim=16)
    expected = 1.2 * torch.randn(1, 16, 2, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(op.kernel_code, expected, rtol=0, atol=0)
    assert tiny(shape=(3, 128, 384)).kernel_code.shape == (1, 8, 1, 3)


def test_same_seed_same_code_and_output_other_seed_differs():
    x = images()
    a, b, c = tiny(seed=7), tiny(seed=torch.Generator().manual_seed(7)), tiny(seed=8)
    torch.testing.assert_close(a.kernel_code, b.kernel_code, rtol=0, atol=0)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    assert not torch.equal(a.kernel_code, c.kernel_code)
    assert not torch.allclose(a(x), c(x))


def test_state_dict_restores_code_and_weights():
    source, other = tiny(seed=1), tiny(seed=2)
    x = images()
    other.load_state_dict(source.state_dict())
    torch.testing.assert_close(other(x), source(x), rtol=0, atol=0)


# -- the forward model -------------------------------------------------------------------------
def test_forward_is_the_reference_chain_at_native_size():
    op = tiny(shape=(3, 128, 128))
    x = images(shape=(3, 128, 128))
    sharp = (x + 1) / 2
    blurred = op.blur_model.adapt_kernel(sharp, op.kernel_code.expand(2, -1, -1, -1))
    torch.testing.assert_close(op(x), (2 * blurred - 1).clamp(-1, 1), rtol=0, atol=0)


def test_other_sizes_are_padded_to_multiples_of_128_and_cropped():
    op = tiny(shape=(3, 32, 48))
    x = images(shape=(3, 32, 48))
    padded = F.pad((x + 1) / 2, (0, 80, 0, 96), mode="replicate")
    blurred = op.blur_model.adapt_kernel(padded, op.kernel_code.expand(2, -1, -1, -1))
    expected = (2 * blurred[..., :32, :48] - 1).clamp(-1, 1)
    torch.testing.assert_close(op(x), expected, rtol=0, atol=0)


def test_outputs_lie_in_minus_one_one():
    op = tiny()
    x = torch.cat([images(), torch.ones(1, *SHAPE), -torch.ones(1, *SHAPE)])
    y = op(x)
    assert y.shape == x.shape
    assert y.min() >= -1 and y.max() <= 1
    assert not torch.allclose(y, x)  # it does change the image


def test_gradient_wrt_x_exists_and_network_is_frozen():
    op = tiny()
    x = images().requires_grad_(True)
    op(x).pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in op.parameters())


def test_batch_items_are_independent():
    op = tiny()
    x = images(batch=3)
    y = op(x)
    x_changed = x.clone()
    x_changed[1] = images(batch=1, seed=5)[0]
    y_changed = op(x_changed)
    torch.testing.assert_close(y_changed[[0, 2]], y[[0, 2]], rtol=0, atol=0)
    assert not torch.allclose(y_changed[1], y[1])
    torch.testing.assert_close(op(x[1:2]), y[1:2], rtol=1e-5, atol=1e-6)


def test_float64_operator_returns_float64():
    op = tiny().double()
    x = images().double()
    y = op(x)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y.float(), tiny()(x.float()), rtol=1e-4, atol=1e-5)


def test_kernel_extractor_yields_codes_the_generator_takes():
    op = tiny(shape=(3, 256, 256))
    sharp = (images(batch=1, shape=(3, 256, 256)) + 1) / 2
    blurry = op.blur_model.adapt_kernel(sharp, op.kernel_code)
    mean, sigma = op.blur_model.encode_kernel(sharp, blurry)
    assert mean.shape == sigma.shape == op.kernel_code.shape == (1, 8, 2, 2)
    assert op.blur_model.adapt_kernel(sharp, mean).shape == sharp.shape


# -- bad arguments ---------------------------------------------------------------------------
def test_non_rgb_shapes_are_refused():
    for shape in ((1, 32, 32), (32, 32), (4, 32, 32)):
        with pytest.raises(OperatorInputError, match=r"RGB.*\(3, H, W\)"):
            tiny(shape=shape)


def test_bad_architecture_sizes_are_refused():
    with pytest.raises(OperatorInputError, match="nf must be an integer >= 1"):
        tiny(nf=0)
    with pytest.raises(OperatorInputError, match="back_RBs must be an integer >= 0"):
        tiny(back_RBs=-1)
    with pytest.raises(OperatorInputError, match="kernel_scale must be finite"):
        tiny(kernel_scale=float("nan"))


def test_registry_builds_a_small_instance():
    op = operators.build(
        "nonlinear_blur",
        random_init=True,
        shape=(3, 64, 64),
        nf=8,
        front_RBs=1,
        back_RBs=1,
        kernel_dim=16,
    )
    assert isinstance(op, NonlinearBlur) and not op.is_linear and op.name == "nonlinear_blur"
    y = op.measure(images(shape=(3, 64, 64)), torch.Generator().manual_seed(0))
    assert y.shape == (2, 3, 64, 64)
