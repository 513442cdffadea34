"""The machine tools a benchmark drives (wrk, Postfix's smtp-sink and smtp-source): found on
the PATH, else installed from Debian's packages, as a fresh machine has none of them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


def ensure_tool(command: str, package: str) -> str:
    """The path of `command`, installing Debian's `package` first if it is missing."""
    found = shutil.which(command)
    if found:
        return found
    print(f"{command} not found: apt-get install -y {package}", flush=True)
    environ = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    argv = ["apt-get", "install", "-y", "-q", package]
    if subprocess.run(argv, env=environ, timeout=600).returncode != 0:
        # A new machine's package lists may be missing or stale.
        subprocess.run(["apt-get", "update", "-q"], env=environ, check=True, timeout=600)
        subprocess.run(argv, env=environ, check=True, timeout=600)
    found = shutil.which(command)
    if not found:
        sys.exit(f"{command} could not be installed (Debian package {package})")
    return found
