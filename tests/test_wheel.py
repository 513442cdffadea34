"""hebdo as an operator installs it: the wheel `python -m build` makes holds every package,
the templates, static files, compiled catalogs, migrations and the sample feed, and once
installed in a fresh virtualenv it runs from any directory, a reader's sign-up and
confirmation included."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.deploy import image_build_inputs
from tests.support.processes import (
    Process,
    confirm_from_the_mailbox,
    http,
    sign_up_on_the_sample_page,
)
from tests.support.settings import ROOT
from tests.support.smtp import free_port

pytestmark = [pytest.mark.slow, pytest.mark.backend_neutral, pytest.mark.timeout(300)]

# What an operator's copy must hold besides the code, and where the wheel puts it.
DATA = (
    "service/templates/pages/subscribe.html",
    "service/templates/email/digest.html",
    "service/static/admin/admin.css",
    "service/static/embed/embed.js",
    "service/translations/fr/LC_MESSAGES/messages.mo",
    "service/translations/en/LC_MESSAGES/messages.mo",
    "service/migrations/env.py",
    "service/migrations/versions/0001_subscribers.py",
    "service/digest/sample/feed.xml",
)
SKIPPED = ("*.mo",)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The wheel built, as the image's build stage builds it, from a copy of exactly the files
    that stage copies (the tree itself stays clean), and a fresh virtualenv with it installed
    as pip installs it: dependencies from the index."""
    folder = tmp_path_factory.mktemp("wheel")
    source = folder / "source"
    source.mkdir()
    for name in image_build_inputs():
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns(*SKIPPED))
        else:
            shutil.copy(ROOT / name, source / name)
    # Compiled by the build, as in a clean clone (.mo files are never committed); and the
    # bytecode a developer's tree holds, which must stay out of the wheel.
    for mo in source.glob("translations/*/LC_MESSAGES/*.mo"):
        mo.unlink()
    stray = source / "service" / "__pycache__" / "stray.cpython-311.pyc"
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(folder), str(source)],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = folder.glob("hebdo-*.whl")
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(wheel)], capture_output=True, text=True
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return wheel, venv


def test_the_wheel_holds_every_package_and_every_file_hebdo_reads(
    installed: tuple[Path, Path],
) -> None:
    wheel, _venv = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {str(p.parent.relative_to(ROOT)) for p in ROOT.glob("service/**/__init__.py")}
    packages |= {"worker"}
    for package in packages:
        assert f"{package}/__init__.py" in names, package
    for path in DATA:
        assert path in names, path
    assert not [n for n in names if "__pycache__" in n or n.startswith("tests/")]


def test_installed_hebdo_runs_from_any_directory_and_signs_a_reader_up(
    installed: tuple[Path, Path],
    env: dict[str, str],
    spawn: Callable[..., Process],
    tmp_path: Path,
) -> None:
    _wheel, venv = installed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    hebdo = str(venv / "bin" / "hebdo")
    version = subprocess.run(
        [hebdo, "--version"], capture_output=True, text=True, cwd=elsewhere, check=True
    )
    assert version.stdout.strip() == "hebdo 0.1.0"
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import service; print(service.__file__)"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        check=True,
    )
    assert where.stdout.startswith(str(venv)), where.stdout

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    values = {
        **env,
        "HEBDO_BASE_URL": base,
        "HEBDO_WEB_WORKERS": "1",
        "HEBDO_WORKER_CONCURRENCY": "1",
    }
    process = spawn(
        [hebdo, "run", "--port", str(port)], values, ready="hebdo: http://", cwd=elsewhere
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            if http(f"{base}/healthz")[0] == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, process.output()[-3000:]
        time.sleep(0.2)

    # Templates and catalogs from the package: the French page, its versioned stylesheet.
    status, page = http(f"{base}/exemple")
    assert status == 200 and "Rejoignez gratuitement la communauté" in page
    login = http(f"{base}/admin/login")[1]
    stylesheet = re.search(r'href="(/static/admin/admin\.css\?v=[0-9a-f]+)"', login)
    assert stylesheet and http(base + stylesheet.group(1))[0] == 200

    sign_up_on_the_sample_page(base, "roue@exemple.fr")
    assert "Inscription confirmée" in confirm_from_the_mailbox(base, "roue@exemple.fr", process)
    # Nothing was written in the directory it ran from.
    assert not any(elsewhere.iterdir())
