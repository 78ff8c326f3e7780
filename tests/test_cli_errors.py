"""What ``dipswarm run`` and ``dipswarm tune`` say when something goes wrong (issue 18, items
5, 6, 7 and 13): one line naming the cause and the fix before any work, no traceback; a Ray
worker that cannot start reported by its own exception (no terminal codes, no respawn, the run
stopped); Ctrl-C ends with one line and the command that resumes, exit status 130; exit status 3
when an image failed; Ray, Ray Tune and Optuna quiet, and one dipswarm line per replaced
worker."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import ensemble
from ensemble.backends import WorkerLostError, WorkerStartError, raised_in_worker
from tests.ensemble_specs import gmm_daps_spec
from tests.test_config import BASE

ROOT = Path(__file__).resolve().parents[1]
FAST = {"annealing_steps": 3, "mcmc_steps": 2, "ode_steps": 1, "sigma_max": 20.0}
ANSI = "\x1b["

# Each case runs ``main(["run", CONFIG, *overrides])`` in one process (SCRIPT below).
SCRIPT = """
import contextlib, io, json, sys, time, traceback
from experiments.cli import main
out = {}
for name, (config, overrides) in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    began = time.perf_counter()
    with contextlib.redirect_stderr(err):
        try:
            code, message = main(["run", config, *overrides]), ""
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
            message = str(stop.code)
        except Exception:
            code, message = "exception", traceback.format_exc()
    out[name] = {"code": code, "message": message + err.getvalue(),
                 "seconds": time.perf_counter() - began}
out["imported"] = sorted(m for m in ("ray", "mlflow") if m in sys.modules)
print(json.dumps(out))
"""


def _config(folder: Path, **changes: Any) -> Path:
    path = folder / "c.yaml"
    raw = {**BASE, "output": str(folder / "out"), "tracking": {"enabled": False}, **changes}
    path.write_text(yaml.safe_dump(raw))
    return path


def test_run_errors_before_work_are_one_line(tmp_path: Path) -> None:
    config = _config(tmp_path)
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\ntasks: [1,\nmethods: 2\n")
    (tmp_path / "a_file").write_text("")
    done = tmp_path / "done"
    done.mkdir()
    (done / "results.csv").write_text("task,method,image,status\nsr,daps,digits_0000,ok\n")
    pruning = "ensemble.pruning"
    cases: dict[str, tuple[str, list[str], list[str]]] = {
        "malformed yaml": (str(broken), [], [str(broken), "line 4", "expected ',' or ']'"]),
        "missing model.pt": (
            str(config),
            [f"prior={tmp_path / 'model.pt'}"],
            ["prior", str(tmp_path / "model.pt"), "does not exist"],
        ),
        "pruning beyond the steps": (
            str(config),
            ["ensemble.particles=4", f"{pruning}.steps=[10]", f"{pruning}.keep=[2]", *_fast()],
            ["pruning.steps", "[10]", "beyond the solver's 3 steps", "[0, 2]"],
        ),
        "keep > particles": (
            str(config),
            ["ensemble.particles=2", f"{pruning}.steps=[1]", f"{pruning}.keep=[4]"],
            ["pruning.keep", "[4]", "particles = 2"],
        ),
        "operator parameter typo": (
            str(config),
            ["tasks.sr.params.factr=4"],
            ["tasks.sr.params", "factr", "parameters:", "factor"],
        ),
        "output is a file": (
            str(config),
            [f"output={tmp_path / 'a_file' / 'out'}"],
            ["output", "is a file, not a folder"],
        ),
        "results without --resume": (str(config), [f"output={done}"], ["--resume", str(done)]),
        "unreachable tracking server": (
            str(config),
            ["tracking.enabled=true", "tracking.uri=http://127.0.0.1:9"],
            ["tracking.uri = 'http://127.0.0.1:9'", "no MLflow server", "tracking.enabled=false"],
        ),
    }
    if not torch.cuda.is_available():
        cases["cuda without CUDA"] = (str(config), ["device=cuda"], ["'cuda'", "no CUDA device"])
    runs = {name: (path, overrides) for name, (path, overrides, _) in cases.items()}
    process = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(runs)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert process.returncode == 0, process.stderr
    result = json.loads(process.stdout.strip().splitlines()[-1])
    assert result.pop("imported") == []  # nothing started: no Ray, no MLflow
    for name, (_, _, expected) in cases.items():
        code, message = result[name]["code"], result[name]["message"].strip()
        assert code == 1, (name, code, message)
        assert message.startswith("dipswarm run: ") and len(message.splitlines()) == 1, message
        assert "<unicode string>" not in message
        for part in expected:
            assert part in message, (name, part, message)
        assert result[name]["seconds"] < 20, (name, result[name]["seconds"])
    assert not (tmp_path / "out").exists()


def _fast() -> list[str]:
    return [f"methods.daps.overrides.{k}={v}" for k, v in FAST.items()]


def test_exit_status_when_an_image_failed(tmp_path: Path, monkeypatch) -> None:
    from experiments import cli, runner

    def one_failed(config: Any, **_: Any) -> Path:
        output = Path(config.output)
        output.mkdir(parents=True)
        rows = [
            {"task": "sr", "method": "daps", "image": "a", "status": "ok", "psnr": 20.0},
            {"task": "sr", "method": "daps", "image": "b", "status": "failed", "error": "E"},
        ]
        with (output / "results.csv").open("w", newline="") as f:
            import csv

            writer = csv.DictWriter(f, runner.RESULT_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        return output

    monkeypatch.setattr(runner, "run_experiment", one_failed)
    assert cli.main(["run", str(_config(tmp_path)), "--no-progress"]) == cli.EXIT_IMAGES_FAILED == 3


@pytest.mark.slow
def test_ctrl_c_ends_run_with_one_line_and_the_resume_command(tmp_path: Path) -> None:
    # every test image (0 = all), so that a fast machine is still working when the signal comes
    config = _config(tmp_path, data={"dataset": "digits", "split": "test", "images": 0})
    command = ["run", str(config), *_fast(), "execution.images_per_batch=1"]
    process = subprocess.Popen(
        [sys.executable, "-m", "experiments.cli", *command, "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    began, results = time.monotonic(), tmp_path / "out" / "results.csv"
    while not results.exists() and time.monotonic() - began < 600 and process.poll() is None:
        time.sleep(0.1)  # working: the first image is written (slow on a loaded machine)
    assert results.exists(), "the run wrote no image before the time limit"
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert lines[0].startswith("dipswarm run: interrupted; finished images are kept")
    assert lines[0].endswith(f"dipswarm run {config} {' '.join(_fast())} "
                             "execution.images_per_batch=1 --no-progress --resume")  # fmt: skip


@pytest.mark.slow
def test_ctrl_c_ends_tune_quietly_with_130(tmp_path: Path) -> None:
    overrides = [
        f"output={tmp_path}",
        "search.num_samples=3",
        "gmm.instances=1",
        "gmm.particles=50",
        "gmm.reference_samples=100",
        "methods.daps_hmc.overrides.annealing_steps=400",
        "tracking.enabled=false",
    ]
    process = subprocess.Popen(
        [sys.executable, "-m", "experiments.cli", "tune", "tune_gmm", *overrides],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    assert process.stdout is not None
    seen = []
    for line in process.stdout:  # wait for the first trial to run
        seen.append(line)
        if "1 running" in line:
            break
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=120)
    text = "".join(seen) + rest
    assert process.returncode == 130, text
    for noise in (
        "Started a local Ray instance",
        "Token authentication",
        "Configuration for experiment",
        "Wrote the latest version",
        "A new study created",
        "Tuner.restore",
        "Traceback",
    ):
        assert noise not in text, (noise, text)
    assert text.rstrip().splitlines()[-1].endswith(f"tune tune_gmm {' '.join(overrides)} --resume")


def test_raised_in_worker_reads_the_exception_line() -> None:
    message = (
        "The actor died because of an error raised in its creation task, "
        "\x1b[36mray::ParticleGroup.__init__()\x1b[39m (pid=1, ip=1.2.3.4)\n"
        '  File "/x/group.py", line 36, in __init__\n'
        "    self.prior = load(spec.prior)\n"
        "                 ^^^^^^^^^^^^^^^^\n"
        "OSError: Unable to load weights from /w/unet.\n"
    )
    assert raised_in_worker(message) == "OSError: Unable to load weights from /w/unet."


@pytest.mark.ray
def test_a_worker_that_cannot_start_is_not_a_lost_worker(ray_session) -> None:
    from solvers.priors.gmm import mcgdiff_problem

    problem = mcgdiff_problem(8, 1, 0)
    spec = gmm_daps_spec(
        problem, prior={"name": "gmm", "d": 7}, backend="ray", workers=2, cpus_per_worker=0.5
    )
    run = ensemble.Ensemble(spec)
    with pytest.raises(WorkerStartError) as caught:
        run.run()
    message = str(caught.value)
    assert not isinstance(caught.value, WorkerLostError) and run.restarts == 0
    assert message.startswith("a Ray worker could not start: solvers.priors.base.PriorInputError")
    assert message.endswith("PriorInputError: mcgdiff: d must be a positive even number, got 7")
    assert ANSI not in message
    assert len(message.splitlines()) == 1


@pytest.mark.slow
@pytest.mark.ray
def test_run_stops_at_a_worker_that_cannot_start(ray_session, tmp_path: Path) -> None:
    from experiments.config import load_config
    from experiments.runner import run_experiment

    prior = tmp_path / "prior"  # a diffusers folder whose weights cannot be read
    for part, name in (("unet", "config.json"), ("scheduler", "scheduler_config.json")):
        (prior / part).mkdir(parents=True)
        (prior / part / name).write_text("{}")
    (prior / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    config = load_config(
        _config(tmp_path),
        [
            f"prior={prior}",
            "ensemble.backend=ray",
            "ensemble.particles=2",
            "ensemble.cpus_per_worker=0.5",
            "execution.images_per_batch=1",
            "metrics.lpips=false",
        ],
    )
    with pytest.raises(WorkerStartError, match="could not start: OSError: Unable to load"):
        run_experiment(config, progress=False)
    log = (tmp_path / "out" / "errors.log").read_text()
    assert log.count("--- sr / daps") == 1 and ANSI not in log  # one attempt, not one per image
    results = tmp_path / "out" / "results.csv"
    assert not results.exists() or "failed" not in results.read_text()


@pytest.mark.slow
@pytest.mark.ray
def test_a_replaced_worker_is_one_dipswarm_line(ray_session, caplog, capsys) -> None:
    from ensemble.ray_runtime import _drop_worker_died_notices
    from solvers.priors.gmm import mcgdiff_problem

    spec = gmm_daps_spec(
        mcgdiff_problem(8, 1, 0), backend="ray", workers=2, cpus_per_worker=0.5, checkpoint_every=3
    )

    def kill(k: int, run: ensemble.Ensemble) -> None:
        if k == 5 and run.restarts == 0:
            ray_session.kill(run.backend.handles[1])

    with caplog.at_level(logging.WARNING, logger="dipswarm.ensemble"):
        ensemble.Ensemble(spec).run(callback=kill)
    lines = [r.getMessage() for r in caplog.records if r.name == "dipswarm.ensemble"]
    assert len(lines) == 1 and lines[0].startswith("dipswarm: Ray worker 1 of 2 died at step 5")
    assert "continuing from step 3" in lines[0]

    from ray._private import worker

    _drop_worker_died_notices()
    capsys.readouterr()
    notice = "A worker died or was killed while executing a task by an unexpected system error."
    worker.print_to_stdstream({"lines": [notice], "pid": "raylet", "is_err": False}, False)
    worker.print_to_stdstream({"lines": ["other news"], "pid": "raylet", "is_err": False}, False)
    printed = capsys.readouterr().out
    assert "A worker died" not in printed and "other news" in printed
