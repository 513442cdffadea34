"""Static files: Flask's static handling at /static, pages linking them by versioned URLs
that caches keep for a year, and the embeddable box's stable addresses for news sites."""

from __future__ import annotations

import hashlib
import re

from flask.testing import FlaskClient

from tests.support.admin import Admin
from tests.support.settings import ROOT

YEAR = 365 * 24 * 3600


def _version(relative: str) -> str:
    return hashlib.sha256((ROOT / "static" / relative).read_bytes()).hexdigest()[:12]


def test_admin_pages_link_versioned_files_cached_for_a_year(
    admin: Admin, client: FlaskClient
) -> None:
    html = admin.get("/admin/").get_data(as_text=True)
    links = re.findall(r'(?:href|src)="(/static/[^"]+)"', html)
    assert {link.split("?")[0] for link in links} == {
        "/static/admin/admin.css",
        "/static/admin/admin.js",
    }
    for link in links:
        path, _, query = link.partition("?")
        assert query == f"v={_version(path.removeprefix('/static/'))}", link
        response = client.get(link.replace("&amp;", "&"))
        assert response.status_code == 200, link
        cache = response.cache_control
        assert cache.public and cache.max_age == YEAR and cache.immutable, link
        # Served without a session: the login page needs them too.
        assert "Set-Cookie" not in response.headers


def test_an_old_or_missing_version_is_cached_an_hour_only(client: FlaskClient) -> None:
    for query in ("?v=000000000000", ""):
        response = client.get(f"/static/admin/admin.css{query}")
        assert response.status_code == 200
        assert response.cache_control.max_age == 3600 and not response.cache_control.immutable
    assert client.get("/static/admin/nothing.css").status_code == 404
    # Nothing outside the folder.
    assert client.get("/static/../service/config.py").status_code == 404


def test_the_login_page_is_styled_and_scripted_from_static(client: FlaskClient) -> None:
    html = client.get("/admin/login").get_data(as_text=True)
    assert f"/static/admin/admin.css?v={_version('admin/admin.css')}" in html


def test_the_subscribe_page_loads_the_versioned_box_and_sites_keep_the_stable_one(
    client: FlaskClient,
) -> None:
    html = client.get("/subscribe").get_data(as_text=True)
    assert f'src="/static/embed/embed.js?v={_version("embed/embed.js")}"' in html
    # The snippet news sites paste names the stable address, whose content is the same file.
    stable = client.get("/embed.js")
    versioned = client.get(f"/static/embed/embed.js?v={_version('embed/embed.js')}")
    assert stable.data == versioned.data == (ROOT / "static/embed/embed.js").read_bytes()
    assert stable.cache_control.max_age == 3600
    assert stable.headers["Cross-Origin-Resource-Policy"] == "cross-origin"
    assert "/embed.js" in client.get("/embed/snippet").get_data(as_text=True)
