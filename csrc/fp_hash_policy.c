/* Route hash policies: see fp_hash_policy.h. */
#include "fp_hash_policy.h"

#include <string.h>

#include "fp_hash.h"

#define MAX_VALUES 128 /* a head holds at most this many headers */

static int name_is(const struct phr_header *h, const char *name, size_t len) {
    if (h->name_len != len)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)h->name[i];
        if (c >= 'A' && c <= 'Z')
            c += 32;
        if (c != (unsigned char)name[i])
            return 0;
    }
    return 1;
}

/* Bytewise order, a prefix first (std::string_view's operator<). */
static int less(const char *a, size_t an, const char *b, size_t bn) {
    const int c = memcmp(a, b, an < bn ? an : bn);
    return c < 0 || (c == 0 && an < bn);
}

static int header_hash(const fp_hash_policy_t *p, const fp_hash_input_t *in, uint64_t *out) {
    const char *vals[MAX_VALUES];
    size_t lens[MAX_VALUES];
    size_t n = 0;
    if (p->name_len > 0 && p->name[0] == ':') {
        const char *v = NULL;
        size_t vn = 0;
        if (p->name_len == 10 && memcmp(p->name, ":authority", 10) == 0) {
            v = in->authority;
            vn = in->authority_len;
        } else if (p->name_len == 5 && memcmp(p->name, ":path", 5) == 0) {
            v = in->path;
            vn = in->path_len;
        } else if (p->name_len == 7 && memcmp(p->name, ":method", 7) == 0) {
            v = in->method;
            vn = in->method_len;
        }
        if (!v)
            return 0;
        *out = fp_xxhash64(v, vn, 0);
        return 1;
    }
    for (size_t i = 0; i < in->num_headers && n < MAX_VALUES; i++) {
        const struct phr_header *h = &in->headers[i];
        if (!name_is(h, p->name, p->name_len))
            continue;
        /* insertion sort: a header rarely repeats */
        size_t j = n++;
        while (j > 0 && less(h->value, h->value_len, vals[j - 1], lens[j - 1])) {
            vals[j] = vals[j - 1];
            lens[j] = lens[j - 1];
            j--;
        }
        vals[j] = h->value;
        lens[j] = h->value_len;
    }
    if (n == 0)
        return 0;
    *out = fp_xxhash64_chain(vals, lens, n);
    return 1;
}

/* The value of the first cookie named `name` (Envoy's forEachCookie/parseCookie): each Cookie
 * header is split on ';' (empty pieces skipped); a piece without '=' is skipped; the name runs
 * from the first non-space to the '='; a value in double quotes loses them. Returns 1 if found
 * (the value may be empty). */
static int find_cookie(const fp_hash_input_t *in, const char *name, size_t name_len,
                       const char **value, size_t *value_len) {
    for (size_t i = 0; i < in->num_headers; i++) {
        const struct phr_header *h = &in->headers[i];
        if (!name_is(h, "cookie", 6))
            continue;
        const char *s = h->value, *end = h->value + h->value_len;
        while (s < end) {
            const char *semi = memchr(s, ';', (size_t)(end - s));
            const char *piece_end = semi ? semi : end;
            if (piece_end > s) {
                const char *eq = memchr(s, '=', (size_t)(piece_end - s));
                if (eq) {
                    const char *k = s;
                    while (k < piece_end && *k == ' ')
                        k++;
                    const char *v = eq + 1;
                    size_t vn = (size_t)(piece_end - v);
                    if (vn >= 2 && v[0] == '"' && v[vn - 1] == '"') {
                        v++;
                        vn -= 2;
                    }
                    if (k <= eq && (size_t)(eq - k) == name_len && memcmp(k, name, name_len) == 0) {
                        *value = v;
                        *value_len = vn;
                        return 1;
                    }
                }
            }
            s = piece_end + 1;
        }
    }
    return 0;
}

static void hex16(uint64_t v, char out[17]) {
    static const char digits[] = "0123456789abcdef";
    for (int i = 15; i >= 0; i--) {
        out[i] = digits[v & 15];
        v >>= 4;
    }
    out[16] = 0;
}

static int cookie_hash(const fp_hash_policy_t *p, const fp_hash_input_t *in, uint64_t *out,
                       int *generated, char cookie_value[17]) {
    const char *v = NULL;
    size_t vn = 0;
    find_cookie(in, p->name, p->name_len, &v, &vn);
    if (vn > 0) {
        *out = fp_xxhash64(v, vn, 0);
        return 1;
    }
    if (!p->generate)
        return 0;
    if (!in->remote_address || !in->local_address) {
        /* Envoy without the connection's addresses: an empty value and no Set-Cookie. */
        *out = fp_xxhash64("", 0, 0);
        return 1;
    }
    const char *parts[2] = {in->remote_address, in->local_address};
    const size_t lens[2] = {in->remote_address_len, in->local_address_len};
    hex16(fp_xxhash64_concat(parts, lens, 2), cookie_value);
    *generated = 1;
    *out = fp_xxhash64(cookie_value, 16, 0);
    return 1;
}

static int query_hash(const fp_hash_policy_t *p, const fp_hash_input_t *in, uint64_t *out) {
    const char *path = in->path, *end = in->path + in->path_len;
    const char *q = memchr(path, '?', in->path_len);
    if (!q)
        return 0;
    const char *frag = memchr(q, '#', (size_t)(end - q));
    if (frag)
        end = frag;
    const char *s = q + 1;
    while (s < end) {
        const char *amp = memchr(s, '&', (size_t)(end - s));
        const char *pe = amp ? amp : end;
        const char *eq = memchr(s, '=', (size_t)(pe - s));
        const char *ne = eq ? eq : pe;
        if ((size_t)(ne - s) == p->name_len && memcmp(s, p->name, p->name_len) == 0) {
            const char *v = eq ? eq + 1 : pe;
            *out = fp_xxhash64(v, (size_t)(pe - v), 0);
            return 1;
        }
        s = pe + 1;
    }
    return 0;
}

int fp_hash_policy_eval(const fp_hash_policy_t *policies, size_t n, const fp_hash_input_t *in,
                        uint64_t *hash, int *generated, char cookie_value[17]) {
    int have = 0;
    uint64_t h = 0;
    *generated = -1;
    for (size_t i = 0; i < n; i++) {
        const fp_hash_policy_t *p = &policies[i];
        uint64_t next = 0;
        int got = 0, gen = 0;
        switch (p->kind) {
        case FP_HP_HEADER:
            got = header_hash(p, in, &next);
            break;
        case FP_HP_COOKIE:
            got = cookie_hash(p, in, &next, &gen, cookie_value);
            if (gen)
                *generated = (int)i;
            break;
        case FP_HP_QUERY_PARAMETER:
            got = query_hash(p, in, &next);
            break;
        case FP_HP_SOURCE_IP:
            if (in->source_ip && in->source_ip_len) {
                next = fp_xxhash64(in->source_ip, in->source_ip_len, 0);
                got = 1;
            }
            break;
        }
        if (got) {
            h = have ? (((h << 1) | (h >> 63)) ^ next) : next;
            have = 1;
        }
        if (p->terminal && have)
            break;
    }
    *hash = h;
    return have;
}
