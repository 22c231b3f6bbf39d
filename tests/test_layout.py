"""The house rules, checked: small modules, docstrings where users look, arrows pointing down.

- every module of the package stays under ~400 lines (MAX_LINES);
- every module, public class and public top-level function has a docstring;
- the solvers (solve/), the kernel composer (compose.py) and the geometry stay pure: no onnx,
  onnxruntime or onnx_graphsurgeon import;
- the CLI calls the API: it imports no driver internals;
- `import onnxmerge` stays light (no Polygraphy, no torch).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "onnxmerge"
MAX_LINES = 400
MODULES = sorted(PACKAGE.rglob("*.py"))
HEAVY = ("onnx", "onnxruntime", "onnx_graphsurgeon")


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text())


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_is_small_and_documented(path: Path) -> None:
    lines = path.read_text().count("\n")
    assert lines <= MAX_LINES, f"{path.name}: {lines} lines"
    tree = _tree(path)
    assert ast.get_docstring(tree), f"{path.name}: no module docstring"
    missing = [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.ClassDef)
        and not node.name.startswith("_")
        and not ast.get_docstring(node)
    ]
    assert not missing, f"{path.name}: public names without a docstring: {missing}"


@pytest.mark.parametrize(
    "path",
    [*sorted((PACKAGE / "solve").glob("*.py")), PACKAGE / "compose.py", PACKAGE / "geometry.py"],
    ids=lambda p: p.name,
)
def test_numeric_core_imports_no_onnx(path: Path) -> None:
    heavy = {m for m in _imports(path) if m.split(".")[0] in HEAVY}
    assert not heavy, f"{path.name} imports {heavy}"


def test_cli_calls_the_api_only() -> None:
    inner = {"onnxmerge.compress", "onnxmerge.fuse", "onnxmerge.problem", "onnxmerge.search"}
    for path in (PACKAGE / "cli").glob("*.py"):
        assert not (_imports(path) & inner), f"{path.name} reaches past onnxmerge.api"


def test_import_is_light() -> None:
    code = (
        "import sys, onnxmerge, onnxmerge.api; "
        "print(sorted(m for m in ('polygraphy', 'torch', 'tensorrt') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
