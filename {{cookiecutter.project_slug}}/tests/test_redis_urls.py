"""Unit tests of BROKER_URL for Redis: what a Sentinel URL names, the URLs refused at start-up,
and what the publisher makes of Redis's replies (503, 504 or 202)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from redis.exceptions import OutOfMemoryError, ResponseError

from {{ cookiecutter.project_slug }}.brokers.base import BrokerUnavailable, OutcomeUnknown
from {{ cookiecutter.project_slug }}.brokers.redis.settings import SentinelTarget, sentinel_target
from {{ cookiecutter.project_slug }}.brokers.redis.streams import judge, publish_commands
from {{ cookiecutter.project_slug }}.settings import Settings


def test_a_sentinel_url_names_the_sentinels_the_master_and_the_database() -> None:
    assert sentinel_target("redis+sentinel://s1:26380,s2,[::1]:26381/mymaster/2") == SentinelTarget(
        sentinels=(("s1", 26380), ("s2", 26379), ("::1", 26381)), master="mymaster", db=2
    )


def test_a_sentinel_url_carries_credentials_and_tls() -> None:
    target = sentinel_target("rediss+sentinel://app:p%40ss@s1:26379/cache")
    assert target == SentinelTarget(
        sentinels=(("s1", 26379),), master="cache", db=0, username="app", password="p@ss", tls=True
    )


def test_a_plain_url_is_not_a_sentinel_one() -> None:
    assert sentinel_target("redis://localhost:6379/0") is None


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://s1:26379", "master name"),
        ("redis+sentinel://s1:26379/", "master name"),
        ("redis+sentinel://s1:port/mymaster", "port must be a number"),
        ("redis+sentinel://s1/mymaster/zero", "must be a number"),
        ("redis+sentinel://,s2/mymaster", "address is empty"),
        ("redis://localhost:port/0", "Port could not be cast"),
        ("redis://localhost:6379/first", "database must be a number"),
        ("http://localhost:6379/0", "must start with"),
    ],
)
def test_a_url_the_client_cannot_use_fails_at_start_up_saying_why(url: str, says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        Settings(broker_url=url)


def test_every_good_form_is_accepted() -> None:
    for url in ("redis://localhost:6379/0", "rediss://:pw@h:6380/1", "redis+sentinel://a,b/m/1", "memory://"):
        assert Settings(broker_url=url).broker_url == url


def settings(replicas: int = 0) -> Settings:
    return Settings(broker_url="redis://localhost:6379/0", queue_name="jobs", redis_wait_replicas=replicas)


def test_without_replicas_to_wait_for_a_publish_is_one_xadd() -> None:
    [command] = publish_commands(settings(), b"{}", {"x-request-id": "r"}, "t1", 0)
    assert command[:3] == ("XADD", "jobs", "*")
    assert command[3:] == (b"x-request-id", b"r", b"body", b"{}")


def test_with_replicas_to_wait_for_wait_follows_the_xadd_and_the_delay_script() -> None:
    xadd, wait = publish_commands(settings(1), b"{}", {}, "t1", 0)
    assert xadd[0] == "XADD"
    assert wait == ("WAIT", 1, 1500)  # half the publish deadline
    script, wait = publish_commands(settings(2), b"{}", {}, "t1", 5)
    assert script[0] == "EVAL"
    assert wait[:2] == ("WAIT", 2)


def test_an_error_reply_is_a_refusal_a_short_wait_an_unknown_outcome() -> None:
    judge(settings(), [b"1-0"])
    judge(settings(1), [b"1-0", 1])
    with pytest.raises(BrokerUnavailable, match="OOM") as refused:
        judge(settings(), [OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'.")])
    assert not isinstance(refused.value, OutcomeUnknown)
    with pytest.raises(BrokerUnavailable, match="READONLY") as refused:
        judge(settings(1), [ResponseError("READONLY You can't write against a read only replica."), 0])
    assert not isinstance(refused.value, OutcomeUnknown)
    with pytest.raises(OutcomeUnknown, match="0 of the 1 replicas"):
        judge(settings(1), [b"1-0", 0])


def test_replicas_to_wait_for_cannot_be_negative() -> None:
    with pytest.raises(ValidationError):
        settings(-1)
