"""`hebdo`, the console script: Flask's command line on hebdo's app, its version, and
configuration errors as one clear line."""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import click
from flask.cli import FlaskGroup, routes_command, shell_command
from flask_babel import gettext as _

from service import create_app
from service.cli.config import config_command
from service.cli.doctor import doctor_command
from service.config import ConfigError


def hebdo_version() -> str:
    """The installed distribution's version (a checkout that was never installed has none)."""
    try:
        return version("hebdo")
    except PackageNotFoundError:
        return "unknown (not installed)"


class HebdoGroup(FlaskGroup):
    """Flask's CLI on hebdo's app, with configuration errors shown as one clear line."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, **kwargs)
        except ConfigError as exc:
            click.echo(_("hebdo: configuration error: %(error)s", error=exc), err=True)
            sys.exit(2)


main = HebdoGroup(
    name="hebdo",
    create_app=create_app,
    add_default_commands=False,
    # hebdo's own version, not Flask's and Werkzeug's.
    add_version_option=False,
    set_debug_flag=False,
    load_dotenv=False,
    help="hebdo: newsletter subscriptions and weekly digest.",
)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"hebdo {hebdo_version()}")
        ctx.exit()


main.params.append(
    click.Option(
        ["--version"],
        is_flag=True,
        expose_value=False,
        is_eager=True,
        help="Show hebdo's version and exit.",
        callback=_print_version,
    )
)
main.add_command(shell_command)
main.add_command(routes_command)
# On the group, not the app: they must run (and say what is wrong) when the app cannot load.
main.add_command(doctor_command)
main.add_command(config_command)


if __name__ == "__main__":
    main()
