"""Build the compiled core: Cython extensions over csrc/ and the cffi (API mode) module.

System libraries (Debian): libh2o-evloop-dev (exports picohttpparser's phr_* functions),
libxxhash-dev (xxHash64, the hash of Envoy's consistent-hashing load balancers).
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTPROXY_DEBUG") == "1"
CFLAGS = ["-O0", "-g", "-UNDEBUG"] if DEBUG else ["-O2"]
HTTP_LIBS = ["h2o-evloop"]


def core(name, sources=(), libraries=()):
    return Extension(
        f"fastproxy._core.{name}",
        [f"fastproxy/_core/{name}.pyx", *sources],
        include_dirs=["csrc"],
        libraries=list(libraries),
        extra_compile_args=CFLAGS,
    )


extensions = [
    core("http1", libraries=HTTP_LIBS),
    core("router", sources=["csrc/fp_hash.c", "csrc/fp_hash_policy.c"],
         libraries=HTTP_LIBS + ["xxhash"]),
    core("lb", sources=["csrc/fp_lb.c", "csrc/fp_hash.c", "csrc/fp_hash_lb.c"],
         libraries=["xxhash"]),
    core("stats"),
    core("hoststate", sources=["csrc/fp_hoststate.c"]),
    core("breakers"),
    core("ratelimit", libraries=HTTP_LIBS),
    core("connection", libraries=HTTP_LIBS),
    core("h2downstream", libraries=HTTP_LIBS + ["nghttp2"]),
    core("h2upstream", libraries=HTTP_LIBS + ["nghttp2"]),
    core("http2", libraries=["nghttp2"]),
    core("accesslog"),
]

# FASTPROXY_ONLY=http1,router builds just those extensions (and skips the cffi module):
# handy while working on one module of the core.
ONLY = [m for m in os.environ.get("FASTPROXY_ONLY", "").split(",") if m]
if ONLY:
    extensions = [e for e in extensions if e.name.rsplit(".", 1)[1] in ONLY]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": DEBUG,
            "wraparound": False,
            "initializedcheck": DEBUG,
            "cdivision": True,
            "embedsignature": True,
        },
        annotate=os.environ.get("FASTPROXY_ANNOTATE") == "1",
    ),
    cffi_modules=[] if ONLY else ["fastproxy/_cffi_build.py:ffibuilder"],
)
