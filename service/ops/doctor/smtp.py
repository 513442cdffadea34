"""Doctor check 4: the SMTP relay greets, speaks TLS as configured, and takes the login."""

from __future__ import annotations

import smtplib
import ssl

from service.config import Settings
from service.mail.smtp import connect
from service.ops.doctor.configuration import _loopback
from service.ops.doctor.report import TIMEOUT, CheckResult, Status

# --- 4. SMTP --------------------------------------------------------------------------


def check_smtp(settings: Settings, *, timeout: float = TIMEOUT) -> list[CheckResult]:
    """Walk the relay the way the mailer does (connect, EHLO, STARTTLS, AUTH), then offer
    our sender address, which is where a relay says "not yours to send from"; RSET and
    QUIT then, so nothing is ever sent."""
    if settings.capture_mail:
        message = (
            f"no SMTP relay (HEBDO_SMTP_HOST is empty): every mail is written to "
            f"{settings.mail_capture_dir} and shown at /dev/mailbox, nobody receives any"
        )
        if settings.env == "production":
            return [CheckResult("smtp", Status.WARN, message, "set HEBDO_SMTP_HOST to a relay")]
        return [CheckResult("smtp", Status.OK, message)]
    s = settings
    where = f"{s.smtp_host}:{s.smtp_port}"
    wait = min(s.smtp_timeout, timeout)
    steps: list[str] = []
    # The trust store as it is now (the mailer caches its context for the process's life).
    context = ssl.create_default_context()
    conn: smtplib.SMTP | None = None
    broken = False

    def fail(message: str, fix: str) -> list[CheckResult]:
        done = f" (after {', '.join(steps)})" if steps else ""
        return [CheckResult("smtp", Status.FAIL, f"{where}: {message}{done}", fix)]

    try:
        try:
            conn = connect(s.smtp_host, s.smtp_port, s.smtp_tls, wait, context)
        except ssl.SSLCertVerificationError as exc:
            return fail(
                f"its TLS certificate is not trusted: {exc.verify_message}",
                "set HEBDO_SMTP_HOST to the name on the relay's certificate",
            )
        except ssl.SSLError as exc:
            return fail(
                f"TLS handshake failed: {exc.reason}",
                "HEBDO_SMTP_TLS=ssl needs a server that speaks TLS at once (port 465); "
                "use starttls for ports 25/587",
            )
        except (OSError, smtplib.SMTPException) as exc:
            return fail(
                f"cannot connect: {exc or type(exc).__name__}",
                "check HEBDO_SMTP_HOST and HEBDO_SMTP_PORT, that the relay runs, and that "
                "no firewall blocks the port from this machine",
            )
        steps.append("connect")
        code, reply = conn.ehlo()
        if code != 250:
            return fail(f"EHLO refused: {code} {_text(reply)}", _ASK_ADMIN)
        steps.append("EHLO")
        offers_starttls = conn.has_extn("starttls")
        if s.smtp_tls == "starttls":
            if not offers_starttls:
                return fail(
                    "the server does not offer STARTTLS",
                    "use HEBDO_SMTP_TLS=ssl if it listens with TLS (port 465), or none for a "
                    "relay on this machine",
                )
            try:
                conn.starttls(context=context)
            except ssl.SSLCertVerificationError as exc:
                return fail(
                    f"its TLS certificate is not trusted: {exc.verify_message}",
                    "set HEBDO_SMTP_HOST to the name on the relay's certificate",
                )
            conn.ehlo()
            steps.append("STARTTLS")
        if s.smtp_user:
            if not conn.has_extn("auth"):
                hint = (
                    "; it offers STARTTLS, and many servers offer AUTH only after it: set "
                    "HEBDO_SMTP_TLS=starttls"
                    if offers_starttls and s.smtp_tls == "none"
                    else ""
                )
                return fail(
                    f"HEBDO_SMTP_USER is set but the server offers no AUTH{hint}",
                    "set HEBDO_SMTP_TLS=starttls, or leave HEBDO_SMTP_USER empty for a relay "
                    "that needs no login",
                )
            try:
                conn.login(s.smtp_user, s.smtp_password)
            except smtplib.SMTPAuthenticationError as exc:
                return fail(
                    f"login as {s.smtp_user!r} refused: {exc.smtp_code} {_text(exc.smtp_error)}",
                    "check HEBDO_SMTP_USER and HEBDO_SMTP_PASSWORD",
                )
            except smtplib.SMTPException as exc:
                # No AUTH mechanism in common (smtplib speaks CRAM-MD5, PLAIN and LOGIN).
                return fail(f"login as {s.smtp_user!r} impossible: {exc}", _ASK_ADMIN)
            steps.append(f"AUTH as {s.smtp_user!r}")
        code, reply = conn.mail(s.mail_from_address)
        if code != 250:
            return fail(
                f"refuses our sender {s.mail_from_address}: {code} {_text(reply)}",
                "use a HEBDO_MAIL_FROM address this relay lets you send from "
                "(its administrator or provider's settings say which)",
            )
        conn.rset()
        steps.append(f"MAIL FROM:<{s.mail_from_address}>")
    except (OSError, smtplib.SMTPException) as exc:
        broken = True
        return fail(
            f"connection broke: {exc or type(exc).__name__}",
            "check the relay's logs; a slow relay needs a larger HEBDO_SMTP_TIMEOUT",
        )
    finally:
        if conn is not None:
            # A polite QUIT, unless the connection already failed: then it would only
            # wait another timeout for a reply that is not coming.
            try:
                if broken:
                    conn.close()
                else:
                    conn.quit()
            except (OSError, smtplib.SMTPException):
                conn.close()
    if s.smtp_tls == "none" and offers_starttls and not _loopback(s.smtp_host):
        return [
            CheckResult(
                "smtp",
                Status.WARN,
                f"{where}: {', '.join(steps)} accepted, in clear although the server offers "
                "STARTTLS",
                "set HEBDO_SMTP_TLS=starttls",
            )
        ]
    return [CheckResult("smtp", Status.OK, f"{where}: {', '.join(steps)} accepted")]


_ASK_ADMIN = "ask the relay's administrator (or provider) what it expects"


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
