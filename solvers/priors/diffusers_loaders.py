"""Build a prior from a diffusers-format folder: one loader per family (docs/priors.md).

``load_diffusers(path, kind=None, **options)`` checks the folder (``folders.inspect_folder``),
turns ``options`` into one ``LoadOptions`` record (unknown names fail, listing the accepted
ones for the family) and calls the family's loader. The families and the paper each follows:

- ``pixel``: ``unet/`` (UNet2DModel) + ``scheduler/``, a VP/DDPM network (Ho et al. 2020) with
  the model's own ``alphas_cumprod`` and ``prediction_type``;
- ``latent``: the same in the latent space of ``vqvae/`` (VQModel) or ``vae/`` (AutoencoderKL)
  (LDM, Rombach et al. 2022; e.g. ``CompVis/ldm-celebahq-256``);
- ``sd``: Stable Diffusion, conditioned on one fixed prompt, with optional classifier-free
  guidance (Ho & Salimans 2022);
- ``consistency``: a consistency model (Song et al. 2023).

Weights load only through safetensors (``use_safetensors=True``); diffusers and transformers
are imported inside the loaders, on first use.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from solvers.priors.adapters import TextUNetAdapter, UNetAdapter
from solvers.priors.base import Prior, PriorLoadError, PriorSpecError
from solvers.priors.diffusers_priors import ConsistencyPrior, DiffusionPrior, LatentDiffusionPrior
from solvers.priors.folders import (
    KINDS,
    SCHEDULER_CONFIG,
    autoencoder_folder,
    inspect_folder,
    read_json,
)

AUTOENCODERS = ("VQModel", "AutoencoderKL")
DIFFUSION_KINDS = ("pixel", "latent", "sd")


def _kinds(*kinds: str) -> dict[str, tuple[str, ...]]:
    """Field metadata of a ``LoadOptions`` option: the families whose loader accepts it."""
    return {"kinds": kinds or KINDS}


@dataclass(frozen=True)
class LoadOptions:
    """Options of the diffusers loaders, each declared once with the families it applies to.

    ``device``/``dtype``: where and in which precision the networks live (``dtype`` a torch
    dtype or its name); ``sample_size``: overrides the UNet config's; ``class_label``: the fixed
    label of a class-conditional UNet; ``timestep_mode``, ``ode_steps``, ``ode_method``,
    ``sigma_max``: see ``VPDenoiser`` and ``DiffusionPrior``; ``scaling_factor`` (default: the
    autoencoder config's) and ``quantize``: see ``LatentDiffusionPrior``; ``prompt``,
    ``cfg_scale``, ``negative_prompt``: Stable Diffusion's fixed conditioning; ``cm_*`` and
    ``clip_denoised``: ``ConsistencyPrior``'s ``steps``, ``sigma_mid``, ``noise_seed``, clamp.
    """

    device: str | torch.device | None = field(default=None, metadata=_kinds())
    dtype: str | torch.dtype | None = field(default=None, metadata=_kinds())
    class_label: int | None = field(default=None, metadata=_kinds("pixel", "latent", "consistency"))
    sample_size: int | tuple[int, int] | None = field(default=None, metadata=_kinds())
    timestep_mode: str = field(default="continuous", metadata=_kinds(*DIFFUSION_KINDS))
    ode_steps: int = field(default=10, metadata=_kinds(*DIFFUSION_KINDS))
    ode_method: str = field(default="heun", metadata=_kinds(*DIFFUSION_KINDS))
    sigma_max: float | None = field(default=None, metadata=_kinds("pixel", "latent"))
    scaling_factor: float | None = field(default=None, metadata=_kinds("latent", "sd"))
    quantize: bool = field(default=True, metadata=_kinds("latent"))
    prompt: str = field(default="", metadata=_kinds("sd"))
    cfg_scale: float = field(default=1.0, metadata=_kinds("sd"))
    negative_prompt: str = field(default="", metadata=_kinds("sd"))
    cm_steps: int = field(default=1, metadata=_kinds("consistency"))
    cm_sigma_mid: float = field(default=2.818, metadata=_kinds("consistency"))
    cm_noise_seed: int = field(default=0, metadata=_kinds("consistency"))
    clip_denoised: bool = field(default=False, metadata=_kinds("consistency"))

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", _torch_dtype(self.dtype))
        if not math.isfinite(self.cfg_scale):
            raise PriorLoadError(f"cfg_scale must be finite, got {self.cfg_scale}")

    @staticmethod
    def names() -> list[str]:
        """Every option name (what a hub spec may carry before its family is known)."""
        return [f.name for f in dataclasses.fields(LoadOptions)]

    @staticmethod
    def accepted(kind: str) -> list[str]:
        """The option names the loader of ``kind`` accepts."""
        return [f.name for f in dataclasses.fields(LoadOptions) if kind in f.metadata["kinds"]]

    @classmethod
    def for_kind(cls, kind: str, options: Mapping[str, Any]) -> LoadOptions:
        """``options`` for a ``kind`` folder; a name that family does not take is an error."""
        accepted = cls.accepted(kind)
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise PriorSpecError(
                f"unknown option(s) {unknown} for a {kind!r} prior; accepted: {accepted}"
            )
        return cls(**options)


def _torch_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``dtype`` as a floating-point torch dtype (a name such as "float16" is resolved)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise PriorLoadError(f"dtype must name a floating-point torch dtype, got {dtype!r}")
    return resolved


# -- components ------------------------------------------------------------------------------------
def _component(cls: Any, folder: Path, dtype: torch.dtype | None = None) -> Any:
    """``cls.from_pretrained(folder)`` from safetensors only, frozen, in eval mode, in ``dtype``.

    The dtype goes to ``from_pretrained`` so that modules a model keeps in float32 stay so; the
    global RNG state is left as it was. ``inspect_folder`` has checked that the weights exist.
    """
    found = read_json(folder / "config.json").get("_class_name")
    if found is not None and not cls.__name__.startswith("Auto") and found != cls.__name__:
        raise PriorLoadError(f"{folder} holds a {found}; expected a {cls.__name__}")
    extra = {} if dtype is None else {"torch_dtype": dtype}
    with torch.random.fork_rng(devices=[]):  # e.g. VQModel's codebook init draws before loading
        model = cls.from_pretrained(folder, use_safetensors=True, local_files_only=True, **extra)
    return model.eval().requires_grad_(False)


def _diffusion_keywords(path: Path, opts: LoadOptions) -> dict[str, Any]:
    """The keywords of every ``DiffusionPrior``: alphas_cumprod and prediction_type from the
    model's own scheduler config, the timestep mode, ODE generator and noise cap from ``opts``."""
    from diffusers import DDPMScheduler

    raw = read_json(path / SCHEDULER_CONFIG)
    if "beta_schedule" not in raw and raw.get("trained_betas") is None:
        raise PriorLoadError(
            f"scheduler {raw.get('_class_name')!r} in {path / 'scheduler'} defines no VP beta "
            "schedule (beta_schedule / trained_betas)"
        )
    scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True)
    return {
        "alphas_cumprod": scheduler.alphas_cumprod.clone(),
        "prediction_type": scheduler.config.prediction_type,
        "timestep_mode": opts.timestep_mode,
        "ode_steps": opts.ode_steps,
        "ode_method": opts.ode_method,
        "sigma_max": opts.sigma_max,
    }


def _sample_shape(config: Any, sample_size: int | tuple[int, int] | None) -> tuple[int, ...]:
    size = config.sample_size if sample_size is None else sample_size
    if size is None:
        raise PriorLoadError("the UNet config has no sample_size: pass sample_size=<int>")
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return int(config.in_channels), int(height), int(width)


def _autoencoder(
    path: Path,
    scaling_factor: float | None,
    dtype: torch.dtype | None,
    allowed: tuple[type, ...] | None = None,
) -> tuple[nn.Module, float, float]:
    """The autoencoder of ``vqvae/`` or ``vae/``, its scaling factor and shift.

    ``scaling_factor`` defaults to the autoencoder config's. A VQModel config without the key
    (e.g. ``CompVis/ldm-celebahq-256``, saved before diffusers had it) means 1.0, the LDM VQ-f4
    models' ``scale_factor``, not diffusers' class default 0.18215 (diffusers issue #6725).
    """
    import diffusers

    folder = autoencoder_folder(path)
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


# -- loaders, one per family -----------------------------------------------------------------------
def load_pixel(path: Path, opts: LoadOptions) -> DiffusionPrior:
    """A pixel DDPM/DDIM folder (``unet/`` UNet2DModel + ``scheduler/``)."""
    from diffusers import UNet2DModel

    unet = _component(UNet2DModel, path / "unet", opts.dtype)
    diffusion = _diffusion_keywords(path, opts)
    return DiffusionPrior(
        UNetAdapter(unet, opts.class_label),
        shape=_sample_shape(unet.config, opts.sample_size),
        **diffusion,
    )


def load_latent(path: Path, opts: LoadOptions) -> LatentDiffusionPrior:
    """An unconditional LDM folder (``unet/`` UNet2DModel + ``vqvae/`` or ``vae/`` + scheduler)."""
    from diffusers import UNet2DModel

    unet = _component(UNet2DModel, path / "unet", opts.dtype)
    autoencoder, scale, shift = _autoencoder(path, opts.scaling_factor, opts.dtype)
    diffusion = _diffusion_keywords(path, opts)
    return LatentDiffusionPrior(
        UNetAdapter(unet, opts.class_label),
        shape=_sample_shape(unet.config, opts.sample_size),
        autoencoder=autoencoder,
        scaling_factor=scale,
        shift_factor=shift,
        quantize=opts.quantize,
        **diffusion,
    )


def load_sd(path: Path, opts: LoadOptions) -> LatentDiffusionPrior:
    """A Stable Diffusion folder, conditioned on one fixed ``prompt`` (encoded once).

    The DAPS code (Zhang et al., CVPR 2025) used prompt "a natural looking image" with
    ``cfg_scale`` 7.5 (docs/priors.md); the default, cfg_scale 1, is the plain conditional model
    at one network call per denoise.
    The text encoder runs once at load time (float32) and is not kept.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet = _component(UNet2DConditionModel, path / "unet", opts.dtype)
    autoencoder, scale, shift = _autoencoder(
        path, opts.scaling_factor, opts.dtype, (AutoencoderKL,)
    )
    diffusion = _diffusion_keywords(path, opts)
    guided = opts.cfg_scale != 1.0
    prompts = [opts.prompt, opts.negative_prompt] if guided else [opts.prompt]
    embeds = _embed_prompts(path, prompts, opts.device)
    return LatentDiffusionPrior(
        TextUNetAdapter(unet, embeds[:1], embeds[1:] if guided else None, opts.cfg_scale),
        shape=_sample_shape(unet.config, opts.sample_size),
        autoencoder=autoencoder,
        scaling_factor=scale,
        shift_factor=shift,
        **diffusion,
    )


def load_consistency(path: Path, opts: LoadOptions) -> ConsistencyPrior:
    """A ConsistencyModelPipeline folder (``unet/`` + CMStochasticIterativeScheduler).

    sigma_min, sigma_max and sigma_data come from the scheduler config; ``cm_sigma_mid`` 2.818
    is the 2-step intermediate level of the CPS generator (docs/priors.md).
    """
    from diffusers import UNet2DModel

    unet = _component(UNet2DModel, path / "unet", opts.dtype)
    scheduler = read_json(path / SCHEDULER_CONFIG)
    return ConsistencyPrior(
        UNetAdapter(unet, opts.class_label),
        _sample_shape(unet.config, opts.sample_size),
        sigma_min=float(scheduler.get("sigma_min", 0.002)),
        sigma_max=float(scheduler.get("sigma_max", 80.0)),
        sigma_data=float(scheduler.get("sigma_data", 0.5)),
        steps=opts.cm_steps,
        sigma_mid=opts.cm_sigma_mid,
        noise_seed=opts.cm_noise_seed,
        clip_denoised=opts.clip_denoised,
    )


LOADERS: dict[str, Callable[[Path, LoadOptions], Prior]] = {
    "pixel": load_pixel,
    "latent": load_latent,
    "sd": load_sd,
    "consistency": load_consistency,
}


def load_diffusers(path: str | Path, kind: str | None = None, **options: Any) -> Prior:
    """Load a diffusers-format folder as a Prior; ``kind`` (one of ``KINDS``) or auto-detected.

    ``options`` are ``LoadOptions`` fields of that family; an unknown one is an error that lists
    the accepted ones.
    """
    path = Path(path).expanduser()
    kind = inspect_folder(path, kind)
    opts = LoadOptions.for_kind(kind, options)
    prior = LOADERS[kind](path, opts)
    return prior if opts.device is None else prior.to(opts.device)
