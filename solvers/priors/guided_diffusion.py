"""The guided-diffusion UNet (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs") as a prior.

This is the pixel-space DDPM that DPS (Chung et al. 2023) and DAPS (Zhang et al. 2025) run on
FFHQ 256 (``ffhq_10m.pt``, first released with ILVR) and ImageNet 256 (openai/guided-diffusion
``256x256_diffusion_uncond.pt``). The module tree mirrors ``guided_diffusion/unet.py`` of
openai/guided-diffusion (the same file ships in DPS2022/diffusion-posterior-sampling and in
zhangbingliang2019/DAPS as ``model/ddpm/unet.py``), so that the official state dicts load with
``strict=True``: ``time_embed``, ``input_blocks``, ``middle_block``, ``output_blocks``, ``out``;
residual blocks hold ``in_layers``/``emb_layers``/``out_layers``/``skip_connection``, attention
blocks ``norm``/``qkv``/``proj_out``. The checkpoints predict epsilon plus a learned variance
(``learn_sigma``); only the epsilon half is used. Their schedule is the linear DDPM one (Ho et al.
2020): betas 1e-4 .. 0.02 over 1000 steps (DPS ``configs/diffusion_config.yaml``, DAPS
``model/__init__.py``), and the network takes the raw step index as its timestep
(``rescale_timesteps`` False).
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from solvers.priors.base import PriorInputError
from solvers.priors.vp import VPDenoiser
from solvers.schedules import adm_linear_alphas_cumprod

NORM_GROUPS = 32  # guided_diffusion/nn.py: normalization(channels) = GroupNorm32(32, channels)


@dataclass(frozen=True)
class GuidedDiffusionConfig:
    """Architecture and schedule of a guided-diffusion UNet (names follow ``create_model``).

    ``attention_resolutions`` are feature-map sizes in pixels, as in the YAML configs ("16" for
    FFHQ); the network attends at downsampling rates ``image_size // r``.
    """

    image_size: int = 256
    in_channels: int = 3
    model_channels: int = 128
    num_res_blocks: int = 1
    channel_mult: tuple[float, ...] = (1, 1, 2, 2, 4, 4)
    attention_resolutions: tuple[int, ...] = (16,)
    num_heads: int = 4
    num_head_channels: int = 64
    num_heads_upsample: int = -1
    learn_sigma: bool = True
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    use_new_attention_order: bool = False
    conv_resample: bool = True
    dropout: float = 0.0
    diffusion_steps: int = 1000

    def __post_init__(self) -> None:
        levels = len(self.channel_mult)
        if self.image_size % 2 ** (levels - 1):
            raise PriorInputError(
                f"image_size {self.image_size} is not divisible by 2^{levels - 1} "
                f"(channel_mult has {levels} levels)"
            )
        for res in self.attention_resolutions:
            if res <= 0 or self.image_size % res:
                raise PriorInputError(
                    f"attention resolution {res} does not divide image_size {self.image_size}"
                )
        for width in self.widths:
            if width % NORM_GROUPS:
                raise PriorInputError(
                    f"channel width {width} is not divisible by {NORM_GROUPS} GroupNorm groups"
                )
            if self.num_head_channels != -1 and width % self.num_head_channels:
                raise PriorInputError(
                    f"channel width {width} is not divisible by num_head_channels "
                    f"{self.num_head_channels}"
                )

    @property
    def widths(self) -> tuple[int, ...]:
        """Channel width of each level."""
        return tuple(int(mult * self.model_channels) for mult in self.channel_mult)

    @property
    def attention_ds(self) -> frozenset[int]:
        """Downsampling rates at which attention blocks sit."""
        return frozenset(self.image_size // res for res in self.attention_resolutions)

    @property
    def out_channels(self) -> int:
        """Network outputs: epsilon, plus the variance interpolation when ``learn_sigma``."""
        return 2 * self.in_channels if self.learn_sigma else self.in_channels


def ffhq_256() -> GuidedDiffusionConfig:
    """``ffhq_10m.pt``: DPS ``configs/model_config.yaml`` (= DAPS ``model/ffhq256ddpm.yaml``)."""
    return GuidedDiffusionConfig()


def imagenet_256_uncond() -> GuidedDiffusionConfig:
    """``256x256_diffusion_uncond.pt``: DPS ``configs/imagenet_model_config.yaml`` (= DAPS)."""
    return GuidedDiffusionConfig(
        model_channels=256, num_res_blocks=2, attention_resolutions=(32, 16, 8)
    )


PRESETS: dict[str, Callable[[], GuidedDiffusionConfig]] = {
    "ffhq_256": ffhq_256,
    "imagenet_256_uncond": imagenet_256_uncond,
}


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos(t f), sin(t f)] with f = max_period^(-k / half), in float32."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back (guided_diffusion/nn.py ``GroupNorm32``)."""

    def __init__(self, channels: int) -> None:
        super().__init__(NORM_GROUPS, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(
            x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps
        ).to(x.dtype)


def _resample(x: torch.Tensor, direction: str | None) -> torch.Tensor:
    """Parameter-free 2x change of resolution: nearest up, average-pool down."""
    if direction == "up":
        return F.interpolate(x, scale_factor=2, mode="nearest")
    if direction == "down":
        return F.avg_pool2d(x, kernel_size=2, stride=2)
    return x


class TimestepBlock(nn.Module):
    """A block whose forward also takes the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that hands the embedding to the children that take one."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (``op``), or 2x2 average pooling without ``conv_resample``."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.op = (
            nn.Conv2d(channels, channels, 3, stride=2, padding=1)
            if use_conv
            else nn.AvgPool2d(kernel_size=2, stride=2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest 2x upsampling, then a 3x3 convolution (``conv``) with ``conv_resample``."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _resample(x, "up")
        return x if self.conv is None else self.conv(x)


class ResBlock(TimestepBlock):
    """Residual block with timestep conditioning, optionally resampling (BigGAN-style up/down).

    With ``use_scale_shift_norm`` the embedding gives (scale, shift) for
    ``norm(h) * (1 + scale) + shift`` (FiLM); otherwise it is added before the output norm.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int | None = None,
        *,
        dropout: float = 0.0,
        use_scale_shift_norm: bool = False,
        resample: str | None = None,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.resample = resample
        self.in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels),
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        nn.init.zeros_(self.out_layers[-1].weight)
        nn.init.zeros_(self.out_layers[-1].bias)
        self.skip_connection: nn.Module = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers[:-1](x)
        h = self.in_layers[-1](_resample(h, self.resample))
        x = _resample(x, self.resample)
        emb_out = self.emb_layers(emb).to(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all positions, with a residual connection.

    ``qkv`` is a 1x1 Conv1d to 3C channels. The legacy order (``QKVAttentionLegacy``, used by all
    the unconditional checkpoints: ``use_new_attention_order`` False) groups the channels as
    (head, q/k/v, ch); the new order (``QKVAttention``) as (q/k/v, head, ch).
    """

    def __init__(self, channels: int, num_heads: int, legacy_order: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.legacy_order = legacy_order
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        heads, length = self.num_heads, x.shape[-1]
        ch = c // heads
        if self.legacy_order:
            q, k, v = qkv.reshape(b, heads, 3, ch, length).unbind(2)
        else:
            q, k, v = qkv.reshape(b, 3, heads, ch, length).unbind(1)
        # softmax(q^T k / sqrt(ch)) v per head; the tensors are (b, heads, length, ch)
        a = F.scaled_dot_product_attention(q.mT, k.mT, v.mT)
        h = self.proj_out(a.mT.reshape(b, c, length))
        return (x + h).reshape(b, c, *spatial)


class GuidedDiffusionUNet(nn.Module):
    """guided-diffusion ``UNetModel``, unconditional: ``forward(x, t) -> (B, out_channels, H, W)``.

    ``t`` holds (possibly fractional) DDPM step indices in [0, diffusion_steps - 1].
    """

    def __init__(self, config: GuidedDiffusionConfig) -> None:
        super().__init__()
        self.config = cfg = config
        emb_dim = 4 * cfg.model_channels
        heads_up = cfg.num_heads if cfg.num_heads_upsample == -1 else cfg.num_heads_upsample

        def res(ch: int, out: int | None = None, resample: str | None = None) -> ResBlock:
            return ResBlock(
                ch,
                emb_dim,
                out,
                dropout=cfg.dropout,
                use_scale_shift_norm=cfg.use_scale_shift_norm,
                resample=resample,
            )

        def attn(ch: int, num_heads: int) -> AttentionBlock:
            if cfg.num_head_channels != -1:
                num_heads = ch // cfg.num_head_channels
            return AttentionBlock(ch, num_heads, legacy_order=not cfg.use_new_attention_order)

        self.time_embed = nn.Sequential(
            nn.Linear(cfg.model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        widths, last = cfg.widths, len(cfg.widths) - 1
        ch = widths[0]
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))]
        )
        skip_channels, ds = [ch], 1
        for level, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, width)]
                ch = width
                if ds in cfg.attention_ds:
                    layers.append(attn(ch, cfg.num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != last:
                down = (
                    res(ch, resample="down")
                    if cfg.resblock_updown
                    else Downsample(ch, cfg.conv_resample)
                )
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_channels.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(res(ch), attn(ch, cfg.num_heads), res(ch))
        self.output_blocks = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), width)]
                ch = width
                if ds in cfg.attention_ds:
                    layers.append(attn(ch, heads_up))
                if level and i == cfg.num_res_blocks:
                    layers.append(
                        res(ch, resample="up")
                        if cfg.resblock_updown
                        else Upsample(ch, cfg.conv_resample)
                    )
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(
            GroupNorm32(ch), nn.SiLU(), nn.Conv2d(ch, cfg.out_channels, 3, padding=1)
        )
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @property
    def dtype(self) -> torch.dtype:
        """The type of the weights, which inputs are cast to."""
        return self.out[-1].weight.dtype

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = timestep_embedding(t, self.config.model_channels)
        emb = self.time_embed(temb.to(self.dtype))
        h = x.to(self.dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h).to(x.dtype)


class EpsilonHead(nn.Module):
    """``network(x_t, t) -> epsilon``: the first ``channels`` outputs of a learn_sigma network.

    ``t`` may be a number or a (B,) tensor; it stays fractional (float), as the sinusoidal
    embedding accepts non-integer steps.
    """

    def __init__(self, network: nn.Module, channels: int) -> None:
        super().__init__()
        self.network = network
        self.channels = channels

    def forward(self, x_t: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x_t.device)
        if not t.is_floating_point():
            t = t.to(torch.float32)
        return self.network(x_t, t.expand(x_t.shape[0]))[:, : self.channels]


def resolve_config(config: str | GuidedDiffusionConfig) -> tuple[GuidedDiffusionConfig, str]:
    """The architecture named by ``config`` (a ``PRESETS`` name or a config) and a description."""
    if isinstance(config, GuidedDiffusionConfig):
        return config, repr(config)
    if config not in PRESETS:
        raise PriorInputError(
            f"unknown guided-diffusion config {config!r}; presets: {', '.join(PRESETS)}, "
            "or pass a GuidedDiffusionConfig"
        )
    return PRESETS[config](), f"preset {config!r}"


def _check_keys(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], assumed: str
) -> None:
    """Raise with a few missing, unexpected and mis-shaped keys if the state dict does not fit."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or wrong):
        return
    parts = [
        f"{label} ({len(items)}): {', '.join(items[:5])}"
        + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong))
        if items
    ]
    raise PriorInputError(
        f"the checkpoint does not fit the guided-diffusion UNet of {assumed}: "
        + "; ".join(parts)
        + f". Presets: {', '.join(PRESETS)} (ffhq_10m.pt -> 'ffhq_256', "
        "256x256_diffusion_uncond.pt -> 'imagenet_256_uncond')"
    )


def load_guided_diffusion(
    path: str | Path,
    config: str | GuidedDiffusionConfig = "ffhq_256",
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> VPDenoiser:
    """Load a guided-diffusion checkpoint (a plain state dict) as an EDM-form prior.

    The file is read with ``torch.load(weights_only=True)`` (no arbitrary unpickling) and loaded
    strictly. Returns ``VPDenoiser(EpsilonHead(unet), alphas_cumprod, (C, H, W), "epsilon")``
    with frozen weights in eval mode; ``dtype`` (default float32) applies to the network only.
    """
    cfg, assumed = resolve_config(config)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no guided-diffusion checkpoint at {path}. ffhq_10m.pt (FFHQ 256) comes from the DPS "
            "release (github.com/DPS2022/diffusion-posterior-sampling, README 'Download pretrained "
            "checkpoint', a Google Drive link; also the ILVR release jychoi118/ilvr_adm); the "
            "ImageNet model is 256x256_diffusion_uncond.pt from github.com/openai/guided-diffusion"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise PriorInputError(
            f"{path} is not a plain tensor state dict loadable with weights_only=True: {err}"
        ) from err
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise PriorInputError(f"{path} does not hold a state dict of tensors")
    with torch.device("meta"):
        unet = GuidedDiffusionUNet(cfg)
    _check_keys(state, unet.state_dict(), assumed)
    unet.load_state_dict(state, strict=True, assign=True)
    unet = unet.to(dtype=dtype or torch.float32).eval().requires_grad_(False)
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    prior = VPDenoiser(
        EpsilonHead(unet, cfg.in_channels),
        adm_linear_alphas_cumprod(cfg.diffusion_steps),
        shape=shape,
        prediction_type="epsilon",
    ).eval()
    return prior if device is None else prior.to(device)
