"""The template repository itself: its own pre-commit hooks pass on a fresh checkout, changing nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

from .conftest import TEMPLATE, run
from .test_shipping import tools_env

# What a checkout of the template does not contain: version control, environments, caches.
NOT_IN_A_CHECKOUT = shutil.ignore_patterns(
    ".git",
    ".venv*",
    "node_modules",
    "__pycache__",
    "*.py[cod]",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".benchmarks",
)


def git_env(home: Path) -> dict[str, str]:
    """tools_env() with git (and everything else) kept away from the user's home and configuration,
    and an identity for commits."""
    home.mkdir(parents=True, exist_ok=True)
    return {
        **tools_env(),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Template Tests",
        "GIT_AUTHOR_EMAIL": "template-tests@example.invalid",
        "GIT_COMMITTER_NAME": "Template Tests",
        "GIT_COMMITTER_EMAIL": "template-tests@example.invalid",
        "PRE_COMMIT_HOME": str(home / "pre-commit"),
    }


def template_checkout(destination: Path, env: dict[str, str]) -> Path:
    """A git repository holding the template's working tree as it is now, uncommitted edits included,
    with every file staged (nothing committed yet)."""
    shutil.copytree(TEMPLATE, destination, ignore=NOT_IN_A_CHECKOUT)
    run(["git", "init", "-q"], destination, env)
    run(["git", "add", "-A"], destination, env)
    return destination


def test_pre_commit_passes_on_the_template_repository_without_changes(tmp_path: Path) -> None:
    env = git_env(tmp_path / "home")
    checkout = template_checkout(tmp_path / "template", env)
    run(["pre-commit", "run", "--all-files", "--show-diff-on-failure"], checkout, env)
    assert run(["git", "diff", "--name-only"], checkout, env).strip() == "", "pre-commit changed files"
