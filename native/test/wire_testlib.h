/*
 * Shared by wire_test.c and wire_fuzz.c: a growable byte buffer, encoders of the daemon's
 * frames (the module never sends them, so they live here, not in wire.c), and the
 * canonical text dump of what the parser makes of a byte stream. The dump is what the
 * TypeScript cross-check compares against, and what the fuzzer compares across splits.
 */
#ifndef TSGI_WIRE_TESTLIB_H
#define TSGI_WIRE_TESTLIB_H

#include "wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    unsigned char *p;
    size_t n, cap;
} buf_t;

static void buf_need(buf_t *b, size_t more)
{
    if (b->n + more > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        unsigned char *np;
        while (cap < b->n + more)
            cap *= 2;
        np = realloc(b->p, cap);
        if (!np) {
            fprintf(stderr, "out of memory\n");
            exit(2);
        }
        b->p = np;
        b->cap = cap;
    }
}

static void buf_put(buf_t *b, const void *d, size_t n)
{
    buf_need(b, n + 1);
    if (n)
        memcpy(b->p + b->n, d, n);
    b->n += n;
    b->p[b->n] = 0; /* text dumps stay NUL-terminated */
}

static void buf_u8(buf_t *b, unsigned v)
{
    unsigned char c = (unsigned char)v;
    buf_put(b, &c, 1);
}

static void buf_u16(buf_t *b, unsigned v)
{
    buf_u8(b, v >> 8);
    buf_u8(b, v);
}

static void buf_u32(buf_t *b, unsigned long v)
{
    buf_u16(b, (unsigned)(v >> 16) & 0xffff);
    buf_u16(b, (unsigned)v & 0xffff);
}

static void buf_str(buf_t *b, const void *s, size_t n)
{
    buf_u32(b, (unsigned long)n);
    buf_put(b, s, n);
}

static void buf_free(buf_t *b)
{
    free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
}

static void buf_printf(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#include <stdarg.h>
static void buf_printf(buf_t *b, const char *fmt, ...)
{
    va_list ap;
    int n;
    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        exit(2);
    buf_need(b, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf((char *)b->p + b->n, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->n += (size_t)n;
}

static void buf_hex(buf_t *b, const void *d, size_t n)
{
    static const char hx[] = "0123456789abcdef";
    const unsigned char *s = d;
    size_t i;
    buf_need(b, 2 * n + 2);
    for (i = 0; i < n; i++) {
        b->p[b->n++] = (unsigned char)hx[s[i] >> 4];
        b->p[b->n++] = (unsigned char)hx[s[i] & 15];
    }
    if (!n)
        b->p[b->n++] = '-'; /* an empty field stays visible as a token */
    b->p[b->n] = 0;
}

/* ---- daemon frames ---------------------------------------------------------------------- */

static void frame_header(buf_t *b, unsigned type, unsigned flags, size_t len)
{
    buf_u8(b, type);
    buf_u8(b, flags);
    buf_u16(b, 0);
    buf_u32(b, (unsigned long)len);
}

static void d_hello(buf_t *b, unsigned long pid)
{
    frame_header(b, TSGI_WIRE_D_HELLO, 0, 12);
    buf_put(b, "TSGI", 4);
    buf_u16(b, TSGI_WIRE_VERSION);
    buf_u16(b, 0);
    buf_u32(b, pid);
}

/* headers: 2 * count NUL-terminated strings. */
static void d_head(buf_t *b, unsigned status, const char *reason, const char *const *headers, size_t count)
{
    size_t len = 2 + 4 + strlen(reason) + 4, i;
    for (i = 0; i < 2 * count; i++)
        len += 4 + strlen(headers[i]);
    frame_header(b, TSGI_WIRE_D_HEAD, 0, len);
    buf_u16(b, status);
    buf_str(b, reason, strlen(reason));
    buf_u32(b, (unsigned long)count);
    for (i = 0; i < 2 * count; i++)
        buf_str(b, headers[i], strlen(headers[i]));
}

static void d_body(buf_t *b, const void *d, size_t n)
{
    frame_header(b, TSGI_WIRE_D_BODY, 0, n);
    buf_put(b, d, n);
}

static void d_end(buf_t *b, unsigned flags)
{
    frame_header(b, TSGI_WIRE_D_END, flags, 0);
}

static void d_error(buf_t *b, unsigned flags, unsigned code, const char *msg)
{
    frame_header(b, TSGI_WIRE_D_ERROR, flags, 4 + strlen(msg));
    buf_u16(b, code);
    buf_u16(b, 0);
    buf_put(b, msg, strlen(msg));
}

static void d_goaway(buf_t *b)
{
    frame_header(b, TSGI_WIRE_D_GOAWAY, 0, 0);
}

static void d_status(buf_t *b, const char *json)
{
    frame_header(b, TSGI_WIRE_D_STATUS, 0, strlen(json));
    buf_put(b, json, strlen(json));
}

/* ---- the canonical dump ---------------------------------------------------------------- */

/* One line per event (BODY pieces joined per frame):
 *   HELLO pid=N | HEAD status=N reason=HEX count=N, then "H NAME VALUE" (hex) per header |
 *   BODY HEX | END flags=N | ERROR flags=N code=N message=HEX | GOAWAY | STATUS HEX |
 *   PROTOCOL-ERROR text | INCOMPLETE (the input ended inside a frame).
 * After each trailer the next exchange begins (a request, or a STATUS with `status`). */
typedef struct {
    tsgi_wire_parser_t parser;
    buf_t out;
    buf_t body; /* the BODY frame being joined */
    int status_mode;
    int failed;
} dumper_t;

static void dumper_init(dumper_t *d, int status_mode)
{
    memset(d, 0, sizeof(*d));
    tsgi_wire_parser_init(&d->parser, 0);
    d->status_mode = status_mode;
    (void)tsgi_wire_parser_begin(&d->parser, status_mode ? TSGI_WIRE_EXPECT_STATUS : TSGI_WIRE_EXPECT_HEAD);
}

static void dumper_free(dumper_t *d)
{
    tsgi_wire_parser_free(&d->parser);
    buf_free(&d->out);
    buf_free(&d->body);
}

/* Feeds one piece of the stream. */
static void dumper_feed(dumper_t *d, const unsigned char *in, size_t len)
{
    size_t pos = 0, used;
    tsgi_wire_frame_t f;
    while (!d->failed) {
        int rc = tsgi_wire_parse(&d->parser, in + pos, len - pos, &used, &f);
        pos += used;
        if (rc == TSGI_WIRE_NEED_MORE) {
            if (pos != len) {
                buf_printf(&d->out, "BUG need-more with %zu bytes unused\n", len - pos);
                d->failed = 1;
            }
            return;
        }
        if (rc == TSGI_WIRE_ERROR) {
            buf_printf(&d->out, "PROTOCOL-ERROR %s\n", d->parser.err);
            d->failed = 1;
            return;
        }
        if (rc == TSGI_WIRE_BODY) {
            buf_put(&d->body, f.data, f.len);
            if (f.last) {
                buf_printf(&d->out, "BODY ");
                buf_hex(&d->out, d->body.p, d->body.n);
                buf_printf(&d->out, "\n");
                d->body.n = 0;
            }
            continue;
        }
        switch (f.type) {
        case TSGI_WIRE_D_HELLO:
            buf_printf(&d->out, "HELLO pid=%lu\n", (unsigned long)f.pid);
            break;
        case TSGI_WIRE_D_HEAD: {
            tsgi_wire_head_iter_t it;
            const char *n, *v;
            size_t nl, vl;
            buf_printf(&d->out, "HEAD status=%u reason=", f.head.status);
            buf_hex(&d->out, f.head.reason, f.head.reason_len);
            buf_printf(&d->out, " count=%lu\n", (unsigned long)f.head.count);
            tsgi_wire_head_iter(&f.head, &it);
            while (tsgi_wire_head_next(&it, &n, &nl, &v, &vl)) {
                buf_printf(&d->out, "H ");
                buf_hex(&d->out, n, nl);
                buf_printf(&d->out, " ");
                buf_hex(&d->out, v, vl);
                buf_printf(&d->out, "\n");
            }
            break;
        }
        case TSGI_WIRE_D_END:
            buf_printf(&d->out, "END flags=%u\n", f.flags);
            break;
        case TSGI_WIRE_D_ERROR:
            buf_printf(&d->out, "ERROR flags=%u code=%u message=", f.flags, f.code);
            buf_hex(&d->out, f.message, f.message_len);
            buf_printf(&d->out, "\n");
            break;
        case TSGI_WIRE_D_GOAWAY:
            buf_printf(&d->out, "GOAWAY\n");
            break;
        case TSGI_WIRE_D_STATUS:
            buf_printf(&d->out, "STATUS ");
            buf_hex(&d->out, f.data, f.len);
            buf_printf(&d->out, "\n");
            break;
        default:
            buf_printf(&d->out, "BUG frame type 0x%02x\n", f.type);
            d->failed = 1;
            return;
        }
        if (f.type == TSGI_WIRE_D_END || f.type == TSGI_WIRE_D_ERROR || f.type == TSGI_WIRE_D_STATUS)
            (void)tsgi_wire_parser_begin(&d->parser,
                                         d->status_mode ? TSGI_WIRE_EXPECT_STATUS : TSGI_WIRE_EXPECT_HEAD);
    }
}

static void dumper_finish(dumper_t *d)
{
    if (!d->failed && (d->parser.in_payload || d->parser.hdr_have))
        buf_printf(&d->out, "INCOMPLETE\n");
}

#endif
