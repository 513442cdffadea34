"""The README is the front door and docs/ the manual: the README stays short and starts with
the two set-up commands, its module map is in step with the tree, every relative link in the
README and docs/ leads to a file (and a heading) that exists, and nothing in the repository
refers to documents outside it."""

from __future__ import annotations

import re
import shutil
import subprocess
import unicodedata
from pathlib import Path

import pytest

from tests.support.settings import ROOT

README = ROOT / "README.md"
MANUAL = [README, *sorted((ROOT / "docs").glob("*.md"))]

# The top-level folders the module map must name, besides every Python package.
TOP_LEVEL_FOLDERS = (
    "templates/",
    "static/",
    "translations/",
    "migrations/",
    "tests/",
    "bench/",
    "docs/",
    "deploy/",
)
# The two commands a newcomer runs, exactly as .ci/run extracts the second one.
RUN_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/hebdo run"
TEST_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/pytest"


def _without_fences(markdown: str) -> str:
    """The text outside fenced code blocks."""
    return re.sub(r"^(`{3,}|~{3,}).*?^\1[ \t]*$", "", markdown, flags=re.M | re.S)


def _without_code(markdown: str) -> str:
    """The text outside fenced code blocks and inline code spans."""
    return re.sub(r"(`+).+?\1", "", _without_fences(markdown))


def _section(markdown: str, heading: str) -> str:
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    assert match, f"README.md has no '## {heading}' section"
    return match.group(1)


def test_the_readme_is_short() -> None:
    size = README.stat().st_size
    assert size <= 20_000, f"README.md is {size:,} bytes: move what is not the front door to docs/"


def test_the_readme_starts_with_the_two_set_up_commands() -> None:
    """The first ```sh block runs the service, the second the tests (.ci/run runs that one);
    both byte for byte as a newcomer copies them."""
    blocks = re.findall(r"^```sh\n(.*?)^```$", README.read_text(), re.M | re.S)
    assert blocks[:2] == [RUN_COMMAND + "\n", TEST_COMMAND + "\n"]


def _module_map() -> list[str]:
    """The paths in the first column of the README's module map (a Markdown table)."""
    rows = re.findall(r"^\| `([^`]+)` \|", _section(README.read_text(), "Module map"), re.M)
    assert rows, "the module map has no rows of the form | `path` | … |"
    return rows


def test_the_module_map_names_every_package_and_top_level_folder() -> None:
    named = {path.rstrip("/") for path in _module_map()}
    packages = {
        init.parent.relative_to(ROOT).as_posix()
        for top in ("service", "worker")
        for init in (ROOT / top).glob("**/__init__.py")
    }
    expected = packages | {folder.rstrip("/") for folder in TOP_LEVEL_FOLDERS}
    missing = sorted(expected - named)
    assert not missing, f"the README's module map does not name: {missing}"


def test_every_path_in_the_module_map_exists() -> None:
    for path in _module_map():
        target = ROOT / path
        assert target.exists(), f"the module map names {path}, which does not exist"
        assert target.is_dir() == path.endswith("/"), f"{path}: folders end with /, files do not"


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in ("L", "M", "N"))
    return kept.replace(" ", "-")


def _anchors(markdown: str) -> set[str]:
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", _without_fences(markdown), re.M):
        slug = base = _slug(heading)
        number = 0
        while slug in found:
            number += 1
            slug = f"{base}-{number}"
        found.add(slug)
    return found


def _links(markdown: str) -> list[str]:
    return re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", _without_code(markdown))


@pytest.mark.parametrize("page", MANUAL, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_leads_somewhere(page: Path) -> None:
    broken = []
    for link in _links(page.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", link, re.I):
            continue  # http:, https:, mailto:
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        inside = target.exists() and ROOT in (target, *target.parents)
        if not inside or (
            anchor and target.suffix == ".md" and anchor not in _anchors(target.read_text())
        ):
            broken.append(link)
    assert not broken, f"{page.relative_to(ROOT)}: links to nothing: {broken}"


def test_no_tracked_file_refers_to_documents_outside_the_repository() -> None:
    """Facts the project needs are restated where they are used, never a pointer to a file
    outside the repository (the strings are assembled so this file does not match itself)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30
    ).stdout.split(b"\0")
    outside = [b"KNOWN-" + b"TRAPS", b"../" + b"shared", b"/work/" + b"shared"]
    found = []
    for name in filter(None, listed):
        path = ROOT / name.decode()
        if path.is_file():
            content = path.read_bytes()
            found += [f"{name.decode()}: {o.decode()}" for o in outside if o in content]
    assert not found, f"references to documents outside the repository: {found}"
