"""Builds the compiled scheduler core: Cython compiles cluster/vtime.py itself (with the C
types of cluster/vtime.pxd) into an extension module of the same name. vtime.py stays the one
home of the logic and is the pure module when the extension is absent, stale or not wanted
(cluster/__init__.py chooses). ``MMUSIM_PURE=1 pip install .`` builds no extension.

Everything else about the distribution is in pyproject.toml."""

import hashlib
import os

from setuptools import setup

SOURCES = ("cluster/vtime.py", "cluster/vtime.pxd")


def source_digest() -> str:
    """The digest of what the extension is compiled from, as cluster/__init__.py computes it."""
    h = hashlib.sha256()
    for path in SOURCES:
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


ext_modules = []
if os.environ.get("MMUSIM_PURE", "0") in ("", "0"):
    from Cython.Build import cythonize

    ext_modules = cythonize(["cluster/vtime.py"], compiler_directives={"language_level": 3}, quiet=True)
    # beside the extension: what it was compiled from (a changed vtime.py makes it stale)
    with open("cluster/vtime.built", "w") as f:
        f.write(source_digest() + "\n")

setup(ext_modules=ext_modules)
