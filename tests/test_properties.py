"""Properties that must hold for every input, checked by Hypothesis.

Addresses normalise to one stable form that is safe to write into a header; signed tokens
have one spelling and one purpose; and every mail hebdo builds (the confirmation mail and
the weekly digest, whatever its articles say) leaves with exactly the headers hebdo wrote,
one recipient, and the reader's unsubscribe link. Mails are judged by their wire bytes,
as a receiving server reads them.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import Parser
from email.utils import format_datetime
from typing import Any

import pytest
from flask import Flask
from flask_babel import force_locale, gettext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import delete

from service.config import Settings, load_settings
from service.digest.articles import MAX_TITLE, ArticleInput, plain_text, store_article
from service.digest.planning import get_issue, issue_articles, plan_issue
from service.digest.rendering import (
    SUBJECT_MAX,
    Recipient,
    digest_subject,
    mail_for,
    mail_template,
)
from service.extensions import db
from service.inbound.verp import unsubscribe_signed, unsubscribe_subscriber_id
from service.mail.message import build_message, wire_address
from service.models import Article as ArticleRow
from service.models import AuditEvent, Issue, IssueArticle, Subscriber
from service.subscribers.addresses import InvalidEmail, normalise_email
from service.subscribers.lifecycle import Consent, subscribe
from service.subscribers.tokens import BadToken, Purpose, make_token, read_token
from tests.support.mail import sweep
from tests.support.settings import BASE_URL, SECRET
from tests.support.smtp import CONFIRMATION_HEADERS, DIGEST_HEADERS, SMTPSink

# Hypothesis keeps no example database in the repository, and the per-example time varies
# with the backend (PostgreSQL round trips), so no deadline either.
FAST = settings(deadline=None, database=None, max_examples=500)
DB_BOUND = settings(
    deadline=None,
    database=None,
    max_examples=50,
    # One app per test; each example cleans up the rows it made.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

NOW = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)  # W48's send time (Monday 08:00 in Paris)
WEEK = "2026-W48"
# payload.timestamp.signature, URL-safe base64; a compressed payload starts with a dot.
TOKEN = r"\.?[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+"


@pytest.fixture(scope="module")
def pure_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The test settings, for code that needs no database (module-wide: Hypothesis runs
    many examples per test, and function-scoped fixtures are not reset between them)."""
    return load_settings(
        {
            "HEBDO_ENV": "test",
            "HEBDO_DATA_DIR": str(tmp_path_factory.mktemp("properties")),
            "HEBDO_SECRET_KEY": SECRET,
            "HEBDO_BASE_URL": BASE_URL,
            "HEBDO_MAIL_FROM": "L'Hebdo <newsletter@news.example.fr>",
            "HEBDO_BROKER_URL": "memory://",
        }
    )


# ---------------------------------------------------------------- addresses

# Pieces people, typos and attackers put in an address: case and Unicode variants that must
# fold to one form, and characters that must never reach a header.
LOCAL_PIECES = [
    "a",
    "Zoé",
    "jean.dupont",
    "x+tag",
    "o'neil",
    "İ",
    "ß",
    "ΑΣ",
    "\u212a",  # Kelvin sign, NFC-equal to K
    "ﬁ",
    "e\u0301",  # decomposed é
    "δοκιμή",
    "用户",
    "ＡＢ",
    "{|}~#$%&*/^`",
    # RFC 2047 encoded-words and their pieces: atext, so a local part can hold one.
    "=?utf-8?q?victim=40evil.example=2c_x?=",
    "=?",
    "?=",
    "utf-8",
    "?q?",
    "?b?",
    "=40",
    "=2c",
    "=0d=0a",
    "_",
    ".",
    # Never in a stored address.
    "\r\n",
    "\x00",
    "\u2028",
    "\u202e",
    "\u200b",
    " ",
    "\t",
    "<",
    ">",
    ",",
    '"',
    "(",
    ";",
    ":",
    "\\",
    "@",
]
DOMAINS = [
    "exemple.fr",
    "EXEMPLE.FR",
    "exämple.fr",
    "ＧＭＡＩＬ.com",
    "xn--exmple-cua.fr",
    "bücher.de",
    "例え.jp",
    "localhost",
    "exemple",
    "[127.0.0.1]",
    "-x.fr",
    "a..fr",
    "b" * 64 + ".fr",
    "exemple.fr\r\nBcc: x@y.fr",
]
local_parts = st.one_of(
    st.lists(st.sampled_from(LOCAL_PIECES), min_size=1, max_size=8).map("".join),
    st.text(min_size=1, max_size=30),
)
addresses = st.builds(
    lambda before, local, domain, after: f"{before}{local}@{domain}{after}",
    st.sampled_from(["", " ", "\t", "\n"]),
    local_parts,
    st.sampled_from(DOMAINS),
    st.sampled_from(["", " ", "\r\n"]),
)
# What a form or a JSON body can carry instead of an address.
anything = st.one_of(
    st.text(),
    st.text(st.characters(codec=None, exclude_categories=()), max_size=40),  # lone surrogates
    addresses,
    st.none(),
    st.integers(),
    st.booleans(),
    st.binary(max_size=40),
    st.lists(st.text(max_size=10), max_size=3),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)

# Characters that must never be in an address written to a header: controls (CR, LF, NUL,
# ...), invisible format characters (bidi overrides), separators and unassigned code
# points; and the ASCII specials that delimit addresses, comments and quoted strings.
UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"}
ADDRESS_SPECIALS = set(',;:<>"()[]\\')
ENCODED_WORD = re.compile(r"=\?[^?]*\?[bq]\?[^?]*\?=", re.IGNORECASE)


def assert_header_safe(email: str) -> None:
    assert email.count("@") == 1, email
    unsafe = [ch for ch in email if unicodedata.category(ch) in UNSAFE_CATEGORIES]
    assert not unsafe and not ADDRESS_SPECIALS & set(email), email
    # An encoded-word is decoded by mail clients, even inside an address (see below).
    assert not ENCODED_WORD.search(email), email
    assert len(email) <= 254


def parsed_to(email: str) -> list[str]:
    """The addresses a mail client reads in `To: <the stored address>`."""
    wire, _smtputf8 = wire_address(email)
    header = Parser(policy=policy.default).parsestr(f"To: {wire}\n\nx\n")["To"]
    return [a.addr_spec for a in header.addresses]


@FAST
@given(addresses)
def test_normalising_is_idempotent_and_yields_a_header_safe_address(raw: str) -> None:
    """The stored form of an address is a fixed point (stored twice, it is one subscriber),
    and it reads back as that one address when written into a To header."""
    try:
        email = normalise_email(raw)
    except InvalidEmail:
        return
    assert normalise_email(email) == email
    assert_header_safe(email)
    assert parsed_to(email) == [wire_address(email)[0]]


@pytest.mark.parametrize(
    "raw",
    [
        # Python's header parser, and mail clients, decode these into another address:
        # "Splitting the email atom" (PortSwigger research, 2024).
        "=?utf-8?q?victim=40evil.example=2C_x?=@exemple.fr",
        "=?x?q?victim=40target.example=3e=00?=@exemple.fr",
        "=?utf-8?b?dmljdGltQGV2aWwuZXhhbXBsZQ==?=@exemple.fr",
    ],
)
def test_an_encoded_word_in_an_address_is_refused(raw: str) -> None:
    with pytest.raises(InvalidEmail):
        normalise_email(raw)


@FAST
@given(anything)
def test_invalid_input_raises_invalid_email_and_nothing_else(raw: Any) -> None:
    """Whatever a post carries, the answer is an address or InvalidEmail (a 422), never
    another exception (a 500)."""
    try:
        email = normalise_email(raw)
    except InvalidEmail as exc:
        assert exc.code and exc.message("fr") and exc.message("en")
        return
    assert isinstance(raw, str)
    assert_header_safe(email)


# ---------------------------------------------------------------- tokens

payloads = st.lists(
    st.one_of(
        st.integers(),
        st.text(max_size=20),
        st.booleans(),
        st.none(),
        st.floats(allow_nan=False, allow_infinity=False),
    ),
    max_size=5,
)
purposes = st.sampled_from(list(Purpose))
# Printable ASCII and a few others a mail client or a hand might put in a URL.
replacements = st.sampled_from(
    [chr(c) for c in range(0x21, 0x7F)] + [" ", "é", "\u202e", "\x00", "\n"]
)


@FAST
@given(purposes, payloads)
def test_a_token_reads_back_its_payload_and_survives_a_key_rotation(
    pure_settings: Settings, purpose: Purpose, payload: list[Any]
) -> None:
    token = make_token(pure_settings, purpose, payload)
    assert re.fullmatch(TOKEN, token), token  # URL-safe: it is pasted in links
    assert read_token(pure_settings, purpose, token) == payload
    rotated = _with_keys(pure_settings, "new-key-" + "r" * 40, (pure_settings.secret_key,))
    assert read_token(rotated, purpose, token) == payload
    stranger = _with_keys(pure_settings, "other-key-" + "s" * 40, ())
    with pytest.raises(BadToken):
        read_token(stranger, purpose, token)


@FAST
@given(
    purposes,
    # Long enough to be compressed (addresses, as an address-change token holds), short
    # enough for read_token's 512 characters.
    st.one_of(payloads, st.lists(st.text("abcdé@.-", min_size=30, max_size=80), max_size=3)),
)
def test_a_token_is_itsdangerous_s_to_read_and_to_write(
    pure_settings: Settings, purpose: Purpose, payload: list[Any]
) -> None:
    """hebdo signs faster than itsdangerous (see tokens._Signer) but writes its format:
    stock itsdangerous reads hebdo's tokens and hebdo reads stock ones, compressed or not."""
    stock = URLSafeTimedSerializer(list(pure_settings.signing_keys), salt=purpose.value)
    token = make_token(pure_settings, purpose, payload)
    assert stock.loads(token) == payload
    # Byte for byte: the signature stock itsdangerous computes over this payload and
    # timestamp is the one hebdo wrote.
    value, _, signature = token.rpartition(".")
    assert stock.make_signer().get_signature(value).decode() == signature
    assert read_token(pure_settings, purpose, stock.dumps(payload)) == payload


def _with_keys(base: Settings, key: str, fallbacks: tuple[str, ...]) -> Settings:
    return base.model_copy(update={"secret_key": key, "secret_key_fallbacks": fallbacks})


@FAST
@given(purposes, payloads, st.data())
def test_any_single_character_change_of_a_token_is_rejected(
    pure_settings: Settings, purpose: Purpose, payload: list[Any], data: st.DataObject
) -> None:
    """A token has one spelling: a link changed anywhere, by one character, verifies as
    nothing (not even as a second spelling of the same link)."""
    token = make_token(pure_settings, purpose, payload)
    position = data.draw(st.integers(0, len(token) - 1), label="position")
    other = data.draw(replacements.filter(lambda c: c != token[position]), label="by")
    changed = token[:position] + other + token[position + 1 :]
    with pytest.raises(BadToken):
        read_token(pure_settings, purpose, changed)
    # Nor one character more or less at either end (padding, a truncated paste).
    for variant in (token + other, other + token, token[:-1], token[1:]):
        with pytest.raises(BadToken):
            read_token(pure_settings, purpose, variant)


@FAST
@given(purposes, purposes, payloads)
def test_a_token_of_one_purpose_is_rejected_for_another(
    pure_settings: Settings, made_for: Purpose, used_for: Purpose, payload: list[Any]
) -> None:
    token = make_token(pure_settings, made_for, payload)
    if made_for == used_for:
        assert read_token(pure_settings, used_for, token) == payload
    else:
        with pytest.raises(BadToken):
            read_token(pure_settings, used_for, token)


# ---------------------------------------------------------------- mails on the wire

# What feeds and the CMS have sent as titles and summaries, on purpose or not.
HOSTILE = [
    "\r\nBcc: victim@exemple.fr",
    "\nX-Evil: 1\n\n<html>",
    "\r",
    "\x00",
    "=?utf-8?q?Bcc=3A_x?=",
    "=?utf-8?q?Hi=0D=0ABcc:_victim@exemple.fr=0D=0AX-Evil:_1?=",
    "=?utf-8?b?QmNjOiB2aWN0aW1AZXhlbXBsZS5mcg==?=",
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    '</p><a href="javascript:alert(1)">x</a>',
    "\u202egnp.exe",
    "ميزانية الدفاع",
    "תקציב הביטחון",
    "\u2028\u2029\u0085\x0b\x0c",
    "Subject: pwned",
    "--=_hebdo_0123456789abcdef01234567",
    ".\r\n.\r\n",
    "&amp;&lt;&#13;&#10;",
    "%%0123456789ab:email%%",
    "L’Hebdo\u00a0: « budget »",
    "\t  ",
]
fragments = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(max_size=30),
    st.text(st.characters(min_codepoint=0x590, max_codepoint=0x6FF), max_size=20),
)
hostile_texts = st.one_of(
    st.sampled_from(HOSTILE),
    # Between spaces an encoded-word is one to a decoder; glued to other text it is not.
    st.lists(fragments, max_size=6).map(" ".join),
    st.lists(fragments, max_size=8).map("".join),
    # 10,000 characters: one word, or a phrase repeated (titles are cut, summaries folded).
    fragments.filter(bool).map(lambda f: (f * (10_000 // len(f) + 1))[:10_000]),
)


def shown(text: str) -> str:
    """How a header shows text: line breaks and runs of spaces become one space (the
    no-break spaces of French typography stay), trimmed."""
    return re.sub(r"[^\S\u00a0\u202f]+", " ", text).strip()


def parse_wire(data: bytes) -> EmailMessage:
    """The message as a receiving server reads it (UTF-8 headers when sent with SMTPUTF8)."""
    message = Parser(policy=policy.default).parsestr(data.decode("utf-8"))
    assert isinstance(message, EmailMessage)
    return message


def check_wire(
    settings_: Settings,
    data: bytes,
    *,
    to: str,
    subject: str,
    now: datetime,
    unsubscribe_payload: list[int],
    kind: str = "confirmation",
    created_at: datetime | None = None,
    campaign: str = "",
) -> EmailMessage:
    """Every header is one hebdo wrote, with the value hebdo meant; only the Subject
    carries outside text, and it reads back as that text; the body is a well-formed
    multipart/alternative. Returns the parsed message."""
    assert b"\n" not in data.replace(b"\r\n", b"") and b"\r" not in data.replace(b"\r\n", b"")
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("utf-8").split("\r\n")
    fields: list[tuple[str, list[str]]] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            fields[-1][1].append(line)
        else:
            name, sep, _value = line.partition(": ")
            assert sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", name), line
            fields.append((name, [line]))
    expected = DIGEST_HEADERS if kind == "digest" else CONFIRMATION_HEADERS
    assert sorted(name for name, _ in fields) == sorted(expected)
    raw = {name: "\r\n".join(folded) for name, folded in fields}
    assert raw["Feedback-ID"] == (
        f"Feedback-ID: {campaign or kind}:{settings_.list_id}:{kind}:news.example.fr"
    )
    if kind == "digest":
        assert raw["Precedence"] == "Precedence: bulk"
    else:
        assert raw["Auto-Submitted"] == "Auto-Submitted: auto-generated"

    wire_to, _smtputf8 = wire_address(to)
    boundary = re.fullmatch(
        r'Content-Type: multipart/alternative;\r\n boundary="(=_hebdo_[0-9a-f]{24})"',
        raw["Content-Type"],
    )
    assert boundary, raw["Content-Type"]
    assert raw["From"] == "From: L'Hebdo <newsletter@news.example.fr>"
    assert raw["To"] == f"To: {wire_to}"
    assert raw["Date"] == f"Date: {format_datetime(now)}"
    assert re.fullmatch(r"Message-ID: <\d+\.[0-9a-f]{12}@news\.example\.fr>", raw["Message-ID"])
    assert raw["List-Id"] == f"List-Id: <{settings_.list_id}>"
    assert raw["List-Unsubscribe-Post"] == "List-Unsubscribe-Post: List-Unsubscribe=One-Click"
    assert raw["MIME-Version"] == "MIME-Version: 1.0"
    link = re.fullmatch(
        rf"List-Unsubscribe: <{re.escape(BASE_URL)}/unsubscribe/({TOKEN})>,\r\n"
        rf" <mailto:(unsubscribe(?:\+[0-9a-z.]+)?@news\.example\.fr)\?subject=unsubscribe>",
        raw["List-Unsubscribe"],
    )
    assert link, raw["List-Unsubscribe"]
    assert read_token(settings_, Purpose.UNSUBSCRIBE, link.group(1)) == unsubscribe_payload
    # The reader's own mailto when they are a subscriber (`created_at`), signed for them.
    mailto = link.group(2)
    if created_at is None:
        assert mailto == "unsubscribe@news.example.fr"
    else:
        assert unsubscribe_subscriber_id(settings_, mailto) == unsubscribe_payload[0]
        assert unsubscribe_signed(settings_, mailto, unsubscribe_payload[0], created_at), mailto

    # The subject: plain printable ASCII as is, or only encoded-words (ours, which show
    # the text literally); never an encoded-word taken over from the text.
    subject_lines = raw["Subject"].removeprefix("Subject: ").split("\r\n")
    value = " ".join(line.strip() for line in subject_lines)
    words = value.split(" ")
    if all(re.fullmatch(r"=\?utf-8\?[bq]\?[^?\s]*\?=", w) for w in words):
        assert all(len(line) <= 78 for line in subject_lines)
    else:
        assert value.isascii() and value.isprintable() and "=?" not in value, value

    message = parse_wire(data)
    assert message["Subject"] == shown(subject)
    recipients = message["To"].addresses
    assert [a.addr_spec for a in recipients] == [wire_to]
    assert message.get_content_type() == "multipart/alternative"
    assert message.get_boundary() == boundary.group(1)
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    assert not message.defects and all(not p.defects for p in message.iter_parts())
    # The boundary only where hebdo put it: opening each part, and closing.
    delimiters = [line for line in body.split(b"\r\n") if line.startswith(b"--=_hebdo_")]
    assert delimiters == [f"--{boundary.group(1)}".encode()] * 2 + [
        f"--{boundary.group(1)}--".encode()
    ]
    return message


def part(message: EmailMessage, subtype: str) -> str:
    body = message.get_body(preferencelist=(subtype,))
    assert body is not None
    content = body.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


@pytest.mark.slow
@settings(deadline=None, database=None, max_examples=200)
@given(hostile_texts, hostile_texts, hostile_texts)
def test_the_mailer_writes_only_its_own_headers_whatever_the_text(
    pure_settings: Settings, subject: str, text: str, html: str
) -> None:
    """build_message, the one way every mail is built: the subject shows the text
    literally in one Subject header, and the parts carry the text unchanged."""
    unsubscribe = make_token(pure_settings, Purpose.UNSUBSCRIBE, [7, 1_700_000_000])
    mail = build_message(
        pure_settings,
        to="lectrice@exemple.fr",
        subject=subject,
        text=text,
        html=html,
        unsubscribe_url=f"{BASE_URL}/unsubscribe/{unsubscribe}",
        now=NOW,
    )
    assert mail.envelope.recipient == "lectrice@exemple.fr"
    message = check_wire(
        pure_settings,
        mail.data,
        to="lectrice@exemple.fr",
        subject=subject,
        now=NOW,
        unsubscribe_payload=[7, 1_700_000_000],
    )
    # What the reader gets is what was written (line ends are the mail's own, CRLF).
    for subtype, content in (("plain", text), ("html", html)):
        assert part(message, subtype) == content.replace("\r\n", "\n").replace("\r", "\n")


def _clear_articles(app: Flask) -> None:
    with app.app_context():
        for table in (IssueArticle, Issue, ArticleRow):
            db.session.execute(delete(table))
        db.session.commit()


@pytest.mark.slow
@DB_BOUND
@given(
    st.lists(st.tuples(hostile_texts, hostile_texts), min_size=1, max_size=3),
    st.sampled_from(["fr", "en"]),
    st.sampled_from(["lectrice@exemple.fr", "josé@exemple.fr", "o'neil+hebdo@bücher.de"]),
)
def test_every_digest_mail_has_the_headers_hebdo_wrote_whatever_the_articles_say(
    app: Flask, articles: list[tuple[str, str]], locale: str, email: str
) -> None:
    """The issue planned from feed text (through store_article and plan_issue, as in
    production), rendered once per locale and filled in per subscriber (mail_for): the
    first title goes into the Subject, shown literally; no text reaches another header."""
    settings_ = app.config["SETTINGS"]
    _clear_articles(app)
    with app.app_context():
        for n, (title, summary) in enumerate(articles):
            store_article(
                ArticleInput(
                    url=f"https://lhebdo.example/articles/{n}",
                    # A title that cleans up to nothing is refused at the door (tested in
                    # test_feeds); give every one a word so the issue is planned.
                    title=title if plain_text(title, MAX_TITLE) else f"n°{n} {title}",
                    summary=summary,
                    published_at=NOW - timedelta(hours=n + 1),
                ),
                source="test",
                now=NOW,
            )
        db.session.commit()
        plan_issue(settings_, WEEK, NOW)
        issue = get_issue(WEEK)
        assert issue is not None and issue.subject
        lead = issue.subject
        created = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
        mail = mail_for(
            settings_,
            mail_template(settings_, issue, locale),
            Recipient(42, email, locale, created),
            NOW,
        )
        others = len(issue_articles(issue.id)) - 1
    assert mail.envelope.recipient == wire_address(email)[0]
    with app.app_context(), force_locale(locale):
        # The subject hebdo chose from the lead title (at most 70 characters, the title
        # cut on a word): whatever the title holds, the reader sees that very text.
        expected_subject = digest_subject(settings_, lead, others, WEEK, locale)
    assert 0 < len(expected_subject) <= SUBJECT_MAX
    message = check_wire(
        settings_,
        mail.data,
        to=email,
        subject=expected_subject,
        now=NOW,
        unsubscribe_payload=[42, int(created.timestamp())],
        kind="digest",
        created_at=created,
        campaign=WEEK,
    )
    html = part(message, "html")
    assert "<script" not in html.lower()
    assert all(h.startswith("https://") for h in re.findall(r'href="([^"]*)"', html))
    unsubscribe_url = re.search(r"<(https://[^>]+)>", str(message["List-Unsubscribe"]))
    assert unsubscribe_url and unsubscribe_url.group(1) in part(message, "plain")


# Addresses a sign-up accepts, in every kind of spelling: ASCII, IDN domains (punycode on
# the wire), non-ASCII local parts (SMTPUTF8), every atext special.
confirmable = st.builds(
    lambda local, domain: f"{local}@{domain}",
    st.lists(
        st.sampled_from(
            ["a", "Zoé", "jean.dupont", "x+tag", "o'neil", "ß", "用户", "{|}~#$%&*/^`", "=", "?"]
        ),
        min_size=1,
        max_size=4,
    ).map("".join),
    st.sampled_from(["exemple.fr", "EXEMPLE.FR", "exämple.fr", "bücher.de", "例え.jp"]),
)


@pytest.mark.slow
@DB_BOUND
@given(confirmable, st.sampled_from(["fr", "en"]))
def test_every_confirmation_mail_reaches_one_recipient_with_hebdos_headers(
    smtp_app: Flask, smtp_server: SMTPSink, raw: str, locale: str
) -> None:
    """Whatever address a sign-up gives (once accepted), its confirmation mail, sent by the
    real sweep through a real SMTP server, has one envelope recipient and one To, both the
    stored address, and only the headers hebdo writes."""
    try:
        email = normalise_email(raw)
    except InvalidEmail:
        # "=?" (an encoded-word's opening) is refused; every other spelling is accepted.
        assert "=?" in raw
        return
    settings_ = smtp_app.config["SETTINGS"]
    with smtp_app.app_context():
        db.session.execute(delete(AuditEvent))
        db.session.execute(delete(Subscriber))
        db.session.commit()
        consent = Consent(None, "v1", "203.0.113.9", None)
        result = subscribe(email, locale=locale, consent=consent, now=NOW, settings=settings_)
        sub = db.session.get(Subscriber, result.subscriber_id)
        assert sub is not None
        identity = [sub.id, int(sub.created_at.timestamp())]
        created_at = sub.created_at
    smtp_server.messages.clear()
    assert sweep(smtp_app, NOW) == 1
    (received,) = smtp_server.wait_for(1)
    assert received.rcpt_tos == [wire_address(email)[0]]
    with smtp_app.app_context(), force_locale(locale):
        expected_subject = gettext(
            "Confirm your subscription to %(site)s", site=settings_.site_name
        )
    message = check_wire(
        settings_,
        received.data,
        to=email,
        subject=expected_subject,
        now=NOW,
        unsubscribe_payload=identity,
        created_at=created_at,
    )
    assert f"{BASE_URL}/confirm/" in part(message, "plain")
