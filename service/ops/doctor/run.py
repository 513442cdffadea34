"""`hebdo doctor`'s whole run: every check in order, each bounded in time."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from service.ops.doctor.broker import check_broker
from service.ops.doctor.configuration import check_configuration
from service.ops.doctor.database import check_database
from service.ops.doctor.report import CHECK_BUDGET, TIMEOUT, CheckResult, Status, _secrets, redact
from service.ops.doctor.sending_domain import check_dns
from service.ops.doctor.smtp import check_smtp
from service.resources import MIGRATIONS

# --- The whole run ----------------------------------------------------------------


def run_checks(
    environ: Mapping[str, str],
    *,
    nameserver: tuple[str, int] | None = None,
    migrations: Path = MIGRATIONS,
    timeout: float = TIMEOUT,
    budget: float = CHECK_BUDGET,
) -> list[CheckResult]:
    """Every check, in order: configuration, database, broker, SMTP, DNS of the sending
    domain. Without a configuration that loads, the others are reported as skipped:
    they would only repeat the same error in other words."""
    settings, results = check_configuration(environ)
    secrets = _secrets(environ, settings)
    if settings is None:
        reason = "the configuration does not load (see above)"
        results += [
            CheckResult(name, Status.SKIPPED, reason)
            for name in ("database", "broker", "smtp", "dns")
        ]
        return [redact(r, secrets) for r in results]
    loaded = settings
    checks: list[tuple[str, Callable[[], list[CheckResult]]]] = [
        ("database", lambda: check_database(loaded, migrations, timeout=timeout)),
        ("broker", lambda: check_broker(loaded, timeout=timeout)),
        ("smtp", lambda: check_smtp(loaded, timeout=timeout)),
        ("dns", lambda: check_dns(loaded, nameserver=nameserver, timeout=timeout)),
    ]
    for name, check in checks:
        results += _bounded(name, check, budget)
    return [redact(r, secrets) for r in results]


# What usually keeps a check from finishing, when it has to be abandoned.
_STUCK = {
    "database": "another process holds a lock on it (a migration running?), or the database "
    "server accepts connections but does not answer; retry, then look at that process",
    "broker": "the broker accepts connections but does not answer; look at its logs",
    "smtp": "the relay accepts connections but answers too slowly; look at its logs",
    "dns": "the DNS server answers too slowly; retry, or try another with --nameserver",
}


def _bounded(
    name: str, check: Callable[[], list[CheckResult]], seconds: float
) -> list[CheckResult]:
    """Run `check` in a daemon thread and give up waiting after `seconds`.

    The per-operation timeouts should make this deadline unnecessary; it is there for
    what they do not cover (a SQLite lock held by a migration waits 30 s, a libpq
    connect can wait on DNS), so that the doctor itself never hangs.
    """
    box: list[list[CheckResult]] = []

    def target() -> None:
        try:
            box.append(check())
        except Exception as exc:  # a check that crashes is a failed check, with its reason
            box.append([CheckResult(name, Status.FAIL, f"{type(exc).__name__}: {exc}")])

    thread = threading.Thread(target=target, name=f"doctor-{name}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive() or not box:
        return [
            CheckResult(
                name,
                Status.FAIL,
                f"no answer within {seconds:g} s",
                _STUCK.get(name, "retry; then check the network path to it"),
            )
        ]
    return box[0]
