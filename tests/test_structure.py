"""The package's structure as docs/architecture.md describes it: the import graph (layers, no
cycles) and the checklist for a new protocol, followed to the letter in a copy of the package."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ssl_bench"
DOC = (REPO / "docs" / "architecture.md").read_text()


# ----- the import graph ------------------------------------------------------------------------
def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _target(name: str) -> str | None:
    """The package module ``name`` denotes (a module, or the package holding the attribute)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> list[tuple[str, bool]]:
    """(imported package module, whether the import sits inside a function) for every import."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    nested = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
              for node in ast.walk(fn)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            target = _target(name) if name.startswith("ssl_bench") else None
            if target and target != module:
                found.append((target, id(node) in nested))
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def test_the_graph_sees_the_imports_it_should():
    assert ("ssl_bench.schedules", False) in GRAPH["ssl_bench.protocols.linear"]
    assert ("ssl_bench.engine.step", False) in GRAPH["ssl_bench.benchmarks.pretrain"]
    assert ("ssl_bench.evaluate", True) in GRAPH["ssl_bench.cli"]


def test_evaluation_does_not_import_the_engine():
    for module, edges in GRAPH.items():
        if module.startswith(("ssl_bench.protocols", "ssl_bench.data", "ssl_bench.metrics", "ssl_bench.leaderboard")):
            engine = [target for target, _ in edges if target.startswith("ssl_bench.engine")]
            assert not engine, f"{module} imports {engine}"


def test_only_the_cli_imports_package_modules_lazily():
    lazy = sorted({module for module, edges in GRAPH.items() for _, nested in edges if nested} - {"ssl_bench.cli"})
    assert not lazy, f"imports of the package's own modules inside functions (only cli.py may): {lazy}"


def test_package_imports_are_relative():
    def absolute(node) -> bool:
        if isinstance(node, ast.ImportFrom):
            return node.level == 0 and (node.module or "").split(".")[0] == "ssl_bench"
        return isinstance(node, ast.Import) and any(a.name.split(".")[0] == "ssl_bench" for a in node.names)

    found = [module for module, path in MODULES.items() if any(absolute(n) for n in ast.walk(ast.parse(path.read_text())))]
    assert not found, f"absolute imports of ssl_bench in {found}"


def test_no_import_cycles():
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target, _ in GRAPH[module]:
            if state.get(target) == "open":
                cycle = path[path.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in MODULES:
        if module not in state:
            visit(module, [module])


def documented_layers() -> list[str]:
    """The module column of the documented package layout, in order (code only)."""
    section = DOC.split("## Package layout", 1)[1].split("\n## ", 1)[0].split("\n\nInside", 1)[0]
    rows = re.findall(r"^\| `ssl_bench/([^`]+)`", section, flags=re.MULTILINE)
    return ["ssl_bench." + row.removesuffix(".py").removesuffix("/").replace("/", ".") for row in rows]


def test_every_module_imports_only_its_own_layer_or_those_above():
    layers = [layer for layer in documented_layers() if layer in MODULES]
    assert {"ssl_bench.errors", "ssl_bench.engine", "ssl_bench.cli"} <= set(layers)

    def layer_of(module: str) -> int | None:
        matches = [i for i, layer in enumerate(layers) if module == layer or module.startswith(layer + ".")]
        return matches[-1] if matches else None

    placed = {module: layer_of(module) for module in MODULES}
    unplaced = sorted(m for m, layer in placed.items() if layer is None and m != "ssl_bench")
    assert not unplaced, f"modules missing from the layout table of docs/architecture.md: {unplaced}"
    for module, edges in GRAPH.items():
        for target, _ in edges:
            if placed.get(module) is not None and placed.get(target) is not None:
                assert placed[target] <= placed[module], \
                    f"{module} (layer {layers[placed[module]]}) imports {target} (layer {layers[placed[target]]})"


# ----- the checklist for a new protocol ------------------------------------------------------------
def checklist(title: str) -> list[str]:
    """The file paths a numbered checklist section of the doc names in its required items."""
    section = DOC.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    items = re.findall(r"^\d+\. (?!Optional)`([^`]+)`", section, flags=re.MULTILINE)
    return items


def code_blocks(title: str) -> dict[str, str]:
    section = DOC.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"```(\w+)\n(.*?)```", section, flags=re.DOTALL))


def make_tree(root: Path, classes: int = 3, per_split: dict | None = None) -> Path:
    for split, count in (per_split or {"train": 4, "val": 2}).items():
        for c in range(classes):
            folder = root / "imagenet" / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (80, 80), (60 * c, 200 - 50 * c, 30 * i)).save(folder / f"n{c:08d}_{i}.JPEG")
    return root / "imagenet"


def test_a_toy_protocol_needs_only_the_files_the_doc_names(tmp_path):
    files = checklist("Adding a protocol")
    assert files[:3] == ["ssl_bench/protocols/NAME.py", "ssl_bench/defaults/protocols/NAME.yaml",
                         "tests/test_protocols_NAME.py"]
    blocks = code_blocks("Adding a protocol")
    copy = tmp_path / "copy"
    shutil.copytree(PACKAGE, copy / "ssl_bench", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / files[0].replace("NAME", "toy")).write_text(blocks["python"])
    (copy / files[1].replace("NAME", "toy")).write_text(blocks["yaml"])
    data = make_tree(tmp_path / "data")
    # the copy runs (the checkout has no 'toy' protocol: with the checkout, eval would exit 2)
    env = {**os.environ, "PYTHONPATH": str(copy), "OMP_NUM_THREADS": "1"}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ssl_bench.cli", "--quiet", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)

    out = cli("eval", "--protocol", "toy", "--checkpoint", "random:vit_tiny_patch16_224", "--data", str(data),
              "--results", str(tmp_path / "results"))
    assert out.returncode == 0, out.stderr[-2000:]
    values = {line.split("\t")[2]: float(line.split("\t")[3]) for line in out.stdout.splitlines()}
    assert values["n_val"] == len(list((data / "val").rglob("*.JPEG"))) == 6
    assert values["mean_norm"] > 0
    board = cli("leaderboard", "--results", str(tmp_path / "results"), "--format", "csv")
    assert board.returncode == 0, board.stderr[-2000:]
    assert "toy" in board.stdout and "mean_norm" in board.stdout
