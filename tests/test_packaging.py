"""hebdo as an operator installs and starts it: every package it imports is one it declares,
and every entry point a process starts from starts."""

from __future__ import annotations

import ast
import importlib
import json
import re
import runpy
import sys
import tomllib
from importlib.metadata import packages_distributions, version
from pathlib import Path

import pytest

from service.extensions import db
from tests.support.settings import ROOT


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[\[=<>!~ ;]", spec, maxsplit=1)[0] for spec in project["dependencies"]}
    return {name.lower().replace("_", "-") for name in names}


def _imported_top_level(folder: Path) -> set[str]:
    found: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"service", "worker"}


@pytest.mark.slow
def test_every_imported_package_is_a_declared_dependency() -> None:
    """A package the code imports but does not declare works today only because another
    package happens to bring it; the next upgrade of that one breaks the install."""
    distributions = packages_distributions()
    declared = _declared()
    missing = {}
    for module in _imported_top_level(ROOT / "service") | _imported_top_level(ROOT / "worker"):
        names = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if not names & declared:
            missing[module] = sorted(names)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_every_entry_point_starts(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a process starts from, in this process: `python -m service.cli` (the console
    script without its wrapper), `python -m service.web.api` (the OpenAPI document) and
    gunicorn's `service.wsgi:app`."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "argv", ["hebdo", "--version"])
    with pytest.raises(SystemExit) as stopped:
        runpy.run_module("service.cli", run_name="__main__")
    assert stopped.value.code == 0
    assert capsys.readouterr().out == f"hebdo {version('hebdo')}\n"

    runpy.run_module("service.web.api", run_name="__main__")
    assert json.loads(capsys.readouterr().out)["openapi"].startswith("3.1")

    sys.modules.pop("service.wsgi", None)
    wsgi = importlib.import_module("service.wsgi")
    assert wsgi.app.config["SETTINGS"].data_dir == Path(env["HEBDO_DATA_DIR"])
    with wsgi.app.app_context():
        db.engine.dispose()
