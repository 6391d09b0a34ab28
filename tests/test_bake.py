"""Every combination of options bakes into a clean project: no template left, nothing of an
unselected option, lint, format and type checks clean, and its unit tests green."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .conftest import (
    DEFAULTS,
    all_combinations,
    bake_cached,
    combination_id,
    every_combination,
    project_env,
    python_tool,
    run,
)

COMBINATIONS = [pytest.param(answers, id=combination_id(answers)) for answers in all_combinations()]
EVERY_COMBINATION = [pytest.param(answers, id=combination_id(answers)) for answers in every_combination()]

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
    ("task_store", "none"): r"keeps no record of its tasks",
    ("task_store", "redis"): r"store[/.]redis|RedisStore|TASK_STORE_URL=redis|test_store_redis",
    ("task_store", "postgresql"): r"postgres|psycopg|\bpg_",
}
# What must not appear when the option has the value: a task store's text in a project without one.
TRACES_OF_THE_VALUE = {
    ("task_store", "none"): r"task[ _-]?stores?\b|task[ _-]?records?\b|TASK_RECORD|Idempotent-Replayed|/tasks/\{",
}
# A trace that another option's choice explains: Redis as the task store names Redis too.
EXPLAINED_BY = {("broker", "redis"): ("task_store", "redis")}
LEFTOVER_TEMPLATE = re.compile(r"\{%|%\}|\{#|#\}|(?<!\$)\{\{|cookiecutter")
# The record of the answers: it names every option (`"use_docker": "no"`) by design, and its own name
# says which tool's answers it holds. Its text is checked for template syntax all the same.
ANSWERS_RECORD = ".cookiecutter.json"


def project_files(project: Path) -> list[Path]:
    skip = {".mypy_cache", ".ruff_cache", ".pytest_cache", "__pycache__"}
    return [path for path in project.rglob("*") if path.is_file() and not skip & set(path.parts)]


def explained(answers: dict[str, str], option: str, value: str) -> bool:
    """Whether another option's choice names `value` of `option` in its own right."""
    other = EXPLAINED_BY.get((option, value))
    return other is not None and answers[other[0]] == other[1]


def unselected_traces(answers: dict[str, str]) -> dict[str, re.Pattern[str]]:
    unselected = {
        f"{option}={value}": re.compile(pattern, re.IGNORECASE)
        for (option, value), pattern in TRACES.items()
        if answers[option] != value and not explained(answers, option, value)
    }
    selected = {
        f"{option}!={value}": re.compile(pattern, re.IGNORECASE)
        for (option, value), pattern in TRACES_OF_THE_VALUE.items()
        if answers[option] == value
    }
    return {**unselected, **selected}


@pytest.mark.parametrize("answers", EVERY_COMBINATION)
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


@pytest.mark.parametrize("answers", EVERY_COMBINATION)
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
