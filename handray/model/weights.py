"""Weight files by layer name: the old model's Keras-2 `.h5` files, ImageNet and COCO starts.

Keras 3 cannot load a Keras-2 `save_weights` file by name (its own `.weights.h5` format stores
variables by object position), yet the old users' `mask_rcnn_hand.h5`, matterport's
`mask_rcnn_coco.h5` and Keras Applications' ImageNet ResNets are all in the Keras-2 layout. This
module reads that layout with h5py - root attribute `layer_names`, one group per layer whose
attribute `weight_names` lists datasets such as `conv1/kernel:0` - and assigns every weight by
layer name and role (kernel, bias, gamma, beta, moving_mean, moving_variance). handray's own
checkpoints are written in the same layout, so one reader serves all of them.

Keras 3 `.weights.h5` files are rejected with a message rather than handed to
`model.load_weights`: they match by position, so they honour neither `exclude` nor a different
class count, and a failed Keras load leaves a half-assigned model.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import keras
import numpy as np

from handray.core.atomic import atomic_write
from handray.core.errors import HandrayError
from handray.core.version import VERSION

logger = logging.getLogger(__name__)

# Layers whose weight shapes follow the class count; skipped (not an error) when it differs.
CLASS_LAYERS = ("mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_mask")

IMAGENET_FILES = {
    "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "resnet101": "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
}
IMAGENET_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
COCO_WEIGHTS_URL = (
    "https://github.com/matterport/Mask_RCNN/releases/download/v2.0/mask_rcnn_coco.h5"
)


@dataclass
class LoadReport:
    """Which model layers got weights, which file layers were left out (and why), and which
    model layers the file did not have."""

    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [
            f"loaded {len(self.loaded)} layers, skipped {len(self.skipped)}, "
            f"missing {len(self.missing)}"
        ]
        lines += [f"  skipped {name}: {self.reasons.get(name, '')}" for name in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"  ... and {len(self.skipped) - 20} more skipped")
        if self.missing:
            shown = ", ".join(self.missing[:20])
            more = f" ... and {len(self.missing) - 20} more" if len(self.missing) > 20 else ""
            lines.append(f"  missing (kept as they were): {shown}{more}")
        return "\n".join(lines)


def load_weights(
    model: keras.Model, path: str | os.PathLike, exclude: Iterable[str] | str | None = None
) -> LoadReport:
    """Assign a Keras-2-layout `.h5` file's weights to `model`'s layers of the same names.

    `exclude` holds layer names or regular expressions (matched in full) to leave out. Layers
    of `CLASS_LAYERS` whose class count differs are skipped; any other shape difference raises
    HandrayError, and then nothing is assigned.
    """
    return _load(model, Path(path), exclude, rename=None)


def layer_names_in(path: str | os.PathLike) -> list[str]:
    """The layer names a Keras-2-layout `.h5` file holds weights for (errors as `load_weights`)."""
    path = Path(path)
    with _open(path) as f:
        return _attr_list(_weights_root(f, path), "layer_names")


def load_imagenet_weights(model: keras.Model, path: str | os.PathLike | None = None) -> LoadReport:
    """Load a Keras Applications ResNet file (default: the cached download for the model's
    backbone) onto the backbone, renaming its layers to matterport's.

    Keras Applications uses BN epsilon 1.001e-5 and pads before a valid max-pool; this backbone
    keeps the old model's epsilon 1e-3 and "same" pooling, as matterport did with these files.
    """
    if path is None:
        path = imagenet_weights_path(model.backbone_name)
    report = _load(model, Path(path), None, rename=_imagenet_name)
    backbone_missing = [n for n in report.missing if re.match(r"(res|bn)\d|conv1$|bn_conv1$", n)]
    if backbone_missing:
        logger.warning(
            "ImageNet file %s has no weights for %d backbone layers (%s ...)",
            path,
            len(backbone_missing),
            ", ".join(backbone_missing[:5]),
        )
    return report


def save_weights(model: keras.Model, path: str | os.PathLike) -> None:
    """Write every weighted layer in the Keras-2 layout `load_weights` reads, atomically."""
    layers = [layer for layer in model.leaf_layers() if layer.weights]
    names = [layer.name for layer in layers]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise HandrayError(f"cannot save weights by name: layer names repeat: {duplicates}")
    with atomic_write(path, "w+b") as handle, h5py.File(handle, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n in names])
        f.attrs["backend"] = "tensorflow"
        f.attrs["keras_version"] = keras.__version__
        f.attrs["handray_version"] = VERSION
        for layer in layers:
            group = f.create_group(layer.name)
            weight_names = [f"{layer.name}/{v.name}:0" for v in layer.weights]
            group.attrs["weight_names"] = np.array([n.encode() for n in weight_names])
            for name, variable in zip(weight_names, layer.weights, strict=True):
                group.create_dataset(name, data=variable.numpy())


def imagenet_weights_path(architecture: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The Keras Applications ImageNet file for a ResNet backbone, downloaded once and cached
    in `<cache_dir or $KERAS_HOME or ~/.keras>/models`."""
    if architecture not in IMAGENET_FILES:
        raise HandrayError(
            f"backbone {architecture!r} has no ImageNet weights (only {sorted(IMAGENET_FILES)} "
            "do); the tiny backbone is for tests and demos and starts from random weights"
        )
    name = IMAGENET_FILES[architecture]
    return _cached_download(name, IMAGENET_BASE_URL + name, cache_dir)


def coco_weights_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """matterport's `mask_rcnn_coco.h5`, downloaded once and cached like the ImageNet files."""
    return _cached_download("mask_rcnn_coco.h5", COCO_WEIGHTS_URL, cache_dir)


def _cached_download(name: str, url: str, cache_dir: str | os.PathLike | None) -> Path:
    base = Path(cache_dir or os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser()
    target = base / "models" / name
    if target.is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fetched = keras.utils.get_file(name, url, cache_dir=str(base), cache_subdir="models")
    except Exception as err:  # get_file raises a bare Exception on network failures
        raise HandrayError(
            f"could not download {name} from {url} ({err}); download it on a machine with "
            f"internet access and place it at {target}"
        ) from None
    return Path(fetched)


# ----- reading ------------------------------------------------------------------------------


@dataclass
class _FileWeight:
    label: str  # where it sits in the file, for messages
    dataset: h5py.Dataset


def _load(
    model: keras.Model,
    path: Path,
    exclude: Iterable[str] | str | None,
    rename: Callable[[str], str] | None,
) -> LoadReport:
    """The one reader: validate every layer of the file against the model, then assign."""
    patterns = _compile_exclude(exclude)
    targets = {layer.name: layer for layer in model.leaf_layers() if layer.weights}
    with _open(path) as f:
        root = _weights_root(f, path)
        file_layers = _read_layers(root, set(targets), rename or (lambda name: name))
        report, plan, errors = LoadReport(), [], []
        for name, weights in file_layers.items():
            excluded = next((p.pattern for p in patterns if p.fullmatch(name)), None)
            if excluded is not None:
                _skip(report, name, f"excluded by {excluded!r}")
            elif name not in targets:
                _skip(report, name, "not a layer of this model")
            else:
                _check_layer(targets[name], weights, report, plan, errors)
        if errors:
            shown = "\n  ".join(errors[:10])
            more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
            raise HandrayError(
                f"{path} does not fit this model; nothing was loaded:\n  {shown}{more}\n"
                "Check that the file was made for this backbone and head sizes, or leave the "
                "layers out with `exclude`."
            )
        try:
            values = [(variable, np.asarray(ds[()], dtype=variable.dtype)) for variable, ds in plan]
        except OSError as err:
            raise HandrayError(f"cannot read the weights in {path}: {err}") from None
    for variable, value in values:
        variable.assign(value)
    unknown = [n for n in report.skipped if report.reasons[n] == "not a layer of this model"]
    if unknown:
        logger.info("skipped %d layers of %s that this model does not have", len(unknown), path)
    report.missing = [name for name in targets if name not in file_layers]
    return report


def _check_layer(layer, weights: dict[str, _FileWeight], report, plan, errors) -> None:
    """Compare one file layer with the model layer; plan its assignment, skip it, or add errors."""
    variables = {v.name: v for v in layer.weights}
    if set(weights) != set(variables):
        errors.append(
            f"layer {layer.name}: the file has weights {sorted(weights)}, "
            f"the model {sorted(variables)}"
        )
        return
    mismatched = [
        (role, tuple(weights[role].dataset.shape), tuple(variables[role].shape))
        for role in variables
        if tuple(weights[role].dataset.shape) != tuple(variables[role].shape)
    ]
    if not mismatched:
        plan.extend((variables[role], weights[role].dataset) for role in variables)
        report.loaded.append(layer.name)
    elif layer.name in CLASS_LAYERS and all(f[:-1] == m[:-1] for _, f, m in mismatched):
        role, file_shape, model_shape = mismatched[0]
        reason = (
            f"the class count differs ({role} is {file_shape} in the file, {model_shape} in "
            "the model); left as it was"
        )
        _skip(report, layer.name, reason)
        logger.warning("skipping %s: %s", layer.name, reason)
    else:
        errors.extend(
            f"layer {layer.name}, weight {weights[role].label}: file shape {f}, model shape {m}"
            for role, f, m in mismatched
        )


def _skip(report: LoadReport, name: str, reason: str) -> None:
    report.skipped.append(name)
    report.reasons[name] = reason


def _compile_exclude(exclude: Iterable[str] | str | None) -> list[re.Pattern]:
    items = [exclude] if isinstance(exclude, str) else list(exclude or [])
    try:
        return [re.compile(item) for item in items]
    except re.error as err:
        raise HandrayError(
            f"exclude: {err.pattern!r} is not a regular expression ({err})"
        ) from None


def _open(path: Path) -> h5py.File:
    if not path.exists():
        raise HandrayError(
            f"weight file {path} does not exist; check the path, or get the standard starting "
            "weights with `coco_weights_path()` / `imagenet_weights_path(backbone)`"
        )
    if not path.is_file():
        raise HandrayError(f"weight path {path} is a folder, not an .h5 weight file")
    if not h5py.is_hdf5(path):
        kind = "a Keras 3 .keras archive (zip)" if zipfile.is_zipfile(path) else "not HDF5"
        raise HandrayError(
            f"{path} is {kind}; handray loads Keras-2-layout .h5 weight files (matterport "
            "Mask R-CNN files, handray checkpoints, Keras Applications ResNets)"
        )
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise HandrayError(
            f"cannot open {path} as HDF5 ({err}); the file may be truncated"
        ) from None


def _weights_root(f: h5py.File, path: Path) -> h5py.Group:
    """The group holding `layer_names`: the root, or `model_weights` in full-model saves."""
    for group in (f, f.get("model_weights")):
        if isinstance(group, h5py.Group) and _attr_list(group, "layer_names") is not None:
            return group
    if "layers" in f or "vars" in f:
        raise HandrayError(
            f"{path} is a Keras 3 weights file (.weights.h5), which stores weights by position "
            "rather than by layer name; load it with `model.load_weights(path)` into a model "
            "built from the same config, then write a by-name file with "
            "handray.model.weights.save_weights"
        )
    raise HandrayError(
        f"{path} is HDF5 but has no `layer_names` attribute (at its root or under "
        "`model_weights`), so it is not a Keras-2 weight file; pass a file written by Keras "
        "`save_weights`/`save` (Keras 2) or by handray"
    )


def _attr_list(group: h5py.Group, name: str) -> list[str] | None:
    """A string-list attribute; Keras 2 split long ones into `name0`, `name1`, ..."""
    if name in group.attrs:
        values = list(group.attrs[name])
    elif f"{name}0" in group.attrs:
        values, chunk = [], 0
        while f"{name}{chunk}" in group.attrs:
            values.extend(group.attrs[f"{name}{chunk}"])
            chunk += 1
    else:
        return None
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _read_layers(
    root: h5py.Group, model_names: set[str], rename: Callable[[str], str]
) -> dict[str, dict[str, _FileWeight]]:
    """{layer name: {role: weight}} for every weight in the file.

    A weight belongs to the last component of its name that names a layer of the model (which
    resolves nested models such as `rpn_model`); otherwise to its group's layer (which resolves
    TimeDistributed wrappers whose inner layer has a generated name).
    """
    layers: dict[str, dict[str, _FileWeight]] = {}
    for group_name in _attr_list(root, "layer_names"):
        group = root.get(group_name)
        if not isinstance(group, h5py.Group):
            raise HandrayError(f"{root.file.filename}: layer {group_name!r} is listed but absent")
        weight_names = _attr_list(group, "weight_names") or []
        nested = len({n.split("/")[0] for n in weight_names}) > 1
        for weight_name in weight_names:
            *scopes, last = [rename(part) for part in weight_name.split("/")]
            role = re.sub(r":\d+$", "", last)
            if not isinstance(group.get(weight_name), h5py.Dataset):
                raise HandrayError(
                    f"{root.file.filename}: weight {group_name}/{weight_name} is listed but absent"
                )
            known = [s for s in scopes if s in model_names]
            if known:
                layer = known[-1]
            elif rename(group_name) in model_names or not (nested and scopes):
                layer = rename(group_name)
            else:
                layer = scopes[0]
            layers.setdefault(layer, {})[role] = _FileWeight(
                f"{group_name}/{weight_name}", group[weight_name]
            )
    return layers


_KERAS_APPS_BLOCK = re.compile(r"conv(\d)_block(\d+)_([0-3])_(conv|bn)")
_BRANCHES = {"0": "1", "1": "2a", "2": "2b", "3": "2c"}


def _imagenet_name(name: str) -> str:
    """Keras Applications ResNet layer name -> matterport's (others unchanged)."""
    if name in ("conv1_conv", "conv1_bn"):
        return {"conv1_conv": "conv1", "conv1_bn": "bn_conv1"}[name]
    match = _KERAS_APPS_BLOCK.fullmatch(name)
    if not match:
        return name
    stage, block, index, kind = match.groups()
    prefix = "res" if kind == "conv" else "bn"
    return f"{prefix}{stage}{chr(ord('a') + int(block) - 1)}_branch{_BRANCHES[index]}"
