"""Doctor check 5: the sending domain's SPF, DKIM and DMARC records in DNS."""

from __future__ import annotations

import base64
import ipaddress
import socket

import dkim
import dkim.crypto
import dkim.util
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from service.config import Settings
from service.ops.doctor.configuration import _loopback, _reserved
from service.ops.doctor.report import TIMEOUT, CheckResult, Status, _first_line

# --- 5. DNS of the sending domain -------------------------------------------------------


class _NoAnswer(Exception):
    """No usable answer from the DNS server (timeout, refused, network down)."""


def check_dns(
    settings: Settings,
    *,
    nameserver: tuple[str, int] | None = None,
    timeout: float = TIMEOUT,
) -> list[CheckResult]:
    """SPF, DKIM and DMARC of the domain of HEBDO_MAIL_FROM, as receiving servers see them.

    Without a working resolver the records are unknown, not missing: the result is
    SKIPPED. A resolver is tested first by asking for the root zone, which every real
    one knows (a sandbox's stub resolver that answers NXDOMAIN to everything would
    otherwise make every record look absent).
    """
    domain = settings.mail_domain
    if _reserved(domain):
        # Nothing to look up; in production the configuration check already warns.
        return [
            CheckResult(
                "dns",
                Status.SKIPPED,
                f"{domain} is a reserved name with no public DNS",
                "set HEBDO_MAIL_FROM to an address at a domain you own",
            )
        ]
    try:
        resolver = _resolver(nameserver, timeout)
    except dns.resolver.NoResolverConfiguration:
        return [_unreachable("no DNS server is configured on this machine")]
    port = f":{resolver.port}" if resolver.port != 53 else ""
    servers = ", ".join(f"{ns}{port}" for ns in resolver.nameservers)
    try:
        if _query(resolver, ".", "SOA") is None:
            return [
                _unreachable(f"the DNS server ({servers}) says even the root zone does not exist")
            ]
    except _NoAnswer as exc:
        return [_unreachable(f"no DNS server answered ({servers}: {exc})")]

    try:
        spf = _query(resolver, domain, "TXT")
    except _NoAnswer as exc:
        return [_lookup_failed("dns", domain, exc)]
    if spf is None:
        return [
            CheckResult(
                "dns",
                Status.FAIL,
                f"{domain} does not exist in DNS: receiving servers reject mail from it",
                "set HEBDO_MAIL_FROM to an address at a domain you own, or register this one",
            )
        ]
    return [
        _spf_verdict(domain, spf, settings),
        _dkim_verdict(resolver, settings),
        _dmarc_verdict(resolver, domain),
    ]


def _unreachable(reason: str) -> CheckResult:
    return CheckResult(
        "dns",
        Status.SKIPPED,
        f"network unreachable: {reason}; SPF, DKIM and DMARC not checked",
        "run `hebdo doctor` where DNS works, or name a server with --nameserver HOST[:PORT]",
    )


def _lookup_failed(name: str, query: str, exc: Exception) -> CheckResult:
    return CheckResult(
        name,
        Status.WARN,
        f"no answer for {query}: {exc}",
        "run `hebdo doctor` again; check the record with `dig TXT " + query + "`",
    )


def parse_nameserver(value: str) -> tuple[str, int]:
    """`HOST[:PORT]` (`[v6]:PORT` for an IPv6 address with a port) → (IP address, port)."""
    host, port = value.strip(), 53
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        if rest:
            port = int(rest.removeprefix(":"))
    elif host.count(":") == 1:
        host, _, number = host.partition(":")
        port = int(number)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        # A name: dnspython asks servers by address, so look it up once here.
        try:
            host = str(socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][4][0])
        except OSError as exc:
            raise ValueError(f"cannot resolve {host!r}: {exc}") from None
    return host, port


def _resolver(nameserver: tuple[str, int] | None, timeout: float) -> dns.resolver.Resolver:
    resolver = dns.resolver.Resolver(configure=nameserver is None)
    if nameserver is not None:
        resolver.nameservers = [nameserver[0]]
        resolver.port = nameserver[1]
    resolver.timeout = timeout
    resolver.lifetime = timeout
    return resolver


def _query(resolver: dns.resolver.Resolver, name: str, rdtype: str) -> list[str] | None:
    """The records of `name` (TXT strings joined as RFC 7208 says), [] when the name
    exists without such records, None when the name does not exist."""
    try:
        answer = resolver.resolve(dns.name.from_text(name), rdtype, search=False)
    except dns.resolver.NXDOMAIN:
        return None
    except dns.resolver.NoAnswer:
        return []
    except dns.exception.Timeout:
        raise _NoAnswer(f"no answer within {resolver.lifetime:g} s") from None
    except dns.resolver.NoNameservers as exc:
        raise _NoAnswer(str(exc)) from None
    except (OSError, dns.exception.DNSException) as exc:
        raise _NoAnswer(f"{type(exc).__name__}: {exc}") from None
    if answer.rrset is None:
        return []
    if dns.rdatatype.from_text(rdtype) != dns.rdatatype.TXT:
        return [rdata.to_text() for rdata in answer.rrset]
    # A TXT record longer than 255 octets comes as several strings, to be concatenated.
    return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer.rrset]


def _spf_verdict(domain: str, txt: list[str], settings: Settings) -> CheckResult:
    records = [r for r in txt if r.lower() == "v=spf1" or r.lower().startswith("v=spf1 ")]
    relay = settings.smtp_host if settings.smtp_host and not _loopback(settings.smtp_host) else ""
    example = f'{domain}. TXT "v=spf1 {"a:" + relay if relay else "ip4:<your relay address>"} ~all"'
    if not records:
        return CheckResult(
            "spf",
            Status.FAIL,
            f'no SPF record (TXT "v=spf1 …") at {domain}: receivers cannot tell which '
            "servers may send its mail, and junk or reject it",
            f"publish one naming the servers that deliver your mail, e.g. {example} "
            "(or the include: your mail provider documents)",
        )
    if len(records) > 1:
        return CheckResult(
            "spf",
            Status.FAIL,
            f"{len(records)} SPF records at {domain}: receivers treat that as an error "
            "(permerror) and ignore them all",
            "merge them into a single v=spf1 record",
        )
    record = records[0]
    if record.split()[-1].lower() in ("+all", "all"):
        return CheckResult(
            "spf",
            Status.WARN,
            f'SPF at {domain} ends in "+all": any server in the world may send as {domain}',
            'end it with "~all" or "-all" after the servers that really send',
        )
    return CheckResult("spf", Status.OK, f'{domain}: "{record}"')


def _dkim_verdict(resolver: dns.resolver.Resolver, settings: Settings) -> CheckResult:
    if not settings.dkim_selector or not settings.dkim_key:
        return CheckResult(
            "dkim",
            Status.WARN,
            "mail is not DKIM-signed (no HEBDO_DKIM_KEY_FILE): Gmail and Yahoo require DKIM "
            "from bulk senders, and DMARC can then only pass through SPF",
            "create a key (`openssl genrsa -out dkim.pem 2048`), set HEBDO_DKIM_KEY_FILE and "
            "HEBDO_DKIM_SELECTOR, and run `hebdo doctor` again: it prints the record to publish",
        )
    name = f"{settings.dkim_selector}._domainkey.{settings.mail_domain}"
    try:
        private = dkim.crypto.parse_pem_private_key(settings.dkim_key)
    except dkim.crypto.UnparsableKeyError as exc:
        return CheckResult(
            "dkim",
            Status.FAIL,
            f"HEBDO_DKIM_KEY_FILE is not an RSA private key the signer can use: {_first_line(exc)}",
            "create one with `openssl genrsa -out dkim.pem 2048`",
        )
    public = dkim_public_key(private["modulus"], private["publicExponent"])
    publish = f'publish {name}. TXT "v=DKIM1; k=rsa; p={public}"'
    try:
        txt = _query(resolver, name, "TXT")
    except _NoAnswer as exc:
        return _lookup_failed("dkim", name, exc)
    records = [r for r in txt or [] if "p" in (_tags(r) or {})]
    if not records:
        return CheckResult(
            "dkim",
            Status.FAIL,
            f"no DKIM key at {name}: every mail carries a signature receivers cannot check",
            publish,
        )
    if len(records) > 1:
        return CheckResult(
            "dkim",
            Status.FAIL,
            f"{len(records)} DKIM records at {name}: receivers pick one at random",
            f"keep only one: {publish}",
        )
    tags = _tags(records[0]) or {}
    if not tags["p"]:
        return CheckResult("dkim", Status.FAIL, f"the key at {name} is revoked (empty p=)", publish)
    if tags.get("k", "rsa").lower() != "rsa":
        return CheckResult(
            "dkim",
            Status.FAIL,
            f"the record at {name} holds a {tags['k']} key; HEBDO_DKIM_KEY_FILE is RSA",
            publish,
        )
    try:
        published = dkim.crypto.parse_public_key(base64.b64decode(tags["p"]))
    except (ValueError, dkim.crypto.UnparsableKeyError) as exc:
        return CheckResult(
            "dkim",
            Status.FAIL,
            f"the key at {name} cannot be read: {_first_line(exc)}",
            publish,
        )
    if (published["modulus"], published["publicExponent"]) != (
        private["modulus"],
        private["publicExponent"],
    ):
        return CheckResult(
            "dkim",
            Status.FAIL,
            f"the key published at {name} is not the public half of HEBDO_DKIM_KEY_FILE: "
            "receivers will find every signature invalid",
            f"{publish} (or point HEBDO_DKIM_KEY_FILE at the matching private key)",
        )
    bits = private["modulus"].bit_length()
    if bits < 1024:
        return CheckResult(
            "dkim",
            Status.FAIL,
            f"{name} matches HEBDO_DKIM_KEY_FILE, but a {bits}-bit key is ignored by receivers",
            "create a 2048-bit key (`openssl genrsa -out dkim.pem 2048`) and publish it",
        )
    return CheckResult("dkim", Status.OK, f"{name}: {bits}-bit RSA key matching the signing key")


def _tags(record: str) -> dict[str, str] | None:
    """A DKIM or DMARC tag list (`v=DKIM1; k=rsa; p=…`), or None when it is not one."""
    try:
        parsed = dkim.util.parse_tag_value(record.encode())
    except (dkim.util.InvalidTagValueList, UnicodeError):
        return None
    return {k.decode().lower(): v.decode().strip() for k, v in parsed.items()}


def _dmarc_verdict(resolver: dns.resolver.Resolver, domain: str) -> CheckResult:
    """DMARC at the domain, else at its parent domains (a receiver falls back to the
    organizational domain; without the public suffix list, stop at two labels)."""
    labels = domain.split(".")
    candidates = [".".join(labels[i:]) for i in range(max(1, len(labels) - 1))]
    example = f'_dmarc.{domain}. TXT "v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}"'
    fix = f"publish {example}, read the reports, then move to p=quarantine once every mail passes"
    for where in candidates:
        name = f"_dmarc.{where}"
        try:
            txt = _query(resolver, name, "TXT")
        except _NoAnswer as exc:
            return _lookup_failed("dmarc", name, exc)
        records = [r for r in txt or [] if r.startswith("v=DMARC1")]
        if not records:
            continue
        if len(records) > 1:
            return CheckResult(
                "dmarc",
                Status.FAIL,
                f"{len(records)} DMARC records at {name}: receivers ignore them all",
                "keep a single v=DMARC1 record",
            )
        tags = _tags(records[0]) or {}
        # Found at a parent: its sp= (subdomain policy) applies, if it has one.
        policy = tags.get("sp", "") if where != domain else ""
        policy = (policy or tags.get("p", "")).lower()
        if policy not in ("none", "quarantine", "reject"):
            return CheckResult(
                "dmarc",
                Status.FAIL,
                f'the DMARC record at {name} has no valid policy (p=): "{records[0]}"',
                f"publish {example}",
            )
        meaning = {
            "none": "monitoring only, nothing is rejected",
            "quarantine": "failing mail goes to spam",
            "reject": "failing mail is refused",
        }[policy]
        return CheckResult("dmarc", Status.OK, f"{name}: policy {policy} ({meaning})")
    return CheckResult(
        "dmarc",
        Status.WARN,
        f"no DMARC record at _dmarc.{domain}: Gmail and Yahoo require one from bulk senders",
        fix,
    )


def dkim_public_key(modulus: int, exponent: int) -> str:
    """The base64 DER SubjectPublicKeyInfo of an RSA key: the `p=` of its DKIM record."""

    def der(tag: int, body: bytes) -> bytes:
        size = len(body)
        if size < 0x80:
            length = bytes([size])
        else:
            octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
            length = bytes([0x80 | len(octets)]) + octets
        return bytes([tag]) + length + body

    def integer(value: int) -> bytes:
        # One spare leading octet keeps the value positive in two's complement.
        return der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))

    rsa_encryption = der(0x06, bytes.fromhex("2a864886f70d010101")) + der(0x05, b"")
    key = der(0x30, integer(modulus) + integer(exponent))
    info = der(0x30, der(0x30, rsa_encryption) + der(0x03, b"\x00" + key))
    return base64.b64encode(info).decode()
