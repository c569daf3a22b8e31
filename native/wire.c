/*
 * docs/protocol.md, the Apache child's side: see wire.h. Error texts name the frame and
 * what was wrong in it, because they end up in the error log of a request that got a 502.
 */
#include "wire.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void put16(unsigned char *p, unsigned v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static unsigned get16(const unsigned char *p)
{
    return (unsigned)p[0] << 8 | p[1];
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (!err || !errlen)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

const char *tsgi_wire_type_name(unsigned type, char buf[8])
{
    switch (type) {
    case TSGI_WIRE_C_HELLO:
    case TSGI_WIRE_D_HELLO:
        return "HELLO";
    case TSGI_WIRE_C_REQUEST:
        return "REQUEST";
    case TSGI_WIRE_C_BODY:
    case TSGI_WIRE_D_BODY:
        return "BODY";
    case TSGI_WIRE_C_BODY_END:
        return "BODY_END";
    case TSGI_WIRE_C_ABORT:
        return "ABORT";
    case TSGI_WIRE_C_STATUS:
    case TSGI_WIRE_D_STATUS:
        return "STATUS";
    case TSGI_WIRE_D_HEAD:
        return "HEAD";
    case TSGI_WIRE_D_END:
        return "END";
    case TSGI_WIRE_D_ERROR:
        return "ERROR";
    case TSGI_WIRE_D_GOAWAY:
        return "GOAWAY";
    default:
        snprintf(buf, 8, "0x%02x", type & 0xffu);
        return buf;
    }
}

/* ---- encoders --------------------------------------------------------------------------- */

void tsgi_wire_put_header(unsigned char out[TSGI_WIRE_HEADER_LEN], unsigned type, unsigned flags, uint32_t length)
{
    out[0] = (unsigned char)type;
    out[1] = (unsigned char)flags;
    out[2] = 0;
    out[3] = 0;
    put32(out + 4, length);
}

size_t tsgi_wire_encode_hello(unsigned char out[TSGI_WIRE_HELLO_SIZE], const unsigned char secret[TSGI_WIRE_SECRET_LEN])
{
    tsgi_wire_put_header(out, TSGI_WIRE_C_HELLO, 0, TSGI_WIRE_HELLO_PAYLOAD);
    memcpy(out + 8, "TSGI", 4);
    put16(out + 12, TSGI_WIRE_VERSION);
    put16(out + 14, 0);
    memcpy(out + 16, secret, TSGI_WIRE_SECRET_LEN);
    return TSGI_WIRE_HELLO_SIZE;
}

static const char *const request_fields[4] = {"script", "callable", "application_group", "process_group"};

int tsgi_wire_request_size(const tsgi_wire_request_t *q, size_t *size, char *err, size_t errlen)
{
    const tsgi_wire_str_t *fixed[4] = {&q->script, &q->callable, &q->application_group, &q->process_group};
    size_t total = 8 + 4; /* request_start_us, count */
    size_t i;

    if (q->flags & ~(unsigned)(TSGI_WIRE_REQ_HAS_BODY | TSGI_WIRE_REQ_RELOAD | TSGI_WIRE_REQ_HTTPS)) {
        fail(err, errlen, "REQUEST frame: undefined flags 0x%02x", q->flags);
        return -1;
    }
    /* Summed with a check per step, so that no length can wrap the total. */
    for (i = 0; i < 4; i++) {
        if (fixed[i]->n > TSGI_WIRE_REQUEST_MAX) {
            fail(err, errlen, "REQUEST frame: %s is %zu bytes, over the %u-byte frame limit", request_fields[i],
                 fixed[i]->n, TSGI_WIRE_REQUEST_MAX);
            return -1;
        }
        total += 4 + fixed[i]->n;
    }
    if (q->count > TSGI_WIRE_REQUEST_MAX / 8) {
        fail(err, errlen, "REQUEST frame: %zu CGI variables, over the frame limit", q->count);
        return -1;
    }
    for (i = 0; i < 2 * q->count && total <= TSGI_WIRE_REQUEST_MAX; i++) {
        if (q->vars[i].n > TSGI_WIRE_REQUEST_MAX) {
            total = (size_t)TSGI_WIRE_REQUEST_MAX + 1;
            break;
        }
        total += 4 + q->vars[i].n;
    }
    if (total > TSGI_WIRE_REQUEST_MAX) {
        fail(err, errlen, "REQUEST frame: the request's fields and %zu CGI variables take more than the %u-byte limit",
             q->count, TSGI_WIRE_REQUEST_MAX);
        return -1;
    }
    *size = TSGI_WIRE_HEADER_LEN + total;
    return 0;
}

static unsigned char *put_str(unsigned char *p, const tsgi_wire_str_t *s)
{
    put32(p, (uint32_t)s->n);
    if (s->n)
        memcpy(p + 4, s->p, s->n);
    return p + 4 + s->n;
}

void tsgi_wire_encode_request(const tsgi_wire_request_t *q, unsigned char *out)
{
    unsigned char *p = out + TSGI_WIRE_HEADER_LEN;
    size_t i;

    put32(p, (uint32_t)(q->request_start_us >> 32));
    put32(p + 4, (uint32_t)q->request_start_us);
    p += 8;
    p = put_str(p, &q->script);
    p = put_str(p, &q->callable);
    p = put_str(p, &q->application_group);
    p = put_str(p, &q->process_group);
    put32(p, (uint32_t)q->count);
    p += 4;
    for (i = 0; i < 2 * q->count; i++)
        p = put_str(p, &q->vars[i]);
    tsgi_wire_put_header(out, TSGI_WIRE_C_REQUEST, q->flags, (uint32_t)(p - out - TSGI_WIRE_HEADER_LEN));
}

void tsgi_wire_encode_body_header(unsigned char out[TSGI_WIRE_HEADER_LEN], uint32_t length)
{
    tsgi_wire_put_header(out, TSGI_WIRE_C_BODY, 0, length);
}

size_t tsgi_wire_encode_body_end(unsigned char out[TSGI_WIRE_HEADER_LEN])
{
    tsgi_wire_put_header(out, TSGI_WIRE_C_BODY_END, 0, 0);
    return TSGI_WIRE_HEADER_LEN;
}

size_t tsgi_wire_encode_status(unsigned char out[TSGI_WIRE_HEADER_LEN])
{
    tsgi_wire_put_header(out, TSGI_WIRE_C_STATUS, 0, 0);
    return TSGI_WIRE_HEADER_LEN;
}

size_t tsgi_wire_encode_abort(unsigned char out[TSGI_WIRE_ABORT_SIZE_MAX], const char *reason, size_t len)
{
    if (len > TSGI_WIRE_ABORT_MAX) {
        len = TSGI_WIRE_ABORT_MAX;
        /* Never cut a character in two: the daemon decodes the reason as UTF-8. */
        while (len > 0 && ((unsigned char)reason[len] & 0xc0) == 0x80)
            len--;
    }
    tsgi_wire_put_header(out, TSGI_WIRE_C_ABORT, 0, (uint32_t)len);
    if (len)
        memcpy(out + TSGI_WIRE_HEADER_LEN, reason, len);
    return TSGI_WIRE_HEADER_LEN + len;
}

/* ---- decoders --------------------------------------------------------------------------- */

int tsgi_wire_decode_hello(const unsigned char *payload, size_t len, uint32_t *pid, char *err, size_t errlen)
{
    if (len != TSGI_WIRE_DHELLO_PAYLOAD) {
        fail(err, errlen, "HELLO frame: payload of %zu bytes, must be %u", len, TSGI_WIRE_DHELLO_PAYLOAD);
        return -1;
    }
    if (memcmp(payload, "TSGI", 4) != 0) {
        fail(err, errlen, "HELLO frame: bad magic (not \"TSGI\")");
        return -1;
    }
    if (get16(payload + 4) != TSGI_WIRE_VERSION) {
        fail(err, errlen, "HELLO frame: the daemon speaks version %u, this module version %u", get16(payload + 4),
             TSGI_WIRE_VERSION);
        return -1;
    }
    if (get16(payload + 6) != 0) {
        fail(err, errlen, "HELLO frame: reserved field is 0x%04x, must be 0", get16(payload + 6));
        return -1;
    }
    *pid = get32(payload + 8);
    return 0;
}

/* Reads a u32-prefixed string at *p; -1 if it overruns `end`. */
static int take_str(const unsigned char **p, const unsigned char *end, const unsigned char **s, size_t *n)
{
    uint32_t l;
    if ((size_t)(end - *p) < 4)
        return -1;
    l = get32(*p);
    if ((size_t)(end - *p) - 4 < l)
        return -1;
    *s = *p + 4;
    *n = l;
    *p += 4 + (size_t)l;
    return 0;
}

/* At most `size - 1` bytes of `s` for an error text: a name that failed its checks may hold
 * anything, and error texts end up in log lines. */
static const char *printable(const unsigned char *s, size_t n, char *out, size_t size)
{
    size_t i, max = n < size - 1 ? n : size - 1;
    for (i = 0; i < max; i++)
        out[i] = s[i] >= 0x20 && s[i] < 0x7f ? (char)s[i] : '?';
    out[max] = 0;
    return out;
}

/* HTTP token characters (RFC 9110 §5.6.2): what a header name may consist of. */
static int is_tchar(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return 1;
    if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z')
        return 1;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Header values and the reason phrase go into Apache's response head as they are: a CR,
 * LF or NUL would split or cut it (response splitting). */
static const unsigned char *find_ctl(const unsigned char *s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0')
            return s + i;
    return NULL;
}

int tsgi_wire_decode_head(const unsigned char *payload, size_t len, tsgi_wire_head_t *head, char *err, size_t errlen)
{
    const unsigned char *p = payload, *end = payload + len, *s, *bad;
    size_t n;
    uint32_t i, count;
    char shown[48];

    if (len < 2 + 4 + 4) {
        fail(err, errlen, "HEAD frame: payload of %zu bytes is shorter than status, reason and count", len);
        return -1;
    }
    head->status = get16(p);
    p += 2;
    if (head->status < 100 || head->status > 599) {
        fail(err, errlen, "HEAD frame: status %u is outside 100-599", head->status);
        return -1;
    }
    if (take_str(&p, end, &s, &n) != 0) {
        fail(err, errlen, "HEAD frame: the reason's length %u runs past the payload", (unsigned)get32(payload + 2));
        return -1;
    }
    if ((bad = find_ctl(s, n)) != NULL) {
        fail(err, errlen, "HEAD frame: the reason contains byte 0x%02x at offset %zu", *bad, (size_t)(bad - s));
        return -1;
    }
    head->reason = (const char *)s;
    head->reason_len = n;
    if ((size_t)(end - p) < 4) {
        fail(err, errlen, "HEAD frame: no header count after the reason");
        return -1;
    }
    count = get32(p);
    p += 4;
    /* Each pair takes at least 8 bytes: a count the payload cannot hold is refused before
     * anything is iterated. */
    if (count > (size_t)(end - p) / 8) {
        fail(err, errlen, "HEAD frame: %u headers cannot fit in the %zu bytes left", (unsigned)count,
             (size_t)(end - p));
        return -1;
    }
    head->count = count;
    head->pairs = p;
    for (i = 0; i < count; i++) {
        const unsigned char *name, *value;
        size_t nlen, vlen, k;
        if (take_str(&p, end, &name, &nlen) != 0) {
            fail(err, errlen, "HEAD frame: header %u: the name's length runs past the payload", (unsigned)i + 1);
            return -1;
        }
        if (take_str(&p, end, &value, &vlen) != 0) {
            fail(err, errlen, "HEAD frame: header %u (%s): the value's length runs past the payload", (unsigned)i + 1,
                 printable(name, nlen, shown, sizeof(shown)));
            return -1;
        }
        if (nlen == 0) {
            fail(err, errlen, "HEAD frame: header %u has an empty name", (unsigned)i + 1);
            return -1;
        }
        for (k = 0; k < nlen; k++) {
            if (!is_tchar(name[k])) {
                fail(err, errlen, "HEAD frame: header %u: byte 0x%02x at offset %zu of the name is not allowed",
                     (unsigned)i + 1, name[k], k);
                return -1;
            }
        }
        if ((bad = find_ctl(value, vlen)) != NULL) {
            fail(err, errlen, "HEAD frame: header %u (%s): the value contains byte 0x%02x at offset %zu",
                 (unsigned)i + 1, printable(name, nlen, shown, sizeof(shown)), *bad, (size_t)(bad - value));
            return -1;
        }
    }
    if (p != end) {
        fail(err, errlen, "HEAD frame: %zu bytes left over after %u headers", (size_t)(end - p), (unsigned)count);
        return -1;
    }
    head->pairs_len = (size_t)(end - head->pairs);
    return 0;
}

void tsgi_wire_head_iter(const tsgi_wire_head_t *head, tsgi_wire_head_iter_t *it)
{
    it->p = head->pairs;
    it->end = head->pairs + head->pairs_len;
    it->left = head->count;
}

int tsgi_wire_head_next(tsgi_wire_head_iter_t *it, const char **name, size_t *name_len, const char **value,
                        size_t *value_len)
{
    const unsigned char *n, *v;
    /* The pairs were verified by tsgi_wire_decode_head; the checks keep a misuse harmless. */
    if (!it->left || take_str(&it->p, it->end, &n, name_len) != 0 || take_str(&it->p, it->end, &v, value_len) != 0) {
        it->left = 0;
        return 0;
    }
    it->left--;
    *name = (const char *)n;
    *value = (const char *)v;
    return 1;
}

int tsgi_wire_decode_error(const unsigned char *payload, size_t len, unsigned *code, const char **msg, size_t *msg_len,
                           char *err, size_t errlen)
{
    if (len < 4) {
        fail(err, errlen, "ERROR frame: payload of %zu bytes is shorter than its 4-byte code", len);
        return -1;
    }
    if (get16(payload + 2) != 0) {
        fail(err, errlen, "ERROR frame: reserved field is 0x%04x, must be 0", get16(payload + 2));
        return -1;
    }
    *code = get16(payload);
    *msg = (const char *)payload + 4;
    *msg_len = len - 4;
    return 0;
}

int tsgi_wire_error_status(unsigned code)
{
    switch (code) {
    case TSGI_WIRE_E_APP:
    case TSGI_WIRE_E_AUTH:
    case TSGI_WIRE_E_VERSION:
        return 500;
    case TSGI_WIRE_E_TIMEOUT:
        return 504;
    case TSGI_WIRE_E_QUEUE_TIMEOUT:
    case TSGI_WIRE_E_UNAVAILABLE:
        return 503;
    case TSGI_WIRE_E_BAD_REQUEST:
        return 400;
    default: /* PROTOCOL, BODY, and codes this side does not know */
        return 502;
    }
}

const char *tsgi_wire_error_name(unsigned code)
{
    static const char *const names[] = {"?",           "APP",      "TIMEOUT", "QUEUE_TIMEOUT", "BAD_REQUEST",
                                        "UNAVAILABLE", "PROTOCOL", "AUTH",    "VERSION",       "BODY"};
    return code < sizeof(names) / sizeof(names[0]) && code ? names[code] : "unknown";
}

/* ---- the parser ------------------------------------------------------------------------- */

void tsgi_wire_parser_init(tsgi_wire_parser_t *p, int hello_seen)
{
    memset(p, 0, sizeof(*p));
    p->hello_seen = hello_seen;
    p->expect = TSGI_WIRE_EXPECT_IDLE;
}

void tsgi_wire_parser_free(tsgi_wire_parser_t *p)
{
    free(p->buf);
    p->buf = NULL;
    p->cap = 0;
}

int tsgi_wire_parser_begin(tsgi_wire_parser_t *p, int expect)
{
    if (p->failed || p->expect != TSGI_WIRE_EXPECT_IDLE ||
        (expect != TSGI_WIRE_EXPECT_HEAD && expect != TSGI_WIRE_EXPECT_STATUS))
        return -1;
    p->expect = expect;
    return 0;
}

int tsgi_wire_parser_idle(const tsgi_wire_parser_t *p)
{
    return !p->failed && p->hello_seen && p->expect == TSGI_WIRE_EXPECT_IDLE && !p->in_payload && !p->hdr_have;
}

static int parser_fail(tsgi_wire_parser_t *p, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err, sizeof(p->err), fmt, ap);
    va_end(ap);
    p->failed = 1;
    return TSGI_WIRE_ERROR;
}

static const char *expect_name(int expect)
{
    switch (expect) {
    case TSGI_WIRE_EXPECT_HEAD:
        return "waiting for a response's HEAD";
    case TSGI_WIRE_EXPECT_BODY:
        return "inside a response";
    case TSGI_WIRE_EXPECT_STATUS:
        return "waiting for a STATUS reply";
    default:
        return "with no request in progress";
    }
}

/* Everything the header alone can tell (§2, §6): type, flags, reserved bits, length
 * limit, and whether the frame may come now. */
static int check_header(tsgi_wire_parser_t *p)
{
    const unsigned char *h = p->hdr;
    unsigned type = h[0], flags = h[1], reserved = get16(h + 2), allowed_flags = 0;
    uint32_t length = get32(h + 4), min = 0, max = 0;
    char tb[8];
    const char *name = tsgi_wire_type_name(type, tb);
    int order_ok;

    switch (type) {
    case TSGI_WIRE_D_HELLO:
        min = max = TSGI_WIRE_DHELLO_PAYLOAD;
        order_ok = !p->hello_seen;
        break;
    case TSGI_WIRE_D_HEAD:
        min = 10;
        max = TSGI_WIRE_HEAD_MAX;
        order_ok = p->expect == TSGI_WIRE_EXPECT_HEAD;
        break;
    case TSGI_WIRE_D_BODY:
        min = 1;
        max = TSGI_WIRE_BODY_MAX;
        order_ok = p->expect == TSGI_WIRE_EXPECT_BODY;
        break;
    case TSGI_WIRE_D_END:
        allowed_flags = TSGI_WIRE_CLOSE;
        order_ok = p->expect == TSGI_WIRE_EXPECT_BODY;
        break;
    case TSGI_WIRE_D_ERROR:
        allowed_flags = TSGI_WIRE_CLOSE;
        min = 4;
        max = TSGI_WIRE_ERROR_MAX;
        order_ok = 1; /* refusals (AUTH, VERSION, PROTOCOL) may come first and at any time */
        break;
    case TSGI_WIRE_D_GOAWAY:
        order_ok = p->hello_seen;
        break;
    case TSGI_WIRE_D_STATUS:
        max = TSGI_WIRE_STATUS_MAX;
        order_ok = p->expect == TSGI_WIRE_EXPECT_STATUS;
        break;
    default: /* client frame types included: a daemon never sends them */
        return parser_fail(p, "frame of unknown type 0x%02x (flags 0x%02x, length %u)", type, flags,
                           (unsigned)length);
    }
    if (flags & ~allowed_flags)
        return parser_fail(p, "%s frame: flags 0x%02x not defined for this type", name, flags);
    if (reserved)
        return parser_fail(p, "%s frame: reserved field is 0x%04x, must be 0", name, reserved);
    if (length < min || length > max) {
        if (min == max)
            return parser_fail(p, "%s frame: length %u, must be %u", name, (unsigned)length, (unsigned)max);
        return parser_fail(p, "%s frame: length %u outside %u-%u", name, (unsigned)length, (unsigned)min,
                           (unsigned)max);
    }
    if (type != TSGI_WIRE_D_HELLO && type != TSGI_WIRE_D_ERROR && !p->hello_seen)
        return parser_fail(p, "%s frame before the daemon's HELLO", name);
    if (!order_ok) {
        if (type == TSGI_WIRE_D_HELLO)
            return parser_fail(p, "HELLO frame: a second HELLO on this connection");
        return parser_fail(p, "%s frame out of order (%s)", name, expect_name(p->expect));
    }
    p->type = type;
    p->flags = flags;
    p->length = length;
    p->got = 0;
    p->in_payload = 1;
    return TSGI_WIRE_NEED_MORE;
}

/* A complete non-BODY frame: decode it and move the exchange on. */
static int complete_frame(tsgi_wire_parser_t *p, const unsigned char *payload, tsgi_wire_frame_t *f)
{
    char err[sizeof(p->err)];

    memset(f, 0, sizeof(*f));
    f->type = p->type;
    f->flags = p->flags;
    f->data = payload;
    f->len = p->length;
    p->in_payload = 0;
    p->hdr_have = 0;
    switch (p->type) {
    case TSGI_WIRE_D_HELLO:
        if (tsgi_wire_decode_hello(payload, p->length, &f->pid, err, sizeof(err)) != 0)
            return parser_fail(p, "%s", err);
        p->hello_seen = 1;
        break;
    case TSGI_WIRE_D_HEAD:
        if (tsgi_wire_decode_head(payload, p->length, &f->head, err, sizeof(err)) != 0)
            return parser_fail(p, "%s", err);
        p->expect = TSGI_WIRE_EXPECT_BODY;
        break;
    case TSGI_WIRE_D_ERROR:
        if (tsgi_wire_decode_error(payload, p->length, &f->code, &f->message, &f->message_len, err, sizeof(err)) != 0)
            return parser_fail(p, "%s", err);
        p->expect = TSGI_WIRE_EXPECT_IDLE;
        break;
    case TSGI_WIRE_D_END:
    case TSGI_WIRE_D_STATUS:
        p->expect = TSGI_WIRE_EXPECT_IDLE;
        break;
    default: /* GOAWAY: no state change; the client stops reusing the connection */
        break;
    }
    return TSGI_WIRE_FRAME;
}

int tsgi_wire_parse(tsgi_wire_parser_t *p, const unsigned char *in, size_t len, size_t *used, tsgi_wire_frame_t *f)
{
    size_t pos = 0;
    int rc;

    *used = 0;
    if (p->failed)
        return TSGI_WIRE_ERROR;
    if (len == 0)
        return TSGI_WIRE_NEED_MORE;
    for (;;) {
        if (!p->in_payload) {
            size_t take = TSGI_WIRE_HEADER_LEN - p->hdr_have;
            if (take > len - pos)
                take = len - pos;
            memcpy(p->hdr + p->hdr_have, in + pos, take);
            p->hdr_have += take;
            pos += take;
            if (p->hdr_have < TSGI_WIRE_HEADER_LEN) {
                *used = pos;
                return TSGI_WIRE_NEED_MORE;
            }
            if ((rc = check_header(p)) != TSGI_WIRE_NEED_MORE) {
                *used = pos;
                return rc;
            }
            if (p->length == 0) {
                *used = pos;
                return complete_frame(p, (const unsigned char *)"", f);
            }
        }
        if (pos == len) {
            *used = pos;
            return TSGI_WIRE_NEED_MORE;
        }
        if (p->type == TSGI_WIRE_D_BODY) {
            /* Body bytes are handed on where they lie, never buffered. */
            size_t take = p->length - p->got;
            if (take > len - pos)
                take = len - pos;
            memset(f, 0, sizeof(*f));
            f->type = TSGI_WIRE_D_BODY;
            f->data = in + pos;
            f->len = take;
            p->got += (uint32_t)take;
            pos += take;
            if (p->got == p->length) {
                f->last = 1;
                p->in_payload = 0;
                p->hdr_have = 0;
            }
            *used = pos;
            return TSGI_WIRE_BODY;
        }
        if (p->got == 0 && len - pos >= p->length) {
            /* The whole payload is in this input: decode it in place. */
            pos += p->length;
            *used = pos;
            return complete_frame(p, in + pos - p->length, f);
        }
        if (p->cap < p->length) {
            unsigned char *nb = malloc(p->length);
            if (!nb)
                return parser_fail(p, "out of memory for a %u-byte frame", (unsigned)p->length);
            free(p->buf);
            p->buf = nb;
            p->cap = p->length;
        }
        {
            size_t take = p->length - p->got;
            if (take > len - pos)
                take = len - pos;
            memcpy(p->buf + p->got, in + pos, take);
            p->got += (uint32_t)take;
            pos += take;
        }
        *used = pos;
        if (p->got < p->length)
            return TSGI_WIRE_NEED_MORE;
        return complete_frame(p, p->buf, f);
    }
}
