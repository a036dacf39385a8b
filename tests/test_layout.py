"""The house: one package per stage of the data flow, imports that run one way, a first line
in every file that says its one job, and tests laid out as the package is."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

from tests.helpers import REPO, TESTS

EXPORTER = REPO / "exporter"
# What a test package may hold beside its test modules: fixtures, helpers it shares, and a
# hostile server (tests/hostile.py) for the client's and the poller's tests.
TEST_SUPPORT = {"__init__.py", "conftest.py", "helpers.py", "hostile.py"}

# Stages from the bottom up: a module imports modules of its own stage and of stages below,
# never above. The pure core sits low, the face (cli) on top.
STAGES = (
    ("exporter.text", "exporter.patterns"),
    ("exporter.aggregate",),
    ("exporter.config",),
    (
        "exporter.targets.sharding",
        "exporter.targets.discovery",
        "exporter.client",
        "exporter.store",
    ),
    ("exporter.metrics",),
    ("exporter.web",),
    (
        "exporter.logs",
        "exporter.openfiles",
        "exporter.heap",
        "exporter.histories",
        "exporter.saves",
        "exporter.poller",
    ),
    ("exporter.targets",),
    ("exporter.simulator",),
    ("exporter.cli", "exporter.healthcheck", "exporter.__main__", "exporter"),
)
# What does I/O: never imported by the pure core.
IO_LIBRARIES = {
    "asyncio", "httpx", "logging", "os", "socket", "sqlite3", "structlog", "threading", "time",
    "yaml", "ssl", "subprocess",
}  # fmt: skip


def module_name(path: Path) -> str:
    parts = list(path.relative_to(EXPORTER.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(EXPORTER.rglob("*.py"))}


def imports(path: Path) -> tuple[set[str], set[str]]:
    """The exporter modules a file imports (a package's ``from . import x`` as ``pkg.x``
    when x is a module), and the other top-level modules it imports."""
    known = modules()
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    ours: set[str] = set()
    others: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = ".".join([*package[: len(package) - node.level + 1], node.module or ""])
            base = base.rstrip(".")
            for alias in node.names:
                target = f"{base}.{alias.name}"
                ours.add(target if target in known else base)
        elif isinstance(node, ast.ImportFrom) and node.module:
            top = node.module.split(".")[0]
            (ours if top == "exporter" else others).add(node.module if top == "exporter" else top)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                (ours if top == "exporter" else others).add(
                    alias.name if top == "exporter" else top
                )
    ours = {m for m in ours if m != name and m != "exporter.__version__"}
    return ours, others


def stage(module: str) -> int:
    """The stage of the longest prefix that names one."""
    best, found = -1, -1
    for index, names in enumerate(STAGES):
        for prefix in names:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), index
    assert found >= 0, f"{module} belongs to no stage: add it to STAGES"
    return found


def test_imports_run_one_way_and_no_two_modules_import_each_other() -> None:
    graph = {name: imports(path)[0] for name, path in modules().items()}
    upward = [
        f"{name} imports {target}"
        for name, targets in graph.items()
        for target in targets
        if target != "exporter" and stage(target) > stage(name)
    ]
    assert not upward, upward
    # A package's __init__ gathers its modules; leave it out, the modules' own edges remain.
    files = modules()
    edges = {
        name: {t for t in targets if files[t].name != "__init__.py"}
        for name, targets in graph.items()
        if files[name].name != "__init__.py"
    }
    try:
        tuple(TopologicalSorter(edges).static_order())
    except CycleError as exc:
        raise AssertionError(f"modules import each other: {exc.args[1]}") from None


def test_the_pure_core_does_no_io() -> None:
    for name, path in modules().items():
        if name.startswith("exporter.aggregate"):
            ours, others = imports(path)
            assert not others & IO_LIBRARIES, (name, others & IO_LIBRARIES)
            assert all(stage(m) <= stage("exporter.aggregate") for m in ours), (name, ours)


def test_the_collector_never_reaches_the_api() -> None:
    for name, path in modules().items():
        if name.startswith("exporter.metrics"):
            ours, others = imports(path)
            assert not {m for m in ours if m.startswith(("exporter.client", "exporter.poller"))}
            assert "httpx" not in others


def test_every_file_says_its_one_job_in_its_first_line() -> None:
    missing = []
    for name, path in modules().items():
        doc = ast.get_docstring(ast.parse(path.read_text()), clean=False)
        first = (doc or "").strip().splitlines()[0] if doc and doc.strip() else ""
        if len(first) < 20:
            missing.append(name)
    assert not missing, missing


def test_no_module_grows_past_about_600_lines() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert {name: n for name, n in sizes.items() if n > 650} == {}


def test_the_tests_mirror_the_package() -> None:
    """tests/<pkg>/test_<module>.py tests exporter/<pkg>/<module>.py and tests/test_<module>.py
    a top-level module; what crosses packages is in tests/e2e/."""
    known = modules()
    strays = []
    for path in sorted(TESTS.rglob("*.py")):
        relative = path.relative_to(TESTS)
        if relative.parts[0] in ("e2e", "golden", "schemas") or path.name in TEST_SUPPORT:
            continue
        if path == Path(__file__).resolve():
            continue  # the house's own checks
        module = ".".join(["exporter", *relative.parent.parts, path.stem.removeprefix("test_")])
        if not path.name.startswith("test_") or module not in known:
            strays.append(str(relative))
    assert not strays, f"test modules that name no module of exporter/: {strays}"
    for directory in sorted(p for p in TESTS.iterdir() if p.is_dir() and p.name != "__pycache__"):
        if directory.name in ("golden", "schemas"):
            continue
        init = directory / "__init__.py"
        assert init.exists() and not init.read_text(), f"{init}: present and empty"


def test_every_test_module_says_what_it_covers() -> None:
    missing = [
        str(path.relative_to(TESTS))
        for path in sorted(TESTS.rglob("*.py"))
        if path.name != "__init__.py"
        and len((ast.get_docstring(ast.parse(path.read_text())) or "").strip()) < 20
    ]
    assert not missing, missing
