"""The rooms of flockrt and which way their imports point, checked from the source.

The layers are those of ../shared/DESIGN.md ("Layers"): each top-level part of the package has
a rank, and a part may import only parts of a lower rank (type-only imports, under
``if TYPE_CHECKING:``, aside). That rules out cycles between parts, keeps the kernel free of
everything above it, and keeps each third-party client in the one room that adapts it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "flockrt"

RANKS: dict[str, int] = {
    "_version": 0,
    "errors": 0,
    "config": 1,
    "actors": 2,  # the kernel
    "supervisor": 3,  # the kernel
    "wire": 4,
    "breaker": 5,
    "loop": 5,
    "logs": 5,
    "agents": 6,
    "flock": 7,
    "bus": 8,
    "metrics": 9,
    "mcp": 10,
    "view": 10,
    "client": 11,
    "a2a": 11,  # beside mcp/, above it: it reuses the gateway's auth and limits
    "assembly": 12,
    "web": 13,
    "runtime": 14,
    "cli": 15,
    "__main__": 16,
}
"""Lowest first; a part imports only parts ranked below it (parts of one rank: not each other)."""

KERNEL = {"actors", "supervisor"}

ONE_ROOM = {
    "nats": "bus",
    "anthropic": "agents/claude.py",
    "jwt": "mcp/auth.py",
    "prometheus_client": "metrics.py",
    "a2a": "a2a",
}
"""Third-party clients and the one room (or module) allowed to import each."""

HEAVY = ("msgspec", "nats", "aiohttp", "prometheus_client", "jwt", "anthropic", "a2a")

EXTENSION_BASES = {"flockrt.actors.actor.Actor", "flockrt.agents.agent.Agent"}
"""Classes of one room meant to be subclassed from rooms above it; every other class is used
by composition across rooms (errors aside: every room raises the errors.py hierarchy)."""


@dataclass(frozen=True)
class Import:
    source: Path  # the importing file
    module: str  # the imported module, dotted
    names: tuple[str, ...]  # for "from X import a, b"
    line: int


def part_of(module: str) -> str | None:
    """The top-level part of a flockrt module (None: not flockrt, or the package itself)."""
    pieces = module.split(".")
    if pieces[0] != "flockrt" or len(pieces) < 2:
        return None
    return pieces[1]


def module_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    pieces = list(relative.parts)
    if pieces[-1] == "__init__":
        pieces.pop()
    return ".".join(pieces)


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def run_time_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` outside ``if TYPE_CHECKING:`` blocks (function bodies included:
    an import made late is still a dependency)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and is_type_checking(child):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def imports(path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in run_time_nodes(tree):
        if isinstance(node, ast.Import):
            found += [Import(path, alias.name, (), node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names = tuple(alias.name for alias in node.names)
            found.append(Import(path, node.module, names, node.lineno))
            # "from flockrt.bus import remote" imports the module flockrt.bus.remote
            for name in names:
                if (PACKAGE.parent / node.module.replace(".", "/") / f"{name}.py").exists():
                    found.append(Import(path, f"{node.module}.{name}", (), node.lineno))
    return found


def where(item: Import) -> str:
    return f"{item.source.relative_to(PACKAGE.parent)}:{item.line}"


def test_every_part_has_a_rank() -> None:
    parts = {part_of(module_of(path)) for path in sources()} - {None}
    assert parts <= set(RANKS), f"parts without a rank in this test: {parts - set(RANKS)}"


def test_imports_point_down_only() -> None:
    wrong = []
    for path in sources():
        importer = part_of(module_of(path))
        if importer is None:  # flockrt/__init__.py: the facade, lazy (see test_public_api)
            continue
        for item in imports(path):
            imported = part_of(item.module)
            if imported is None or imported == importer:
                continue
            if RANKS[imported] >= RANKS[importer]:
                wrong.append(f"{where(item)}: {importer} imports {item.module}")
    assert not wrong, "imports that point up (or sideways):\n" + "\n".join(wrong)


def test_no_import_cycle_between_parts() -> None:
    edges: dict[str, set[str]] = {}
    for path in sources():
        importer = part_of(module_of(path))
        if importer is None:
            continue
        for item in imports(path):
            imported = part_of(item.module)
            if imported is not None and imported != importer:
                edges.setdefault(importer, set()).add(imported)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in edges.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = sorted(part for part in edges if reaches(part, part, {part}))
    assert not cycles, f"parts on an import cycle: {cycles}"


def test_the_kernel_imports_nothing_of_flockrt_but_errors() -> None:
    wrong = []
    for path in sources():
        importer = part_of(module_of(path))
        if importer not in KERNEL:
            continue
        for item in imports(path):
            imported = part_of(item.module)
            top = item.module.split(".")[0]
            if (imported is not None and imported not in KERNEL | {"errors"}) or (
                imported is None and top in HEAVY
            ):
                wrong.append(f"{where(item)}: {item.module}")
    assert not wrong, "the kernel imports:\n" + "\n".join(wrong)


@pytest.mark.parametrize("client", sorted(ONE_ROOM))
def test_each_third_party_client_is_imported_in_its_one_room(client: str) -> None:
    room = ONE_ROOM[client]
    wrong = []
    for path in sources():
        relative = path.relative_to(PACKAGE).as_posix()
        if relative == room or relative.startswith(room + "/"):
            continue
        wrong += [where(item) for item in imports(path) if item.module.split(".")[0] == client]
    assert not wrong, f"{client} imported outside {room}: {wrong}"


def test_no_class_subclasses_a_class_of_another_room_but_the_extension_points() -> None:
    # Which flockrt class each name in each module stands for (by its imports).
    wrong = []
    for path in sources():
        module = module_of(path)
        importer = part_of(module)
        if importer is None:
            continue
        tree = ast.parse(path.read_text())
        names: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("flockrt"):
                for alias in node.names:
                    names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            for base in node.bases:
                target = names.get(base.id) if isinstance(base, ast.Name) else None
                if target is None:
                    continue
                room = part_of(target)
                if room in (None, importer, "errors") or target in EXTENSION_BASES:
                    continue
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.name}({target})")
                if room is not None and RANKS[room] > RANKS[importer]:
                    wrong.append(f"  ... and {target} is in a room above {importer}")
    assert not wrong, "subclassing across rooms (compose instead):\n" + "\n".join(wrong)


def test_the_nats_flock_is_composed_not_derived() -> None:
    from flockrt.bus.flock import NatsFlock
    from flockrt.flock.api import FlockAPI
    from flockrt.flock.local import LocalFlock

    assert not issubclass(NatsFlock, LocalFlock)
    assert NatsFlock.__mro__ == (NatsFlock, object)
    assert LocalFlock.__mro__ == (LocalFlock, object)
    for flock in (NatsFlock, LocalFlock):  # the one interface, every member of it
        missing = [name for name in dir(FlockAPI) if not name.startswith("_") and not hasattr(flock, name)]
        undeclared = [
            name for name in FlockAPI.__annotations__ if name not in flock.__init__.__code__.co_names
        ]
        assert not missing, f"{flock.__name__} lacks {missing}"
        assert not undeclared, f"{flock.__name__} never sets {undeclared}"


def test_importing_the_kernel_loads_none_of_the_heavy_packages() -> None:
    code = (
        "import sys, flockrt.actors, flockrt.supervisor\n"
        f"print(','.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_no_file_in_flockrt_is_over_700_lines() -> None:
    long = {
        str(path.relative_to(PACKAGE.parent)): n
        for path in sources()
        if (n := len(path.read_text().splitlines())) > 700
    }
    assert not long, f"files over 700 lines (each likely holds two concepts): {long}"
