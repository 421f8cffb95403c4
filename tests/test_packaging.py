"""What the package installs: only the project's own import namespace, with the shipped detector and
the sample, and a declared requirement for every third-party module the code imports."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("fracture_al", "detection", "sampling", "integrations", "worker", "backend")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The wheel of the tracked files, built from a copy (setuptools builds in the source tree)."""
    source, folder = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    for name in tracked.splitlines():
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(folder), str(source)], check=True, capture_output=True, timeout=600)  # fmt: skip
    (built,) = folder.glob("fracture_al-*.whl")
    return zipfile.ZipFile(built)


def test_a_fresh_install_exposes_only_the_projects_namespace(wheel: zipfile.ZipFile, tmp_path: Path) -> None:
    target = tmp_path / "site-packages"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                    wheel.filename], check=True, capture_output=True, timeout=600)  # fmt: skip
    installed = {path.name for path in target.iterdir() if not path.name.endswith(".dist-info") and path.name != "bin"}
    assert installed == {"fracture_al"}
    names = set(wheel.namelist())
    expected = {
        "fracture_al/detection/shipped/fracture_detector.pt",
        "fracture_al/backend/app.py",
        "fracture_al/worker/jobs.py",
        "fracture_al/sample/test.json",
        "fracture_al/cli/__init__.py",
    }
    assert expected <= names
    assert not any(name.startswith("tests/") for name in names)


def test_every_third_party_import_is_a_declared_requirement() -> None:
    declared = {
        re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        for requirement in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    distributions = packages_distributions()
    imported = set()
    for package in PRODUCT:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
    third_party = {name for name in imported if name not in sys.stdlib_module_names and name not in PRODUCT}
    assert third_party, "no imports found: the scan is broken"
    undeclared = {
        name: distributions.get(name)
        for name in third_party
        if not {d.lower().replace("_", "-") for d in distributions.get(name, [name])} & declared
    }
    assert undeclared == {}
