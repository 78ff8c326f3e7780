"""What a prior folder on disk holds, read from its JSON files only (docs/priors.md).

A diffusers-format folder (``model_index.json`` or ``unet/`` + ``scheduler/`` subfolders) holds
one of four families (``KINDS``): ``pixel`` (UNet2DModel + scheduler), ``latent`` (plus
``vqvae/`` or ``vae/``), ``sd`` (Stable Diffusion: plus ``text_encoder/`` and ``tokenizer/``)
and ``consistency`` (a CMStochasticIterativeScheduler). A dipswarm folder adds
``dipswarm_prior.json``: {"kind": ..., "shape": [...], "options": {...}}.

``inspect_folder`` finds the family and checks that every file its loader reads is there
(configs, ``*.safetensors`` weights), so a broken folder fails before torch, diffusers or
transformers touch it. Nothing here imports diffusers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from solvers.priors.base import PriorLoadError

KINDS = ("pixel", "latent", "sd", "consistency")
META_FILE = "dipswarm_prior.json"
AUTOENCODER_FOLDERS = ("vqvae", "vae")
SCHEDULER_CONFIG = Path("scheduler") / "scheduler_config.json"


@dataclass(frozen=True)
class FolderMeta:
    """A folder's ``dipswarm_prior.json``: the family, the sample shape, default options."""

    kind: str
    shape: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)


def read_json(file: Path) -> dict[str, Any]:
    """A JSON object from ``file``, or a PriorLoadError naming the file."""
    if not file.is_file():
        raise PriorLoadError(f"missing file {file}")
    try:
        content = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise PriorLoadError(f"{file} is not valid JSON: {err}") from err
    if not isinstance(content, dict):
        raise PriorLoadError(f"{file} must hold a JSON object")
    return content


def read_meta(path: Path) -> FolderMeta | None:
    """The folder's ``dipswarm_prior.json``, or None when it has none."""
    file = path / META_FILE
    if not file.is_file():
        return None
    meta = read_json(file)
    kind, shape, options = meta.get("kind"), meta.get("shape"), meta.get("options", {})
    if not isinstance(kind, str) or not isinstance(shape, list):
        raise PriorLoadError(f"{file} needs 'kind' (string) and 'shape' (list)")
    if kind not in KINDS:
        raise PriorLoadError(f"{file}: kind {kind!r} is not one of {', '.join(KINDS)}")
    if not isinstance(options, dict):
        raise PriorLoadError(f"{file}: 'options' must be a JSON object")
    return FolderMeta(kind, tuple(int(s) for s in shape), options)


def components(path: Path) -> set[str]:
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
    found = components(path)
    if "unet" not in found or "scheduler" not in found:
        listed = ", ".join(sorted(found)[:8]) + (", ..." if len(found) > 8 else "")
        raise PriorLoadError(
            f"{path} is not a diffusers pipeline folder this project reads: expected unet/ and "
            f"scheduler/ (plus vae/ or vqvae/, and text_encoder/ + tokenizer/ for Stable "
            f"Diffusion); found [{listed}]"
        )
    scheduler = read_json(path / SCHEDULER_CONFIG)
    if scheduler.get("_class_name") == "CMStochasticIterativeScheduler":
        return "consistency"
    if "text_encoder" in found:
        return "sd"
    if found & set(AUTOENCODER_FOLDERS):
        return "latent"
    return "pixel"


def autoencoder_folder(path: Path) -> Path:
    """The autoencoder subfolder: ``vqvae/`` if present, else ``vae/``."""
    return next((path / n for n in AUTOENCODER_FOLDERS if (path / n).is_dir()), path / "vae")


def check_weights(folder: Path) -> None:
    """``folder`` holds a ``config.json`` and ``*.safetensors`` weights (the only ones loaded)."""
    read_json(folder / "config.json")
    if not any(folder.glob("*.safetensors")):
        raise PriorLoadError(
            f"no *.safetensors weights in {folder} (pickled .bin/.ckpt weights are not loaded; "
            "convert them with diffusers' save_pretrained(..., safe_serialization=True))"
        )


def inspect_folder(path: Path, kind: str | None = None) -> str:
    """The family of the diffusers folder ``path`` (``kind`` if given, else detected), after
    checking that every file its loader reads exists; a PriorLoadError names the first missing.
    """
    if not path.is_dir():
        raise PriorLoadError(f"no such directory: {path.absolute()}")
    kind = detect_kind(path) if kind is None else kind
    if kind not in KINDS:
        raise PriorLoadError(f"unknown prior kind {kind!r}; expected one of {KINDS}")
    read_json(path / SCHEDULER_CONFIG)
    check_weights(path / "unet")
    if kind in ("latent", "sd"):
        check_weights(autoencoder_folder(path))
    if kind == "sd":
        check_weights(path / "text_encoder")
        read_json(path / "tokenizer" / "tokenizer_config.json")
    return kind
