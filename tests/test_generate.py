"""scripts/generate, as a newcomer runs it: a small environment with cookiecutter only, the project
written where the user is, and never inside the template's clone (nor in its `git status`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import TEMPLATE, run
from .test_repo import git_env, template_checkout


def generate(
    cwd: Path, env: dict[str, str], *arguments: str, root: Path = TEMPLATE
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(root / "scripts" / "generate"), "--no-input", *arguments],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """git kept away from the user's configuration; this environment (it has cookiecutter) stands in
    for .venv-generate, so that the tests install nothing."""
    return {**git_env(tmp_path / "home"), "GENERATE_VENV": sys.prefix}


@pytest.fixture
def clone(tmp_path: Path, env: dict[str, str]) -> Path:
    checkout = template_checkout(tmp_path / "clone", env)
    run(["git", "commit", "-q", "-m", "template"], checkout, env)
    return checkout


def test_generation_needs_cookiecutter_only() -> None:
    requirements = (TEMPLATE / "requirements-generate.txt").read_text().splitlines()
    assert [line for line in requirements if line.strip() and not line.startswith("#")] == ["cookiecutter>=2.6"]
    script = (TEMPLATE / "scripts" / "generate").read_text()
    assert "requirements-generate.txt" in script
    assert "requirements-test.txt" not in script


def test_the_project_is_written_to_the_current_directory(tmp_path: Path, env: dict[str, str]) -> None:
    here = tmp_path / "work"
    here.mkdir()
    result = generate(here, env, "broker=redis")
    assert result.returncode == 0, result.stderr
    assert (here / "task_service" / "pyproject.toml").exists()
    assert not (TEMPLATE / "task_service").exists()


def test_from_inside_the_clone_the_project_goes_beside_it_and_says_where(
    tmp_path: Path, env: dict[str, str], clone: Path
) -> None:
    for cwd in (clone, clone / "scripts"):
        result = generate(cwd, env, "--overwrite-if-exists", root=clone)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "task_service" / "pyproject.toml").exists()
        assert f"writing the project to {tmp_path}" in result.stderr
    assert not (clone / "task_service").exists()
    assert run(["git", "status", "--porcelain"], clone, env).strip() == ""


def test_an_output_directory_given_is_used_even_from_inside_the_clone(
    tmp_path: Path, env: dict[str, str], clone: Path
) -> None:
    for option in (["-o", str(tmp_path / "a")], [f"--output-dir={tmp_path / 'b'}"]):
        result = generate(clone, env, *option, root=clone)
        assert result.returncode == 0, result.stderr
        assert "writing the project to" not in result.stderr
    assert (tmp_path / "a" / "task_service").is_dir()
    assert (tmp_path / "b" / "task_service").is_dir()


def test_a_project_generated_inside_the_clone_stays_out_of_git_status(env: dict[str, str], clone: Path) -> None:
    """`cookiecutter .` from the clone's root writes there: .gitignore keeps it out of `git status`."""
    run([sys.executable, "-m", "cookiecutter", ".", "--no-input", "project_slug=my_tasks"], clone, env)
    assert (clone / "my_tasks" / "pyproject.toml").exists()
    assert run(["git", "status", "--porcelain"], clone, env).strip() == ""


@pytest.mark.slow
def test_the_generate_environment_is_small_and_made_before_the_first_prompt(
    tmp_path: Path, env: dict[str, str], clone: Path
) -> None:
    venv = tmp_path / "venv-generate"
    result = generate(tmp_path, {**env, "GENERATE_VENV": str(venv)}, "-o", str(tmp_path / "out"), root=clone)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "task_service").is_dir()
    size = sum(path.stat().st_size for path in venv.rglob("*") if path.is_file() and not path.is_symlink())
    assert size < 80 * 1024 * 1024, f"{size / 1e6:.0f} MB"
    assert not any(venv.glob("lib/python*/site-packages/pytest")), "the test toolchain was installed"
    assert os.access(venv / "bin" / "cookiecutter", os.X_OK)
