"""`hebdo`, the console script: Flask's command line on hebdo's app, its version, and
configuration and database errors as one clear line."""

from __future__ import annotations

import difflib
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import click
from flask.cli import FlaskGroup, routes_command, shell_command
from flask_babel import gettext as _
from sqlalchemy.exc import DBAPIError

from service import create_app
from service.cli.config import config_command
from service.cli.doctor import doctor_command
from service.config import ConfigError, load_settings

# Flask's own options (--env-file, --app, --debug): hebdo reads HEBDO_* settings only and
# always runs its own app, so they would only mislead in `hebdo --help`.
FLASK_OPTIONS = ("env_file", "app", "debug")


def hebdo_version() -> str:
    """The installed distribution's version (a checkout that was never installed has none)."""
    try:
        return version("hebdo")
    except PackageNotFoundError:
        return "unknown (not installed)"


def database_error_line(exc: DBAPIError) -> str:
    """One line for a database that cannot serve hebdo: which database, what is wrong, what
    to do. A missing table means a database that was never migrated, most often a new
    `./var` made by a command run from another folder than `hebdo run`'s."""
    try:
        settings = load_settings()
        database = str(settings.public()["database_url"])
        folder = str(settings.data_dir)
    except ConfigError:
        database = folder = "?"
    reason = str(exc.orig).strip()
    if "no such table" in reason or "UndefinedTable" in type(exc.orig).__name__:
        return _(
            "hebdo: the database %(database)s has no hebdo tables: run `hebdo db upgrade` to "
            "create them, or set HEBDO_DATA_DIR to the folder `hebdo run` uses (this one is "
            "%(folder)s)",
            database=database,
            folder=folder,
        )
    first = reason.splitlines()[0] if reason else type(exc.orig).__name__
    return _(
        "hebdo: cannot use the database %(database)s: %(reason)s; check HEBDO_DATABASE_URL "
        "and that the database server runs and holds that database",
        database=database,
        reason=first.removeprefix("connection failed: "),
    )


class HebdoGroup(FlaskGroup):
    """Flask's CLI on hebdo's app, with configuration and database errors shown as one
    clear line, and a guess for a mistyped command."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, **kwargs)
        except ConfigError as exc:
            click.echo(_("hebdo: configuration error: %(error)s", error=exc), err=True)
            sys.exit(2)
        except DBAPIError as exc:
            # The engine hides the statement's parameters (a password hash, an address);
            # the traceback would still be noise to someone who only has to migrate.
            click.echo(database_error_line(exc), err=True)
            sys.exit(2)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.NoSuchCommand as exc:
            # click guesses from the group's own commands only; most of hebdo's are the app's.
            close = difflib.get_close_matches(exc.command_name, self.list_commands(ctx), n=1)
            if not close:
                raise
            raise click.UsageError(
                _(
                    "No such command %(name)s. Did you mean %(guess)s?",
                    name=repr(exc.command_name),
                    guess=repr(close[0]),
                ),
                ctx,
            ) from None


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
main.params = [p for p in main.params if p.name not in FLASK_OPTIONS]


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
