"""Training of the small priors that ship with dipswarm (DDPM, Ho et al. 2020; LDM, Rombach et
al. 2022), saved in the diffusers format so the hub loaders read them unchanged.

Every random draw (initialisation, batches, timesteps, noise) comes from explicit generators
seeded by the config, so a training run is reproducible on the same machine and torch release.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from solvers import schedules


@dataclass(frozen=True)
class DiffusionTraining:
    """Hyperparameters of one epsilon-prediction DDPM training run."""

    steps: int = 4000
    batch_size: int = 64
    learning_rate: float = 2e-4
    ema_decay: float = 0.999
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    hflip: bool = False
    seed: int = 0


@dataclass(frozen=True)
class AutoencoderTraining:
    """Hyperparameters of the KL autoencoder run (reconstruction + small KL weight)."""

    steps: int = 3000
    batch_size: int = 64
    learning_rate: float = 1e-3
    kl_weight: float = 1e-6
    seed: int = 0


@dataclass
class TrainingLog:
    """Loss curve and wall time of a run, for the model card."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def smoothed_final_loss(self, window: int = 200) -> float:
        tail = self.losses[-window:]
        return sum(tail) / max(len(tail), 1)


def seeded(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a module with its random initialisation drawn from ``seed``, leaving the global
    RNG state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def _batch(
    data: torch.Tensor, batch_size: int, generator: torch.Generator, hflip: bool
) -> torch.Tensor:
    index = torch.randint(0, data.shape[0], (batch_size,), generator=generator)
    batch = data[index]
    if hflip:
        flip = torch.rand(batch_size, generator=generator) < 0.5
        batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(-1), batch)
    return batch


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay with warm-up, min(decay, (1 + step) / (10 + step)): early on the average
    follows the model closely, so the random initialisation does not linger in it
    (with a fixed 0.999 it would still weigh 8% after 2,500 steps)."""
    return min(decay, (1.0 + step) / (10.0 + step))


def _update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for ema_p, p in zip(ema.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p, 1.0 - decay)


def train_diffusion(
    unet: nn.Module,
    data: torch.Tensor,
    config: DiffusionTraining,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[nn.Module, torch.Tensor, TrainingLog]:
    """Train ``unet(x_t, t).sample`` to predict the noise of x_t = sqrt(abar) x0 + sqrt(1-abar) n.

    Returns the EMA copy of the network, the alphas_cumprod table and the training log.
    """
    generator = torch.Generator().manual_seed(config.seed)
    alphas_cumprod = schedules.alphas_cumprod(
        config.num_train_timesteps, config.beta_start, config.beta_end
    )
    ema = copy.deepcopy(unet).requires_grad_(False)
    optimiser = torch.optim.AdamW(unet.parameters(), lr=config.learning_rate, weight_decay=0.0)
    log = TrainingLog()
    start = time.perf_counter()
    unet.train()
    for step in range(config.steps):
        x0 = _batch(data, config.batch_size, generator, config.hflip)
        t = torch.randint(0, config.num_train_timesteps, (config.batch_size,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        abar = alphas_cumprod[t].float().view(-1, 1, 1, 1)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        loss = F.mse_loss(unet(x_t, t).sample, noise)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        _update_ema(ema, unet, ema_decay_at(step, config.ema_decay))
        log.losses.append(loss.item())
        if progress is not None:
            progress(step, loss.item())
    log.seconds = time.perf_counter() - start
    return ema.eval(), alphas_cumprod, log


def train_autoencoder(
    vae: nn.Module,
    data: torch.Tensor,
    config: AutoencoderTraining,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[nn.Module, TrainingLog]:
    """Train a diffusers ``AutoencoderKL`` on reconstruction (MSE) plus a small KL term."""
    generator = torch.Generator().manual_seed(config.seed)
    optimiser = torch.optim.Adam(vae.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, config.steps)
    log = TrainingLog()
    start = time.perf_counter()
    vae.train()
    for step in range(config.steps):
        x = _batch(data, config.batch_size, generator, hflip=False)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        reconstruction = vae.decode(z).sample
        loss = F.mse_loss(reconstruction, x) + config.kl_weight * posterior.kl().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        log.losses.append(loss.item())
        if progress is not None:
            progress(step, loss.item())
    log.seconds = time.perf_counter() - start
    return vae.eval(), log
