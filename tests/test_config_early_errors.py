"""A misspelt prior, solver, preset, operator parameter or dataset stops ``dipswarm run``
before any work: one line naming the field and the choices, no traceback, and neither Ray nor
MLflow imported (so no worker started and no tracking store created)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.test_config import BASE

CASES = {
    "prior": (["prior=digitz"], ["prior", "'digitz'", "digits"]),
    "solver": (["methods.daps.solver=dapz"], ["methods.daps.solver = 'dapz'", "allowed:", "dps"]),
    "preset": (
        ["methods.daps.preset=pixel_hcm/{task}"],
        ["methods.daps.preset", "pixel_hcm/super_resolution", "presets:", "pixel_hmc/"],
    ),
    "operator parameter": (
        ["tasks.sr.params.factr=4"],
        ["tasks.sr.params", "unknown parameter(s) factr", "parameters:", "factor"],
    ),
    "dataset": (["data.dataset=digitz"], ["data.dataset = 'digitz'", "allowed:", "digits"]),
}

SCRIPT = """
import contextlib, io, json, sys
from experiments.cli import main
out = {}
for name, (config, overrides) in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main(["run", config, *overrides])
            out[name] = {"code": 0, "message": ""}
        except SystemExit as stop:
            out[name] = {"code": stop.code if isinstance(stop.code, int) else 1,
                         "message": str(stop.code) + err.getvalue()}
out["imported"] = sorted(m for m in ("ray", "mlflow") if m in sys.modules)
print(json.dumps(out))
"""


def test_misspelt_specs_fail_before_ray_or_mlflow_start(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    output = tmp_path / "out"
    config.write_text(yaml.safe_dump({**BASE, "output": str(output)}))
    cases = {name: (str(config), overrides) for name, (overrides, _) in CASES.items()}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result.pop("imported") == []  # no Ray, no MLflow: nothing started
    for name, (_, expected) in CASES.items():
        code, message = result[name]["code"], result[name]["message"]
        assert code != 0, name
        assert message.startswith("dipswarm run: "), (name, message)
        assert "Traceback" not in message and len(message.strip().splitlines()) == 1, message
        for part in expected:
            assert part in message, (name, part, message)
    assert not output.exists()  # no output folder, results file or tracking store
