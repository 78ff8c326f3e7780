"""Network adapters: a diffusers UNet as ``network(x_t, t) -> prediction`` (docs/priors.md).

``VPDenoiser`` (``vp.py``) calls its network as ``network(x_t, t)``; these wrap a diffusers
``UNet2DModel`` (optionally class-conditional, optionally learned-variance) or a text-conditioned
``UNet2DConditionModel`` (a fixed prompt, optional classifier-free guidance) into that call.
They take built modules, so nothing here imports diffusers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from solvers.priors.base import PriorLoadError


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


def weight_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of a module's first parameter. diffusers' ``ModelMixin.dtype`` walks every
    submodule on each access (over a millisecond for the shipped 32x32 UNet on a CPU core, about
    4% of its forward), and the adapters need it on every call."""
    return next(module.parameters()).dtype
