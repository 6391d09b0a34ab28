"""The update path: a project made with `cruft create` (or adopted with `cruft link`) from a git
checkout of the template takes a later template change with `cruft update`, keeping its answers.
The post-gen hook runs again on every update, so this is also where its idempotence shows."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import run
from .test_repo import git_env, template_checkout

CRUFT = [sys.executable, "-m", "cruft"]
# Anything but the defaults, so that an update falling back to them would show.
ANSWERS = {"broker": "redis", "consumer": "threaded", "use_docker": "no", "ci": "gitlab"}
MARKER = "This line reached the project with `cruft update`."
FREE_TEXT = 'Bob\'s "quoted" <svc> & co \\ back'


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    if importlib.util.find_spec("cruft") is None:
        pytest.fail("cruft is not installed: pip install -r requirements-test.txt", pytrace=False)
    return git_env(tmp_path / "home")


@pytest.fixture
def template(tmp_path: Path, env: dict[str, str]) -> Path:
    """A git repository with the template as it is now, in one commit."""
    checkout = template_checkout(tmp_path / "template", env)
    run(["git", "commit", "-q", "-m", "template"], checkout, env)
    return checkout


def head(repository: Path, env: dict[str, str]) -> str:
    return run(["git", "rev-parse", "HEAD"], repository, env).strip()


def commit_all(repository: Path, env: dict[str, str], message: str) -> None:
    run(["git", "add", "-A"], repository, env)
    run(["git", "commit", "-q", "-m", message], repository, env)


def recorded(project: Path) -> tuple[str, dict[str, str]]:
    """The template commit and the answers that .cruft.json records."""
    record = json.loads((project / ".cruft.json").read_text())
    return record["commit"], record["context"]["cookiecutter"]


def test_cruft_update_brings_a_template_change_into_a_project(
    tmp_path: Path, env: dict[str, str], template: Path
) -> None:
    created_from = head(template, env)
    create = ["create", "--no-input", "--extra-context", json.dumps(ANSWERS), "--output-dir", "projects"]
    run([*CRUFT, *create, str(template)], tmp_path, env)
    project = tmp_path / "projects" / "task_service"
    commit, answers = recorded(project)
    assert commit == created_from
    assert answers.items() >= ANSWERS.items()
    run(["git", "init", "-q"], project, env)
    commit_all(project, env, "generated")  # cruft update needs a clean working tree
    run([*CRUFT, "check"], project, env)

    readme = template / "{{cookiecutter.project_slug}}" / "README.md"
    readme.write_text(f"{readme.read_text()}\n{MARKER}\n")
    commit_all(template, env, "a template change")
    check = subprocess.run([*CRUFT, "check"], cwd=project, env=env, capture_output=True, text=True, check=False)
    assert check.returncode == 1, f"cruft check missed the template change:\n{check.stdout}{check.stderr}"

    run([*CRUFT, "update", "--skip-apply-ask", "--allow-untracked-files"], project, env)
    assert MARKER in (project / "README.md").read_text()
    commit, answers = recorded(project)
    assert commit == head(template, env)
    assert answers.items() >= ANSWERS.items()
    # Only the change and the record: the hook pruned exactly what it pruned at creation.
    changed = {line[3:] for line in run(["git", "status", "--porcelain"], project, env).splitlines()}
    assert changed == {"README.md", ".cruft.json"}
    run([*CRUFT, "check"], project, env)


def test_cruft_link_adopts_a_project_made_with_plain_cookiecutter_from_its_recorded_answers(
    tmp_path: Path, env: dict[str, str], template: Path
) -> None:
    """Plain cookiecutter writes no .cruft.json, but the project records its answers in
    .cookiecutter.json: `cruft link --extra-context "$(cat .cookiecutter.json)"` needs no retyping."""
    given = {**ANSWERS, "description": FREE_TEXT}
    answers = [f"{name}={value}" for name, value in given.items()]
    run([sys.executable, "-m", "cookiecutter", "--no-input", "-o", "projects", str(template), *answers], tmp_path, env)
    project = tmp_path / "projects" / "task_service"
    assert not (project / ".cruft.json").exists()
    record = (project / ".cookiecutter.json").read_text()
    assert json.loads(record).items() >= given.items()
    run(["git", "init", "-q"], project, env)
    commit_all(project, env, "generated")

    run([*CRUFT, "link", "--no-input", "--extra-context", record, str(template)], project, env)
    commit, recorded_answers = recorded(project)
    assert commit == head(template, env)
    assert recorded_answers.items() >= given.items()
    # Linked with the answers it was made with, the project does not differ from the template.
    run([*CRUFT, "diff", "--exit-code"], project, env)
    run([*CRUFT, "check"], project, env)


def test_a_project_regenerated_from_its_recorded_answers_is_the_same_project(
    tmp_path: Path, env: dict[str, str], template: Path
) -> None:
    given = [f"{name}={value}" for name, value in {**ANSWERS, "description": FREE_TEXT}.items()]
    run([sys.executable, "-m", "cookiecutter", "--no-input", "-o", "first", str(template), *given], tmp_path, env)
    record = (tmp_path / "first" / "task_service" / ".cookiecutter.json").read_text()
    again = ["create", "--no-input", "--extra-context", record, "--output-dir", "again", str(template)]
    run([*CRUFT, *again], tmp_path, env)
    (tmp_path / "again" / "task_service" / ".cruft.json").unlink()
    diff = subprocess.run(
        ["diff", "-r", "first/task_service", "again/task_service"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert diff.returncode == 0, diff.stdout
