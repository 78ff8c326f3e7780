"""Loaders for diffusers-format priors (pixel DDPM, LDM, Stable Diffusion, consistency models).

Each family is exercised on a tiny randomly initialised model of the same on-disk format, saved
with ``save_pretrained(safe_serialization=True)`` and loaded back through ``solvers.priors.load``.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from solvers.priors import PriorInputError, PriorLoadError, available, load, loading, ode
from solvers.priors.diffusers_loaders import load_diffusers
from solvers.schedules import ScheduleError, karras_sigmas

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

SHAPE = (1, 8, 8)
TINY_BLOCKS = {
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "norm_num_groups": 4,
}


def tiny_unet(in_channels: int = 1, out_channels: int = 1, **extra: Any) -> nn.Module:
    return diffusers.UNet2DModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=out_channels,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        **TINY_BLOCKS,
        **extra,
    ).eval()


def tiny_autoencoder_blocks() -> dict[str, Any]:
    return {
        "in_channels": 1,
        "out_channels": 1,
        "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
        "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
        "latent_channels": 2,
        "sample_size": 16,
        **TINY_BLOCKS,
    }


def tiny_text_model(folder: Path) -> tuple[nn.Module, Any]:
    """A 1-layer CLIP text encoder and a character-level CLIP tokenizer (no download)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({f"{c}</w>": len(letters) + i for i, c in enumerate(letters)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    tokenizer = transformers.CLIPTokenizer(vocab=vocab, merges=[], model_max_length=8)
    config = transformers.CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=8,
        projection_dim=8,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    encoder = transformers.CLIPTextModel(config).eval()
    encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    tokenizer.save_pretrained(folder / "tokenizer")
    return encoder, tokenizer


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every family saved once: {name: (folder, in-memory modules...)}."""
    root = tmp_path_factory.mktemp("priors")
    out: dict[str, Any] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        # pixel DDPM, pipeline layout (model_index.json)
        unet = tiny_unet()
        scheduler = diffusers.DDPMScheduler(num_train_timesteps=100, beta_end=0.2)
        diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(
            root / "pixel", safe_serialization=True
        )
        out["pixel"] = (root / "pixel", unet, scheduler)
        # learned variance (out_channels = 2 in_channels), bare unet/ + scheduler/ folders
        unet_lv = tiny_unet(out_channels=2)
        unet_lv.save_pretrained(root / "bare" / "unet", safe_serialization=True)
        scheduler.save_pretrained(root / "bare" / "scheduler")
        out["bare"] = (root / "bare", unet_lv)
        # LDM: VQModel + UNet2DModel + DDIMScheduler
        vq = diffusers.VQModel(
            **tiny_autoencoder_blocks(), num_vq_embeddings=16, scaling_factor=0.5
        )
        ldm_unet = tiny_unet(in_channels=2, out_channels=2)
        ldm_scheduler = diffusers.DDIMScheduler(
            num_train_timesteps=100, beta_schedule="scaled_linear", beta_start=0.0015
        )
        diffusers.LDMPipeline(
            vqvae=vq.eval(), unet=ldm_unet, scheduler=ldm_scheduler
        ).save_pretrained(root / "ldm", safe_serialization=True)
        out["ldm"] = (root / "ldm", vq, ldm_unet)
        # Stable Diffusion layout: AutoencoderKL + UNet2DConditionModel + CLIP text model
        sd = root / "sd"
        vae = diffusers.AutoencoderKL(**tiny_autoencoder_blocks(), scaling_factor=0.3)
        vae.register_to_config(shift_factor=0.1)
        sd_unet = diffusers.UNet2DConditionModel(
            sample_size=8,
            in_channels=2,
            out_channels=2,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=8,
            attention_head_dim=2,
            **TINY_BLOCKS,
        ).eval()
        encoder, tokenizer = tiny_text_model(sd)
        vae.eval().save_pretrained(sd / "vae", safe_serialization=True)
        sd_unet.save_pretrained(sd / "unet", safe_serialization=True)
        sd_scheduler = diffusers.PNDMScheduler(
            num_train_timesteps=100, beta_schedule="scaled_linear", prediction_type="v_prediction"
        )
        sd_scheduler.save_pretrained(sd / "scheduler")
        index = {
            "_class_name": "StableDiffusionPipeline",
            "safety_checker": [None, None],
            "feature_extractor": [None, None],
            "scheduler": ["diffusers", "PNDMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }
        (sd / "model_index.json").write_text(json.dumps(index))
        out["sd"] = (sd, vae, sd_unet, encoder, tokenizer)
        # class-conditional consistency model
        cm_unet = tiny_unet(3, 3, num_class_embeds=4)  # the pipeline assumes RGB
        cm_scheduler = diffusers.CMStochasticIterativeScheduler()
        diffusers.ConsistencyModelPipeline(unet=cm_unet, scheduler=cm_scheduler).save_pretrained(
            root / "cm", safe_serialization=True
        )
        out["cm"] = (root / "cm", cm_unet, cm_scheduler)
    return out


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    """Standard normal draws from a local generator (the global RNG stays untouched)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def uniform(*shape: int, seed: int = 0) -> torch.Tensor:
    """Uniform draws in [-1, 1] (an image) from a local generator."""
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def sigma_at(scheduler: Any, t: int) -> float:
    abar = float(scheduler.alphas_cumprod[t])
    return math.sqrt((1 - abar) / abar)


# -- pixel DDPM ------------------------------------------------------------------------------------
def test_pixel_matches_in_memory_unet(saved: dict[str, Any]) -> None:
    folder, unet, scheduler = saved["pixel"]
    prior = load(str(folder))
    assert prior.shape == SHAPE and not prior.is_latent
    assert prior.prediction_type == "epsilon"
    assert prior.sigma_min == pytest.approx(sigma_at(scheduler, 0))
    assert prior.sigma_max == pytest.approx(sigma_at(scheduler, 99))
    x = randn(3, *SHAPE)
    sigma = sigma_at(scheduler, 37)
    with torch.no_grad():
        eps = unet(x / math.sqrt(1 + sigma**2), torch.full((3,), 37.0)).sample
        assert torch.allclose(prior.denoise(x, sigma), x - sigma * eps, atol=1e-5)
        expected = prior.denoise(x, sigma)
        double = load({"path": str(folder), "dtype": "float64", "device": "cpu"})
        assert double.dtype == torch.float64 and double.log_sigmas.dtype == torch.float64
        assert torch.allclose(double.denoise(x, sigma), expected, atol=1e-5)
    assert prior.nfe == 2
    with pytest.raises(PriorInputError, match="sigma must lie"):
        prior.denoise(x, prior.sigma_max * 1.01)
    with pytest.raises(PriorInputError, match="sigma must lie"):
        prior.denoise(x, prior.sigma_min / 2)


class Oracle(nn.Module):
    """Returns the exact epsilon, v or x0 of a known (x0, noise) pair, checking its inputs."""

    def __init__(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, kind: str):
        super().__init__()
        self.x0, self.noise, self.sigma, self.kind = x0, noise, sigma, kind

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = self.sigma.view(-1, 1, 1, 1)
        a, b = 1 / torch.sqrt(1 + s**2), s / torch.sqrt(1 + s**2)  # sqrt(abar), sqrt(1 - abar)
        assert torch.allclose(x_t, a * self.x0 + b * self.noise, atol=1e-12)
        if self.kind == "epsilon":
            return self.noise
        if self.kind == "v_prediction":
            return a * self.noise - b * self.x0
        return self.x0


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_prediction_types_are_exact(
    saved: dict[str, Any], tmp_path: Path, prediction_type: str
) -> None:
    folder, _, scheduler = saved["pixel"]
    shutil.copytree(folder / "unet", tmp_path / "unet")
    diffusers.DDPMScheduler.from_config(
        scheduler.config, prediction_type=prediction_type
    ).save_pretrained(tmp_path / "scheduler")
    prior = load({"path": str(tmp_path)})
    assert prior.prediction_type == prediction_type
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, *SHAPE, generator=gen, dtype=torch.float64)
    noise = torch.randn(4, *SHAPE, generator=gen, dtype=torch.float64)
    sigma = torch.tensor([prior.sigma_min, 0.5, sigma_at(scheduler, 50), prior.sigma_max])
    sigma = sigma.double()
    prior.network = Oracle(x0, noise, sigma, prediction_type)
    assert torch.allclose(prior.denoise(x0 + sigma.view(-1, 1, 1, 1) * noise, sigma), x0, atol=1e-6)


def test_learned_variance_bare_folders(saved: dict[str, Any]) -> None:
    folder, unet = saved["bare"]
    assert not (folder / "model_index.json").exists()
    prior = load(str(folder))
    x, t = randn(2, *SHAPE), torch.tensor([3.0, 60.0])
    with torch.no_grad():
        assert torch.equal(prior.network(x, t), unet(x, t).sample[:, :1])


class Recorder(nn.Module):
    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network, self.calls = network, []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.detach().clone(), t.detach().clone()))
        return self.network(x, t)


@pytest.mark.parametrize(("method", "steps"), [("heun", 2), ("euler", 3)])
def test_ode_generator(saved: dict[str, Any], method: str, steps: int) -> None:
    folder = saved["pixel"][0]
    prior = load({"path": str(folder), "ode_steps": steps, "ode_method": method})
    prior.network = recorder = Recorder(prior.network)
    z = randn(2, *SHAPE, seed=2).requires_grad_()
    out = prior.generator(z)
    assert prior.nfe == len(recorder.calls) == ode.num_evaluations(steps, method)
    first_x, first_t = recorder.calls[0]
    scale = prior.sigma_max / math.sqrt(1 + prior.sigma_max**2)
    assert torch.allclose(first_x, scale * z.detach(), atol=1e-6)
    assert torch.allclose(first_t, torch.full((2,), 99.0))
    assert torch.equal(prior.generator(z), out)  # deterministic
    grad = torch.autograd.grad(out.sum(), z)[0]
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_ode_euler_is_ddim_and_schedule_ends() -> None:
    sigmas = karras_sigmas(5, 0.01, 80.0)
    assert sigmas[0] == 80.0 and sigmas[-2] == 0.01 and sigmas[-1] == 0.0
    assert all(a > b for a, b in itertools.pairwise(sigmas))
    x0 = torch.full((1, 2), 0.3)  # a point mass: D = x0, so every solver lands on x0 at once
    for method in ode.METHODS:
        out = ode.solve(lambda x, s: x0.expand_as(x), torch.ones(1, 2) * 80, sigmas, method)
        assert torch.allclose(out, x0)
    with pytest.raises(ScheduleError, match="steps"):
        karras_sigmas(0, 0.01, 80.0)


# -- latent diffusion ------------------------------------------------------------------------------
def test_vq_latent_encode_decode(saved: dict[str, Any]) -> None:
    folder, vq, unet = saved["ldm"]
    state = torch.random.get_rng_state()
    prior = load(str(folder))
    assert torch.equal(torch.random.get_rng_state(), state)  # the VQ codebook init is forked
    assert prior.is_latent and prior.is_vq and prior.scaling_factor == 0.5
    assert prior.shape == (2, 8, 8) and prior.image_shape == (1, 16, 16)
    image = uniform(2, 1, 16, 16)
    with torch.no_grad():
        z = prior.encode(image)
        assert torch.allclose(z, vq.encode(image).latents * 0.5, atol=1e-6)
        assert torch.allclose(prior.decode(z), vq(image).sample, atol=1e-5)  # quantised round trip
        x, t = randn(2, *prior.shape), torch.tensor([5.0, 70.0])
        assert torch.equal(prior.network(x, t), unet(x, t).sample)
    z = z.requires_grad_()
    grad = torch.autograd.grad(prior.decode(z).square().sum(), z)[0]  # straight-through
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    plain = load(str(folder), quantize=False)
    with torch.no_grad():
        expected = vq.decode(z / 0.5, force_not_quantize=True).sample
        assert torch.allclose(plain.decode(z), expected, atol=1e-6)


def test_vq_without_scaling_factor_key_means_one(saved: dict[str, Any], tmp_path: Path) -> None:
    folder = shutil.copytree(saved["ldm"][0], tmp_path / "ldm")
    config_file = folder / "vqvae" / "config.json"
    config = json.loads(config_file.read_text())
    del config["scaling_factor"]  # as in CompVis/ldm-celebahq-256 (saved by diffusers 0.1.2)
    config_file.write_text(json.dumps(config))
    assert load(str(folder)).scaling_factor == 1.0
    assert load(str(folder), scaling_factor=0.25).scaling_factor == 0.25


# -- Stable Diffusion ------------------------------------------------------------------------------
def embed(encoder: nn.Module, tokenizer: Any, prompt: str) -> torch.Tensor:
    tokens = tokenizer([prompt], padding="max_length", max_length=8, truncation=True)
    ids = torch.tensor(tokens.input_ids)
    return encoder(ids)[0]


def test_stable_diffusion(saved: dict[str, Any]) -> None:
    folder, vae, unet, encoder, tokenizer = saved["sd"]
    prior = load(str(folder))
    assert prior.is_latent and not prior.is_vq and prior.prediction_type == "v_prediction"
    assert (prior.scaling_factor, prior.shift_factor) == (0.3, pytest.approx(0.1))
    assert prior.shape == (2, 8, 8) and prior.image_shape == (1, 16, 16)
    x, t = randn(2, *prior.shape), torch.tensor([10.0, 90.0])
    with torch.no_grad():
        empty = embed(encoder, tokenizer, "").expand(2, -1, -1)
        assert torch.allclose(prior.network(x, t), unet(x, t, empty).sample, atol=1e-6)
        image = uniform(2, 1, 16, 16)
        z = prior.encode(image)
        expected_z = (vae.encode(image).latent_dist.mode() - 0.1) * 0.3
        assert torch.allclose(z, expected_z, atol=1e-6)
        assert torch.allclose(prior.decode(z), vae.decode(z / 0.3 + 0.1).sample, atol=1e-5)
    z = z.requires_grad_()
    grad = torch.autograd.grad(prior.decode(z).square().sum(), z)[0]
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_stable_diffusion_cfg_is_one_batched_call(saved: dict[str, Any]) -> None:
    folder, _, unet, encoder, tokenizer = saved["sd"]
    prior = load({"path": str(folder), "prompt": "a natural looking image", "cfg_scale": 7.5})
    batches = []
    hook = prior.network.unet.register_forward_hook(lambda m, a, k: batches.append(a[0].shape[0]))
    x = randn(3, *prior.shape)
    sigma = 0.5
    with torch.no_grad():
        out = prior.denoise(x, sigma)
    hook.remove()
    assert batches == [6] and prior.nfe == 1
    t = prior.timestep(torch.full((3,), sigma)).float()
    x_in = x / math.sqrt(1 + sigma**2)
    with torch.no_grad():
        cond = unet(x_in, t, embed(encoder, tokenizer, "a natural looking image").expand(3, -1, -1))
        uncond = unet(x_in, t, embed(encoder, tokenizer, "").expand(3, -1, -1))
    v = uncond.sample + 7.5 * (cond.sample - uncond.sample)
    expected = x_in / math.sqrt(1 + sigma**2) - sigma / math.sqrt(1 + sigma**2) * v
    assert torch.allclose(out, expected, atol=1e-5)


# -- consistency model -----------------------------------------------------------------------------
def test_consistency_generator(saved: dict[str, Any]) -> None:
    folder, unet, _ = saved["cm"]
    with pytest.raises(PriorLoadError, match="class_label"):
        load(str(folder))
    prior = load(str(folder), class_label=1)
    assert (prior.sigma_min, prior.sigma_max, prior.sigma_data) == (0.002, 80.0, 0.5)
    z = randn(2, 3, 8, 8, seed=3)
    with torch.no_grad():
        out = prior.generator(z)
        sigma, sd, low = 80.0, 0.5, 0.002
        c_in = 1 / math.sqrt(sigma**2 + sd**2)
        c_skip = sd**2 / ((sigma - low) ** 2 + sd**2)
        c_out = (sigma - low) * sd / math.sqrt(sigma**2 + sd**2)
        t = torch.full((2,), 250 * math.log(sigma))
        raw = unet(c_in * sigma * z, t, class_labels=torch.tensor([1, 1])).sample
    assert prior.nfe == 1
    assert torch.allclose(out, c_skip * sigma * z + c_out * raw, atol=1e-5)
    with pytest.raises(PriorInputError, match="sigma must lie"):
        prior.denoise(z, 81.0)


@pytest.mark.parametrize("steps", [1, 2])
def test_consistency_matches_diffusers_pipeline(saved: dict[str, Any], steps: int) -> None:
    folder, unet, scheduler = saved["cm"]
    timesteps = [22, 0] if steps == 2 else [0]
    scheduler.set_timesteps(timesteps=timesteps)
    options = {"class_label": 1, "clip_denoised": True, "cm_steps": steps, "cm_noise_seed": 5}
    if steps == 2:
        options["cm_sigma_mid"] = float(scheduler.sigmas[1])
    prior = load(str(folder), **options)
    pipe = diffusers.ConsistencyModelPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    z = randn(1, 3, 8, 8, seed=4)
    with torch.no_grad():
        expected = pipe(
            batch_size=1,
            class_labels=[1],
            num_inference_steps=None,
            timesteps=timesteps,
            latents=z,
            generator=torch.Generator().manual_seed(5),
            output_type="pt",
        ).images
        assert torch.allclose((prior.generator(z) + 1) / 2, expected, atol=1e-5)
    assert prior.nfe == steps


# -- specs and errors ------------------------------------------------------------------------------
def test_hub_offline_error_is_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PriorLoadError) as info:
        load("hf:dipswarm-test/not-a-repo")
    message = str(info.value)
    assert "dipswarm-test/not-a-repo" in message and "load('/path/to/DIR')" in message


def test_unknown_spec_and_missing_paths(saved: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(PriorLoadError, match="gmm") as info:
        load("no-such-prior")
    assert "built-in" in str(info.value)
    missing = tmp_path / "nowhere"
    with pytest.raises(PriorLoadError, match=re.escape(str(missing))):
        load(str(missing))
    with pytest.raises(PriorLoadError, match=re.escape(str(missing))):
        load({"path": missing})
    broken = shutil.copytree(saved["pixel"][0], tmp_path / "broken")
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.unlink()
    with pytest.raises(PriorLoadError, match=re.escape(str(broken / "unet"))):
        load(str(broken))
    (broken / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(PriorLoadError, match=r"scheduler_config\.json"):
        load(str(broken))
    with pytest.raises(PriorLoadError, match="accepted"):
        load(str(saved["pixel"][0]), prompt="a cat")
    with pytest.raises(PriorLoadError, match="expected a UNet2DModel"):
        load_diffusers(saved["sd"][0], kind="pixel")
    with pytest.raises(PriorLoadError, match="not a diffusers pipeline folder"):
        load(str(tmp_path / "broken" / "unet"))


def test_builtin_names(saved: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(loading, "WEIGHTS_DIR", tmp_path)
    assert available() == ["gmm"]
    folder = shutil.copytree(saved["pixel"][0], tmp_path / "tiny")
    meta = {"kind": "pixel", "shape": list(SHAPE), "options": {"ode_steps": 2}}
    (folder / loading.META_FILE).write_text(json.dumps(meta))
    assert available() == ["gmm", "tiny"]
    prior = load("tiny")
    assert prior.ode_steps == 2 and load({"name": "tiny", "ode_steps": 4}).ode_steps == 4
    (folder / loading.META_FILE).write_text(json.dumps({**meta, "shape": [1, 4, 4]}))
    with pytest.raises(PriorLoadError, match="shape"):
        load("tiny")
