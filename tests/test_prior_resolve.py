"""``solvers.priors.resolve``: every spec ``load`` accepts is checked without reading weights."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from solvers.priors import PriorSource, PriorSpecError, available, load, resolve
from solvers.priors.loading import META_FILE, WEIGHTS_DIR

SHIPPED = [name for name in available() if name != "gmm"]


@pytest.fixture
def pixel_folder(tmp_path: Path) -> Path:
    """A copy of the shipped pixel prior, free to break."""
    return shutil.copytree(WEIGHTS_DIR / "digits", tmp_path / "digits_copy")


def test_shipped_priors_are_listed() -> None:
    assert {"digits", "digits_latent", "faces"} <= set(SHIPPED)


def test_misspelt_name_names_the_spec_and_the_choices() -> None:
    with pytest.raises(PriorSpecError) as info:
        resolve("digitz")
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "'digitz'" in message and "did you mean 'digits'?" in message
    assert all(name in message for name in available()) and "hf:<repo-id>" in message
    with pytest.raises(PriorSpecError, match=re.escape(message)):
        load("digitz")  # load goes through resolve: the same error


@pytest.mark.parametrize("spec", ["", 3, {"name": "digits", "path": "x"}, {"ode_steps": 2}])
def test_malformed_specs_fail(spec: object) -> None:
    with pytest.raises(PriorSpecError, match="spec"):
        resolve(spec)  # type: ignore[arg-type]


def test_missing_folder_names_its_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    for spec in (str(missing), {"path": missing}):
        with pytest.raises(PriorSpecError, match=re.escape(str(missing))):
            resolve(spec)


def test_folder_without_weights_fails(pixel_folder: Path) -> None:
    (pixel_folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(
        PriorSpecError, match=re.escape(f"no *.safetensors weights in {pixel_folder / 'unet'}")
    ):
        resolve(str(pixel_folder))


def test_folder_without_unet_config_fails(pixel_folder: Path) -> None:
    (pixel_folder / "unet" / "config.json").unlink()
    with pytest.raises(PriorSpecError, match=re.escape(str(pixel_folder / "unet" / "config.json"))):
        resolve(str(pixel_folder))


def test_latent_folder_without_autoencoder_weights_fails(tmp_path: Path) -> None:
    folder = shutil.copytree(WEIGHTS_DIR / "digits_latent", tmp_path / "latent")
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(PriorSpecError, match=re.escape(str(folder / "vae"))):
        resolve(str(folder))


def test_a_folder_without_the_pipeline_layout_fails(pixel_folder: Path) -> None:
    with pytest.raises(PriorSpecError, match="not a diffusers pipeline folder"):
        resolve(str(pixel_folder / "unet"))


def test_bad_metadata_kind_fails(pixel_folder: Path) -> None:
    (pixel_folder / META_FILE).write_text(json.dumps({"kind": "pixle", "shape": [1, 32, 32]}))
    with pytest.raises(PriorSpecError, match="'pixle' is not one of pixel, latent, sd"):
        resolve(str(pixel_folder))


def test_unknown_options_fail_with_the_accepted_ones(tmp_path: Path) -> None:
    with pytest.raises(PriorSpecError, match=r"\['prompt'\].*'pixel'.*ode_steps"):
        resolve("digits", prompt="a cat")
    with pytest.raises(PriorSpecError, match=r"\['dim'\].*'gmm'.*latent"):
        resolve({"name": "gmm", "dim": 8})
    with pytest.raises(PriorSpecError, match=r"\['ode_steps'\].*config"):
        (tmp_path / "x.pt").touch()
        resolve(str(tmp_path / "x.pt"), ode_steps=3)
    with pytest.raises(PriorSpecError, match=r"\['colour'\].*revision"):
        resolve("hf:owner/model", colour=1)
    with pytest.raises(PriorSpecError, match="empty repository id"):
        resolve("hf:")


def test_each_kind_resolves(pixel_folder: Path, tmp_path: Path) -> None:
    assert resolve("gmm", d=8) == PriorSource("gmm", "gmm", options={"d": 8})
    for name in SHIPPED:
        source = resolve(name)
        meta = json.loads((WEIGHTS_DIR / name / META_FILE).read_text())
        assert (source.kind, source.path, source.family) == (
            "folder",
            WEIGHTS_DIR / name,
            meta["kind"],
        )
        assert source.shape == tuple(meta["shape"]) and dict(source.options) == meta["options"]
    assert resolve({"name": "digits", "ode_steps": 2}).options == {
        "sigma_max": 20.0,
        "ode_steps": 2,
    }
    (pixel_folder / META_FILE).unlink()  # a bare diffusers folder: the family is detected
    bare = resolve({"path": pixel_folder})
    assert (bare.kind, bare.family, bare.shape, dict(bare.options)) == ("folder", "pixel", None, {})
    checkpoint = tmp_path / "ffhq_10m.pt"
    checkpoint.touch()  # resolve does not read it
    assert resolve(str(checkpoint)) == PriorSource(str(checkpoint), "checkpoint", checkpoint)
    with pytest.raises(ValueError, match="imagenet_256_uncond"):
        resolve(str(checkpoint), config="ffhq_512")
    assert resolve("hf:owner/model", revision="main").kind == "hub"


def test_resolve_imports_no_model_library() -> None:
    code = (
        "import sys\n"
        "from solvers.priors import resolve\n"
        "for spec in ('gmm', 'digits', 'digits_latent', 'faces', 'hf:owner/model'):\n"
        "    resolve(spec)\n"
        "libraries = ('diffusers', 'transformers', 'huggingface_hub')\n"
        "print(sorted(m for m in libraries if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
