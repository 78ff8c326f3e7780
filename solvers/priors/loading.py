"""``resolve(spec)`` and ``load(spec)``: one entry point for every prior (docs/priors.md).

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
  ``cfg_scale``, ``ode_steps`` (``diffusers_loaders.LoadOptions``).

``resolve`` finds what a spec names and checks it (the name, the folder's files, the option
names) without reading weights or importing diffusers, transformers or huggingface_hub, so a
config can be checked before any work starts; ``load`` is ``resolve(spec).load()``, so the two
cannot disagree.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from solvers.priors.base import Prior, PriorLoadError, PriorSpecError
from solvers.priors.diffusers_loaders import LoadOptions, load_diffusers
from solvers.priors.folders import META_FILE, inspect_folder, read_meta

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
HF_PREFIX = "hf:"
GUIDED_DIFFUSION_SUFFIXES = (".pt", ".pth")
SOURCE_KINDS = ("gmm", "folder", "checkpoint", "hub")
# Hub downloads: configs, tokenizer files and full-precision safetensors of the components only
# (no root-level single-file checkpoints, no pickles, no fp16/non-EMA duplicates).
HF_ALLOW = ["model_index.json", META_FILE, "*/*.json", "*/*.txt", "*/*.safetensors"]
HF_IGNORE = ["*.fp16.*", "*.non_ema.*", "safety_checker/*", "feature_extractor/*"]


@dataclass(frozen=True)
class PriorSource:
    """What a prior spec names, found by ``resolve`` without reading weights.

    ``kind`` is one of ``SOURCE_KINDS``: ``gmm`` (the analytic mixture), ``folder`` (a
    diffusers-format folder, built-in or local; ``family`` is its loader family and ``shape``
    the sample shape its ``dipswarm_prior.json`` promises, if any), ``checkpoint`` (a
    guided-diffusion ``.pt`` file) or ``hub`` (``hf:<repo-id>``, downloaded by ``load``).
    ``options`` are the loader options: a folder's defaults, overridden by the spec's.
    """

    spec: str
    kind: str
    path: Path | None = None
    family: str | None = None
    shape: tuple[int, ...] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def load(self) -> Prior:
        """Build the prior (reads the weights; imports diffusers for folders)."""
        if self.kind == "gmm":
            from solvers.priors.gmm import default_gmm_prior

            return default_gmm_prior(**self.options)
        if self.kind == "hub":
            return _download(self.spec.removeprefix(HF_PREFIX), **self.options)
        assert self.path is not None
        if self.kind == "checkpoint":
            from solvers.priors.guided_diffusion import load_guided_diffusion

            return load_guided_diffusion(self.path, **self.options)
        prior = load_diffusers(self.path, self.family, **self.options)
        if self.shape is not None and tuple(prior.shape) != self.shape:
            raise PriorLoadError(
                f"{self.path}: the model samples shape {tuple(prior.shape)} but {META_FILE} "
                f"says {self.shape}"
            )
        return prior


def available() -> list[str]:
    """Names ``load`` accepts without a path: ``"gmm"`` and the built-in weight folders."""
    if not WEIGHTS_DIR.is_dir():
        return ["gmm"]
    return ["gmm", *sorted(p.name for p in WEIGHTS_DIR.iterdir() if (p / META_FILE).is_file())]


def load(spec: str | Mapping[str, Any], **options: Any) -> Prior:
    """The Prior that ``spec`` names (see the module docstring); ``options`` go to its loader."""
    return resolve(spec, **options).load()


def resolve(spec: str | Mapping[str, Any], **options: Any) -> PriorSource:
    """Check ``spec`` (and loader ``options``) without reading weights: a ``PriorSource``, or a
    ``PriorSpecError`` naming the spec, the problem and the choices."""
    if isinstance(spec, Mapping):
        keys = [key for key in ("name", "path") if key in spec]
        if len(keys) != 1:
            raise PriorSpecError(
                f"a dict prior spec needs exactly one of 'name' or 'path', got {dict(spec)}"
            )
        options = {**{k: v for k, v in spec.items() if k != keys[0]}, **options}
        target = spec[keys[0]]
        if keys[0] == "path":
            return _resolve_path(str(target), Path(target).expanduser(), options)
        spec = target
    if not isinstance(spec, str) or not spec:
        raise PriorSpecError(f"a prior spec must be a non-empty string or a dict, got {spec!r}")
    if spec == "gmm":
        from solvers.priors.gmm import default_gmm_prior

        _check_names(spec, options, _keywords(default_gmm_prior))
        return PriorSource(spec, "gmm", options=options)
    if spec.startswith(HF_PREFIX):
        if not spec.removeprefix(HF_PREFIX):
            raise PriorSpecError(
                f"prior {spec!r}: empty repository id; use '{HF_PREFIX}<owner>/<name>'"
            )
        _check_names(spec, options, ["revision", *LoadOptions.names()])
        return PriorSource(spec, "hub", options=options)
    names = available()
    if spec in names:
        return _resolve_path(spec, WEIGHTS_DIR / spec, options)
    path = Path(spec).expanduser()
    if path.exists() or any(sep in spec for sep in ("/", "\\")) or spec.startswith((".", "~")):
        return _resolve_path(spec, path, options)
    close = difflib.get_close_matches(spec, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise PriorSpecError(
        f"prior {spec!r} is not a built-in prior ({', '.join(names)}), an existing folder, a "
        f"guided-diffusion checkpoint ({'/'.join(GUIDED_DIFFUSION_SUFFIXES)}) or "
        f"'{HF_PREFIX}<repo-id>'{hint}"
    )


def _resolve_path(spec: str, path: Path, options: dict[str, Any]) -> PriorSource:
    """A local folder or guided-diffusion checkpoint, checked file by file."""
    if not path.exists():
        raise PriorSpecError(f"prior {spec!r}: no such directory: {path.absolute()}")
    if path.is_file() and path.suffix in GUIDED_DIFFUSION_SUFFIXES:
        from solvers.priors.guided_diffusion import load_guided_diffusion, resolve_config

        _check_names(spec, options, _keywords(load_guided_diffusion))
        resolve_config(options.get("config", "ffhq_256"))
        return PriorSource(spec, "checkpoint", path, options=options)
    if not path.is_dir():
        raise PriorSpecError(
            f"prior {spec!r}: {path} is a file; expected a diffusers-format folder "
            "(model_index.json or unet/ + scheduler/ subfolders) or a guided-diffusion "
            "checkpoint (.pt, e.g. ffhq_10m.pt)"
        )
    try:
        meta = read_meta(path)
        family = inspect_folder(path, None if meta is None else meta.kind)
        if meta is not None:
            options = {**meta.options, **options}
        LoadOptions.for_kind(family, options)
    except PriorLoadError as err:
        raise PriorSpecError(f"prior {spec!r}: {err}") from err
    shape = None if meta is None else meta.shape
    return PriorSource(spec, "folder", path, family, shape, options)


def _keywords(loader: Callable[..., Any]) -> list[str]:
    """The options a loader takes: its parameters other than ``path``."""
    return [name for name in inspect.signature(loader).parameters if name != "path"]


def _check_names(spec: str, options: Mapping[str, Any], accepted: list[str]) -> None:
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise PriorSpecError(
            f"unknown option(s) {unknown} for prior {spec!r}; accepted: {accepted}"
        )


def _download(repo_id: str, revision: str | None = None, **options: Any) -> Prior:
    """Download ``repo_id`` from the Hugging Face hub (needs internet), then load the folder."""
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
    return _resolve_path(f"{HF_PREFIX}{repo_id}", Path(folder), options).load()
