"""Broker URL helpers shared with the Rust SDK (``BrokerConfig::from_url``/``with_password``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from .errors import ConfigError

__all__ = [
    "NatsUrl",
    "nats_subject",
    "parse_nats_url",
    "redact_url",
    "url_scheme",
    "with_password",
]

SCHEMES = ("redis", "rediss", "unix", "amqp", "amqps", "nats", "tls")


def url_scheme(url: str) -> str:
    """The broker URL's scheme, lower-cased; :class:`ConfigError` if unsupported."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in SCHEMES:
        raise ConfigError(
            f"unsupported broker URL scheme {scheme!r}: expected redis://, rediss://, amqp://, "
            "amqps://, nats:// or tls://"
        )
    return scheme


def nats_subject(stream: str, queue: str) -> str:
    """The subject that tasks of queue ``queue`` in stream ``stream`` are published to,
    and that the durable consumer ``queue`` filters on: ``{stream}.{queue}`` (as the Rust SDK)."""
    return f"{stream}.{queue}"


def _hostport(netloc: str) -> str:
    return netloc.rpartition("@")[2]


def _userinfo(netloc: str) -> tuple[str, str | None]:
    """(user, password) of a netloc, both still percent-encoded."""
    info, at, _ = netloc.rpartition("@")
    if not at:
        return "", None
    user, colon, password = info.partition(":")
    return user, (password if colon else None)


def with_password(url: str, password: str) -> str:
    """Put ``password`` in place of the URL's secret, as the Rust ``BrokerConfig::with_password``.

    Redis: the password (``redis://:PASSWORD@…``, a user name is kept; for ``unix://`` the
    ``password`` query parameter).  AMQP: the password (user ``guest`` if the URL has none).
    NATS: the password when the URL has ``user:password@``, the token otherwise.
    """
    scheme = url_scheme(url)
    parts = urlsplit(url)
    secret = quote(password, safe="")
    if scheme == "unix":
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "password"]
        query.append(("password", password))
        # Not urlunsplit: it would drop the empty authority of unix:///path.
        frag = f"#{parts.fragment}" if parts.fragment else ""
        return f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode(query)}{frag}"
    user, old = _userinfo(parts.netloc)
    host = _hostport(parts.netloc)
    if not host:
        raise ConfigError(f"{scheme} URL has no host")
    if scheme in ("amqp", "amqps"):
        netloc = f"{user or 'guest'}:{secret}@{host}"
    elif scheme in ("nats", "tls"):
        netloc = f"{user}:{secret}@{host}" if user and old is not None else f"{secret}@{host}"
    else:
        netloc = f"{user}:{secret}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def redact_url(url: str) -> str:
    """``scheme://host[:port]/path``: no credentials, no query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


@dataclass(frozen=True, slots=True)
class NatsUrl:
    """A parsed ``nats://[USER:PASSWORD@|TOKEN@]HOST[:PORT]?stream=STREAM`` (``tls://`` for TLS)."""

    #: ``nats://HOST:PORT`` or ``tls://HOST:PORT``, without credentials or query.
    server: str
    stream: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    tls: bool = False


def parse_nats_url(url: str, stream: str | None = None) -> NatsUrl:
    """Parse a NATS broker URL as the Rust ``BrokerConfig::from_url`` does.

    The ``stream`` query parameter names the JetStream stream; ``stream`` (the
    ``QWORKER_NATS_STREAM`` override) wins over it.  One of them is required.
    User names, passwords and tokens are percent-decoded; the port defaults to 4222.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("nats", "tls"):
        raise ConfigError(f"not a NATS URL (nats:// or tls://): scheme {scheme!r}")
    host = parts.hostname
    if not host:
        raise ConfigError("nats URL has no host")
    try:
        port = parts.port or 4222
    except ValueError as exc:
        raise ConfigError(f"nats URL: {exc}") from None
    query = dict(parse_qsl(parts.query))
    name = stream or query.get("stream", "").strip()
    if not name:
        raise ConfigError(
            "nats URL needs a ?stream=NAME query parameter (nats://host:4222?stream=TASKS), "
            "or set QWORKER_NATS_STREAM; QWORKER_QUEUE is the durable consumer"
        )
    raw_user, raw_password = _userinfo(parts.netloc)
    try:
        user = unquote(raw_user, errors="strict") if raw_user else None
        password = unquote(raw_password, errors="strict") if raw_password is not None else None
    except UnicodeDecodeError:
        raise ConfigError("nats URL credentials are not UTF-8") from None
    token = None
    if user is not None and password is None:
        user, token = None, user  # nats://TOKEN@host
    elif user is None:
        password = None  # nats://:secret@host: a password without a user is unused (as in Rust)
    if ":" in host:
        host = f"[{host}]"
    return NatsUrl(
        server=f"{scheme}://{host}:{port}",
        stream=name,
        user=user,
        password=password,
        token=token,
        tls=scheme == "tls",
    )
