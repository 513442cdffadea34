"""What the deployment files say: the files the Docker image's build stage copies."""

from __future__ import annotations

import re

from tests.support.settings import ROOT


def image_build_inputs() -> list[str]:
    """The files and folders the image's build stage copies from the repository."""
    build = re.split(r"^FROM ", (ROOT / "Dockerfile").read_text(), flags=re.M)[1]
    return [
        name for line in re.findall(r"^COPY (.+) \./?\S*$", build, re.M) for name in line.split()
    ]
