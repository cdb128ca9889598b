"""cffi (API mode) binding of picohttpparser, as exported by libh2o-evloop.

Builds the extension module ``fastproxy._picohttp``.  The admin server parses its requests through
it; the data path uses the same library from Cython.  Build in place with
``python fastproxy/_cffi_build.py`` from the project root, or through setup.py (``cffi_modules``).
"""
import os

from cffi import FFI

ffibuilder = FFI()

ffibuilder.cdef(
    """
    struct phr_header {
        const char *name;
        size_t name_len;
        const char *value;
        size_t value_len;
    };

    int phr_parse_request(const char *buf, size_t len, const char **method, size_t *method_len,
                          const char **path, size_t *path_len, int *minor_version,
                          struct phr_header *headers, size_t *num_headers, size_t last_len);

    int phr_parse_response(const char *_buf, size_t len, int *minor_version, int *status,
                           const char **msg, size_t *msg_len, struct phr_header *headers,
                           size_t *num_headers, size_t last_len);

    int phr_parse_headers(const char *buf, size_t len, struct phr_header *headers,
                          size_t *num_headers, size_t last_len);

    struct phr_chunked_decoder {
        size_t bytes_left_in_chunk;
        char consume_trailer;
        ...;
    };

    ssize_t phr_decode_chunked(struct phr_chunked_decoder *decoder, char *buf, size_t *bufsz);
    int phr_decode_chunked_is_in_data(struct phr_chunked_decoder *decoder);
    """
)

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
