"""The package declares every third-party module it imports, so `pip install -e .` (no extras)
is enough to run it: imports are read statically (function-level ones included, which importing
the modules would not exercise) and mapped to their distributions."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "rewardmap_jax"


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    """Distribution names in pyproject's `[project] dependencies` list (tomllib is 3.11+)."""
    text = (REPO / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
    specs = re.findall(r'^\s*"([^"]+)"', block, re.M)
    assert "jax>=0.7" in specs, specs
    return {_normalize(re.match(r"[A-Za-z0-9_.-]+", spec).group(0)) for spec in specs}


def _imported_modules() -> dict[str, list[str]]:
    """Top-level module name -> files of the package that import it (absolute imports only)."""
    found: dict[str, list[str]] = {}
    for path in sorted((REPO / PACKAGE).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], []).append(str(path.relative_to(REPO)))
    return found


def test_every_third_party_import_is_a_declared_dependency():
    distributions = importlib.metadata.packages_distributions()
    declared = _declared()
    third_party = {
        m: files
        for m, files in _imported_modules().items()
        if m not in sys.stdlib_module_names and m not in (PACKAGE, "__future__")
    }
    # The scan sees the imports this test is about (a lazy one among them).
    assert {"jax", "jinja2", "yaml", "PIL"} <= set(third_party)
    undeclared = {
        m: (distributions.get(m, ["<not installed>"]), files[0])
        for m, files in third_party.items()
        if not declared & {_normalize(d) for d in distributions.get(m, [])}
    }
    assert not undeclared, f"imported but not in [project] dependencies: {undeclared}"
