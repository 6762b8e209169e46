"""The layer rule of docs/architecture.md, checked over every import in `handray/` (lazy ones
inside functions and TYPE_CHECKING blocks too). Layers are folders: `config/` and `core/` at the
bottom; `data/` and `model/` on the bottom only, never on each other; `inference/` on data and
model; `evaluation/` on inference; `train/` on evaluation; the server on the bottom only (it
loads the export, never the model's code); the entry points in the package root on anything.
The package root holds nothing but those entry points."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "handray"

# The modules the package root may hold: the command line, the demo and `handray.load`.
ENTRY_POINTS = {"__init__.py", "cli.py", "demo.py"}
# Each folder's layer (a module's layer is its folder's).
LAYERS = {
    "handray": "entry",
    "handray.cli": "entry",
    "handray.demo": "entry",
    "handray.config": "base",
    "handray.core": "base",
    "handray.data": "data",
    "handray.model": "model",
    "handray.inference": "inference",
    "handray.evaluation": "evaluation",
    "handray.train": "train",
    "handray.serve": "serve",
}
MAY_IMPORT = {
    "base": {"base"},
    "data": {"base", "data"},
    "model": {"base", "model"},
    "inference": {"base", "data", "model", "inference"},
    "evaluation": {"base", "data", "model", "inference", "evaluation"},
    "train": {"base", "data", "model", "inference", "evaluation", "train"},
    "serve": {"base", "serve"},
    "entry": set(LAYERS.values()),
}


def layer_of(module: str) -> str:
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        if (prefix := ".".join(parts[:end])) in LAYERS and (end > 1 or len(parts) == 1):
            return LAYERS[prefix]
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in {__file__}")


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, module) of every `handray` import in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name.split(".")[0] == "handray"]


def violations(module: str, source: str, path: str) -> list[str]:
    """`path:line: module (layer) imports other (layer)` for each import the rule forbids."""
    layer = layer_of(module)
    return [
        f"{path}:{line}: {module} ({layer}) imports {name} ({layer_of(name)})"
        for line, name in imported_modules(source)
        if layer_of(name) not in MAY_IMPORT[layer]
    ]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_import_in_handray_follows_the_layer_rule():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        found += violations(module_name(path), path.read_text(), str(path))
    assert not found, "imports across layers:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("module", "source", "allowed"),
    [
        ("handray.data.pipeline", "from handray.model.roi_align import x", False),
        ("handray.model.maskrcnn", "def f():\n    import handray.data.resize", False),
        ("handray.serve.app", "from handray.model import build_model", False),
        ("handray.config.schema", "from handray.train.step import x", False),
        ("handray.model.maskrcnn", "from handray.core.geometry import resize_and_pad", True),
        ("handray.inference.export", "from handray.model import MaskRCNN", True),
        ("handray.serve.codec", "from handray.core.masks import encode_mask", True),
        ("handray.serve.app", "from handray.inference.export import x", False),
        ("handray.inference.export", "from handray.evaluation.metrics import x", False),
        ("handray.train.loop", "from handray.evaluation.metrics import x", True),
    ],
)
def test_the_check_names_the_offending_import(module, source, allowed):
    found = violations(module, source, "x.py")
    assert (not found) == allowed
    if found:
        assert found[0].startswith(f"x.py:{source.count(chr(10)) + 1}: {module}")


def module_scope_imports(module: str, source: str, known: set[str]) -> set[str]:
    """The handray modules `source` imports when it is imported (module scope; imports in
    functions and TYPE_CHECKING blocks run later or never)."""
    found = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return {name for name in found if name in known and name != module}


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each circle of imports found by a depth-first walk, as the modules around it."""
    circles, state, path = [], {}, []

    def walk(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for other in sorted(graph[module]):
            if state.get(other) == "open":
                circles.append([*path[path.index(other) :], other])
            elif other not in state:
                walk(other)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            walk(module)
    return circles


def test_no_module_imports_itself_through_others():
    sources = {module_name(p): p.read_text() for p in PACKAGE.rglob("*.py")}
    graph = {m: module_scope_imports(m, s, set(sources)) for m, s in sources.items()}
    circles = import_circles(graph)
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_a_circle_is_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_circles(graph) == [["a", "b", "c", "a"]]


def test_the_package_root_holds_only_entry_points():
    modules = {path.name for path in PACKAGE.glob("*.py")}
    assert modules <= ENTRY_POINTS, (
        f"{sorted(modules - ENTRY_POINTS)} sit in the package root; put them in the folder "
        "of their layer (see docs/architecture.md)"
    )


def test_every_folder_of_the_package_is_a_layer():
    folders = {f"handray.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert folders <= set(LAYERS), f"{sorted(folders - set(LAYERS))} belong to no layer"


def test_a_module_outside_every_layer_is_reported():
    with pytest.raises(AssertionError, match="handray.newthing belongs to no layer"):
        layer_of("handray.newthing")
