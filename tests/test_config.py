"""ExperimentConfig: YAML + dotted overrides, and errors that name the field before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from experiments.config import ConfigError, dump_config, load_config
from experiments.tune_config import load_tune_config

BASE = {
    "name": "unit",
    "prior": "digits",
    "data": {"dataset": "digits", "split": "test", "images": 2},
    "tasks": [{"name": "sr", "operator": "super_resolution", "params": {"factor": 4}}],
    "methods": [
        {
            "name": "daps",
            "solver": "daps",
            "preset": "pixel_hmc/{task}",
            "overrides": {"mcmc_steps": 3},
        }
    ],
    "output": "out",
}


def test_yaml_and_dotted_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(BASE))
    config = load_config(
        path,
        [
            "ensemble.particles=4",
            "ensemble.workers=2",
            "methods.daps.overrides.mcmc_steps=50",
            "methods.0.ensemble.repulsion.weight=25",
            "tasks.sr.sigma=0.01",
            "data.images=0",
        ],
    )
    assert config.ensemble.particles == 4 and config.ensemble.workers == 2
    assert config.methods[0].overrides == {"mcmc_steps": 50}
    assert config.methods[0].ensemble == {"repulsion": {"weight": 25}}
    assert config.tasks[0].sigma == 0.01 and isinstance(config.tasks[0].sigma, float)
    assert config.methods[0].preset_for(config.tasks[0]) == "pixel_hmc/super_resolution"
    dump_config(config, tmp_path / "again.yaml")
    assert load_config(tmp_path / "again.yaml") == config


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["data.imgs=3"], r"unknown field\(s\) data\.imgs; allowed in data: dataset"),
        (["data.images=many"], r"data\.images must be an integer, got 'many'"),
        (["data.dataset=cifar"], r"data\.dataset = 'cifar'; allowed: digits"),
        (["tasks.sr.operator=deblur"], r"tasks\.sr\.operator = 'deblur'; allowed: .*gaussian_blur"),
        (["methods.daps.solver=dddrm"], r"methods\.daps\.solver = 'dddrm'; allowed: cdps"),
        (
            ["methods.daps.preset=nope/{task}"],
            r"methods\.daps\.preset .* gives .nope/super_resolution.",
        ),
        (
            ["methods.daps.overrides.mcmc_steps=0"],
            r"methods\.daps\.overrides: .*mcmc_steps = 0 is out of range",
        ),
        (["methods.daps.overrides.stepsize=1"], r"has no field\(s\) stepsize"),
        (["ensemble.backend=slurm"], r"ensemble\.backend = 'slurm'; allowed: local, ray"),
        (
            ["ensemble.workers=3", "execution.images_per_batch=2"],
            r"methods\.daps\.ensemble\.workers = 3 exceeds the rows of a batch \(particles 1 x "
            r"execution\.images_per_batch 2\)",
        ),
        (["execution.images_per_batch=0"], r"execution\.images_per_batch = 0; use a positive"),
        (
            ["tasks.sr.per_image_operator=true"],
            r"tasks\.sr\.per_image_operator: super_resolution has no random parts .*inpaint_random",
        ),
        (["execution.images_per_batch=most"], r"execution\.images_per_batch = 'most'"),
        (
            ["ensemble.repulsion.strength=2"],
            r"unknown field\(s\) ensemble\.repulsion\.strength; allowed in ensemble\.repulsion",
        ),
        (
            ["methods.0.ensemble.particle=2"],
            r"unknown field\(s\) methods\.daps\.ensemble\.particle; allowed .*: particles,",
        ),
        (["ensemble.repulsion.weight=-1"], r"ensemble\.repulsion\.weight must be a number >= 0"),
        (["ensemble.pruning.keep=[2]"], r"ensemble\.pruning\.steps \[\] and keep \[2\] must have"),
        (
            ["ensemble.particles=4", "ensemble.pruning.steps=[9999]", "ensemble.pruning.keep=[2]"],
            r"methods\.daps\.ensemble\.pruning\.steps \[9999\]: .* beyond the solver's",
        ),
        (["ensemble.pruning.keep=[9]", "ensemble.pruning.steps=[1]"], r"pruning\.keep \[9\]"),
        (["metrics.lpips_net=resnet"], r"metrics\.lpips_net = 'resnet'; allowed: alex, vgg"),
        (
            ["metrics.fid_weights=w.pth", "metrics.fid_random_backbone=true"],
            r"metrics\.fid_weights and metrics\.fid_random_backbone exclude each other",
        ),
        (["metrics.fid=1"], r"metrics\.fid must be true or false"),
        (["tasks.nope.sigma=1"], r"no list item named or numbered 'nope'; items: \['sr'\]"),
        (["device=tpu"], r"device = 'tpu'; allowed: cpu, cuda"),
        (["ensemble.particles"], r"must look like field\.path=value"),
    ],
)
def test_bad_fields_are_named_before_any_work(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides, base=BASE)


def test_missing_file_and_empty_lists(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="tasks is empty"):
        load_config(None, [], base={**BASE, "tasks": []})


def test_builtin_configs_are_valid() -> None:
    configs = sorted(
        (Path(__file__).resolve().parents[1] / "experiments" / "configs").glob("*.yaml")
    )
    assert any(p.stem == "demo" for p in configs)
    assert any(p.stem.startswith("tune_") for p in configs)
    for path in configs:
        if path.stem.startswith("tune_"):  # study configs: an experiment plus a search section
            load_tune_config(path)
        else:
            load_config(path)


def test_paths_with_environment_variables_are_checked_before_a_run(monkeypatch, tmp_path) -> None:
    from experiments.config import check_paths

    root = Path(__file__).resolve().parents[1] / "experiments" / "configs"
    config = load_config(root / "daps_table1_ffhq_pixel.yaml")
    monkeypatch.setenv("DIPSWARM_DATA", str(tmp_path))
    with pytest.raises(ConfigError, match=rf"{tmp_path}/ffhq256_val\) is not a folder"):
        check_paths(config)
    (tmp_path / "ffhq256_val").mkdir()
    monkeypatch.setenv("DIPSWARM_MODELS", str(tmp_path / "models"))
    with pytest.raises(ConfigError, match=rf"names {tmp_path}/models/ffhq_10m.pt, which does not"):
        check_paths(config)


def test_cuda_without_a_cuda_device_is_refused_before_a_run(monkeypatch) -> None:
    import torch

    from experiments.config import check_paths

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = load_config(None, ["device=cuda"], base=BASE)
    with pytest.raises(ConfigError, match=r"device = 'cuda', but this machine has no CUDA"):
        check_paths(config)


def test_fid_without_inception_weights_is_refused_before_a_run(monkeypatch, tmp_path) -> None:
    from urllib.error import URLError

    import torch

    from experiments.config import check_paths

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setenv("DIPSWARM_MODELS", str(tmp_path))
    given = load_config(
        None, ["metrics.fid=true", "metrics.fid_weights=$DIPSWARM_MODELS/inception.pth"], base=BASE
    )
    with pytest.raises(ConfigError, match=rf"metrics.fid = true: .*{tmp_path}/inception.pth does"):
        check_paths(given)
    cache = load_config(None, ["metrics.fid=true"], base=BASE)
    with pytest.raises(ConfigError, match=rf"not in the torch hub cache.*{tmp_path}/torch/hub"):
        check_paths(cache)
    (tmp_path / "inception.pth").write_bytes(b"")  # only its presence is checked here
    check_paths(given)
    check_paths(
        load_config(None, ["metrics.fid=true", "metrics.fid_random_backbone=true"], base=BASE)
    )


def test_a_prior_folder_without_weights_is_refused_before_a_run(tmp_path: Path) -> None:
    from experiments.config import check_paths

    config = load_config(None, [f"prior={tmp_path}"], base=BASE)
    with pytest.raises(ConfigError, match=rf"^prior: .*{tmp_path}"):
        check_paths(config)
