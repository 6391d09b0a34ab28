"""Every combination of options bakes into a clean project: no template left, nothing of an
unselected option, lint, format and type checks clean, and its unit tests green."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .conftest import DEFAULTS, all_combinations, bake_cached, combination_id, project_env, python_tool, run

COMBINATIONS = [pytest.param(answers, id=combination_id(answers)) for answers in all_combinations()]

# What must not appear in a project, in any file's text or path, when an option is not chosen.
TRACES = {
    ("broker", "rabbitmq"): r"rabbit|amqp|pika",
    ("broker", "redis"): r"redis",
    ("broker", "kafka"): r"kafka",
    ("consumer", "async"): r"aio[-_]?pika|aiormq|aiokafka|redis\.asyncio|async consumer|consumer=async",
    ("consumer", "threaded"): (
        r"(?<!aio-)(?<!aio_)\bpika\b|confluent|BlockingConnection|handler_threads|threaded|thread pool"
    ),
    ("use_docker", "yes"): r"docker",
    ("kubernetes", "yes"): r"kubernetes|kubectl|kustomiz|keda",
    ("ci", "github"): r"github",
    ("ci", "gitlab"): r"gitlab",
}
LEFTOVER_TEMPLATE = re.compile(r"\{%|%\}|\{#|#\}|(?<!\$)\{\{|cookiecutter")
# The record of the answers: it names every option (`"use_docker": "no"`) by design, and its own name
# says which tool's answers it holds. Its text is checked for template syntax all the same.
ANSWERS_RECORD = ".cookiecutter.json"


def project_files(project: Path) -> list[Path]:
    skip = {".mypy_cache", ".ruff_cache", ".pytest_cache", "__pycache__"}
    return [path for path in project.rglob("*") if path.is_file() and not skip & set(path.parts)]


def unselected_traces(answers: dict[str, str]) -> dict[str, re.Pattern[str]]:
    return {
        f"{option}={value}": re.compile(pattern, re.IGNORECASE)
        for (option, value), pattern in TRACES.items()
        if answers[option] != value
    }


@pytest.mark.parametrize("answers", COMBINATIONS)
def test_no_template_syntax_is_left(answers: dict[str, str], baked: dict[str, Path], tmp_path_factory) -> None:
    project = bake_cached(baked, tmp_path_factory, answers)
    leftovers = [
        f"{path.relative_to(project)}: {match.group(0)!r}"
        for path in project_files(project)
        for match in [
            LEFTOVER_TEMPLATE.search(
                ("" if path.name == ANSWERS_RECORD else str(path.relative_to(project))) + "\n" + path.read_text()
            )
        ]
        if match
    ]
    assert leftovers == []


@pytest.mark.parametrize("answers", COMBINATIONS)
def test_nothing_of_an_unselected_option_remains(
    answers: dict[str, str], baked: dict[str, Path], tmp_path_factory
) -> None:
    project = bake_cached(baked, tmp_path_factory, answers)
    found = []
    for path in project_files(project):
        if path.name == ANSWERS_RECORD:
            continue
        relative = str(path.relative_to(project))
        text = path.read_text()
        for option, pattern in unselected_traces(answers).items():
            for number, line in enumerate([relative, *text.splitlines()]):
                if pattern.search(line):
                    found.append(f"{option} in {relative}:{number}: {line.strip()[:120]}")
    assert found == []


@pytest.mark.parametrize("answers", COMBINATIONS)
def test_ruff_and_mypy_are_clean(answers: dict[str, str], baked: dict[str, Path], tmp_path_factory) -> None:
    project = bake_cached(baked, tmp_path_factory, answers)
    env = project_env(project)
    run([*python_tool("ruff"), "check", "--no-cache", "."], project, env)
    run([*python_tool("ruff"), "format", "--check", "--no-cache", "."], project, env)
    run([*python_tool("mypy"), "--cache-dir", str(project.parent / "mypy-cache")], project, env)


@pytest.mark.parametrize("answers", COMBINATIONS)
def test_generated_unit_tests_pass(answers: dict[str, str], baked: dict[str, Path], tmp_path_factory) -> None:
    project = bake_cached(baked, tmp_path_factory, answers)
    output = run(
        [*python_tool("pytest"), "-q", "-p", "no:cacheprovider", "-m", "not integration"],
        project,
        project_env(project),
    )
    assert re.search(r"\b\d+ passed\b", output), output
    assert " failed" not in output


@pytest.mark.parametrize("answers", COMBINATIONS[:1])
def test_the_project_records_its_answers_and_nothing_else(
    answers: dict[str, str], baked: dict[str, Path], tmp_path_factory
) -> None:
    project = bake_cached(baked, tmp_path_factory, answers)
    record = json.loads((project / ANSWERS_RECORD).read_text())
    options = {name for name in DEFAULTS if not name.startswith("_")}
    assert set(record) == options
    assert record.items() >= answers.items()
    assert record["project_slug"] == project.name
