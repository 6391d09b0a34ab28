"""Answers given on the command line, as users give them: bad ones are refused cleanly, odd free text works."""

from __future__ import annotations

import json
import py_compile
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from .conftest import TEMPLATE, project_env, run
from .test_hooks import SHADOWED_BY_DEPENDENCIES


def generate(output: Path, *answers: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cookiecutter", str(TEMPLATE), "--no-input", "-o", str(output), *answers],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def our_error_lines(output: str) -> list[str]:
    """The hook's own lines; cookiecutter adds its "Stopping generation" line and a traceback."""
    return [line for line in output.splitlines() if line.startswith("ERROR: ") and "Stopping generation" not in line]


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ("project_slug=task-service", "not a Python identifier"),
        ("project_slug=3d_service", "not a Python identifier"),
        ("project_slug=Task", "lower-case"),
        ("project_slug=import", "keyword"),
        ("project_slug=fastapi", "shadow"),
        ("project_slug=pika", "shadow"),
        ("project_slug=json", "shadow"),
        ("project_slug=test", "standard library's module 'test'; pass project_slug=<"),
        *((f"project_slug={name}", "that the project installs") for name in SHADOWED_BY_DEPENDENCIES),
        ("project_name=Test", "e.g. project_slug=test_app"),
        ("project_name=3D Printer Queue", "not a Python identifier"),
        ("python_version=3.9", "python_version"),
    ],
)
def test_a_bad_answer_is_refused_with_one_line_and_leaves_nothing(tmp_path: Path, answer: str, problem: str) -> None:
    result = generate(tmp_path, answer)
    assert result.returncode != 0
    [line] = our_error_lines(result.stdout + result.stderr)
    assert problem in line
    assert list(tmp_path.iterdir()) == []


def test_kubernetes_without_an_image_is_refused_with_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    result = generate(tmp_path, "kubernetes=yes", "use_docker=no")
    assert result.returncode != 0
    [line] = our_error_lines(result.stdout + result.stderr)
    assert line.startswith("ERROR: kubernetes=yes")
    assert "use_docker=yes" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "answer", ["broker=nats", "consumer=celery", "use_docker=maybe", "kubernetes=maybe", "ci=jenkins"]
)
def test_an_unknown_choice_is_refused_by_cookiecutter_and_leaves_nothing(tmp_path: Path, answer: str) -> None:
    result = generate(tmp_path, answer)
    assert result.returncode != 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ('Bob\'s "Quoted" Service', "bob_s_quoted_service"),
        ("Back\\slash \\n Service", "back_slash_n_service"),
        ("Сервис задач", "servis_zadach"),
        ("Café Orders ''' \"\"\"", "cafe_orders"),
    ],
)
def test_free_text_with_quotes_and_non_ascii_bakes_and_compiles(tmp_path: Path, name: str, slug: str) -> None:
    result = generate(tmp_path, f"project_name={name}", f"description={name}", "use_docker=no", "ci=none")
    assert result.returncode == 0, result.stderr
    project = tmp_path / slug
    for source in project.rglob("*.py"):
        py_compile.compile(str(source), doraise=True)
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["description"] == name
    title = run(
        [
            sys.executable,
            "-c",
            f"from {slug}.app import create_app; import json, {slug}.settings as s; "
            "print(json.dumps(create_app(s.Settings()).title))",
        ],
        project,
        project_env(project),
    )
    assert json.loads(title.strip().splitlines()[-1]) == name
    assert name in (project / "README.md").read_text()
