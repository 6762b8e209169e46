"""XLA's persistent compilation cache, on by default. A process that XLA-compiles a graph some
process compiled before (a new Serve replica warming its batch sizes, the next `handray
evaluate`) loads the executable from disk instead of compiling it again: a `tiny` export's
first runs of batch sizes 1-4 take 5-6 s instead of 13-14 s on two cores
(`benchmarks/xla_cache.py`).

TensorFlow reads `TF_XLA_FLAGS` once, when it runs its first op, so the cache is named there
before that: `use_xla_cache()` at the start of a process that runs the model.
`HANDRAY_XLA_CACHE` picks the folder (default `~/.cache/handray/xla`); `off` turns it off."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
from pathlib import Path

CACHE_VARIABLE = "HANDRAY_XLA_CACHE"
OFF_VALUES = frozenset({"", "0", "off", "false", "none"})
CACHE_FLAG = "--tf_xla_persistent_cache_directory"


def cache_directory() -> Path | None:
    """The cache folder of this TensorFlow and CPU (an executable is valid only for the XLA
    that built it and the instructions it was built for), or None when turned off."""
    value = os.environ.get(CACHE_VARIABLE)
    if value is not None and value.strip().lower() in OFF_VALUES:
        return None
    if value:
        root = Path(value).expanduser()
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "handray" / "xla"
    return root / machine_key()


def machine_key() -> str:
    """TensorFlow's version, the architecture and a digest of the CPU's instruction flags."""
    version = "unknown"
    for package in ("tensorflow", "tensorflow-cpu"):
        try:
            version = importlib.metadata.version(package)
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    digest = hashlib.sha256(_cpu_flags().encode()).hexdigest()[:12]
    return f"tf-{version}-{platform.machine()}-{digest}"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def use_xla_cache() -> Path | None:
    """Name the cache in `TF_XLA_FLAGS` for this process and the processes it starts, unless it
    is off or the flags already name one; returns the folder in use, if handray chose it."""
    directory = cache_directory()
    flags = os.environ.get("TF_XLA_FLAGS", "")
    if directory is None or CACHE_FLAG in flags:
        return None
    os.environ["TF_XLA_FLAGS"] = f"{flags} {CACHE_FLAG}={directory}".strip()
    return directory
