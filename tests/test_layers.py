"""The layer rule of docs/architecture.md, checked over every import in `handray/` (lazy ones
inside functions and TYPE_CHECKING blocks too): config and shared geometry at the bottom; data
and model each on the bottom only, never on each other; training, evaluation, export and
predict on data and model; the server on the bottom and data only (it loads the export, never
the model's code); the command line and the demo on anything."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "handray"

# Each module's layer, by the longest matching dotted prefix.
LAYERS = {
    "handray": "base",
    "handray.atomic": "base",
    "handray.config": "base",
    "handray.errors": "base",
    "handray.geometry": "base",
    "handray.hand_keypoints": "base",
    "handray.images": "base",
    "handray.parallel": "base",
    "handray.plot": "base",
    "handray.postprocess": "base",
    "handray.unpad": "base",
    "handray.visualize": "base",
    "handray.data": "data",
    "handray.model": "model",
    "handray.evaluate": "application",
    "handray.export": "application",
    "handray.hand_matching": "application",
    "handray.predict": "application",
    "handray.train": "application",
    "handray.serve": "serve",
    "handray.cli": "entry",
    "handray.demo": "entry",
}
MAY_IMPORT = {
    "base": {"base"},
    "data": {"base", "data"},
    "model": {"base", "model"},
    "application": {"base", "data", "model", "application"},
    "serve": {"base", "data", "serve"},
    "entry": {"base", "data", "model", "application", "serve", "entry"},
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
        ("handray.model.maskrcnn", "from handray.geometry import resize_and_pad", True),
        ("handray.export", "from handray.model import MaskRCNN", True),
        ("handray.serve.codec", "from handray.data.masks import encode_mask", True),
    ],
)
def test_the_check_names_the_offending_import(module, source, allowed):
    found = violations(module, source, "x.py")
    assert (not found) == allowed
    if found:
        assert found[0].startswith(f"x.py:{source.count(chr(10)) + 1}: {module}")


def test_a_module_outside_every_layer_is_reported():
    with pytest.raises(AssertionError, match="handray.newthing belongs to no layer"):
        layer_of("handray.newthing")
