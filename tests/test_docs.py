"""What the generated README states about the project is true of the project it ships with."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from .conftest import BROKERS, bake_cached, project_env, run

# "(`HEARTBEAT_SECONDS`, 30 s by default)" and the configuration table's "| `MAX_RETRIES` | `3` |".
BY_DEFAULT = re.compile(r"`([A-Z][A-Z0-9_]+)`, (\d+(?:\.\d+)?) s by default")
TABLE_ROW = re.compile(r"^\| `([A-Z][A-Z0-9_]+)` \| `(\d+(?:\.\d+)?)` \|", re.MULTILINE)
SETTINGS_DEFAULTS = (
    "import json; from {slug}.settings import Settings; "
    "print(json.dumps({{name.upper(): str(field.default) for name, field in Settings.model_fields.items()}}))"
)


def answers_for(broker: str) -> dict[str, str]:
    return {"broker": broker, "consumer": "async", "use_docker": "yes", "ci": "none"}


@pytest.mark.parametrize("broker", BROKERS)
def test_the_defaults_the_readme_states_are_the_settings_defaults(
    broker: str, baked: dict[str, Path], tmp_path_factory
) -> None:
    project = bake_cached(baked, tmp_path_factory, answers_for(broker))
    readme = (project / "README.md").read_text()
    output = run([sys.executable, "-c", SETTINGS_DEFAULTS.format(slug=project.name)], project, project_env(project))
    defaults = json.loads(output.strip().splitlines()[-1])
    stated = [*BY_DEFAULT.findall(readme), *TABLE_ROW.findall(readme)]
    assert stated, "the README states no defaults any more: update this test"
    wrong = [
        f"{name}: README {value}, settings {defaults.get(name)}"
        for name, value in stated
        if name in defaults and float(value) != float(defaults[name])
    ]
    assert wrong == []


def test_pytest_runs_the_unit_tests_before_the_integration_tests(baked: dict[str, Path], tmp_path_factory) -> None:
    """The README says `pytest` runs the fast unit tests first, then the integration tests."""
    project = bake_cached(baked, tmp_path_factory, answers_for("redis"))
    assert "unit tests, then integration tests" in (project / "README.md").read_text()
    output = run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        project,
        project_env(project),
    )
    ids = [line for line in output.splitlines() if "::" in line]
    kinds = ["integration" if line.startswith("tests/integration/") else "unit" for line in ids]
    assert "unit" in kinds
    assert "integration" in kinds
    assert kinds == sorted(kinds, key=lambda kind: kind == "integration"), "a unit test is collected after integration"
