"""Putting partitions together (see the README's tree). Importing the package chooses which
``cluster.vtime`` runs: the extension that setup.py compiles from vtime.py (the sim backend's
speed), or vtime.py itself, the pure module. Both give the same trace digests
(tests/unit/test_vtime_build.py checks that).

The pure module runs when ``MMUSIM_PURE=1`` is set, when no extension was built (or it
cannot load here, e.g. a Ray worker's working_dir, which does not carry the untracked build),
or when the extension is stale: ``vtime.built`` beside it names the digest of the sources it
was compiled from, and vtime.py or vtime.pxd has changed since (``pip install -e .`` builds it
again). ``cluster.vtime.COMPILED`` tells which runs, ``VTIME_BUILD`` why."""

import hashlib
import importlib.machinery
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _source_digest() -> str:
    h = hashlib.sha256()
    for name in ("vtime.py", "vtime.pxd"):
        with open(os.path.join(_HERE, name), "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def _built_digest() -> str | None:
    try:
        with open(os.path.join(_HERE, "vtime.built")) as f:
            return f.read().strip()
    except OSError:
        return None


def _load_pure_vtime() -> None:
    """Import vtime.py as ``cluster.vtime``, passing over an extension of that name."""
    path = os.path.join(_HERE, "vtime.py")
    loader = importlib.machinery.SourceFileLoader("cluster.vtime", path)
    spec = importlib.util.spec_from_file_location("cluster.vtime", path, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["cluster.vtime"] = module
    loader.exec_module(module)
    globals()["vtime"] = module  # as the import system sets a submodule on its package


def _choose_vtime() -> str:
    if os.environ.get("MMUSIM_PURE", "0") not in ("", "0"):
        _load_pure_vtime()
        return "pure (MMUSIM_PURE is set)"
    spec = importlib.util.find_spec("cluster.vtime")
    if spec is None or not isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
        return "pure (no compiled extension)"
    if _built_digest() != _source_digest():
        _load_pure_vtime()
        return "pure (the extension is stale: vtime.py or vtime.pxd changed since it was built)"
    try:
        importlib.import_module("cluster.vtime")
    except ImportError as e:  # built for another machine or Python
        sys.modules.pop("cluster.vtime", None)
        _load_pure_vtime()
        return f"pure (the extension does not load here: {e})"
    return "compiled"


VTIME_BUILD = _choose_vtime()
