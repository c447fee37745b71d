"""Builds the compiled scheduler core: Cython compiles cluster/vtime.py itself (with the C
types of cluster/vtime.pxd) into an extension module of the same name. vtime.py stays the one
home of the logic and is the pure module when the extension is absent, stale or not wanted
(cluster/__init__.py chooses).

Beside the extension goes ``vtime.built``: the digest of the sources it was compiled from, so
that an extension older than vtime.py is never run. ``MMUSIM_PURE=1 pip install .`` builds no
extension; a machine that cannot compile it (no C compiler or no Python headers) gets the pure
module, with a warning in pip's output.

Everything else about the distribution is in pyproject.toml."""

import hashlib
import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

SOURCES = ("cluster/vtime.py", "cluster/vtime.pxd")


def source_digest() -> str:
    """The digest of what the extension is compiled from, as cluster/__init__.py computes it."""
    h = hashlib.sha256()
    for path in SOURCES:
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


class BuildVtime(build_ext):
    """build_ext that writes ``vtime.built`` beside the extension it built, and that leaves the
    pure module in place (and no ``vtime.built``) where the extension cannot be compiled."""

    def build_extension(self, ext):  # type: ignore[no-untyped-def]
        built = os.path.join(os.path.dirname(self.get_ext_fullpath(ext.name)), "vtime.built")
        if os.path.exists(built):
            os.remove(built)
        try:
            super().build_extension(ext)
        except Exception as e:  # the compiler's or the linker's failure, or no compiler at all
            print(f"WARNING: mmusim: cannot compile {ext.name} ({e}); the pure module will run",
                  file=sys.stderr)
            return
        with open(built, "w") as f:
            f.write(source_digest() + "\n")

    def copy_extensions_to_source(self):  # type: ignore[no-untyped-def]
        """An editable install copies the extension into the source tree: its vtime.built too.
        An extension that could not be compiled is not copied (there is nothing to copy): the
        install goes on, and the pure module runs."""
        build_py = self.get_finalized_command("build_py")
        every = self.extensions
        self.extensions = [ext for ext in every if os.path.exists(
            os.path.join(self.build_lib, self.get_ext_filename(self.get_ext_fullname(ext.name))))]
        try:
            super().copy_extensions_to_source()
        finally:
            self.extensions = every
        for ext in self.extensions:
            fullname = self.get_ext_fullname(ext.name)
            built = os.path.dirname(self.get_ext_filename(fullname))  # e.g. cluster/, in build_lib
            src = os.path.join(self.build_lib, built, "vtime.built")
            dst = os.path.join(build_py.get_package_dir(".".join(fullname.split(".")[:-1])), "vtime.built")
            if os.path.exists(src):
                self.copy_file(src, dst)
            elif os.path.exists(dst):
                os.remove(dst)


ext_modules = []
if os.environ.get("MMUSIM_PURE", "0") in ("", "0"):
    from Cython.Build import cythonize

    ext_modules = cythonize(["cluster/vtime.py"], compiler_directives={"language_level": 3}, quiet=True)

setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildVtime})
