"""Train, save and document the small priors that ship with dipswarm (``dipswarm train-prior``).

Each preset trains on the training split of a built-in dataset only, saves a diffusers-format
folder (``unet/``, ``scheduler/``, and ``vae/`` for the latent model) that
``solvers.priors.load`` reads through the same code path as hub models, loads it back through
that path, and writes a model card (``README.md``, ``card.json``, ``samples.png``) with figures
measured on the held-out test split.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from experiments.data import load_builtin_split
from experiments.prior_quality import (
    WienerDenoiser,
    classify_digits,
    denoising_mse,
    save_grid,
)
from experiments.training import (
    AutoencoderTraining,
    DiffusionTraining,
    TrainingLog,
    seeded,
    train_autoencoder,
    train_diffusion,
)

CARD_SIGMAS = (0.1, 0.2, 0.5, 1.0)
# The small pixel networks are unreliable near the top of their schedule (sigma ~157): from
# sigma_max 157, 16% of ODE-sample pixels saturate beyond |1.2| for digits; from 20, 2%. The data
# spread (~0.6) is negligible against 20, so the prior is exposed on [sigma_min, 20].
PIXEL_PRIOR_OPTIONS = {"sigma_max": 20.0}


@dataclass(frozen=True)
class PriorPreset:
    """What to train for one shipped prior."""

    dataset: str
    description: str
    unet: dict[str, Any]
    diffusion: DiffusionTraining
    autoencoder: dict[str, Any] | None = None
    autoencoder_training: AutoencoderTraining | None = None
    image_size: int = 32
    prior_options: dict[str, Any] = field(default_factory=dict)


def _unet(
    size: int, channels: int, widths: tuple[int, ...], attention_last: bool
) -> dict[str, Any]:
    down = ["DownBlock2D"] * len(widths)
    if attention_last:
        down[-1] = "AttnDownBlock2D"
    up = [name.replace("Down", "Up") for name in reversed(down)]
    return {
        "sample_size": size,
        "in_channels": channels,
        "out_channels": channels,
        "block_out_channels": widths,
        "layers_per_block": 1,
        "down_block_types": tuple(down),
        "up_block_types": tuple(up),
        "norm_num_groups": 8,
        "attention_head_dim": 16,
    }


PRESETS: dict[str, PriorPreset] = {
    "digits": PriorPreset(
        dataset="digits",
        description="pixel-space DDPM on the scikit-learn digits, 1x32x32",
        unet=_unet(32, 1, (16, 32, 64), attention_last=True),
        diffusion=DiffusionTraining(steps=2500, batch_size=32),
        prior_options=PIXEL_PRIOR_OPTIONS,
    ),
    "faces": PriorPreset(
        dataset="faces",
        description="pixel-space DDPM on the scikit-image LFW faces, 1x32x32",
        unet=_unet(32, 1, (16, 32, 64), attention_last=True),
        diffusion=DiffusionTraining(steps=2500, batch_size=32, hflip=True),
        prior_options=PIXEL_PRIOR_OPTIONS,
    ),
    "digits_latent": PriorPreset(
        dataset="digits",
        description="latent diffusion on the digits: KL autoencoder 1x32x32 -> 2x8x8 + UNet",
        unet=_unet(8, 2, (32, 64), attention_last=True),
        diffusion=DiffusionTraining(steps=2500, batch_size=64),
        autoencoder={
            "in_channels": 1,
            "out_channels": 1,
            "down_block_types": ("DownEncoderBlock2D",) * 3,
            "up_block_types": ("UpDecoderBlock2D",) * 3,
            "block_out_channels": (16, 32, 32),
            "layers_per_block": 1,
            "latent_channels": 2,
            "norm_num_groups": 8,
            "sample_size": 32,
        },
        autoencoder_training=AutoencoderTraining(steps=1500, batch_size=32),
    ),
}


def _progress(label: str, total: int) -> Callable[[int, float], None]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=label, mininterval=2.0)

    def update(step: int, loss: float) -> None:
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss:.4f}")
        if step + 1 == total:
            bar.close()

    return update


def _scheduler_config(training: DiffusionTraining) -> dict[str, Any]:
    return {
        "num_train_timesteps": training.num_train_timesteps,
        "beta_start": training.beta_start,
        "beta_end": training.beta_end,
        "beta_schedule": "linear",
        "prediction_type": "epsilon",
        "clip_sample": False,
    }


def train_prior(
    name: str, out_dir: str | Path, steps: int | None = None, show_progress: bool = True
) -> dict[str, Any]:
    """Train preset ``name`` into ``out_dir`` and write its model card; returns the card."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel

    if name not in PRESETS:
        raise ValueError(f"unknown prior preset {name!r}; presets: {', '.join(sorted(PRESETS))}")
    preset = PRESETS[name]
    diffusion = preset.diffusion if steps is None else replace(preset.diffusion, steps=steps)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train = load_builtin_split(preset.dataset, "train", size=preset.image_size).images
    card: dict[str, Any] = {"name": name, "description": preset.description}

    vae = None
    data = train
    if preset.autoencoder is not None:
        ae_training = preset.autoencoder_training or AutoencoderTraining()
        if steps is not None:
            ae_training = replace(ae_training, steps=steps)
        vae = seeded(lambda: AutoencoderKL(**preset.autoencoder), ae_training.seed)
        bar = _progress("autoencoder", ae_training.steps) if show_progress else None
        vae, ae_log = train_autoencoder(vae, train, ae_training, bar)
        with torch.no_grad():
            latents = vae.encode(train).latent_dist.mode()
        scaling = 1.0 / latents.std().item()
        vae.register_to_config(scaling_factor=scaling)
        data = latents * scaling
        card["autoencoder_training"] = _training_record(asdict(ae_training), ae_log)

    unet = seeded(lambda: UNet2DModel(**preset.unet), diffusion.seed)
    bar = _progress(f"diffusion {name}", diffusion.steps) if show_progress else None
    unet, _, log = train_diffusion(unet, data, diffusion, bar)
    card["diffusion_training"] = _training_record(asdict(diffusion), log)

    unet.save_pretrained(out / "unet", safe_serialization=True)
    DDPMScheduler(**_scheduler_config(diffusion)).save_pretrained(out / "scheduler")
    if vae is not None:
        vae.save_pretrained(out / "vae", safe_serialization=True)
    kind = "pixel" if vae is None else "latent"
    shape = [preset.unet["in_channels"], preset.unet["sample_size"], preset.unet["sample_size"]]
    card["kind"], card["shape"] = kind, shape
    card["parameters"] = sum(p.numel() for p in unet.parameters()) + (
        0 if vae is None else sum(p.numel() for p in vae.parameters())
    )
    card["command"] = f"dipswarm train-prior {name} --out {out}" + (
        f" --steps {steps}" if steps is not None else ""
    )
    card["machine"] = f"{platform.processor() or platform.machine()}, torch {torch.__version__}"
    return write_card(name, out, card)


def write_card(name: str, folder: Path, card: dict[str, Any]) -> dict[str, Any]:
    """Write the prior's metadata with the preset's loader options, measure the card figures
    through ``solvers.priors.load`` and write ``card.json`` and ``README.md``."""
    meta = {"kind": card["kind"], "shape": card["shape"], "options": PRESETS[name].prior_options}
    (folder / "dipswarm_prior.json").write_text(json.dumps(meta) + "\n")
    card = {**card, "prior_options": PRESETS[name].prior_options, **evaluate_prior(name, folder)}
    (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (folder / "README.md").write_text(model_card_markdown(card))
    return card


def refresh_card(name: str, folder: str | Path) -> dict[str, Any]:
    """Re-measure the card of an already trained prior (``train-prior --evaluate-only``)."""
    folder = Path(folder)
    card = json.loads((folder / "card.json").read_text())
    return write_card(name, folder, card)


def _training_record(config: dict[str, Any], log: TrainingLog) -> dict[str, Any]:
    return {
        **config,
        "seconds": round(log.seconds, 1),
        "final_loss": round(log.smoothed_final_loss(), 5),
    }


def evaluate_prior(name: str, folder: str | Path, n_samples: int = 64) -> dict[str, Any]:
    """Card figures for a saved prior, loaded back through ``solvers.priors.load``."""
    from solvers.priors import load

    preset = PRESETS[name]
    folder = Path(folder)
    prior = load(str(folder))
    train = load_builtin_split(preset.dataset, "train", size=preset.image_size)
    test = load_builtin_split(preset.dataset, "test", size=preset.image_size)
    figures: dict[str, Any] = {"test_images": int(test.images.shape[0])}
    if prior.is_latent:
        with torch.no_grad():
            train_space = prior.encode(train.images)
            test_space = prior.encode(test.images)
            reconstruction = prior.decode(test_space)
        mse = (reconstruction - test.images).pow(2).mean().item()
        figures["autoencoder_test_psnr_db"] = round(10 * math.log10(4.0 / mse), 2)
        figures["denoising_space"] = "latent"
    else:
        train_space, test_space = train.images, test.images
        figures["denoising_space"] = "pixel"
    wiener = WienerDenoiser.fit(train_space)
    sigmas = [s for s in CARD_SIGMAS if prior.sigma_min <= s <= prior.sigma_max]
    model_mse = denoising_mse(prior.denoise, test_space, sigmas, torch.Generator().manual_seed(1))
    wiener_mse = denoising_mse(wiener, test_space, sigmas, torch.Generator().manual_seed(1))
    figures["denoising_mse"] = [
        {"sigma": s, "model": round(model_mse[s], 5), "wiener": round(wiener_mse[s], 5)}
        for s in sigmas
    ]
    generator = torch.Generator().manual_seed(2)
    z = torch.randn(n_samples, *prior.shape, generator=generator)
    start = time.perf_counter()
    with torch.no_grad():
        samples = prior.generator(z)
        if prior.is_latent:
            samples = prior.decode(samples)
    figures["sampler"] = f"probability-flow ODE, {prior.ode_steps} Heun steps"
    figures["sampling_seconds_per_64"] = round(time.perf_counter() - start, 2)
    save_grid(samples, folder / "samples.png")
    if preset.dataset == "digits":
        report = classify_digits(train.images, train.labels, test.images, test.labels, samples)
        figures["digit_classifier"] = asdict(report)
    return figures


def model_card_markdown(card: dict[str, Any]) -> str:
    """The model card as Markdown."""
    training = card["diffusion_training"]
    lines = [
        f"# Prior `{card['name']}`",
        "",
        f"{card['description']}. Kind: {card['kind']}, sampling space {tuple(card['shape'])}, "
        f"{card['parameters']:,} parameters. Load it with `solvers.priors.load("
        f'"{card["name"]}")`; loader options: {card["prior_options"] or "none"}'
        + (
            " (the network is exposed up to sigma 20 only: it is unreliable near the top of "
            "its 1000-step schedule, sigma ~157)."
            if card["prior_options"].get("sigma_max")
            else "."
        ),
        "",
        "## Training",
        "",
        f"- Command: `{card['command']}` (machine: {card['machine']})",
        "- Data: the `train` split of the built-in dataset only (experiments/data.py); all "
        "figures below are on the held-out `test` split "
        f"({card['test_images']} images).",
        f"- Diffusion: epsilon prediction, linear betas {training['beta_start']}..."
        f"{training['beta_end']} over {training['num_train_timesteps']} steps, "
        f"{training['steps']} AdamW steps of batch {training['batch_size']}, learning rate "
        f"{training['learning_rate']}, EMA {training['ema_decay']} (with warm-up), horizontal "
        f"flips "
        f"{'on' if training['hflip'] else 'off'}, seed {training['seed']}; "
        f"{training['seconds']:.0f} s; final loss {training['final_loss']}.",
    ]
    if "autoencoder_training" in card:
        ae = card["autoencoder_training"]
        lines.append(
            f"- Autoencoder: AutoencoderKL, {ae['steps']} Adam steps of batch "
            f"{ae['batch_size']}, MSE + {ae['kl_weight']} KL, {ae['seconds']:.0f} s; held-out "
            f"reconstruction PSNR {card['autoencoder_test_psnr_db']} dB."
        )
    lines += [
        "",
        f"## Held-out denoising error ({card['denoising_space']} space, MSE per element)",
        "",
        "The Wiener column is the best Gaussian prior fitted on the same training data "
        "(linear MMSE denoiser).",
        "",
        "| sigma | this prior | Wiener (Gaussian) | ratio |",
        "|---:|---:|---:|---:|",
    ]
    for row in card["denoising_mse"]:
        ratio = row["model"] / row["wiener"]
        lines.append(f"| {row['sigma']} | {row['model']} | {row['wiener']} | {ratio:.2f} |")
    lines += [
        "",
        "## Samples",
        "",
        f"`samples.png`: 64 unconditional samples (from z ~ N(0, I) scaled by sigma_max), "
        f"{card['sampler']} "
        f"({card['sampling_seconds_per_64']} s for 64 on the CPU).",
    ]
    if "digit_classifier" in card:
        report = card["digit_classifier"]
        lines += [
            "",
            "A logistic-regression classifier trained on the real training digits "
            f"classifies {report['real_test_accuracy']:.1%} of the real test digits correctly "
            f"and {report['real_test_confident']:.1%} of them with probability >= 0.9. On the "
            f"generated samples it is that confident for {report['samples_confident']:.1%}; "
            f"predicted classes 0-9: {report['class_counts']}.",
        ]
    lines += ["", "![samples](samples.png)", ""]
    return "\n".join(lines)
