"""`python -m service.web.api > docs/openapi.json`: the OpenAPI document, from the routes
alone (no settings, no database)."""

from __future__ import annotations

import json
import sys

from flask import Flask

from service.web import register
from service.web.api.openapi import build


def main() -> None:
    app = Flask("hebdo")
    register(app, devmail=False)
    sys.stdout.write(json.dumps(build(app), indent=2, ensure_ascii=False) + "\n")


main()
