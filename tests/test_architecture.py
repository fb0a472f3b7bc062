"""The import architecture (docs/architecture.md): layers, no cycles, no private reach-ins.

The layers and the no-cycles rule are import-linter contracts in pyproject.toml, checked here
by running ``lint-imports`` itself (CI runs it too). Reaching into another module's private
names (``other._name``, ``from corral.x import _name``) is not something import-linter sees,
so it is checked here on the source's syntax tree.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import scaled

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "corral"

#: (module, private name) -> why it may be used there. Keep this short: each entry is a debt.
ALLOWED = {
    # A classmethod finishing the instance it just made (the same class, so not a reach-in).
    ("corral.security", "_save"): "Authority.create saves the authority it made",
    ("corral.guardian.client", "_owned"): "GuardianClient.connect marks the client it made",
}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text(), str(path))
    return found


def _defined_privates(trees: dict[str, ast.Module]) -> set[str]:
    """Every private name corral defines: functions, classes, and attributes it assigns."""
    names: set[str] = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return {n for n in names if _private(n)}


def reach_ins(trees: dict[str, ast.Module]) -> list[str]:
    """Each use of another module's or object's private name: ``module:line: what``."""
    ours = _defined_privates(trees)
    found = []
    for module, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr) and node.attr in ours:
                owner = node.value
                if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                    continue
                if (module, node.attr) not in ALLOWED:
                    found.append(f"{module}:{node.lineno}: {ast.unparse(node)}")
            elif isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if _private(alias.name) and (module, alias.name) not in ALLOWED:
                        found.append(f"{module}:{node.lineno}: import {alias.name}")
    return found


def test_no_module_reaches_into_another_modules_private_names() -> None:
    found = reach_ins(_modules())
    assert not found, (
        "these use another module's or object's private names; give the owner a public "
        "name (or pass the collaborator in) instead:\n" + "\n".join(found)
    )


def test_the_checker_sees_a_reach_in() -> None:
    """The check above fails on reach-ins like the ones it replaced (a dashboard that woke
    the controller's group commit through ``ctl._wake``)."""
    trees = _modules()
    trees["corral.dashboard.fake"] = ast.parse(
        "from corral.group_p2p import _ENCODER\n"
        "def wake(ctl):\n"
        "    ctl._wake.set()\n"
        "    self._wake.set()\n"
    )
    assert reach_ins(trees) == [
        "corral.dashboard.fake:1: import _ENCODER",
        "corral.dashboard.fake:3: ctl._wake",
    ]


def test_the_import_contracts_hold() -> None:
    """Layers (exhaustive), no cycles at any depth, private modules kept private."""
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run(
        [str(lint), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=scaled(120),
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


#: What a node process must not import: the controller's store and API, the API client, the
#: CLI's and the dashboard's libraries (each costs tens of milliseconds in every node process).
HEAVY = ("fastapi", "sqlalchemy", "alembic", "httpx", "jinja2", "rich", "typer", "uvicorn")


def _imported_after(code: str) -> set[str]:
    """The top-level packages and corral modules in ``sys.modules`` after running ``code``
    in a fresh interpreter (this process has imported everything already)."""
    probe = f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=True,
    )
    names = done.stdout.split()
    return {n.split(".")[0] for n in names} | {n for n in names if n.startswith("corral.")}


def test_the_node_runtime_imports_no_controller_api_or_cli_library() -> None:
    """``Node`` (and ``Config``) is all a process hosting nodes imports (issue #14: ten such
    processes' imports were most of a 1,000-node join's CPU)."""
    loaded = _imported_after("from corral import Config, Node")
    assert loaded & set(HEAVY) == set(), sorted(loaded & set(HEAVY))
    assert {"corral.node", "corral.config"} <= loaded  # the probe did import the node
    not_node = {"corral.client", "corral.agent", "corral.controller", "corral.store"}
    assert loaded & not_node == set(), sorted(loaded & not_node)


def test_importing_corral_imports_nothing_until_a_name_is_used() -> None:
    loaded = _imported_after("import corral")
    assert {n for n in loaded if n.startswith("corral.")} == {"corral._version"}
    # A name's first use imports its module, as `from corral import X` always did.
    loaded = _imported_after("import corral\ncorral.Client\ncorral.procs")
    assert {"corral.client", "corral.procs"} <= loaded
