"""What the real-browser tests share: the rule that skips them without Chromium or
Playwright (and fails them under CI=true, where the browser must run), the module's one
Chromium, and a loopback HTTP server for the app under test.

Importing this module applies the rule to the importing test module; the `browser`
fixture (in conftest) imports it only when a test asks for a browser.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from socketserver import BaseServer
from typing import Any

from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from tests.support import missing

CHROMIUM = Path("/usr/bin/chromium")
TIMEOUT_MS = 10_000


try:
    from playwright.sync_api import Browser, BrowserContext, Dialog, Page, expect, sync_playwright
except ImportError:
    missing("the playwright package is not installed (pip install -e '.[test]')", module=True)
if not CHROMIUM.exists():
    missing(
        f"{CHROMIUM} is missing (apt-get install chromium; never `playwright install`)", module=True
    )

expect.set_options(timeout=TIMEOUT_MS)

__all__ = [
    "TIMEOUT_MS",
    "Browser",
    "BrowserContext",
    "Dialog",
    "Page",
    "chromium",
    "expect",
    "serve",
    "unready_server",
]


def chromium() -> Iterator[Browser]:
    """Debian's Chromium under Playwright, closed when the generator ends (the `browser`
    fixture of conftest: one per module, each test with its own context)."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox"], timeout=30_000
        )
        try:
            yield launched
        finally:
            launched.close()


def _not_ready(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
    return [b"starting"]


def unready_server() -> tuple[BaseWSGIServer, str]:
    """A loopback HTTP server bound first, so the app can be built knowing its own URL
    (HEBDO_BASE_URL); it answers 503 until `server.app` is set."""
    server = make_server("127.0.0.1", 0, _not_ready, threaded=True)
    return server, f"http://127.0.0.1:{server.server_port}"


def serve(server: BaseServer, name: str) -> Callable[[], None]:
    """Serve in a thread; return what stops the server and waits for the thread."""
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(10)

    return stop


def app_server(app: Flask, server: BaseWSGIServer) -> None:
    """Hand the built app to the server made by `unready_server`."""
    server.app = app  # type: ignore[assignment]
