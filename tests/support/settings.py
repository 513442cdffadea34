"""The test run's settings: where the repository is, which database and broker the run
uses (PostgreSQL and Redis when CI names them, else the embedded default), the secret key
and public URL every test app has.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATABASE_URL = os.environ.get("HEBDO_DATABASE_URL", "")
BROKER_URL = os.environ.get("HEBDO_BROKER_URL", "")
SECRET = "test-secret-key-not-for-production-0123456789"
BASE_URL = "https://hebdo.example.fr"
