"""The `hebdo` command: thin command groups over the domain.

`main` is the entry point (the console script); the app factory registers the command
groups on `app.cli` through `init_app`, so `app.test_cli_runner()` reaches them too.
`hebdo doctor` sits on the entry point itself: it must run, and say what is wrong, when
the app cannot even be built.
"""

from __future__ import annotations

from flask import Flask

from service.cli import admin, complaints, digest, inbound, run


def init_app(app: Flask) -> None:
    """Register every command group on the app's CLI."""
    for command in (
        *run.COMMANDS,
        *digest.COMMANDS,
        *admin.COMMANDS,
        *complaints.COMMANDS,
        *inbound.COMMANDS,
    ):
        app.cli.add_command(command)
