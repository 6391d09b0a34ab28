"""What both Kafka consumer styles share: record headers, the dead-letter record, retry pauses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

REASON_HEADER = "x-dead-letter-reason"
Headers = list[tuple[str, bytes]]


def record_headers(headers: Mapping[str, str]) -> Headers:
    return [(key, value.encode()) for key, value in headers.items()]


def dead_letter_headers(
    headers: Sequence[tuple[str, bytes | None]] | None, reason: str, partition: int, offset: int, attempts: int
) -> Headers:
    """The original headers, plus why the record was dead-lettered and where it came from."""
    kept = [(key, value) for key, value in headers or () if value is not None]
    return [
        *kept,
        (REASON_HEADER, reason.encode()),
        ("x-original-partition", str(partition).encode()),
        ("x-original-offset", str(offset).encode()),
        ("x-attempts", str(attempts).encode()),
    ]


def retry_pause(retry: int) -> float:
    """Seconds before retry number `retry` (1, 2, ...) of a failed record, in place."""
    return float(min(5.0, 0.2 * 2 ** (retry - 1)))
