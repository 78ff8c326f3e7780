"""Priors from diffusers-format folders: pixel DDPM, latent diffusion, Stable Diffusion, CM.

Families (reference/models.md) and the paper each follows:

- ``pixel``: ``unet/`` (UNet2DModel) + ``scheduler/``, a VP/DDPM network (Ho et al. 2020) wrapped
  into the EDM denoiser form by :class:`~solvers.priors.vp.VPDenoiser` (Karras et al. 2022) with
  the model's own ``alphas_cumprod`` and ``prediction_type``.
- ``latent``: the same in the latent space of ``vqvae/`` (VQModel) or ``vae/`` (AutoencoderKL)
  (LDM, Rombach et al. 2022; e.g. ``CompVis/ldm-celebahq-256``).
- ``sd``: Stable Diffusion, ``vae/`` + ``unet/`` (UNet2DConditionModel) + ``text_encoder/`` +
  ``tokenizer/``, conditioned on one fixed prompt, with optional classifier-free guidance.
- ``consistency``: ``unet/`` + ``scheduler/`` (CMStochasticIterativeScheduler), a consistency
  model (Song et al. 2023) with its boundary-condition parameterisation.

Diffusion priors expose ``generator(z)``: a few-step deterministic ODE sampler (``ode.py``);
consistency priors expose the 1- or 2-step consistency sampler. Weights load only through
safetensors (``use_safetensors=True``); diffusers and transformers are imported on first use.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from solvers.priors import ode
from solvers.priors.base import Prior, PriorInputError, sigma_view
from solvers.priors.loading import PriorLoadError, read_json
from solvers.priors.vp import VPDenoiser

AUTOENCODERS = ("VQModel", "AutoencoderKL")


# -- network adapters: (x_t, t) -> prediction ------------------------------------------------------
class UNetAdapter(nn.Module):
    """``network(x_t, t)`` around a diffusers ``UNet2DModel``: returns ``.sample``.

    A learned-variance model (out_channels = 2 * in_channels, Nichol & Dhariwal 2021) keeps its
    first in_channels outputs (the mean prediction). Class-conditional models need a fixed
    ``class_label``. Inputs are cast to the network's dtype and outputs back to the input's, so a
    half-precision network can serve float32 solver states.
    """

    def __init__(self, unet: nn.Module, class_label: int | None = None) -> None:
        super().__init__()
        config = unet.config
        self.channels = _output_channels(config)
        if config.class_embed_type is not None:
            raise PriorLoadError(
                f"UNet class_embed_type {config.class_embed_type!r} is not supported "
                "(only integer labels through num_class_embeds)"
            )
        if config.num_class_embeds is None:
            if class_label is not None:
                raise PriorLoadError("class_label given, but the UNet is not class-conditional")
            label = None
        else:
            if class_label is None or not 0 <= int(class_label) < config.num_class_embeds:
                raise PriorLoadError(
                    f"the UNet is class-conditional ({config.num_class_embeds} classes): pass "
                    f"class_label=<int in [0, {config.num_class_embeds})>, got {class_label!r}"
                )
            label = torch.tensor([int(class_label)])
        self.unet = unet
        self.register_buffer("class_label", label, persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        labels = None if self.class_label is None else self.class_label.expand(x.shape[0])
        out = self.unet(x.to(weight_dtype(self.unet)), t.float(), class_labels=labels).sample
        return out[:, : self.channels].to(x.dtype)


class TextUNetAdapter(nn.Module):
    """``network(x_t, t)`` around a ``UNet2DConditionModel`` with fixed prompt embeddings.

    With ``cfg_scale`` = 1 it is one conditional call. Otherwise classifier-free guidance (Ho &
    Salimans 2022): the conditional and unconditional halves run as one batched call and the
    predictions combine as uncond + cfg_scale * (cond - uncond).
    """

    def __init__(
        self,
        unet: nn.Module,
        cond: torch.Tensor,
        uncond: torch.Tensor | None,
        cfg_scale: float,
    ) -> None:
        super().__init__()
        if cfg_scale != 1.0 and uncond is None:
            raise PriorLoadError("classifier-free guidance needs the unconditional embedding")
        self.channels = _output_channels(unet.config)
        self.unet = unet
        self.cfg_scale = float(cfg_scale)
        self.register_buffer("cond", cond, persistent=False)
        self.register_buffer("uncond", uncond if cfg_scale != 1.0 else None, persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        batch, dtype, t = x.shape[0], weight_dtype(self.unet), t.float()
        x_in, cond = x.to(dtype), self.cond.to(dtype).expand(batch, -1, -1)
        if self.uncond is None:
            out = self.unet(x_in, t, encoder_hidden_states=cond).sample
        else:
            embeds = torch.cat([self.uncond.to(dtype).expand(batch, -1, -1), cond])
            both = self.unet(torch.cat([x_in, x_in]), torch.cat([t, t]), embeds).sample
            uncond_out, cond_out = both.chunk(2)
            out = uncond_out + self.cfg_scale * (cond_out - uncond_out)
        return out[:, : self.channels].to(x.dtype)


def _output_channels(config: Any) -> int:
    if config.out_channels not in (config.in_channels, 2 * config.in_channels):
        raise PriorLoadError(
            f"UNet out_channels {config.out_channels} must equal in_channels "
            f"{config.in_channels} (or twice it, for learned variance)"
        )
    return int(config.in_channels)


# -- priors ----------------------------------------------------------------------------------------
class DiffusionPrior(VPDenoiser):
    """A VP diffusion network (Ho et al. 2020) in EDM form with an ODE ``generator``.

    ``generator(z)`` maps z ~ N(0, I) to the sampling space by ``ode_steps`` steps of the
    probability-flow ODE from ``sigma_max * z`` (``ode.generate``; Heun: 2 * ode_steps - 1
    network calls, Euler = DDIM: ode_steps calls). Deterministic and differentiable.
    """

    def __init__(
        self,
        network: nn.Module,
        alphas_cumprod: torch.Tensor,
        shape: tuple[int, ...],
        prediction_type: str = "epsilon",
        timestep_mode: str = "continuous",
        ode_steps: int = 10,
        ode_method: str = "heun",
        sigma_max: float | None = None,
    ) -> None:
        super().__init__(network, alphas_cumprod, shape, prediction_type, timestep_mode, sigma_max)
        ode.karras_sigmas(ode_steps, self.sigma_min, self.sigma_max)  # validates ode_steps
        if ode_method not in ode.METHODS:
            raise PriorInputError(f"ode_method must be one of {ode.METHODS}, got {ode_method!r}")
        self.ode_steps = ode_steps
        self.ode_method = ode_method

    def generator(self, z: torch.Tensor) -> torch.Tensor:
        """Deterministic noise-to-sample map: the probability-flow ODE from sigma_max * z."""
        return ode.generate(self, z, self.ode_steps, self.ode_method)


class LatentDiffusionPrior(DiffusionPrior):
    """A diffusion prior in an autoencoder's latent space (LDM, Rombach et al. 2022).

    The sampling space is z = (E(image) - shift_factor) * scaling_factor and
    decode(z) = D(z / scaling_factor + shift_factor), images in the autoencoder's range ([-1, 1]).
    ``encode`` takes the posterior mean for AutoencoderKL (deterministic) and the pre-quantisation
    latent for VQModel, as the LDM code's ``encode_first_stage`` does. ``decode`` of a VQModel
    quantises first when ``quantize`` (as LDM's ``decode_first_stage`` and diffusers' LDMPipeline
    do); the quantiser's straight-through estimator (z + (z_q - z).detach()) keeps the decoder
    differentiable with an identity Jacobian through the codebook lookup.
    """

    is_latent = True

    def __init__(
        self,
        network: nn.Module,
        alphas_cumprod: torch.Tensor,
        shape: tuple[int, ...],
        autoencoder: nn.Module,
        scaling_factor: float,
        shift_factor: float = 0.0,
        quantize: bool = True,
        **diffusion: Any,
    ) -> None:
        super().__init__(network, alphas_cumprod, shape, **diffusion)
        config = autoencoder.config
        if config.latent_channels != self.shape[0]:
            raise PriorLoadError(
                f"the autoencoder has {config.latent_channels} latent channels but the UNet "
                f"samples {self.shape[0]}"
            )
        if not math.isfinite(scaling_factor) or scaling_factor <= 0:
            raise PriorLoadError(f"scaling_factor must be finite and > 0, got {scaling_factor}")
        factor = 2 ** (len(config.block_out_channels) - 1)
        self.image_shape = (int(config.out_channels), *(s * factor for s in self.shape[1:]))
        self.autoencoder = autoencoder
        self.is_vq = type(autoencoder).__name__ == "VQModel"
        self.scaling_factor = float(scaling_factor)
        self.shift_factor = float(shift_factor)
        self.quantize = bool(quantize)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Image (B, *image_shape) in [-1, 1] -> latent (B, *shape); differentiable."""
        _check_shape(self, image, self.image_shape, "image")
        x = image.to(weight_dtype(self.autoencoder))
        if self.is_vq:
            h = self.autoencoder.encode(x).latents
        else:
            h = self.autoencoder.encode(x).latent_dist.mode()
        return ((h - self.shift_factor) * self.scaling_factor).to(image.dtype)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent (B, *shape) -> image (B, *image_shape); differentiable."""
        _check_shape(self, z, self.shape, "z")
        h = (z / self.scaling_factor + self.shift_factor).to(weight_dtype(self.autoencoder))
        if self.is_vq:
            out = self.autoencoder.decode(h, force_not_quantize=not self.quantize).sample
        else:
            out = self.autoencoder.decode(h).sample
        return out.to(z.dtype)


class ConsistencyPrior(Prior):
    """A consistency model f(x, sigma) (Song et al. 2023) with EDM-style boundary conditions.

    f(x, sigma) = c_skip x + c_out F(c_in x, 250 ln sigma), c_in = 1 / sqrt(sigma^2 + s_d^2),
    c_skip = s_d^2 / ((sigma - sigma_min)^2 + s_d^2),
    c_out = (sigma - sigma_min) s_d / sqrt(sigma^2 + s_d^2), s_d = sigma_data, as diffusers'
    CMStochasticIterativeScheduler and ConsistencyModelPipeline compute it. ``denoise`` returns
    f: a one-step estimate of x0, not the exact posterior mean E[x0 | x] of the contract.

    ``generator(z)``: 1 step, G(z) = f(sigma_max z, sigma_max); 2 steps (the CPS generator,
    reference/algorithms.md), x = f(sigma_max z, sigma_max),
    G(z) = f(x + xi sqrt(sigma_mid^2 - sigma_min^2), sigma_mid) with the intermediate noise xi
    (buffer ``noise``, one draw shared by all particles) fixed by ``noise_seed``.
    ``clip_denoised`` clamps f to [-1, 1] as the diffusers pipeline does; it is off by default
    because the clamp zeroes gradients of saturated pixels.
    """

    def __init__(
        self,
        network: nn.Module,
        shape: tuple[int, ...],
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        sigma_data: float = 0.5,
        steps: int = 1,
        sigma_mid: float = 2.818,
        noise_seed: int = 0,
        clip_denoised: bool = False,
    ) -> None:
        super().__init__(shape, sigma_min, sigma_max)
        if steps not in (1, 2):
            raise PriorInputError(f"consistency generator steps must be 1 or 2, got {steps!r}")
        if not sigma_min < sigma_mid < sigma_max:
            raise PriorInputError(
                f"sigma_mid must lie in ({sigma_min:g}, {sigma_max:g}), got {sigma_mid}"
            )
        self.network = network
        self.sigma_data = float(sigma_data)
        self.steps = steps
        self.sigma_mid = float(sigma_mid)
        self.clip_denoised = bool(clip_denoised)
        noise = torch.randn(self.shape, generator=torch.Generator().manual_seed(int(noise_seed)))
        self.register_buffer("noise", noise, persistent=False)

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s, sd = sigma_view(sigma, x.dim()), self.sigma_data
        c_in = 1.0 / torch.sqrt(s**2 + sd**2)
        c_skip = sd**2 / ((s - self.sigma_min) ** 2 + sd**2)
        c_out = (s - self.sigma_min) * sd * c_in
        out = c_skip * x + c_out * self.network(c_in * x, 250.0 * torch.log(sigma))
        return out.clamp(-1.0, 1.0) if self.clip_denoised else out

    def generator(self, z: torch.Tensor) -> torch.Tensor:
        """Deterministic 1- or 2-step consistency sampling from z ~ N(0, I); differentiable."""
        x = self.denoise(self.sigma_max * z, self.sigma_max)
        if self.steps == 2:
            scale = math.sqrt(self.sigma_mid**2 - self.sigma_min**2)
            x = self.denoise(x + scale * self.noise.to(x.dtype), self.sigma_mid)
        return x


def _check_shape(prior: Prior, x: torch.Tensor, shape: tuple[int, ...], name: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise PriorInputError(f"{type(prior).__name__}: {name} must be a floating-point tensor")
    if x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != tuple(shape):
        raise PriorInputError(
            f"{type(prior).__name__}: {name} has shape {tuple(x.shape)}; expected (batch, "
            f"{', '.join(map(str, shape))})"
        )


# -- reading folders -------------------------------------------------------------------------------
def weight_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of a module's first parameter. diffusers' ``ModelMixin.dtype`` walks every
    submodule on each access (over a millisecond for the shipped 32x32 UNet on a CPU core, about
    4% of its forward), and the adapters need it on every call."""
    return next(module.parameters()).dtype


def _component(cls: Any, folder: Path, dtype: str | torch.dtype | None = None) -> Any:
    """``cls.from_pretrained(folder)`` from safetensors only, frozen, in eval mode, in ``dtype``.

    The dtype goes to ``from_pretrained`` so that modules a model keeps in float32 stay so; the
    global RNG state is left as it was.
    """
    found = read_json(folder / "config.json").get("_class_name")
    if found is not None and not cls.__name__.startswith("Auto") and found != cls.__name__:
        raise PriorLoadError(f"{folder} holds a {found}; expected a {cls.__name__}")
    if not any(folder.glob("*.safetensors")):
        raise PriorLoadError(
            f"no *.safetensors weights in {folder} (pickled .bin/.ckpt weights are not loaded; "
            "convert them with diffusers' save_pretrained(..., safe_serialization=True))"
        )
    extra = {} if dtype is None else {"torch_dtype": _dtype(dtype)}
    with torch.random.fork_rng(devices=[]):  # e.g. VQModel's codebook init draws before loading
        model = cls.from_pretrained(folder, use_safetensors=True, local_files_only=True, **extra)
    return model.eval().requires_grad_(False)


def _components(path: Path) -> set[str]:
    """The pipeline's component names: from model_index.json, else the subfolder names."""
    index = path / "model_index.json"
    if index.is_file():
        return {
            name
            for name, value in read_json(index).items()
            if not name.startswith("_") and isinstance(value, list) and value[-1] is not None
        }
    return {p.name for p in path.iterdir() if p.is_dir()}


def detect_kind(path: str | Path) -> str:
    """Which family a diffusers folder holds: one of ``KINDS``."""
    path = Path(path)
    components = _components(path)
    if "unet" not in components or "scheduler" not in components:
        found = ", ".join(sorted(components)[:8]) + (", ..." if len(components) > 8 else "")
        raise PriorLoadError(
            f"{path} is not a diffusers pipeline folder this project reads: expected unet/ and "
            f"scheduler/ (plus vae/ or vqvae/, and text_encoder/ + tokenizer/ for Stable "
            f"Diffusion); found [{found}]"
        )
    scheduler = read_json(path / "scheduler" / "scheduler_config.json")
    if scheduler.get("_class_name") == "CMStochasticIterativeScheduler":
        return "consistency"
    if "text_encoder" in components:
        return "sd"
    if components & {"vae", "vqvae"}:
        return "latent"
    return "pixel"


def _vp_schedule(path: Path) -> tuple[torch.Tensor, str]:
    """alphas_cumprod and prediction_type from the model's own scheduler config."""
    from diffusers import DDPMScheduler

    raw = read_json(path / "scheduler" / "scheduler_config.json")
    if "beta_schedule" not in raw and raw.get("trained_betas") is None:
        raise PriorLoadError(
            f"scheduler {raw.get('_class_name')!r} in {path / 'scheduler'} defines no VP beta "
            "schedule (beta_schedule / trained_betas)"
        )
    scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True)
    return scheduler.alphas_cumprod.clone(), scheduler.config.prediction_type


def _sample_shape(config: Any, sample_size: int | tuple[int, int] | None) -> tuple[int, ...]:
    size = config.sample_size if sample_size is None else sample_size
    if size is None:
        raise PriorLoadError("the UNet config has no sample_size: pass sample_size=<int>")
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return int(config.in_channels), int(height), int(width)


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise PriorLoadError(f"dtype must name a floating-point torch dtype, got {dtype!r}")
    return resolved


def _place(prior: Prior, device: str | torch.device | None) -> Prior:
    return prior if device is None else prior.to(device)


# -- loaders, one per kind -------------------------------------------------------------------------
def load_pixel(
    path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    class_label: int | None = None,
    sample_size: int | tuple[int, int] | None = None,
    timestep_mode: str = "continuous",
    ode_steps: int = 10,
    ode_method: str = "heun",
    sigma_max: float | None = None,
) -> DiffusionPrior:
    """A pixel DDPM/DDIM folder (``unet/`` UNet2DModel + ``scheduler/``)."""
    from diffusers import UNet2DModel

    path = Path(path)
    unet = _component(UNet2DModel, path / "unet", dtype)
    alphas_cumprod, prediction_type = _vp_schedule(path)
    prior = DiffusionPrior(
        UNetAdapter(unet, class_label),
        alphas_cumprod,
        _sample_shape(unet.config, sample_size),
        prediction_type,
        timestep_mode,
        ode_steps,
        ode_method,
        sigma_max,
    )
    return _place(prior, device)


def load_latent(
    path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    class_label: int | None = None,
    sample_size: int | tuple[int, int] | None = None,
    timestep_mode: str = "continuous",
    ode_steps: int = 10,
    ode_method: str = "heun",
    sigma_max: float | None = None,
    scaling_factor: float | None = None,
    quantize: bool = True,
) -> LatentDiffusionPrior:
    """An unconditional LDM folder (``unet/`` UNet2DModel + ``vqvae/`` or ``vae/`` + scheduler).

    ``scaling_factor`` defaults to the autoencoder config's. A VQModel config without the key
    (e.g. ``CompVis/ldm-celebahq-256``, saved before diffusers had it) means 1.0, the LDM VQ-f4
    models' ``scale_factor``, not diffusers' class default 0.18215 (diffusers issue #6725).
    """
    from diffusers import UNet2DModel

    path = Path(path)
    unet = _component(UNet2DModel, path / "unet", dtype)
    autoencoder, scale, shift = _autoencoder(path, scaling_factor, dtype)
    alphas_cumprod, prediction_type = _vp_schedule(path)
    prior = LatentDiffusionPrior(
        UNetAdapter(unet, class_label),
        alphas_cumprod,
        _sample_shape(unet.config, sample_size),
        autoencoder,
        scale,
        shift,
        quantize,
        prediction_type=prediction_type,
        timestep_mode=timestep_mode,
        ode_steps=ode_steps,
        ode_method=ode_method,
        sigma_max=sigma_max,
    )
    return _place(prior, device)


def load_sd(
    path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    prompt: str = "",
    cfg_scale: float = 1.0,
    negative_prompt: str = "",
    sample_size: int | tuple[int, int] | None = None,
    timestep_mode: str = "continuous",
    ode_steps: int = 10,
    ode_method: str = "heun",
    scaling_factor: float | None = None,
) -> LatentDiffusionPrior:
    """A Stable Diffusion folder, conditioned on one fixed ``prompt`` (encoded once).

    DAPS used prompt "a natural looking image" with ``cfg_scale`` 7.5 (reference/models.md);
    the default, cfg_scale 1, is the plain conditional model at one network call per denoise.
    The text encoder runs once at load time (float32) and is not kept.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    if not math.isfinite(cfg_scale):
        raise PriorLoadError(f"cfg_scale must be finite, got {cfg_scale}")
    path = Path(path)
    unet = _component(UNet2DConditionModel, path / "unet", dtype)
    autoencoder, scale, shift = _autoencoder(path, scaling_factor, dtype, (AutoencoderKL,))
    alphas_cumprod, prediction_type = _vp_schedule(path)
    prompts = [prompt] if cfg_scale == 1.0 else [prompt, negative_prompt]
    embeds = _embed_prompts(path, prompts, device)
    cond, uncond = embeds[:1], (embeds[1:] if cfg_scale != 1.0 else None)
    prior = LatentDiffusionPrior(
        TextUNetAdapter(unet, cond, uncond, cfg_scale),
        alphas_cumprod,
        _sample_shape(unet.config, sample_size),
        autoencoder,
        scale,
        shift,
        prediction_type=prediction_type,
        timestep_mode=timestep_mode,
        ode_steps=ode_steps,
        ode_method=ode_method,
    )
    return _place(prior, device)


def load_consistency(
    path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    class_label: int | None = None,
    sample_size: int | tuple[int, int] | None = None,
    cm_steps: int = 1,
    cm_sigma_mid: float = 2.818,
    cm_noise_seed: int = 0,
    clip_denoised: bool = False,
) -> ConsistencyPrior:
    """A ConsistencyModelPipeline folder (``unet/`` + CMStochasticIterativeScheduler).

    sigma_min, sigma_max and sigma_data come from the scheduler config; ``cm_sigma_mid`` 2.818
    is the 2-step intermediate level of the CPS generator (reference/algorithms.md).
    """
    from diffusers import UNet2DModel

    path = Path(path)
    unet = _component(UNet2DModel, path / "unet", dtype)
    scheduler = read_json(path / "scheduler" / "scheduler_config.json")
    prior = ConsistencyPrior(
        UNetAdapter(unet, class_label),
        _sample_shape(unet.config, sample_size),
        sigma_min=float(scheduler.get("sigma_min", 0.002)),
        sigma_max=float(scheduler.get("sigma_max", 80.0)),
        sigma_data=float(scheduler.get("sigma_data", 0.5)),
        steps=cm_steps,
        sigma_mid=cm_sigma_mid,
        noise_seed=cm_noise_seed,
        clip_denoised=clip_denoised,
    )
    return _place(prior, device)


def _autoencoder(
    path: Path,
    scaling_factor: float | None,
    dtype: str | torch.dtype | None,
    allowed: tuple[type, ...] | None = None,
) -> tuple[nn.Module, float, float]:
    """The autoencoder of ``vqvae/`` or ``vae/``, its scaling factor and shift."""
    import diffusers

    folder = next((path / n for n in ("vqvae", "vae") if (path / n).is_dir()), path / "vae")
    config = read_json(folder / "config.json")
    name = config.get("_class_name")
    cls = getattr(diffusers, name) if name in AUTOENCODERS else None
    if cls is None or (allowed is not None and cls not in allowed):
        raise PriorLoadError(f"{folder}: unsupported autoencoder class {name!r}")
    autoencoder = _component(cls, folder, dtype)
    if scaling_factor is None:
        default = 1.0 if name == "VQModel" else autoencoder.config.scaling_factor
        scaling_factor = float(config.get("scaling_factor", default))
    shift = getattr(autoencoder.config, "shift_factor", None) or 0.0
    return autoencoder, float(scaling_factor), float(shift)


def _embed_prompts(path: Path, prompts: list[str], device: Any) -> torch.Tensor:
    """Text-encoder hidden states (N, L, D) of ``prompts``, as StableDiffusionPipeline does."""
    from transformers import AutoModel, AutoTokenizer

    read_json(path / "tokenizer" / "tokenizer_config.json")
    tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
    encoder = _component(AutoModel, path / "text_encoder")
    if device is not None:
        encoder.to(device)
    tokens = tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    mask = None
    if getattr(encoder.config, "use_attention_mask", False):
        mask = tokens.attention_mask.to(encoder.device)
    with torch.no_grad():
        return encoder(tokens.input_ids.to(encoder.device), attention_mask=mask)[0].float()


LOADERS: dict[str, Callable[..., Prior]] = {
    "pixel": load_pixel,
    "latent": load_latent,
    "sd": load_sd,
    "consistency": load_consistency,
}
KINDS = tuple(LOADERS)


def load_diffusers(path: str | Path, kind: str | None = None, **options: Any) -> Prior:
    """Load a diffusers-format folder as a Prior; ``kind`` (one of ``KINDS``) or auto-detected.

    ``options`` are the keyword arguments of the kind's loader (``load_pixel``, ``load_latent``,
    ``load_sd``, ``load_consistency``); an unknown one is an error that lists the accepted ones.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise PriorLoadError(f"no such directory: {path.absolute()}")
    kind = detect_kind(path) if kind is None else kind
    if kind not in LOADERS:
        raise PriorLoadError(f"unknown prior kind {kind!r}; expected one of {KINDS}")
    loader = LOADERS[kind]
    accepted = [p for p in inspect.signature(loader).parameters if p != "path"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise PriorLoadError(
            f"unknown option(s) {unknown} for a {kind!r} prior; accepted: {accepted}"
        )
    return loader(path, **options)
