"""An admin in a browser (the real login form, CSRF tokens) and API tokens."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

# --- Admin ------------------------------------------------------------------------

ADMIN_PASSWORD = "correct horse battery staple"


def create_admin(
    app: Flask, name: str = "alice", role: str = "admin", email: str | None = "alice@exemple.fr"
) -> None:
    from service.admin import accounts

    with app.app_context():
        accounts.create_user(name, ADMIN_PASSWORD, role, datetime.now(UTC), email=email)


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
