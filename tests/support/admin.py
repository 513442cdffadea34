"""An admin in a browser (the real login form, CSRF tokens) and API tokens."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import cache
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from werkzeug.security import generate_password_hash

# --- Admin ------------------------------------------------------------------------

ADMIN_PASSWORD = "correct horse battery staple"


@cache
def _light_hash() -> str:
    """ADMIN_PASSWORD hashed once per process with scrypt at 1/32 of the accounts' work
    factor (N = 2**10, not werkzeug's 2**15). check_password_hash reads the parameters from
    the stored hash, so logging in still goes through the real check; at full cost, hashing
    for each test's admin and checking at its login took a seventh of the fast lane's CPU.
    The accounts' own hashing is tested through create_user (test_admin_subscribers.py)."""
    return generate_password_hash(ADMIN_PASSWORD, "scrypt:1024:8:1")


def create_admin(
    app: Flask, name: str = "alice", role: str = "admin", email: str | None = "alice@exemple.fr"
) -> None:
    """An enabled admin user, stored as `accounts.create_user` stores one, with a lighter hash."""
    from service.extensions import db
    from service.models import AdminUser

    with app.app_context():
        user = AdminUser(
            name=name,
            password_hash=_light_hash(),
            role=role,
            email=email,
            created_at=datetime.now(UTC),
        )
        db.session.add(user)
        db.session.commit()


def page_csrf(client: FlaskClient, path: str = "/admin/login") -> str:
    """The CSRF token a page carries (its <meta name="csrf-token">)."""
    html = client.get(path).get_data(as_text=True)
    found = re.search(r'<meta name="csrf-token" content="([^"]+)"', html)
    assert found, f"no CSRF token on {path}"
    return found.group(1)


class Admin:
    """A browser signed in to the admin area through the real login form."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client
        self.csrf = ""

    def login(self, name: str = "alice", password: str = ADMIN_PASSWORD) -> Any:
        token = page_csrf(self.client)
        response = self.client.post(
            "/admin/login", data={"name": name, "password": password, "csrf_token": token}
        )
        if response.status_code == 302:
            self.csrf = page_csrf(self.client, "/admin/subscribers")
        return response

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.client.get(path, **kwargs)

    def post(self, path: str, data: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        return self.client.post(path, data={"csrf_token": self.csrf, **(data or {})}, **kwargs)


def api_token(app: Flask, role: str = "admin", name: str = "") -> dict[str, str]:
    """Headers with a fresh bearer token of `role`."""
    from service.admin import apitokens

    with app.app_context():
        token = apitokens.create_token(name or f"{role}-token", role, datetime.now(UTC))
    return {"Authorization": f"Bearer {token}"}
