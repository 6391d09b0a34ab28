"""What most brokers answer alike; a broker's probe package uses these unless it differs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from {{ cookiecutter.project_slug }}.settings import BROKER_SCHEMES

from ..tcp_proxy import TcpProxy

RECONNECT_SECONDS = 10  # after noticing a dead connection: close, back off, connect, declare


def make_proxy(broker_url: str) -> TcpProxy:
    """A proxy in front of the broker that BROKER_URL names."""
    parts = urlsplit(broker_url)
    return TcpProxy(parts.hostname or "localhost", parts.port or BROKER_SCHEMES[parts.scheme])


def ready_to_share(log: Path) -> bool:
    """A worker whose log says this takes its share of the queue at once."""
    return "consuming '" in log.read_text()


def shares_settled(logs: Sequence[Path]) -> bool:
    """Every consumer gets messages as soon as it consumes: nothing to wait for."""
    return True
