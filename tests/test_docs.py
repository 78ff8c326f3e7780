"""The project's documentation: docs/ builds strictly, and nothing cites material outside it.

``mkdocs build --strict`` fails on a broken link, a page missing from the navigation, an API
object (``::: name``) that does not exist and a table marker naming an unknown solver or
operator (docs/hooks.py).
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", "site", "build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache"}
SUFFIXES = {".py", ".yaml", ".yml", ".md", ".toml", ".cfg", ".txt"}

# Material that does not ship with dipswarm; code and docs cite papers and docs/ pages instead.
# Written in pieces so that this file does not match itself.
OUTSIDE = re.compile(
    "|".join(
        [
            r"DESIGN" + r"\.md",
            r"\breference/\w+\.md",
            r"\b(?:peers|platform|algorithms)" + r"\.md",
            r"\.\./" + r"shared",
            r"\bshared/(?:reference|seeds)",
            r"\bseeds" + r"/",
            r"(?i:\bseed\s+00\d\b)",  # the numbered seed documents
        ]
    )
)
# Outside docs/ (where pages link each other by relative path), a bare page name of that
# material is a citation of it too.
BARE = re.compile(r"(?<![\w/])(?:gmm_benchmark|operators|models)" + r"\.md")
DOCS_LINK = re.compile(r"\bdocs/[\w/.-]+?\.md\b")

# Pages that code and other pages cite by path.
PAGES = [
    "index.md",
    "architecture.md",
    "configuration.md",
    "operators.md",
    "priors.md",
    "evaluation.md",
    "ensemble.md",
    "search.md",
    "gmm_benchmark.md",
    "benchmarks.md",
    "cluster.md",
    "solvers/index.md",
    "solvers/dps.md",
    "solvers/daps.md",
    "solvers/daps_opt.md",
    "solvers/resample.md",
    "solvers/noise_langevin.md",
    "solvers/cdps.md",
    "solvers/fps_smc.md",
]


def _repo_files() -> list[Path]:
    files = []
    for path in ROOT.rglob("*"):
        parts = path.relative_to(ROOT).parts
        if any(p in SKIP_DIRS or p.endswith(".egg-info") for p in parts):
            continue
        if path.is_file() and path.suffix in SUFFIXES:
            files.append(path)
    return sorted(files)


@pytest.mark.slow
def test_docs_build_strictly(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # no end-of-life banner
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    for page in PAGES:
        assert (tmp_path / page.replace(".md", ".html")).is_file(), page
    # The generated tables and the API reference rendered (not left as markers).
    daps = (tmp_path / "solvers" / "daps.html").read_text()
    assert "<!-- hyperparameters" not in daps and "annealing_steps" in daps
    assert 'id="solvers.build"' in (tmp_path / "api" / "solvers.html").read_text()


def test_nothing_cites_material_outside_the_repository() -> None:
    this = Path(__file__).resolve()
    hits = []
    for path in _repo_files():
        if path == this:
            continue
        in_code = path.relative_to(ROOT).parts[0] != "docs" and path.name != "mkdocs.yml"
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line) or (in_code and BARE.search(line)):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not hits, "cite a paper or a docs/ page instead:\n" + "\n".join(hits)


def test_cited_docs_pages_exist() -> None:
    for page in PAGES:
        assert (ROOT / "docs" / page).is_file(), page
    missing = []
    for path in _repo_files():
        if path.parts[-2:] == ("tests", "test_docs.py"):
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for link in DOCS_LINK.findall(line):
                if not (ROOT / link).is_file():
                    missing.append(f"{path.relative_to(ROOT)}:{number}: {link}")
    assert not missing, "these docs pages do not exist:\n" + "\n".join(missing)


def _config_fields(cls: type, where: str) -> list[str]:
    """Dotted paths of every field of a config section class, nested sections included."""
    names = getattr(cls, "FIELDS", None)
    if names is not None:  # a section that reads its own mapping (methods[])
        return [f"{where}{name}" for name in names]
    hints = typing.get_type_hints(cls)
    paths = []
    for f in dataclasses.fields(cls):
        paths.append(f"{where}{f.name}")
        inner = [hints[f.name], *typing.get_args(hints[f.name])]
        for option in inner:
            if dataclasses.is_dataclass(option):
                paths += _config_fields(option, f"{where}{f.name}.")
    return paths


def test_configuration_page_lists_every_field() -> None:
    from experiments.config import ExperimentConfig

    page = (ROOT / "docs" / "configuration.md").read_text()
    missing = [
        path
        for path in _config_fields(ExperimentConfig, "")
        if f"`{path.rsplit('.', 1)[-1]}`" not in page
    ]
    assert not missing, f"docs/configuration.md does not describe: {missing}"
