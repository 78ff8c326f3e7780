"""The priors that ship with dipswarm: they load offline through the hub-model code path and
their model cards' figures are reproduced here from the saved weights."""

from __future__ import annotations

import json

import pytest
import torch

from experiments.data import load_builtin_split
from experiments.prior_quality import WienerDenoiser, denoising_mse
from experiments.train_prior import PRESETS
from solvers.priors import available, load
from solvers.priors.loading import WEIGHTS_DIR

SHIPPED = sorted(PRESETS)


def test_every_preset_ships_and_is_listed():
    assert set(SHIPPED) <= set(available())


def test_shipped_weights_stay_under_30_mb():
    total = sum(f.stat().st_size for f in WEIGHTS_DIR.rglob("*") if f.is_file())
    assert total < 30 * 2**20


@pytest.mark.parametrize("name", SHIPPED)
def test_card_figures_are_reproduced_from_the_saved_weights(name):
    folder = WEIGHTS_DIR / name
    card = json.loads((folder / "card.json").read_text())
    prior = load(name)
    assert list(prior.shape) == card["shape"]
    assert (folder / "samples.png").is_file() and (folder / "README.md").is_file()
    preset = PRESETS[name]
    train = load_builtin_split(preset.dataset, "train", size=preset.image_size).images
    test = load_builtin_split(preset.dataset, "test", size=preset.image_size).images
    if prior.is_latent:
        with torch.no_grad():
            train, test = prior.encode(train), prior.encode(test)
    sigmas = [row["sigma"] for row in card["denoising_mse"]]
    model = denoising_mse(prior.denoise, test, sigmas, torch.Generator().manual_seed(1))
    wiener = denoising_mse(
        WienerDenoiser.fit(train), test, sigmas, torch.Generator().manual_seed(1)
    )
    for row in card["denoising_mse"]:
        assert model[row["sigma"]] == pytest.approx(row["model"], rel=0.02, abs=1e-4)
        assert wiener[row["sigma"]] == pytest.approx(row["wiener"], rel=0.02, abs=1e-4)
        assert model[row["sigma"]] < wiener[row["sigma"]]  # the learned prior beats the Gaussian
