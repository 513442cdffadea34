"""`hebdo admin create-user|set-password|users` and `hebdo admin token …`: accounts for the
admin area and the API."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import click
from flask.cli import AppGroup
from flask_babel import gettext as _

from service.admin import accounts, apitokens
from service.models import AdminRole


def _now() -> datetime:
    return datetime.now(UTC)


def _fail(message: str) -> None:
    click.echo(_("error: %(message)s", message=message), err=True)
    sys.exit(1)


@click.group("admin", cls=AppGroup)
def admin_group() -> None:
    """Administration: admin users and API tokens."""


@admin_group.group("token")
def token_group() -> None:
    """Bearer tokens for the API (e.g. a CMS pushing articles)."""


@token_group.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(apitokens.ROLES), default="publisher", show_default=True)
@click.option(
    "--expires-in",
    metavar="LIFETIME",
    help="Refuse the token after this long: 36h, 90d, 12w (default: until revoked).",
)
def token_create(name: str, role: str, expires_in: str | None) -> None:
    """Create a token; it is printed once and stored hashed."""
    try:
        lifetime = apitokens.parse_lifetime(expires_in) if expires_in else None
        token = apitokens.create_token(name, role, _now(), expires_in=lifetime)
    except apitokens.TokenError as exc:
        _fail(str(exc))
        return
    click.echo(token)
    click.echo(
        _(
            "(token %(name)s, role %(role)s: store it now, it cannot be shown again)",
            name=repr(name),
            role=role,
        ),
        err=True,
    )


@token_group.command("revoke")
@click.argument("name")
def token_revoke(name: str) -> None:
    """Revoke a token at once."""
    if not apitokens.revoke_token(name, _now()):
        _fail(_("no live token named %(name)s", name=repr(name)))
    click.echo(_("token %(name)s revoked", name=repr(name)))


@token_group.command("list")
def token_list() -> None:
    """Tokens with their role and state (never the token itself)."""
    moment = _now()
    for t in apitokens.list_tokens():
        state = _("live")
        if t.revoked_at:
            state = _("revoked %(date)s", date=f"{t.revoked_at:%Y-%m-%d}")
        elif t.expires_at and t.expires_at <= moment:
            state = _("expired %(moment)s", moment=f"{t.expires_at:%Y-%m-%d %H:%M}")
        elif t.expires_at:
            state = _("live, expires %(moment)s", moment=f"{t.expires_at:%Y-%m-%d %H:%M}")
        used = _("never used")
        if t.last_used_at:
            used = _("last used %(moment)s", moment=f"{t.last_used_at:%Y-%m-%d %H:%M}")
        click.echo(f"{t.name}\t{t.role}\t{state}\t{used}")


def _password(from_stdin: bool) -> str:
    if from_stdin:
        # One line; the newline that ends it is not part of the password.
        return sys.stdin.readline().rstrip("\r\n")
    value: str = click.prompt(_("Password"), hide_input=True, confirmation_prompt=True)
    return value


@admin_group.command("create-user")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice([role.value for role in AdminRole]),
    default="admin",
    show_default=True,
)
@click.option("--email", help="Address that receives this user's test sends.")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin (scripts).")
def user_create(name: str, role: str, email: str | None, password_stdin: bool) -> None:
    """Create a person's account for the admin area (password prompted, or from stdin)."""
    try:
        accounts.create_user(name, _password(password_stdin), role, _now(), email=email)
    except accounts.AccountError as exc:
        _fail(str(exc))
    click.echo(
        _(
            "user %(name)s created, role %(role)s: sign in at /admin/login",
            name=repr(name),
            role=role,
        )
    )


@admin_group.command("set-password")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin (scripts).")
def user_password(name: str, password_stdin: bool) -> None:
    """Change a user's password; their open sessions end."""
    try:
        accounts.set_password(name, _password(password_stdin))
    except accounts.AccountError as exc:
        _fail(str(exc))
    click.echo(_("password of %(name)s changed", name=repr(name)))


@admin_group.command("users")
def user_list() -> None:
    """Admin users with their role (never a password)."""
    for user in accounts.list_users():
        state = _("disabled") if user.disabled_at else _("enabled")
        last = _("never")
        if user.last_login_at:
            last = _("last login %(moment)s", moment=f"{user.last_login_at:%Y-%m-%d %H:%M}")
        click.echo(f"{user.name}\t{user.role}\t{state}\t{last}")


COMMANDS = (admin_group,)
