"""``load(spec)``: one entry point for every prior (DESIGN.md, "Prior").

A spec is a string or a dict:

- ``"gmm"``: the analytic Gaussian-mixture prior with its exact posterior (``gmm.py``);
- a built-in name: a folder ``solvers/priors/weights/<name>/`` shipped with the package, in
  diffusers format plus ``dipswarm_prior.json`` ({"kind": ..., "shape": [...]}, optional
  "options" with default loader options);
- a local directory in diffusers format (``dipswarm_prior.json`` optional there);
- a guided-diffusion checkpoint file (``.pt``/``.pth``, e.g. DPS's ``ffhq_10m.pt``), with the
  option ``config`` naming its architecture (``"ffhq_256"`` default, ``"imagenet_256_uncond"``);
- ``"hf:<repo-id>"``: a Hugging Face hub repository, downloaded (safetensors only) then loaded
  as a local directory;
- ``{"name" or "path": ..., **options}``, options such as ``device``, ``dtype``, ``prompt``,
  ``cfg_scale``, ``ode_steps`` (see ``diffusers_models.load_diffusers``).

Nothing here imports diffusers, transformers or huggingface_hub until a model is loaded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from solvers.priors.base import Prior, PriorInputError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
META_FILE = "dipswarm_prior.json"
HF_PREFIX = "hf:"
GUIDED_DIFFUSION_SUFFIXES = (".pt", ".pth")
# Hub downloads: configs, tokenizer files and full-precision safetensors of the components only
# (no root-level single-file checkpoints, no pickles, no fp16/non-EMA duplicates).
HF_ALLOW = ["model_index.json", META_FILE, "*/*.json", "*/*.txt", "*/*.safetensors"]
HF_IGNORE = ["*.fp16.*", "*.non_ema.*", "safety_checker/*", "feature_extractor/*"]


class PriorLoadError(PriorInputError):
    """A prior spec that cannot be resolved or loaded; the message names the path or the fix."""


def available() -> list[str]:
    """Names ``load`` accepts without a path: ``"gmm"`` and the built-in weight folders."""
    if not WEIGHTS_DIR.is_dir():
        return ["gmm"]
    return ["gmm", *sorted(p.name for p in WEIGHTS_DIR.iterdir() if (p / META_FILE).is_file())]


def load(spec: str | Mapping[str, Any], **options: Any) -> Prior:
    """Resolve ``spec`` (see the module docstring) to a Prior; ``options`` go to its loader."""
    if isinstance(spec, Mapping):
        spec = dict(spec)
        keys = [key for key in ("name", "path") if key in spec]
        if len(keys) != 1:
            raise PriorLoadError(f"a dict spec needs exactly one of 'name' or 'path', got {spec}")
        target = spec.pop(keys[0])
        options = {**spec, **options}
        if keys[0] == "path":
            return load_folder(target, **options)
        spec = target
    if not isinstance(spec, str) or not spec:
        raise PriorLoadError(f"a prior spec must be a non-empty string or a dict, got {spec!r}")
    if spec == "gmm":
        from solvers.priors.gmm import default_gmm_prior

        return default_gmm_prior(**options)
    if spec.startswith(HF_PREFIX):
        return load_hub(spec.removeprefix(HF_PREFIX), **options)
    if spec in available():
        return load_folder(WEIGHTS_DIR / spec, **options)
    path = Path(spec).expanduser()
    if path.exists() or any(sep in spec for sep in ("/", "\\")) or spec.startswith((".", "~")):
        return load_folder(path, **options)
    raise PriorLoadError(
        f"unknown prior {spec!r}: not a built-in name ({', '.join(available())}), "
        f"not '{HF_PREFIX}<repo-id>' and not an existing directory"
    )


def load_folder(path: str | Path, **options: Any) -> Prior:
    """A local diffusers-format folder; its ``dipswarm_prior.json``, if any, fixes kind/shape."""
    path = Path(path).expanduser()
    if not path.exists():
        raise PriorLoadError(f"no such directory: {path.absolute()}")
    if path.is_file() and path.suffix in GUIDED_DIFFUSION_SUFFIXES:
        from solvers.priors.guided_diffusion import load_guided_diffusion

        return load_guided_diffusion(path, **options)
    if not path.is_dir():
        raise PriorLoadError(
            f"{path} is a file; expected a diffusers-format folder (model_index.json or unet/ + "
            "scheduler/ subfolders) or a guided-diffusion checkpoint (.pt, e.g. ffhq_10m.pt)"
        )
    kind, shape = None, None
    if (path / META_FILE).is_file():
        meta = read_json(path / META_FILE)
        kind, shape = meta.get("kind"), meta.get("shape")
        if not isinstance(kind, str) or not isinstance(shape, list):
            raise PriorLoadError(f"{path / META_FILE} needs 'kind' (string) and 'shape' (list)")
        options = {**meta.get("options", {}), **options}
    from solvers.priors.diffusers_models import load_diffusers

    prior = load_diffusers(path, kind, **options)
    if shape is not None and tuple(prior.shape) != tuple(shape):
        raise PriorLoadError(
            f"{path}: the model samples shape {prior.shape} but {META_FILE} says {tuple(shape)}"
        )
    return prior


def load_hub(repo_id: str, revision: str | None = None, **options: Any) -> Prior:
    """Download ``repo_id`` from the Hugging Face hub (needs internet), then ``load_folder``."""
    if not repo_id:
        raise PriorLoadError(f"empty repository id: use '{HF_PREFIX}<owner>/<name>'")
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(
            repo_id, revision=revision, allow_patterns=HF_ALLOW, ignore_patterns=HF_IGNORE
        )
    except Exception as err:  # network, authentication, missing repo: all end the same way
        reason = str(err).strip().splitlines()[0].rstrip(".") if str(err).strip() else ""
        raise PriorLoadError(
            f"could not download {repo_id!r} from the Hugging Face hub "
            f"({type(err).__name__}: {reason}). This machine may have no internet: download "
            f"the folder on one that has (`hf download {repo_id} --local-dir DIR`), copy it "
            "here and load it by path: solvers.priors.load('/path/to/DIR')"
        ) from err
    return load_folder(folder, **options)


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
