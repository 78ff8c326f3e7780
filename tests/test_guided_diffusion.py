"""The guided-diffusion UNet prior: official layout, checkpoint loading, epsilon wrapping."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from solvers.priors import PriorInputError
from solvers.priors.guided_diffusion import (
    EpsilonHead,
    GuidedDiffusionConfig,
    GuidedDiffusionUNet,
    ffhq_256,
    imagenet_256_uncond,
    load_guided_diffusion,
)
from solvers.priors.vp import VPDenoiser
from solvers.schedules import adm_linear_alphas_cumprod

# 16 px, widths 32/64 (GroupNorm needs multiples of 32), attention at 8 px = downsampling rate 2.
TINY = GuidedDiffusionConfig(
    image_size=16,
    model_channels=32,
    num_res_blocks=1,
    channel_mult=(1, 2),
    attention_resolutions=(8,),
    num_head_channels=8,
)

# Keys and shapes of ffhq_10m.pt, derived from UNetModel in guided_diffusion/unet.py of
# DPS2022/diffusion-posterior-sampling (identical in openai/guided-diffusion and DAPS
# model/ddpm/unet.py) with DPS configs/model_config.yaml: widths 128,128,256,256,512,512;
# input block 9 = level 4 (16 px), the only level with attention; 512 channels / 64 = 8 heads.
OFFICIAL_FFHQ_KEYS = {
    "time_embed.0.weight": (512, 128),
    "time_embed.2.weight": (512, 512),
    "input_blocks.0.0.weight": (128, 3, 3, 3),
    "input_blocks.1.0.emb_layers.1.weight": (256, 512),  # scale-shift norm: 2 x 128
    "input_blocks.2.0.in_layers.2.weight": (128, 128, 3, 3),  # resblock_updown down block
    "input_blocks.2.0.out_layers.3.weight": (128, 128, 3, 3),
    "input_blocks.5.0.skip_connection.weight": (256, 128, 1, 1),
    "input_blocks.9.1.norm.weight": (512,),
    "input_blocks.9.1.qkv.weight": (1536, 512, 1),
    "input_blocks.9.1.proj_out.weight": (512, 512, 1),
    "middle_block.1.qkv.weight": (1536, 512, 1),
    "middle_block.2.out_layers.0.bias": (512,),
    "output_blocks.0.0.in_layers.2.weight": (512, 1024, 3, 3),
    "output_blocks.1.1.in_layers.2.weight": (512, 512, 3, 3),  # resblock_updown up block
    "output_blocks.3.0.skip_connection.weight": (512, 768, 1, 1),
    "output_blocks.3.1.qkv.bias": (1536,),
    "output_blocks.3.2.emb_layers.1.weight": (1024, 512),
    "output_blocks.11.0.skip_connection.weight": (128, 256, 1, 1),
    "out.0.weight": (128,),
    "out.2.weight": (6, 128, 3, 3),
    "out.2.bias": (6,),
}
NOT_IN_OFFICIAL_FFHQ = (
    "label_emb.weight",  # class_cond False
    "input_blocks.2.0.op.weight",  # resblock_updown: no strided-conv Downsample
    "output_blocks.1.1.conv.weight",  # ... and no conv Upsample
    "input_blocks.1.1.qkv.weight",  # no attention at 256 px
)
# Parameter counts, independent of this code: a write-up that loaded ffhq_10m.pt with the
# authors' code reports "362 parameter tensors" and "93,563,910 (93.5M) parameters" (357 MB in
# fp32); for 256x256_diffusion_uncond.pt a DiffPure port reports 552,814,086 parameters,
# x 4 bytes = 2,211,256,344 against a 2,211,383,297-byte file (pickle overhead). Both found
# through the code-search index; the architecture here reproduces both numbers.
FFHQ_TENSORS, FFHQ_PARAMS = 362, 93_563_910
IMAGENET_PARAMS = 552_814_086


def random_unet(config: GuidedDiffusionConfig, seed: int = 0) -> GuidedDiffusionUNet:
    """A UNet with every parameter random (also the zero-initialised ones), global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = GuidedDiffusionUNet(config)
        with torch.no_grad():
            for p in unet.parameters():
                if not p.any():
                    p.normal_(std=0.05)
    return unet.eval()


def save_state(unet: nn.Module, path) -> None:
    torch.save(unet.state_dict(), path)


def test_random_unet_leaves_global_rng_alone():
    before = torch.random.get_rng_state()
    random_unet(TINY)
    assert torch.equal(before, torch.random.get_rng_state())


def test_checkpoint_round_trip_matches_in_memory_network(tmp_path):
    unet = random_unet(TINY)
    path = tmp_path / "tiny.pt"
    save_state(unet, path)
    prior = load_guided_diffusion(path, config=TINY)

    assert isinstance(prior, VPDenoiser) and prior.prediction_type == "epsilon"
    assert prior.shape == (3, 16, 16)
    assert not prior.training and not any(p.requires_grad for p in prior.parameters())
    abar = adm_linear_alphas_cumprod()
    assert prior.sigma_min == pytest.approx(math.sqrt((1 - abar[0]) / abar[0]))
    assert prior.sigma_max == pytest.approx(math.sqrt((1 - abar[-1]) / abar[-1]))

    gen = torch.Generator().manual_seed(1)
    x_t = torch.randn(2, 3, 16, 16, generator=gen)
    t = torch.tensor([3.0, 517.25])
    with torch.no_grad():
        full = unet(x_t, t)
        eps = prior.network(x_t, t)
    assert full.shape == (2, 6, 16, 16)  # learn_sigma: epsilon and variance
    assert eps.shape == (2, 3, 16, 16)  # the adapter keeps epsilon only
    assert torch.equal(eps, full[:, :3])
    assert eps.abs().max() > 0

    # denoise(x, sigma) = x - sigma * eps(x / sqrt(1 + sigma^2), t(sigma))
    sigma = torch.tensor([0.3, 12.0])
    x = torch.randn(2, 3, 16, 16, generator=gen)
    s = sigma.view(-1, 1, 1, 1)
    with torch.no_grad():
        x_t = x * (1 / torch.sqrt(1 + s**2))
        expected = x - s * unet(x_t, prior.timestep(sigma).float())[:, :3]
        assert torch.allclose(prior.denoise(x, sigma), expected, atol=1e-5)


def test_ffhq_256_layout_matches_official_checkpoint():
    with torch.device("meta"):
        unet = GuidedDiffusionUNet(ffhq_256())
    state = unet.state_dict()
    for key, shape in OFFICIAL_FFHQ_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    assert not set(NOT_IN_OFFICIAL_FFHQ) & set(state)
    assert len(state) == FFHQ_TENSORS
    assert sum(p.numel() for p in unet.parameters()) == FFHQ_PARAMS


def test_imagenet_256_uncond_parameter_count():
    with torch.device("meta"):
        unet = GuidedDiffusionUNet(imagenet_256_uncond())
    assert sum(p.numel() for p in unet.parameters()) == IMAGENET_PARAMS


class OracleUNet(nn.Module):
    """Knows x0: returns the exact epsilon first and junk where the variance channels go."""

    def __init__(self, x0: torch.Tensor, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.x0 = x0
        self.log_sigmas = 0.5 * torch.log((1 - alphas_cumprod) / alphas_cumprod)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        low = t.floor().long().clamp(max=len(self.log_sigmas) - 2)
        ls_lo, ls_hi = self.log_sigmas[low], self.log_sigmas[low + 1]
        s = torch.exp(ls_lo + (t - low) * (ls_hi - ls_lo)).view(-1, 1, 1, 1)
        eps = (x_t * torch.sqrt(1 + s**2) - self.x0) / s
        return torch.cat([eps, torch.full_like(eps, 1e3)], dim=1)


def test_oracle_epsilon_denoises_to_x0():
    gen = torch.Generator().manual_seed(2)
    x0 = torch.rand(4, 3, 4, 4, generator=gen, dtype=torch.float64) * 2 - 1
    abar = adm_linear_alphas_cumprod()
    prior = VPDenoiser(EpsilonHead(OracleUNet(x0, abar), 3), abar, shape=(3, 4, 4))
    sigma = torch.tensor([0.02, 0.7, 3.3, 80.0], dtype=torch.float64)
    x = x0 + sigma.view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    assert torch.allclose(prior.denoise(x, sigma), x0, atol=1e-9)


def test_missing_file_names_path_and_source(tmp_path):
    path = tmp_path / "nowhere" / "ffhq_10m.pt"
    with pytest.raises(FileNotFoundError, match=r"ffhq_10m\.pt") as err:
        load_guided_diffusion(path)
    assert str(path) in str(err.value) and "DPS" in str(err.value)


def test_key_mismatch_lists_keys_and_assumed_config(tmp_path):
    state = random_unet(TINY).state_dict()
    del state["middle_block.1.qkv.weight"]
    state["label_emb.weight"] = torch.zeros(10, 128)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(PriorInputError) as err:
        load_guided_diffusion(path, config=TINY)
    message = str(err.value)
    assert "middle_block.1.qkv.weight" in message and "label_emb.weight" in message
    assert "GuidedDiffusionConfig(" in message

    save_state(random_unet(TINY), path)
    with pytest.raises(PriorInputError, match="preset 'ffhq_256'") as err:
        load_guided_diffusion(path)  # a tiny checkpoint is not ffhq_10m.pt
    assert "missing" in str(err.value) and "shape" in str(err.value)


def test_unknown_preset_lists_presets(tmp_path):
    with pytest.raises(PriorInputError, match="imagenet_256_uncond"):
        load_guided_diffusion(tmp_path / "x.pt", config="ffhq_512")


def test_prior_load_routes_checkpoint_files_to_the_guided_diffusion_loader(tmp_path):
    from solvers.priors import load

    unet = random_unet(TINY)
    path = tmp_path / "tiny.pt"
    save_state(unet, path)
    direct = load_guided_diffusion(path, config=TINY)
    routed = load(str(path), config=TINY)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(routed.denoise(x, 0.7), direct.denoise(x, 0.7))
