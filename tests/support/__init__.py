"""What the tests share: real components to run against (an SMTP server, processes, a
browser), rows to start from, and what a reader or an admin does. Fixtures that build them
per test live in conftest.py; test modules import these helpers from here, never from
conftest.py or from each other."""

import os

import pytest

# CI must exercise every real component: what a test needs and the machine lacks fails it
# there (CI=true, as .ci/run sets), and skips it elsewhere.
IN_CI = os.environ.get("CI", "").lower() == "true"


def missing(what: str, *, module: bool = False) -> None:
    """Skip (the module, with `module`), or fail under CI=true, because `what`."""
    if IN_CI:
        pytest.fail(f"CI=true but {what}", pytrace=False)
    pytest.skip(what, allow_module_level=module)
