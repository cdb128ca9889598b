# picohttpparser, as exported by Debian's libh2o-evloop (link with -lh2o-evloop).
# The library ships no header for these symbols, so the API is declared here and in
# csrc/fp_picohttpparser.h; both mirror picohttpparser's public interface exactly.

cdef extern from "fp_picohttpparser.h" nogil:
    struct phr_header:
        const char *name
        size_t name_len
        const char *value
        size_t value_len

    struct phr_chunked_decoder:
        size_t bytes_left_in_chunk
        char consume_trailer
        char _hex_count
        char _state

    int phr_parse_request(const char *buf, size_t len, const char **method, size_t *method_len,
                          const char **path, size_t *path_len, int *minor_version,
                          phr_header *headers, size_t *num_headers, size_t last_len)
    int phr_parse_response(const char *_buf, size_t len, int *minor_version, int *status,
                           const char **msg, size_t *msg_len, phr_header *headers,
                           size_t *num_headers, size_t last_len)
    int phr_parse_headers(const char *buf, size_t len, phr_header *headers, size_t *num_headers,
                          size_t last_len)
    ssize_t phr_decode_chunked(phr_chunked_decoder *decoder, char *buf, size_t *bufsz)
    int phr_decode_chunked_is_in_data(phr_chunked_decoder *decoder)
