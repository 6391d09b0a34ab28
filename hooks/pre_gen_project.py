"""Refuse answers that would produce a broken project, before any file is written.

Cookiecutter renders this file with Jinja, then runs it with its own interpreter:
standard library only. Every answer is read once, from a JSON render, so quotes,
apostrophes and backslashes in free text can never break the hook.
"""

from __future__ import annotations

import json
import keyword
import sys

CONTEXT = json.loads(r"""{{ cookiecutter | tojson }}""")

# Top-level modules a generated project imports, for any choice of options.
# A package with one of these names would shadow it.
IMPORTED_MODULES = frozenset(
    {
        "aio_pika",
        "aiokafka",
        "aiormq",
        "anyio",
        "confluent_kafka",
        "fastapi",
        "httpx",
        "mypy",
        "pamqp",
        "pika",
        "prometheus_client",
        "pydantic",
        "pydantic_core",
        "pydantic_settings",
        "pytest",
        "redis",
        "ruff",
        "starlette",
        "tests",
        "uvicorn",
    }
)

SUPPORTED_PYTHON = ("3.11", "3.12", "3.13", "3.14")


class AnswerError(Exception):
    """An answer that cannot produce a working project; the message says how to fix it."""


def check_slug(slug: str) -> None:
    fix = "pass project_slug=<a lower-case Python identifier>, e.g. project_slug=task_service"
    if not slug.isidentifier():
        raise AnswerError(f"project_slug {slug!r} is not a Python identifier; {fix}")
    if not slug.isascii() or slug != slug.lower():
        raise AnswerError(f"project_slug {slug!r} must be lower-case ASCII (PEP 8); {fix}")
    if keyword.iskeyword(slug) or keyword.issoftkeyword(slug):
        raise AnswerError(f"project_slug {slug!r} is a Python keyword; {fix}")
    stdlib = getattr(sys, "stdlib_module_names", frozenset())
    if slug in IMPORTED_MODULES or slug in stdlib:
        raise AnswerError(f"project_slug {slug!r} would shadow the module {slug!r} that the project imports; {fix}")


def check_python_version(version: str) -> None:
    if version not in SUPPORTED_PYTHON:
        raise AnswerError(f"python_version {version!r} is not supported; choose one of: {', '.join(SUPPORTED_PYTHON)}")


def check_kubernetes(kubernetes: str, use_docker: str) -> None:
    if kubernetes == "yes" and use_docker != "yes":
        raise AnswerError(
            "kubernetes=yes deploys the project's image, which use_docker=no does not build; "
            "pass use_docker=yes, or kubernetes=no"
        )


def main(context: dict[str, object]) -> int:
    try:
        check_slug(str(context["project_slug"]))
        check_python_version(str(context["python_version"]))
        check_kubernetes(str(context["kubernetes"]), str(context["use_docker"]))
    except AnswerError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(CONTEXT))
