"""cffi (API mode) binding of picohttpparser, as exported by libh2o-evloop.

Builds the extension module ``fastproxy._picohttp``.  The admin server parses its requests through
it; the data path uses the same library from Cython.  Build in place with
``python fastproxy/_cffi_build.py`` from the project root, or through setup.py (``cffi_modules``).
"""
import os

from cffi import FFI

ffibuilder = FFI()

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_HEADER = os.path.join(_ROOT, "csrc", "fp_picohttpparser.h")


def _declarations(path: str) -> str:
    """The header's declarations without its preprocessor lines (cffi's cdef takes plain C)."""
    with open(path) as f:
        return "".join(line for line in f if not line.lstrip().startswith("#"))


# One declaration of picohttpparser's API for the whole project: csrc/fp_picohttpparser.h.
ffibuilder.cdef(_declarations(_HEADER))

ffibuilder.set_source(
    "fastproxy._picohttp",
    '#include "fp_picohttpparser.h"',
    libraries=["h2o-evloop"],
    # Relative for setup.py builds (run from the project root); absolute as a fallback so the
    # script also works when run from elsewhere.
    include_dirs=["csrc", os.path.join(_ROOT, "csrc")],
)

if __name__ == "__main__":
    import glob
    import shutil

    # Compile under build/ (keeps the generated C and objects out of the package), then put the
    # extension next to the package's sources for in-place use.
    os.chdir(_ROOT)
    tmpdir = os.path.join("build", "cffi")
    built = ffibuilder.compile(tmpdir=tmpdir, verbose=False)
    for old in glob.glob(os.path.join("fastproxy", "_picohttp.*.so")):
        os.unlink(old)
    shutil.copy2(built, os.path.join("fastproxy", os.path.basename(built)))
