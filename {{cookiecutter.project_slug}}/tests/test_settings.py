"""A configuration the service cannot use stops it at start-up, in one line that names the setting,
instead of a traceback, or a client retrying an address that can never work."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from {{ cookiecutter.project_slug }}.settings import Settings

UNUSABLE = [
    ("BROKER_URL", "ftp://localhost/"),
{%- if cookiecutter.broker == "kafka" %}
    ("BROKER_URL", "kafka://localhost:abc"),
    ("BROKER_URL", "kafka://:9092"),
    ("BROKER_URL", "kafka://h1:9092,,h2:9092"),
{%- endif %}
    ("MAX_RETRIES", "-1"),
]


@pytest.mark.parametrize(("name", "value"), UNUSABLE)
@pytest.mark.parametrize("entry", ["{{ cookiecutter.project_slug }}.worker", "uvicorn"])
def test_an_unusable_setting_stops_the_service_in_one_line(name: str, value: str, entry: str) -> None:
    command = ["-m", entry] if entry != "uvicorn" else ["-m", "uvicorn", "{{ cookiecutter.project_slug }}.main:app"]
    env = {**os.environ, name: value}
    done = subprocess.run([sys.executable, *command], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"invalid configuration: {name}"), lines


def test_a_refused_broker_url_is_not_repeated_with_its_password() -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(broker_url="ftp://user:s3cret@localhost/")
    assert "s3cret" not in str(refused.value)
{%- if cookiecutter.broker == "kafka" %}


def test_bootstrap_servers_get_the_default_port() -> None:
    assert Settings(broker_url="kafka://a:19092,b,c:9093").bootstrap_servers == "a:19092,b:9092,c:9093"
{%- endif %}
