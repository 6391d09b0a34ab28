"""The hooks, rendered the way cookiecutter renders them, then exercised as plain functions."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
from cookiecutter.environment import StrictEnvironment
from cookiecutter.generate import generate_context
from cookiecutter.prompt import prompt_for_config

from . import dependency_closure
from .conftest import BROKERS, CONSUMERS, DEFAULTS, TEMPLATE, bake

TEMPLATE_PROJECT = TEMPLATE / "{{cookiecutter.project_slug}}"


def context_for(**answers: str) -> dict[str, object]:
    """The `cookiecutter` context a hook sees, derived values included."""
    raw = generate_context(context_file=str(TEMPLATE / "cookiecutter.json"), extra_context=answers)
    context = prompt_for_config(raw, no_input=True)
    context["_template"] = str(TEMPLATE)
    return dict(context)


def render_hook(name: str, **answers: str) -> types.ModuleType:
    """Render hooks/<name> with Jinja as cookiecutter does, and load it as a module (main() not run)."""
    context = context_for(**answers)
    environment = StrictEnvironment(context={"cookiecutter": context}, keep_trailing_newline=True)
    source = environment.from_string((TEMPLATE / "hooks" / name).read_text()).render(cookiecutter=context)
    module = types.ModuleType(name.removesuffix(".py"))
    exec(compile(source, name, "exec"), module.__dict__)
    return module


@pytest.fixture(scope="module")
def pre_gen() -> types.ModuleType:
    return render_hook("pre_gen_project.py")


@pytest.fixture(scope="module")
def post_gen() -> types.ModuleType:
    return render_hook("post_gen_project.py")


@pytest.mark.parametrize(
    "name",
    [
        "Task Service",
        'Bob\'s "quoted" service',
        "back\\slash \\n \\u0041 and ''' triple \"\"\" quotes",
        "Сервис задач",
        "</script><!-- & done -->",
    ],
)
def test_hooks_read_free_text_exactly(name: str) -> None:
    for hook in ("pre_gen_project.py", "post_gen_project.py"):
        module = render_hook(hook, project_name=name, project_slug="svc")
        assert module.CONTEXT["project_name"] == name


# Found accepted and broken (issue 18): each is a module or distribution of the dependency closure.
SHADOWED_BY_DEPENDENCIES = [
    "click",
    "opentelemetry",
    "uvloop",
    "websockets",
    "h11",
    "yaml",
    "requests",
    "dotenv",
    "pika",
]


@pytest.mark.parametrize("slug", ["task_service", "svc2", "_internal", "payments_v2"])
def test_good_slugs_pass(pre_gen: types.ModuleType, slug: str) -> None:
    pre_gen.check_slug(slug)


@pytest.mark.parametrize(
    ("slug", "problem"),
    [
        ("task-service", "not a Python identifier"),
        ("2fast", "not a Python identifier"),
        ("", "not a Python identifier"),
        ("my service", "not a Python identifier"),
        ("TaskService", "lower-case ASCII"),
        ("сервис", "lower-case ASCII"),
        ("class", "keyword"),
        ("match", "keyword"),
        ("fastapi", "shadow"),
        ("pika", "shadow"),
        ("aio_pika", "shadow"),
        ("redis", "shadow"),
        ("pydantic", "shadow"),
        ("asyncio", "shadow"),
        ("queue", "shadow"),
        ("logging", "shadow"),
        ("test", "standard library"),
        ("compression", "standard library"),
        ("tests", "shadow"),
        *((name, "installs") for name in SHADOWED_BY_DEPENDENCIES),
        ("python_dotenv", "installs"),
        ("pydantic_settings", "installs"),
        ("prometheus_client", "installs"),
    ],
)
def test_bad_slugs_are_refused_with_the_problem_and_a_fix(pre_gen: types.ModuleType, slug: str, problem: str) -> None:
    with pytest.raises(pre_gen.AnswerError, match=problem) as refused:
        pre_gen.check_slug(slug)
    assert "project_slug=" in str(refused.value)  # the fix


@pytest.mark.parametrize(
    ("slug", "suggestion"),
    [
        ("test", "test_app"),
        ("click", "click_app"),
        ("task-service", "task_service"),
        ("3d_service", "my_3d_service"),
        ("TaskService", "task_service"),
        ("class", "class_app"),
        ("сервис", "task_service"),
        ("Café-Orders", "cafe_orders"),
    ],
)
def test_a_refused_slug_comes_with_a_suggestion_derived_from_it(
    pre_gen: types.ModuleType, slug: str, suggestion: str
) -> None:
    assert pre_gen.suggest(slug) == suggestion
    with pytest.raises(pre_gen.AnswerError, match=f"e.g. project_slug={suggestion}$"):
        pre_gen.check_slug(slug)
    pre_gen.check_slug(suggestion)


def test_the_hook_refuses_every_name_of_the_dependency_closure(pre_gen: types.ModuleType) -> None:
    """Computed from the installed packages: every distribution the generated pyproject.toml requires,
    for every option and extra, walked through Requires-Dist, and the top-level modules each installs.
    When this fails, regenerate the hook's list: `.venv/bin/python -m tests.dependency_closure --write`."""
    closure = dependency_closure.compute()
    names = closure.names()
    # The walk reached what issue 18 found broken, so it is not vacuous.
    assert set(SHADOWED_BY_DEPENDENCIES) <= names
    assert {"python_dotenv", "pyyaml", "opentelemetry_sdk"} <= names
    assert closure.missing <= {"hatchling"}, "install requirements-test.txt: the closure cannot be walked"
    assert sorted(names - pre_gen.DEPENDENCY_NAMES) == []


def test_the_pre_gen_hook_prints_one_line_and_fails(pre_gen: types.ModuleType, capsys) -> None:
    context = {**pre_gen.CONTEXT, "project_slug": "class"}
    assert pre_gen.main(context) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert error.startswith("ERROR: project_slug 'class'")


def test_kubernetes_without_docker_is_refused_with_the_fix(pre_gen: types.ModuleType, capsys) -> None:
    pre_gen.check_kubernetes("yes", "yes")
    pre_gen.check_kubernetes("no", "no")
    context = {**pre_gen.CONTEXT, "kubernetes": "yes", "use_docker": "no"}
    assert pre_gen.main(context) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert error.startswith("ERROR: kubernetes=yes")
    assert "use_docker=yes" in error


def test_the_pre_gen_hook_accepts_the_defaults(pre_gen: types.ModuleType) -> None:
    assert pre_gen.main(pre_gen.CONTEXT) == 0


def test_the_tests_cover_every_broker_the_template_offers() -> None:
    assert sorted(DEFAULTS["broker"]) == sorted(BROKERS)


def test_every_pruned_path_exists_in_the_template(post_gen: types.ModuleType) -> None:
    tables = [
        *post_gen.BROKER_FILES.values(),
        *post_gen.STYLE_FILES.values(),
        post_gen.DOCKER_FILES,
        post_gen.KUBERNETES_FILES,
        *post_gen.CI_FILES.values(),
        post_gen.TASK_STORE_FILES,
        *post_gen.STORE_FILES.values(),
    ]
    missing = [
        pattern
        for patterns in tables
        for pattern in patterns
        if not list(TEMPLATE_PROJECT.glob(pattern.format(slug="{{cookiecutter.project_slug}}")))
    ]
    assert missing == []


def test_every_broker_and_style_file_is_owned_by_exactly_one_choice(post_gen: types.ModuleType) -> None:
    """A new broker package, style module or probe missing from the tables would leak into every project."""
    package = TEMPLATE_PROJECT / "src" / "{{cookiecutter.project_slug}}"
    # memory/ (BROKER_URL=memory://, a first look without a broker) is every project's.
    brokers = {
        path
        for path in (package / "brokers").iterdir()
        if path.is_dir() and not path.name.startswith("_") and path.name != "memory"
    }
    probes = {path for path in (TEMPLATE_PROJECT / "tests/integration/probes").iterdir() if path.is_dir()}
    styled = {
        path
        for path in [
            *package.glob("runner_*.py"),
            *package.glob("brokers/*/*.py"),
            *TEMPLATE_PROJECT.rglob("probes/*/*.py"),
        ]
        if "threaded" in path.stem or "asynchronous" in path.stem
    }

    def owners(path: Path, tables: dict[str, list[str]]) -> list[str]:
        return [
            choice
            for choice, patterns in tables.items()
            for pattern in patterns
            if path in TEMPLATE_PROJECT.glob(pattern.format(slug="{{cookiecutter.project_slug}}"))
        ]

    assert {path.name: owners(path, post_gen.BROKER_FILES) for path in brokers | probes} == {
        path.name: [path.name] for path in brokers | probes
    }
    assert [path for path in styled if len(owners(path, post_gen.STYLE_FILES)) != 1] == []
    assert sorted(post_gen.BROKER_FILES) == sorted(BROKERS)
    assert sorted(post_gen.STYLE_FILES) == sorted(CONSUMERS)


def test_every_task_store_file_is_pruned_with_its_store_or_with_none(post_gen: types.ModuleType) -> None:
    """A store's module or test missing from the tables would leak into projects of the other store."""
    package = TEMPLATE_PROJECT / "src" / "{{cookiecutter.project_slug}}"
    stores = [store for store in DEFAULTS["task_store"] if store != "none"]
    assert sorted(post_gen.STORE_FILES) == sorted(stores)
    named = [
        path
        for path in [*package.glob("store/*.py"), *TEMPLATE_PROJECT.rglob("tests/**/*store*.py")]
        if any(store in path.stem for store in stores)
    ]
    owners = {
        path.name: [
            store
            for store, patterns in post_gen.STORE_FILES.items()
            for pattern in patterns
            if path in TEMPLATE_PROJECT.glob(pattern.format(slug="{{cookiecutter.project_slug}}"))
        ]
        for path in named
    }
    assert owners == {path.name: [store for store in stores if store in path.stem] for path in named}


def test_pruning_is_idempotent(post_gen: types.ModuleType, tmp_path: Path) -> None:
    project = bake(tmp_path, consumer="threaded", use_docker="no", ci="none", project_slug="svc")
    before = sorted(str(path.relative_to(project)) for path in project.rglob("*"))
    context = {**post_gen.CONTEXT, "project_slug": "svc", "consumer": "threaded", "use_docker": "no", "ci": "none"}
    post_gen.main(project, context)
    after = sorted(str(path.relative_to(project)) for path in project.rglob("*"))
    assert after == before
    assert not (project / ".git").exists()


def test_the_post_gen_hook_prints_the_next_steps(post_gen: types.ModuleType) -> None:
    steps = post_gen.next_steps({**post_gen.CONTEXT, "project_slug": "svc"})
    assert 'pip install -e ".[dev]"' in steps
    assert "python -m svc.worker" in steps
    assert "kubectl" not in steps
    assert "kubectl apply -k deploy/kubernetes/overlays/production" in post_gen.next_steps(
        {**post_gen.CONTEXT, "project_slug": "svc", "kubernetes": "yes"}
    )


@pytest.mark.parametrize("broker", BROKERS)
def test_without_docker_the_next_steps_and_the_readme_say_how_to_start_the_broker(
    post_gen: types.ModuleType, tmp_path: Path, broker: str
) -> None:
    steps = post_gen.next_steps({**post_gen.CONTEXT, "broker": broker, "use_docker": "no"})
    assert "docker" not in steps.lower()
    commands = [command for command, _ in post_gen.BROKER_START[broker] if command]
    assert commands
    assert all(command in steps for command in commands)
    readme = (bake(tmp_path, broker=broker, use_docker="no", ci="none") / "README.md").read_text()
    run_it = readme[readme.index("## Run it") : readme.index("## HTTP interface")]
    # The README runs Kafka from its own folder (cd ~/kafka_...), the next steps from anywhere.
    for command in commands:
        assert command.replace(f"{post_gen.KAFKA}/", "") in run_it, command
    assert "apt-get install" in run_it


def test_with_docker_the_next_steps_start_the_broker_in_compose_and_point_to_the_alternative(
    post_gen: types.ModuleType,
) -> None:
    steps = post_gen.next_steps({**post_gen.CONTEXT, "broker": "redis", "use_docker": "yes"})
    assert "docker compose up -d redis" in steps
    assert "no Docker engine: README.md" in steps


def test_the_readme_gives_kafka_the_fault_listener_that_compose_and_the_fault_tests_use(tmp_path: Path) -> None:
    """Without Docker, `server.properties` needs the FAULTS listener: on 9094, advertised as 127.0.0.1:19094."""
    project = bake(tmp_path, broker="kafka", use_docker="yes", ci="none")
    readme = (project / "README.md").read_text()
    compose = (project / "docker-compose.yml").read_text()
    conftest = (project / "tests" / "integration" / "probes" / "kafka" / "__init__.py").read_text()
    assert "FAULTS://:9094" in compose
    assert "FAULTS://127.0.0.1:19094" in compose
    assert '"KAFKA_PROXY_PORT", "19094"' in conftest
    assert '"KAFKA_PROXY_UPSTREAM", "127.0.0.1:9094"' in conftest
    for line in (
        "listeners=PLAINTEXT://:9092,CONTROLLER://:9093,FAULTS://:9094",
        "advertised.listeners=PLAINTEXT://localhost:9092,FAULTS://127.0.0.1:19094",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,FAULTS:PLAINTEXT",
        "bin/kafka-storage.sh format",
        "bin/kafka-server-start.sh",
    ):
        assert line in readme, line
