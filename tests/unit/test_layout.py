"""The architecture as the folders state it: imports go downward only, and the library's core
loads neither Prefect nor the CLI's libraries."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: What each layer of i2score may import from i2score (itself included). ``cli``, ``bench`` and
#: ``demo`` are the edge: they may import anything, and nothing in the core imports them.
CORE_LAYERS = ("kernels", "weights", "data", "generator", "features", "encoders", "method", "runs")
ALLOWED = {
    "kernels": {"kernels"},
    "weights": {"weights"},
    "data": {"data"},
    "generator": {"generator", "kernels", "weights"},
    "features": {"features", "kernels", "weights"},
    "encoders": {"encoders", "generator", "features", "kernels", "weights"},
    "method": {"method", "encoders", "generator", "features", "data", "kernels", "weights"},
    "runs": {"runs", "method", "encoders", "generator", "features", "data", "kernels", "weights"},
    "cli": None,
    "bench": None,
    "demo": None,
    # The outer layers (links to the top-level flows/ and tasks/): flows -> tasks -> the library.
    "flows": None,
    "tasks": {"tasks", *CORE_LAYERS},
}
CORE = CORE_LAYERS


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports (function-level imports included), with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names if node.module == "i2score"]
    return found


def _layer(module: str) -> str | None:
    """The layer of an i2score module (None for other modules and the package's own names)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "i2score" and parts[1] in ALLOWED else None


def test_flows_and_tasks_are_installed_under_the_library_from_where_they_are():
    """The folders stay at the top level (the architecture's outer layers); the package holds
    links to them, which a wheel stores as their files (``i2score.flows``, ``i2score.tasks``)."""
    for name in ("flows", "tasks"):
        link = REPO / "i2score" / name
        assert link.is_symlink() and link.resolve() == (REPO / name).resolve(), link
    demo = REPO / "i2score" / "demo" / "data"
    assert demo.is_symlink() and demo.resolve() == (REPO / "manifests" / "demo").resolve()


def test_every_module_of_the_library_belongs_to_a_layer():
    top = {p.name for p in (REPO / "i2score").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert top == set(ALLOWED), "a new package needs its place in ALLOWED (and in the README's code map)"
    stray = [p.name for p in (REPO / "i2score").glob("*.py") if p.name != "__init__.py"]
    assert stray == [], f"modules outside a layer: {stray}"


def test_imports_go_downward_only():
    bad = []
    sources = [(p, "i2score." + ".".join(p.relative_to(REPO / "i2score").with_suffix("").parts))
               for p in (REPO / "i2score").rglob("*.py")]
    sources += [(p, "i2score." + ".".join(p.relative_to(REPO).with_suffix("").parts))
                for top in ("flows", "tasks") for p in (REPO / top).rglob("*.py")]
    assert any(m.startswith("i2score.flows.") for _, m in sources)
    for path, name in sorted(sources):
        layer = _layer(name)
        allowed = ALLOWED.get(layer) if layer else None
        for line, module in _imports(path):
            target = _layer(module)
            if module.split(".")[0] in ("flows", "tasks"):
                bad.append(f"{path.relative_to(REPO)}:{line} imports {module} (installed, they are i2score.{module})")
            elif target in ("flows", "tasks") and layer in CORE_LAYERS:
                bad.append(f"{path.relative_to(REPO)}:{line}: the library's {layer} imports {module}")
            elif target is not None and allowed is not None and target not in allowed:
                bad.append(f"{path.relative_to(REPO)}:{line}: {layer} imports {module}")
    assert bad == [], "\n".join(bad)


@pytest.mark.parametrize("package", ["i2score", *(f"i2score.{layer}" for layer in CORE)])
def test_the_core_loads_neither_prefect_nor_the_cli_libraries(package):
    code = (f"import sys, importlib; importlib.import_module({package!r}); "
            "print(sorted(m for m in ('prefect', 'typer', 'rich', 'i2score.cli', 'i2score.bench', 'i2score.demo', "
            "'i2score.flows', 'i2score.tasks') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
