"""The names a project_slug must not take: every top-level module and distribution name of the
generated projects' whole dependency closure, for every option, computed from the installed packages.

The pre-gen hook runs under cookiecutter's interpreter with the standard library only, so it carries
the result as data (`DEPENDENCY_NAMES` in hooks/pre_gen_project.py). Regenerate it after a dependency
changes, in the template's environment (`scripts/test` makes it, with every dependency installed):

    .venv/bin/python -m tests.dependency_closure --write

tests/test_hooks.py computes the closure again and fails when the hook's list misses a name.
"""

from __future__ import annotations

import itertools
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from cookiecutter.environment import StrictEnvironment
from cookiecutter.generate import generate_context
from cookiecutter.prompt import prompt_for_config
from packaging.markers import Marker
from packaging.requirements import Requirement

TEMPLATE = Path(__file__).resolve().parents[1]
PYPROJECT = TEMPLATE / "{{cookiecutter.project_slug}}" / "pyproject.toml"
HOOK = TEMPLATE / "hooks" / "pre_gen_project.py"
# The Python versions a generated project may target (python_version); markers are evaluated for each.
PYTHONS = ("3.11", "3.12", "3.13", "3.14")
BEGIN = "# BEGIN DEPENDENCY_NAMES"
END = "# END DEPENDENCY_NAMES"


def identifier(name: str) -> str:
    """A distribution name as the package name it would collide with: `python-dotenv` -> `python_dotenv`."""
    return re.sub(r"[-_.]+", "_", name).lower()


def option_values() -> dict[str, list[str]]:
    defaults = generate_context(context_file=str(TEMPLATE / "cookiecutter.json"))["cookiecutter"]
    return {name: value for name, value in defaults.items() if isinstance(value, list) and not name.startswith("_")}


def project_requirements() -> list[Requirement]:
    """Every requirement of the generated pyproject.toml, for every option: the build backend, the
    dependencies and every extra (dev, tracing)."""
    options = option_values()
    found: dict[str, Requirement] = {}
    for values in itertools.product(*options.values()):
        answers = dict(zip(options, values, strict=True))
        raw = generate_context(context_file=str(TEMPLATE / "cookiecutter.json"), extra_context=answers)
        context = prompt_for_config(raw, no_input=True)
        environment = StrictEnvironment(context={"cookiecutter": context}, keep_trailing_newline=True)
        rendered = environment.from_string(PYPROJECT.read_text()).render(cookiecutter=context)
        pyproject = tomllib.loads(rendered)
        project = pyproject["project"]
        lines = [
            *pyproject["build-system"]["requires"],
            *project["dependencies"],
            *itertools.chain(*project.get("optional-dependencies", {}).values()),
        ]
        for line in lines:
            found.setdefault(line, Requirement(line))
    return list(found.values())


def applies(marker: Marker | None, extras: set[str]) -> bool:
    if marker is None:
        return True
    return any(
        marker.evaluate({"extra": extra, "python_version": python, "python_full_version": f"{python}.0"})
        for extra in extras | {""}
        for python in PYTHONS
    )


def top_level_modules(distribution: metadata.Distribution) -> set[str]:
    listed = distribution.read_text("top_level.txt")
    if listed:
        names = {line.strip().replace("/", ".").split(".")[0] for line in listed.splitlines() if line.strip()}
    else:
        names = set()
        for file in distribution.files or []:
            first = file.parts[0]
            if first.startswith("..") or first.endswith((".dist-info", ".data")) or first == "__pycache__":
                continue
            names.add(first.split(".")[0] if len(file.parts) == 1 else first)
    return {name for name in names if name.isidentifier()}


class Closure:
    def __init__(self) -> None:
        self.distributions: dict[str, set[str]] = {}  # normalised name -> extras asked for
        self.missing: set[str] = set()  # required, but not installed here: walked no further
        self.modules: set[str] = set()

    def add(self, requirement: Requirement, extras_of_parent: set[str] | None = None) -> None:
        if not applies(requirement.marker, extras_of_parent or set()):
            return
        name = identifier(requirement.name)
        extras = set(requirement.extras)
        if name in self.distributions and extras <= self.distributions[name]:
            return
        self.distributions[name] = self.distributions.get(name, set()) | extras
        try:
            distribution = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            self.missing.add(name)
            return
        self.modules |= top_level_modules(distribution)
        for line in distribution.requires or []:
            self.add(Requirement(line), self.distributions[name])

    def names(self) -> set[str]:
        return {*self.distributions, *self.modules}


def compute() -> Closure:
    closure = Closure()
    for requirement in project_requirements():
        closure.add(requirement)
    return closure


def render(names: set[str]) -> str:
    """The hook's data block: the names, sorted, one a line (as ruff formats it)."""
    body = "".join(f'        "{name}",\n' for name in sorted(names))
    return (
        f"{BEGIN}: generated by `.venv/bin/python -m tests.dependency_closure --write`; do not edit by hand.\n"
        f"DEPENDENCY_NAMES = frozenset(\n    {{\n{body}    }}\n)\n{END}"
    )


def write_hook(names: set[str]) -> None:
    text = HOOK.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    HOOK.write_text(text[:start] + render(names) + text[end:])


if __name__ == "__main__":
    result = compute()
    if result.missing:
        print(f"not installed, so not walked further: {', '.join(sorted(result.missing))}", file=sys.stderr)
    if sys.argv[1:] == ["--write"]:
        write_hook(result.names())
        print(f"{HOOK.relative_to(TEMPLATE)}: {len(result.names())} names")
    else:
        print(render(result.names()))
