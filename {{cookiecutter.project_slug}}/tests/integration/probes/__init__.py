"""The broker this project was generated for, as its tests see it: a `Probe` that talks to it as
another program would, and what the generic tests must know of it (see probes/<broker>/)."""

from __future__ import annotations

from .{{ cookiecutter.broker }} import (
    SILENCE_SETTINGS,
    START_HINT,
    TEST_SETTINGS,
    WORKER_ENV,
    Probe,
    make_proxy,
    notice_within,
    ready_to_share,
    shares_settled,
    slow_handler_seconds,
    waiting_places,
)

__all__ = [
    "SILENCE_SETTINGS",
    "START_HINT",
    "TEST_SETTINGS",
    "WORKER_ENV",
    "Probe",
    "make_proxy",
    "notice_within",
    "ready_to_share",
    "shares_settled",
    "slow_handler_seconds",
    "waiting_places",
]
