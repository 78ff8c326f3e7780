"""Training code of the shipped priors and the model-card quality figures."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from experiments.prior_quality import WienerDenoiser, denoising_mse, save_grid
from experiments.training import DiffusionTraining, _update_ema, seeded, train_diffusion


def tiny_unet() -> nn.Module:
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )


def test_seeded_initialisation_is_reproducible_and_leaves_global_rng_alone():
    before = torch.get_rng_state()
    a, b = seeded(tiny_unet, 3), seeded(tiny_unet, 3)
    c = seeded(tiny_unet, 4)
    assert torch.equal(torch.get_rng_state(), before)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_ema_update_is_an_exponential_moving_average():
    ema, model = nn.Linear(2, 1), nn.Linear(2, 1)
    nn.init.constant_(ema.weight, 1.0)
    nn.init.constant_(model.weight, 3.0)
    _update_ema(ema, model, decay=0.75)
    torch.testing.assert_close(ema.weight, torch.full((1, 2), 1.5))


def test_train_diffusion_is_deterministic_and_learns():
    data = torch.linspace(-1, 1, 8).view(1, 1, 1, 8).expand(16, 1, 8, 8).contiguous()
    config = DiffusionTraining(steps=60, batch_size=8, learning_rate=2e-3, ema_decay=0.9)
    ema1, abar, log1 = train_diffusion(seeded(tiny_unet, 0), data, config)
    ema2, _, log2 = train_diffusion(seeded(tiny_unet, 0), data, config)
    assert log1.losses == log2.losses
    for p1, p2 in zip(ema1.parameters(), ema2.parameters(), strict=True):
        assert torch.equal(p1, p2)
    first, last = sum(log1.losses[:10]) / 10, sum(log1.losses[-10:]) / 10
    assert last < 0.7 * first  # epsilon-prediction loss starts near 1
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    torch.testing.assert_close(abar, torch.cumprod(1 - betas, 0))


def test_wiener_denoiser_equals_the_gaussian_posterior_mean():
    gen = torch.Generator().manual_seed(0)
    images = (
        torch.randn(500, 1, 2, 3, generator=gen, dtype=torch.float64)
        * torch.tensor([0.5, 1.0, 2.0, 0.1, 0.3, 1.5], dtype=torch.float64).view(1, 1, 2, 3)
        + 0.2
    )
    wiener = WienerDenoiser.fit(images)
    flat = images.flatten(1)
    mean = flat.mean(0)
    cov = (flat - mean).T @ (flat - mean) / flat.shape[0]
    x = torch.randn(4, 1, 2, 3, generator=gen, dtype=torch.float64)
    sigma = 0.7
    expected = (
        mean
        + (
            cov
            @ torch.linalg.solve(
                cov + sigma**2 * torch.eye(6, dtype=cov.dtype), (x.flatten(1) - mean).T
            )
        ).T
    )
    torch.testing.assert_close(wiener(x, sigma).flatten(1), expected, rtol=1e-10, atol=1e-12)


def test_denoising_mse_of_the_identity_is_sigma_squared():
    images = torch.zeros(200, 1, 8, 8)
    errors = denoising_mse(lambda x, s: x, images, [0.5], torch.Generator().manual_seed(0))
    n = images.numel()
    assert abs(errors[0.5] - 0.25) < 4 * 0.25 * math.sqrt(2 / n)


def test_save_grid_writes_the_pixels(tmp_path):
    from PIL import Image

    images = torch.stack([torch.full((1, 2, 2), -1.0), torch.full((1, 2, 2), 1.0)])
    save_grid(images, tmp_path / "grid.png", columns=2, scale=1)
    array = torch.tensor(list(Image.open(tmp_path / "grid.png").getdata())).view(4, 7)
    assert array[1, 1] == 0 and array[1, 4] == 255 and array[0, 0] == 255  # gap is white


@pytest.mark.slow
def test_train_prior_end_to_end_writes_a_loadable_prior_and_its_card(tmp_path, monkeypatch):
    import experiments.train_prior as tp
    from solvers.priors import load

    tiny = tp.PriorPreset(
        dataset="digits",
        description="tiny test prior",
        unet=tp._unet(32, 1, (8, 16), attention_last=False) | {"norm_num_groups": 4},
        diffusion=DiffusionTraining(steps=3, batch_size=4),
    )
    monkeypatch.setitem(tp.PRESETS, "tiny", tiny)
    card = tp.train_prior("tiny", tmp_path / "tiny", show_progress=False)
    prior = load(str(tmp_path / "tiny"))
    assert prior.shape == (1, 32, 32) and not prior.is_latent
    saved = json.loads((tmp_path / "tiny" / "card.json").read_text())
    assert saved["denoising_mse"] == card["denoising_mse"]
    assert [row["sigma"] for row in saved["denoising_mse"]] == list(tp.CARD_SIGMAS)
    assert (tmp_path / "tiny" / "samples.png").is_file()
    assert "Wiener" in (tmp_path / "tiny" / "README.md").read_text()
    assert saved["digit_classifier"]["real_test_accuracy"] > 0.9
