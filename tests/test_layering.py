# SPDX-License-Identifier: Apache-2.0
"""The package's layers, read from every module's imports (ast, so lazy and TYPE_CHECKING imports count).

Data flows ``lvm/`` -> ``export/`` (movers, qemu-img, manifest) -> ``kvm/``; ``eucalyptus/`` feeds
names and metadata only; ``planning/`` (instance plans) sits on all three; ``cli/`` is the thin top.
Modules at the package's base (errors, ids, procs, units, blocks...) belong to no layer and import none;
no other subpackage (report/, remote/...) imports ``cli/``.
Inside ``lvm/`` the modules import each other without a circle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PKG = "euca2kvm"
SRC = Path(__file__).resolve().parent.parent / "src" / PKG
# layer -> the layers it must not import
FORBIDDEN: dict[str, frozenset[str]] = {
    "lvm": frozenset({"export", "kvm", "eucalyptus", "planning", "cli"}),
    "export": frozenset({"eucalyptus", "kvm", "planning", "cli"}),
    "eucalyptus": frozenset({"export", "kvm", "planning", "cli"}),
    "kvm": frozenset({"eucalyptus", "planning", "cli"}),
    "planning": frozenset({"cli"}),
}
# The package's base: imported by every layer, so it imports none of them (__main__ starts the CLI).
BASE_EXCEPTIONS = frozenset({f"{PKG}.__main__"})


def module_name(path: Path, root: Path = SRC) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path = SRC) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path`` that names a module of the package."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:  # ``from . import procs`` imports a module too
                yield node.lineno, f"{target}.{alias.name}"


def missing_modules(root: Path = SRC) -> list[str]:
    """Imports of package modules that do not exist (a module moved and an importer left behind)."""
    mods = {module_name(p, root) for p in root.rglob("*.py")}
    mods |= {module_name(d / "__init__.py", root) for d in [root, *root.rglob("*")] if d.is_dir()}
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                name = module_name(path, root)
                package = name if path.name == "__init__.py" else name.rpartition(".")[0]
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                names = [".".join(base + ([node.module] if node.module else []))]
            found += [f"{path.relative_to(root.parent)}:{node.lineno}: no module {n}"
                      for n in names if n.split(".")[0] == PKG and n not in mods]
    return found


def layer_of(module: str, root: Path = SRC) -> str | None:
    """The subpackage ``module`` belongs to, "" for a module at the package's base, None outside it."""
    parts = module.split(".")
    if len(parts) < 2 or parts[0] != PKG:
        return None
    return parts[1] if (root / parts[1]).is_dir() else ""


def violations(root: Path = SRC) -> list[str]:
    found: dict[tuple[Path, int], str] = {}  # one report per import statement
    for path in sorted(root.rglob("*.py")):
        mod = module_name(path, root)
        if mod in BASE_EXCEPTIONS:
            continue
        own = layer_of(mod, root)
        for line, target in imports_of(path, root):
            other = layer_of(target, root)
            if not other or other == own:
                continue
            rel = path.relative_to(root.parent)
            if own == "":
                found.setdefault((rel, line), f"{rel}:{line}: base module imports {target}")
            elif other == "cli" or other in FORBIDDEN.get(own or "", ()):
                found.setdefault((rel, line), f"{rel}:{line}: {own}/ imports {target}")
    return list(found.values())


def module_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> modules of ``package`` it imports (at any depth of the code)."""
    mods = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        if not mod.startswith(package + "."):
            continue
        graph[mod] = {t for _, t in imports_of(path, root) if t in mods and t != mod and t.startswith(package + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                cyc = visit(m)
                if cyc:
                    return cyc
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            cyc = visit(n)
            if cyc:
                return cyc
    return None


def test_layers_import_only_downwards() -> None:
    assert violations() == []


def test_every_imported_package_module_exists() -> None:
    assert missing_modules() == []


def test_lvm_has_no_import_circle() -> None:
    assert find_cycle(module_graph(SRC, f"{PKG}.lvm")) is None


@pytest.mark.parametrize("source, bad", [
    ({"eucalyptus/instances.py": "from ..export import pipeline\n"}, "eucalyptus/ imports euca2kvm.export"),
    ({"export/gzsource.py": "from ..eucalyptus.discovery import X\n"}, "export/ imports euca2kvm.eucalyptus"),
    ({"lvm/scan.py": "def f():\n    from euca2kvm.kvm import qemu\n"}, "lvm/ imports euca2kvm.kvm"),
    ({"kvm/qemu.py": "from .. import cli\n"}, "kvm/ imports euca2kvm.cli"),
    ({"errors.py": "from .export import qemu_img\n"}, "base module imports euca2kvm.export"),
])
def test_the_checker_sees_violations(tmp_path: Path, source: dict[str, str], bad: str) -> None:
    root = tmp_path / PKG
    for layer in ("lvm", "export", "kvm", "eucalyptus", "planning", "cli"):
        (root / layer).mkdir(parents=True)
    for rel, text in source.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    found = violations(root)
    assert any(bad in v for v in found), found
    ok = tmp_path / "ok" / PKG
    for layer in ("kvm", "export"):
        (ok / layer).mkdir(parents=True)
    (ok / "kvm" / "a.py").write_text("from ..export import qemu_img\nfrom .. import errors\nimport os\n")
    assert violations(ok) == []


def test_the_checker_sees_an_import_left_behind(tmp_path: Path) -> None:
    root = tmp_path / PKG
    (root / "eucalyptus").mkdir(parents=True)
    (root / "eucalyptus" / "san.py").write_text("def f():\n    from .instances import Blocker\n")
    (root / "eucalyptus" / "inventory.py").write_text("from . import san\nfrom .san import f\n")
    assert [m.split(": ")[1] for m in missing_modules(root)] == [f"no module {PKG}.eucalyptus.instances"]


def test_the_cycle_finder_sees_a_type_checking_circle(tmp_path: Path) -> None:
    root = tmp_path / PKG
    (root / "lvm").mkdir(parents=True)
    (root / "lvm" / "a.py").write_text("from .b import x\n")
    (root / "lvm" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import y\n")
    assert find_cycle(module_graph(root, f"{PKG}.lvm")) == [f"{PKG}.lvm.a", f"{PKG}.lvm.b", f"{PKG}.lvm.a"]
