"""`hebdo config`: the settings in force (secrets masked), or the reference of every
setting, which docs/configuration.md is."""

from __future__ import annotations

import json

import click

from service.config import REFERENCE_FILE, load_settings, reference_markdown


@click.command("config")
@click.option(
    "--reference",
    is_flag=True,
    help=f"Print the Markdown reference of every setting instead ({REFERENCE_FILE}).",
)
def config_command(reference: bool) -> None:
    """Print the settings in force (secrets masked), or the reference of every setting."""
    if reference:
        click.echo(reference_markdown(), nl=False)
        return
    click.echo(json.dumps(load_settings().public(), indent=2, default=str))
