"""One sign-up post, screened in the order a person's post meets its checks, then
subscribed: the page's origin, the fields, the address, the CAPTCHA (when asked), the
consent box, and only then the bot checks (honeypot, form token). A bot caught there gets
what a person with the same post would get and cannot learn what gave it away.

The JSON endpoint and the form without JavaScript both call `screen`; the view only reads
the body and words the answer. Rate limits come before, in the view (they need no body).
Every attempt is counted by outcome (`defences.record`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from service.config import Settings
from service.models import CONSENT_VERSION_MAX, EMAIL_MAX, LOCALE_TAG_MAX, SOURCE_MAX
from service.signup.defences import (
    HONEYPOT_FIELD,
    Verifier,
    allowed_origin,
    captcha_active,
    captcha_widget,
    check_form,
    consent_line,
    page_of_allowed_origin,
    record,
)
from service.subscribers.addresses import InvalidEmail, normalise_email, suggest_fix
from service.subscribers.lifecycle import Consent, subscribe

# What a ticked consent box sends: JSON `true`/`1`, a form's "on", and friends.
TICKED = (True, 1, "1", "on", "true", "yes")
# A consent value meaning "the version the form showed" (HEBDO_CONSENT_VERSION).
CURRENT_CONSENT = ("", "on", "true", "1", "yes")


def blank_is_none(value: Any) -> Any:
    """An optional text field sent empty (as a form sends it) is one not sent."""
    return None if value == "" else value


def unicode_text(value: Any) -> Any:
    """JSON can carry lone surrogates (`"\\ud800"`), which no database or mail can hold."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("is not valid Unicode text") from None
    return value


def _version_or_true(value: Any) -> Any:
    """Text, `true` or nothing: not a number (`1 == True` for a lax Literal)."""
    if value is not None and value is not True and not isinstance(value, str):
        raise ValueError("must be a consent text version (string)")
    return value


def _printable(value: Any) -> Any:
    if isinstance(value, str) and not value.isprintable():
        raise ValueError("must be a consent text version (printable text)")
    return value


class SignupPost(BaseModel):
    """A sign-up, as JSON from the embedded box or as the form's fields."""

    # Required, as the document says, yet read as None when missing: the view then refuses
    # it as an invalid address in the reader's language, like any other.
    model_config = ConfigDict(
        extra="ignore", str_strip_whitespace=True, json_schema_extra={"required": ["email"]}
    )

    email: Any = Field(
        default=None,
        json_schema_extra={"type": "string", "format": "email", "maxLength": EMAIL_MAX},
        description="Checked for syntax (and, with HEBDO_CHECK_DELIVERABILITY, for its "
        "domain's DNS records): else 422.",
    )
    locale: Annotated[
        Annotated[str, Field(max_length=LOCALE_TAG_MAX)] | None,
        BeforeValidator(unicode_text),
        BeforeValidator(blank_is_none),
    ] = Field(
        default=None,
        examples=["fr"],
        description="`fr` or `en` (a tag such as `en-GB` counts); any other value: "
        "Accept-Language's, then French.",
    )
    source: Annotated[
        Annotated[str, Field(max_length=SOURCE_MAX)] | None,
        BeforeValidator(unicode_text),
        BeforeValidator(blank_is_none),
    ] = Field(
        default=None,
        description="The page the box was on, recorded as the consent's source when it is "
        "on an allowed origin.",
    )
    consent: Annotated[
        Annotated[str, Field(max_length=CONSENT_VERSION_MAX)] | Literal[True] | None,
        BeforeValidator(_version_or_true),
        BeforeValidator(unicode_text),
        BeforeValidator(blank_is_none),
        AfterValidator(_printable),
    ] = Field(
        default=None,
        description="The version of the consent text shown: HEBDO_CONSENT_VERSION, which "
        "absent, empty or `true` also mean; any other is refused (422 "
        "`unknown_consent_version`).",
    )
    consent_given: Any = Field(
        default=None,
        description='The consent box: ticked is `true`, `1` or one of the strings `"1"`, '
        '`"on"`, `"true"`, `"yes"`; anything else is not. Required (else 422) when '
        "HEBDO_CONSENT_TEXT is set.",
    )
    # No type for these three: a post caught by them gets the answer any post gets.
    ts: Any = Field(
        default=None,
        description="The form token (a string) from /subscriptions/form. A post with anything "
        "but a valid one, old enough, gets the same answer as any other, and nothing is stored.",
    )
    website: Any = Field(
        default=None,
        description="The honeypot: left out or empty by people. A post with anything in it "
        "gets the same answer as any other, and nothing is stored.",
    )
    captcha_token: Any = Field(
        default=None,
        description="The CAPTCHA's answer (a string) when the last answer asked for one (400 "
        "`captcha_required`); ignored otherwise.",
    )


@dataclass(frozen=True)
class Visitor:
    """Who posts, as the request says: nothing here is trusted, all of it is recorded."""

    ip: str | None
    user_agent: str | None
    # The page's origin (a browser sends it on every cross-site post).
    origin: str | None
    # The page the form was on, without JavaScript.
    referrer: str | None


@dataclass(frozen=True)
class Accepted:
    """The answer to a person, and to a bot caught at the door: nothing tells them apart."""

    suggestion: str | None
    source: str | None
    # A person's post: the caller queues the sweep that sends the confirmation mail, if one
    # is owed. For a known address too: queueing costs a broker message about once a
    # second, which only new addresses paid, and the answer's time told them apart.
    queue_sweep: bool


class Refused(Exception):
    """The post is turned down; `status` and `error` for the answer, the CAPTCHA widget to
    show when one is asked for. The view words it in the page's language."""

    def __init__(self, status: int, error: str, *, captcha: dict[str, str] | None = None):
        super().__init__(error)
        self.status = status
        self.error = error
        self.captcha = captcha


def consent_version(settings: Settings, value: str | Literal[True] | None) -> str | None:
    """The consent text version a post agreed to: HEBDO_CONSENT_VERSION, named or not. Any
    other is None: the proof of consent records only a text this service showed, never a
    caller's words (which went into exports as they were)."""
    if value is True or value is None or value in CURRENT_CONSENT:
        return settings.consent_version
    return value if value == settings.consent_version else None


def check_origin(settings: Settings, visitor: Visitor) -> None:
    """Refused (403) for a browser's post from a page of another site, so no other site can
    make its visitors sign someone up; counted. Requests without Origin (servers, old
    browsers' same-site forms) go on: the limits hold them. The view asks first, before it
    reads the body; `screen` asks again."""
    if visitor.origin is not None and not allowed_origin(settings, visitor.origin):
        record("foreign_origin", ip=visitor.ip)
        raise Refused(403, "origin_not_allowed")


def screen(
    settings: Settings,
    post: SignupPost,
    visitor: Visitor,
    *,
    locale: str,
    now: datetime,
    verify: Verifier,
) -> Accepted:
    """Screen the post, then subscribe the address (double opt-in). Raises Refused, or
    InvalidEmail for an address that is none."""
    check_origin(settings, visitor)
    # The page the box was on; recorded only for an allowed origin (else anyone could
    # write any URL into the proof of consent). Without JavaScript, the Referer.
    source = page_of_allowed_origin(settings, post.source or visitor.referrer)
    try:
        email = normalise_email(
            post.email,
            check_deliverability=settings.check_deliverability,
            dns_timeout=settings.dns_timeout,
        )
    except InvalidEmail:
        record("invalid", ip=visitor.ip, email=post.email)
        raise
    if captcha_active(settings, now):
        token = post.captcha_token
        if not isinstance(token, str) or not token:
            record("captcha_required", ip=visitor.ip, email=email)
            raise Refused(400, "captcha_required", captcha=captcha_widget(settings))
        if not verify(settings.captcha_provider, settings.captcha_secret, token[:4096], visitor.ip):
            record("captcha_failed", ip=visitor.ip, email=email)
            raise Refused(400, "captcha_failed", captcha=captcha_widget(settings))
    if consent_line(settings, locale) and post.consent_given not in TICKED:
        record("consent_missing", ip=visitor.ip, email=email)
        raise Refused(422, "consent_required")
    version = consent_version(settings, post.consent)
    if version is None:
        # A page shown before the version changed, or a post made by hand.
        record("invalid", ip=visitor.ip, email=email)
        raise Refused(422, "unknown_consent_version")
    verdict = check_form(settings, {HONEYPOT_FIELD: post.website, "ts": post.ts})
    if not verdict.ok:
        # A bot: the same answer as a person's, nothing stored, nothing sent.
        record(verdict.outcome, ip=visitor.ip, email=email)
        return Accepted(suggest_fix(email), source, queue_sweep=False)
    consent = Consent(
        source=source,
        text_version=version,
        ip=visitor.ip,
        user_agent=visitor.user_agent,
    )
    result = subscribe(email, locale=locale, consent=consent, now=now, settings=settings)
    record("accepted", ip=visitor.ip, email=email)
    return Accepted(result.suggestion, source, queue_sweep=True)
