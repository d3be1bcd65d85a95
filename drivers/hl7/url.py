"""``tcp://host:port`` endpoints for the MLLP listener, client and simulator."""

from __future__ import annotations

from urllib.parse import urlsplit

#: IANA-registered HL7 port
DEFAULT_PORT = 2575


def parse_tcp_url(url: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``tcp://HOST[:PORT]`` or ``HOST:PORT`` -> (host, port); ValueError names the problem."""
    text = url if "://" in url else f"tcp://{url}"
    parts = urlsplit(text)
    if parts.scheme != "tcp":
        raise ValueError(f"{url!r}: scheme must be tcp:// (MLLP over TCP)")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r}: port is not a number in 0..65535") from None
    if not parts.hostname:
        raise ValueError(f"{url!r}: host is missing")
    if parts.path not in ("", "/") or parts.query:
        raise ValueError(f"{url!r}: unexpected path or query")
    return parts.hostname, default_port if port is None else port
