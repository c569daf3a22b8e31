/*
 * Unit checks of native/wire.c, and two modes for the TypeScript cross-check
 * (test/unit/native-wire.test.ts):
 *   wire_test                      the checks; exit 0 when all pass
 *   wire_test dump [--status]      parses daemon frames from stdin, prints the canonical
 *                                  dump (wire_testlib.h) on stdout
 *   wire_test encode-request       reads a request as hex lines on stdin and writes the
 *                                  REQUEST frame on stdout:
 *                                    "<request_start_us> <flags>" (decimal),
 *                                    script, callable, application_group, process_group,
 *                                    then one "KEY VALUE" line per CGI variable
 *                                  (fields in hex, "-" for empty)
 */
#include "wire_testlib.h"

#include <errno.h>
#include <inttypes.h>

static int failures, checks;

#define CHECK(cond, ...)                                                \
    do {                                                                \
        checks++;                                                       \
        if (!(cond)) {                                                  \
            failures++;                                                 \
            fprintf(stderr, "%s:%d: FAILED: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                               \
            fputc('\n', stderr);                                        \
        }                                                               \
    } while (0)

/* The dump of `in` fed whole, and checked to be the same for every single split point. */
static char *dump_all_splits(const buf_t *in, int status_mode)
{
    dumper_t d;
    char *whole;
    size_t cut;

    dumper_init(&d, status_mode);
    dumper_feed(&d, in->p, in->n);
    dumper_finish(&d);
    whole = strdup(d.out.p ? (char *)d.out.p : "");
    dumper_free(&d);
    if (!whole)
        exit(2);
    for (cut = 1; cut < in->n; cut++) {
        dumper_init(&d, status_mode);
        dumper_feed(&d, in->p, cut);
        dumper_feed(&d, in->p + cut, in->n - cut);
        dumper_finish(&d);
        CHECK(strcmp(whole, d.out.p ? (char *)d.out.p : "") == 0, "split at %zu:\n%s\nvs whole:\n%s", cut,
              d.out.p ? (char *)d.out.p : "", whole);
        dumper_free(&d);
    }
    return whole;
}

/* Expects the stream to end in a protocol error whose text contains `what`. */
static void expect_error(const buf_t *in, const char *what, int status_mode)
{
    char *out = dump_all_splits(in, status_mode);
    const char *e = strstr(out, "PROTOCOL-ERROR ");
    CHECK(e && strstr(e, what), "want an error containing \"%s\", got:\n%s", what, out);
    free(out);
}

static void expect_dump(const buf_t *in, const char *want, int status_mode)
{
    char *out = dump_all_splits(in, status_mode);
    CHECK(strcmp(out, want) == 0, "got:\n%s\nwant:\n%s", out, want);
    free(out);
}

static void test_encoders(void)
{
    unsigned char secret[32], hello[TSGI_WIRE_HELLO_SIZE], h[8], ab[TSGI_WIRE_ABORT_SIZE_MAX];
    static const unsigned char want_hello_head[16] = {0x01, 0, 0, 0, 0, 0, 0, 40, 'T', 'S', 'G', 'I', 0, 1, 0, 0};
    tsgi_wire_str_t vars[4] = {{"REQUEST_METHOD", 14}, {"GET", 3}, {"EMPTY", 5}, {"", 0}};
    tsgi_wire_request_t q;
    unsigned char *out;
    size_t size, n, i;
    char err[256], big[1100];

    for (i = 0; i < 32; i++)
        secret[i] = (unsigned char)(0xa0 + i);
    CHECK(tsgi_wire_encode_hello(hello, secret) == 48, "hello size");
    CHECK(memcmp(hello, want_hello_head, 16) == 0, "hello header and magic");
    CHECK(memcmp(hello + 16, secret, 32) == 0, "hello secret");

    memset(&q, 0, sizeof(q));
    q.request_start_us = 0x0102030405060708ull;
    q.flags = TSGI_WIRE_REQ_HAS_BODY | TSGI_WIRE_REQ_HTTPS;
    q.script.p = "/s.tsgi";
    q.script.n = 7;
    q.callable.p = "application";
    q.callable.n = 11;
    q.application_group.p = "";
    q.process_group.p = "g";
    q.process_group.n = 1;
    q.vars = vars;
    q.count = 2;
    CHECK(tsgi_wire_request_size(&q, &size, err, sizeof(err)) == 0, "%s", err);
    CHECK(size == 8 + 8 + (4 + 7) + (4 + 11) + 4 + (4 + 1) + 4 + (4 + 14) + (4 + 3) + (4 + 5) + 4, "size %zu", size);
    out = malloc(size);
    if (!out)
        exit(2);
    tsgi_wire_encode_request(&q, out);
    CHECK(out[0] == 0x02 && out[1] == 0x05 && out[2] == 0 && out[3] == 0, "request header");
    n = (size_t)out[4] << 24 | (size_t)out[5] << 16 | (size_t)out[6] << 8 | out[7];
    CHECK(n == size - 8, "request length %zu", n);
    CHECK(out[8] == 1 && out[15] == 8, "big-endian start");
    CHECK(memcmp(out + 16, "\0\0\0\7/s.tsgi", 11) == 0, "script");
    CHECK(memcmp(out + size - 4 - 5 - 4, "\0\0\0\5EMPTY\0\0\0\0", 13) == 0, "last var with empty value");
    free(out);

    q.flags = 0x08;
    CHECK(tsgi_wire_request_size(&q, &size, err, sizeof(err)) == -1 && strstr(err, "undefined flags"), "%s", err);
    q.flags = 0;
    {
        /* Over the 2 MiB limit: refused with the reason, never encoded. */
        char *huge = malloc(TSGI_WIRE_REQUEST_MAX);
        tsgi_wire_str_t hv[2] = {{"X", 1}, {NULL, TSGI_WIRE_REQUEST_MAX - 40}};
        if (!huge)
            exit(2);
        hv[1].p = huge;
        q.vars = hv;
        q.count = 1;
        CHECK(tsgi_wire_request_size(&q, &size, err, sizeof(err)) == -1 && strstr(err, "limit"), "%s", err);
        hv[1].n = TSGI_WIRE_REQUEST_MAX - 56; /* the other fields take 56 bytes */
        CHECK(tsgi_wire_request_size(&q, &size, err, sizeof(err)) == 0 && size == 8 + TSGI_WIRE_REQUEST_MAX,
              "exactly at the limit: %s", err);
        hv[1].n++;
        CHECK(tsgi_wire_request_size(&q, &size, err, sizeof(err)) == -1, "one over the limit");
        hv[1].n = SIZE_MAX - 2;
        CHECK(tsgi_wire_request_size(&q, &size, err, sizeof(err)) == -1, "a length that would wrap");
        free(huge);
    }

    tsgi_wire_encode_body_header(h, 65536);
    CHECK(memcmp(h, "\x03\0\0\0\0\1\0\0", 8) == 0, "body header");
    CHECK(tsgi_wire_encode_body_end(h) == 8 && memcmp(h, "\x04\0\0\0\0\0\0\0", 8) == 0, "body end");
    CHECK(tsgi_wire_encode_status(h) == 8 && memcmp(h, "\x06\0\0\0\0\0\0\0", 8) == 0, "status");
    CHECK(tsgi_wire_encode_abort(ab, "gone", 4) == 12 && memcmp(ab, "\x05\0\0\0\0\0\0\4gone", 12) == 0, "abort");
    /* A reason over the limit is cut before a multi-byte character, not inside it. */
    memset(big, 'a', sizeof(big));
    memcpy(big + 1022, "\xc3\xa9", 2); /* U+00E9 at bytes 1022-1023: fits */
    CHECK(tsgi_wire_encode_abort(ab, big, sizeof(big)) == 8 + 1024, "abort cut at 1024");
    memcpy(big + 1022, "a\xc3\xa9", 3); /* now at 1023-1024: does not */
    CHECK(tsgi_wire_encode_abort(ab, big, sizeof(big)) == 8 + 1023, "abort cut before the character");
}

static void test_parser_valid(void)
{
    buf_t in = {0};
    const char *hdrs[] = {"Content-Type", "text/plain", "X-Empty", "", "Set-Cookie", "a=1"};

    d_hello(&in, 4242);
    d_head(&in, 200, "OK", hdrs, 3);
    d_body(&in, "hello", 5);
    d_body(&in, "!", 1);
    d_end(&in, 0);
    d_goaway(&in);
    d_head(&in, 404, "", NULL, 0);
    d_end(&in, TSGI_WIRE_CLOSE);
    d_error(&in, TSGI_WIRE_CLOSE, TSGI_WIRE_E_APP, "boom");
    expect_dump(&in,
                "HELLO pid=4242\n"
                "HEAD status=200 reason=4f4b count=3\n"
                "H 436f6e74656e742d54797065 746578742f706c61696e\n"
                "H 582d456d707479 -\n"
                "H 5365742d436f6f6b6965 613d31\n"
                "BODY 68656c6c6f\n"
                "BODY 21\n"
                "END flags=0\n"
                "GOAWAY\n"
                "HEAD status=404 reason=- count=0\n"
                "END flags=1\n"
                "ERROR flags=1 code=1 message=626f6f6d\n",
                0);
    buf_free(&in);

    /* A refusal may come instead of the HELLO. */
    d_error(&in, TSGI_WIRE_CLOSE, TSGI_WIRE_E_AUTH, "");
    expect_dump(&in, "ERROR flags=1 code=7 message=-\n", 0);
    buf_free(&in);

    d_hello(&in, 1);
    d_status(&in, "{\"a\":1}");
    expect_dump(&in, "HELLO pid=1\nSTATUS 7b2261223a317d\n", 1);
    buf_free(&in);

    /* Input that stops inside a frame is not an event. */
    d_hello(&in, 7);
    d_head(&in, 200, "OK", NULL, 0);
    in.n -= 3;
    {
        dumper_t d;
        dumper_init(&d, 0);
        dumper_feed(&d, in.p, in.n);
        dumper_finish(&d);
        CHECK(strcmp((char *)d.out.p, "HELLO pid=7\nINCOMPLETE\n") == 0, "%s", (char *)d.out.p);
        CHECK(!tsgi_wire_parser_idle(&d.parser), "not idle mid-frame");
        dumper_free(&d);
    }
    buf_free(&in);
}

static void test_parser_idle_and_begin(void)
{
    tsgi_wire_parser_t p;
    tsgi_wire_frame_t f;
    buf_t in = {0};
    size_t used;

    tsgi_wire_parser_init(&p, 0);
    CHECK(!tsgi_wire_parser_idle(&p), "no HELLO yet: not idle");
    CHECK(tsgi_wire_parser_begin(&p, TSGI_WIRE_EXPECT_HEAD) == 0, "begin");
    CHECK(tsgi_wire_parser_begin(&p, TSGI_WIRE_EXPECT_HEAD) == -1, "begin twice");
    d_hello(&in, 9);
    d_head(&in, 204, "No Content", NULL, 0);
    d_end(&in, 0);
    CHECK(tsgi_wire_parse(&p, in.p, in.n, &used, &f) == TSGI_WIRE_FRAME && f.type == TSGI_WIRE_D_HELLO && f.pid == 9 &&
              used == 20,
          "hello: used %zu", used);
    CHECK(tsgi_wire_parse(&p, in.p + 20, in.n - 20, &used, &f) == TSGI_WIRE_FRAME && f.type == TSGI_WIRE_D_HEAD &&
              f.head.status == 204 && f.head.reason_len == 10,
          "head");
    CHECK(!tsgi_wire_parser_idle(&p), "inside a response: not idle");
    CHECK(tsgi_wire_parse(&p, in.p + 20 + used, in.n - 20 - used, &used, &f) == TSGI_WIRE_FRAME &&
              f.type == TSGI_WIRE_D_END,
          "end");
    CHECK(tsgi_wire_parser_idle(&p), "after END: idle");
    CHECK(tsgi_wire_parse(&p, NULL, 0, &used, &f) == TSGI_WIRE_NEED_MORE && used == 0, "empty input");
    tsgi_wire_parser_free(&p);
    buf_free(&in);
}

static void test_parser_errors(void)
{
    buf_t in = {0};
    const char *bad_name[] = {"Bad Name", "x"}, *crlf[] = {"X", "a\r\nSet-Cookie: evil"}, *empty[] = {"", "x"};

#define ERR_CASE(build, what, mode) \
    do {                            \
        build;                      \
        expect_error(&in, what, mode); \
        buf_free(&in);              \
    } while (0)

    ERR_CASE(frame_header(&in, 0x07, 0, 0), "unknown type 0x07", 0);
    ERR_CASE(frame_header(&in, TSGI_WIRE_C_REQUEST, 0, 0), "unknown type 0x02", 0);
    ERR_CASE((d_hello(&in, 1), frame_header(&in, TSGI_WIRE_D_GOAWAY, 1, 0)), "GOAWAY frame: flags 0x01", 0);
    ERR_CASE((d_hello(&in, 1), buf_u8(&in, TSGI_WIRE_D_GOAWAY), buf_u8(&in, 0), buf_u16(&in, 1), buf_u32(&in, 0)),
             "GOAWAY frame: reserved field", 0);
    ERR_CASE(frame_header(&in, TSGI_WIRE_D_HELLO, 0, 13), "HELLO frame: length 13, must be 12", 0);
    ERR_CASE((d_hello(&in, 1), frame_header(&in, TSGI_WIRE_D_HEAD, 0, (1u << 20) + 1)),
             "HEAD frame: length 1048577 outside", 0);
    ERR_CASE((d_hello(&in, 1), d_head(&in, 200, "OK", NULL, 0), frame_header(&in, TSGI_WIRE_D_BODY, 0, 0)),
             "BODY frame: length 0", 0);
    ERR_CASE((d_hello(&in, 1), frame_header(&in, TSGI_WIRE_D_END, 0, 1)), "END frame: length 1, must be 0", 0);
    ERR_CASE((d_hello(&in, 1), frame_header(&in, TSGI_WIRE_D_ERROR, 0, 4101)), "ERROR frame: length 4101", 0);
    ERR_CASE((d_hello(&in, 1), frame_header(&in, TSGI_WIRE_D_ERROR, 0, 3)), "ERROR frame: length 3", 0);
    /* Order. */
    ERR_CASE(d_head(&in, 200, "OK", NULL, 0), "HEAD frame before the daemon's HELLO", 0);
    ERR_CASE((d_hello(&in, 1), d_hello(&in, 2)), "a second HELLO", 0);
    ERR_CASE((d_hello(&in, 1), d_body(&in, "x", 1)), "BODY frame out of order (waiting for a response's HEAD)", 0);
    ERR_CASE((d_hello(&in, 1), d_end(&in, 0)), "END frame out of order", 0);
    ERR_CASE((d_hello(&in, 1), d_head(&in, 200, "OK", NULL, 0), d_head(&in, 200, "OK", NULL, 0)),
             "HEAD frame out of order (inside a response)", 0);
    ERR_CASE((d_hello(&in, 1), d_status(&in, "{}")), "STATUS frame out of order", 0);
    ERR_CASE((d_hello(&in, 1), d_head(&in, 200, "OK", NULL, 0)), "HEAD frame out of order (waiting for a STATUS", 1);
    /* Payloads. */
    ERR_CASE((frame_header(&in, TSGI_WIRE_D_HELLO, 0, 12), buf_put(&in, "TSGX\0\1\0\0\0\0\0\1", 12)), "bad magic",
             0);
    ERR_CASE((frame_header(&in, TSGI_WIRE_D_HELLO, 0, 12), buf_put(&in, "TSGI\0\2\0\0\0\0\0\1", 12)),
             "the daemon speaks version 2", 0);
    ERR_CASE((d_hello(&in, 1), d_head(&in, 99, "x", NULL, 0)), "status 99 is outside 100-599", 0);
    ERR_CASE((d_hello(&in, 1), d_head(&in, 600, "x", NULL, 0)), "status 600", 0);
    ERR_CASE((d_hello(&in, 1), d_head(&in, 200, "O\nK", NULL, 0)), "the reason contains byte 0x0a", 0);
    ERR_CASE((d_hello(&in, 1), d_head(&in, 200, "OK", bad_name, 1)), "byte 0x20 at offset 3 of the name", 0);
    ERR_CASE((d_hello(&in, 1), d_head(&in, 200, "OK", crlf, 1)), "header 1 (X): the value contains byte 0x0d", 0);
    ERR_CASE((d_hello(&in, 1), d_head(&in, 200, "OK", empty, 1)), "header 1 has an empty name", 0);
    /* Lengths that do not add up. */
    ERR_CASE((d_hello(&in, 1), frame_header(&in, TSGI_WIRE_D_HEAD, 0, 10), buf_u16(&in, 200), buf_u32(&in, 5),
              buf_u32(&in, 0)),
             "the reason's length 5 runs past the payload", 0);
    ERR_CASE((d_hello(&in, 1), frame_header(&in, TSGI_WIRE_D_HEAD, 0, 11), buf_u16(&in, 200), buf_u32(&in, 0),
              buf_u32(&in, 0), buf_u8(&in, 0)),
             "1 bytes left over after 0 headers", 0);
    ERR_CASE((d_hello(&in, 1), frame_header(&in, TSGI_WIRE_D_HEAD, 0, 18), buf_u16(&in, 200), buf_u32(&in, 0),
              buf_u32(&in, 1), buf_u32(&in, 9), buf_u32(&in, 0)),
             "header 1: the name's length runs past", 0);
    ERR_CASE((d_hello(&in, 1), frame_header(&in, TSGI_WIRE_D_HEAD, 0, 19), buf_u16(&in, 200), buf_u32(&in, 0),
              buf_u32(&in, 1), buf_str(&in, "A", 1), buf_u32(&in, 9)),
             "header 1 (A): the value's length runs past", 0);
    /* A name that has not passed its checks yet is shown with only printable ASCII. */
    ERR_CASE((d_hello(&in, 1), frame_header(&in, TSGI_WIRE_D_HEAD, 0, 21), buf_u16(&in, 200), buf_u32(&in, 0),
              buf_u32(&in, 1), buf_str(&in, "A\n\xff", 3), buf_u32(&in, 9)),
             "header 1 (A?" "?): the value's length runs past", 0);
    ERR_CASE((d_hello(&in, 1), frame_header(&in, TSGI_WIRE_D_HEAD, 0, 10), buf_u16(&in, 200), buf_u32(&in, 0),
              buf_u32(&in, 0xffffffffu)),
             "4294967295 headers cannot fit", 0);
    ERR_CASE((d_hello(&in, 1), frame_header(&in, TSGI_WIRE_D_ERROR, 0, 4), buf_u16(&in, 1), buf_u16(&in, 3)),
             "ERROR frame: reserved field is 0x0003", 0);
#undef ERR_CASE

    /* A failed parser stays failed. */
    {
        tsgi_wire_parser_t p;
        tsgi_wire_frame_t f;
        size_t used;
        frame_header(&in, 0x99, 0, 0);
        d_hello(&in, 1);
        tsgi_wire_parser_init(&p, 0);
        CHECK(tsgi_wire_parse(&p, in.p, in.n, &used, &f) == TSGI_WIRE_ERROR && used == 8, "error consumes the header");
        CHECK(tsgi_wire_parse(&p, in.p + 8, in.n - 8, &used, &f) == TSGI_WIRE_ERROR && used == 0, "stays failed");
        CHECK(tsgi_wire_parser_begin(&p, TSGI_WIRE_EXPECT_HEAD) == -1, "no begin after an error");
        tsgi_wire_parser_free(&p);
        buf_free(&in);
    }
}

static void test_decode_helpers(void)
{
    CHECK(tsgi_wire_error_status(TSGI_WIRE_E_APP) == 500, "APP");
    CHECK(tsgi_wire_error_status(TSGI_WIRE_E_TIMEOUT) == 504, "TIMEOUT");
    CHECK(tsgi_wire_error_status(TSGI_WIRE_E_QUEUE_TIMEOUT) == 503, "QUEUE_TIMEOUT");
    CHECK(tsgi_wire_error_status(TSGI_WIRE_E_BAD_REQUEST) == 400, "BAD_REQUEST");
    CHECK(tsgi_wire_error_status(TSGI_WIRE_E_UNAVAILABLE) == 503, "UNAVAILABLE");
    CHECK(tsgi_wire_error_status(TSGI_WIRE_E_PROTOCOL) == 502, "PROTOCOL");
    CHECK(tsgi_wire_error_status(TSGI_WIRE_E_AUTH) == 500, "AUTH");
    CHECK(tsgi_wire_error_status(TSGI_WIRE_E_VERSION) == 500, "VERSION");
    CHECK(tsgi_wire_error_status(77) == 502, "unknown");
    CHECK(strcmp(tsgi_wire_error_name(TSGI_WIRE_E_QUEUE_TIMEOUT), "QUEUE_TIMEOUT") == 0, "name");
    CHECK(strcmp(tsgi_wire_error_name(0), "unknown") == 0, "name 0");
}

/* ---- modes for the TypeScript cross-check --------------------------------------------- */

static buf_t read_all(FILE *f)
{
    buf_t b = {0};
    unsigned char tmp[65536];
    size_t n;
    while ((n = fread(tmp, 1, sizeof(tmp), f)) > 0)
        buf_put(&b, tmp, n);
    if (ferror(f)) {
        fprintf(stderr, "reading stdin: %s\n", strerror(errno));
        exit(2);
    }
    return b;
}

static int mode_dump(int status_mode)
{
    buf_t in = read_all(stdin);
    dumper_t d;
    dumper_init(&d, status_mode);
    dumper_feed(&d, in.p, in.n);
    dumper_finish(&d);
    fwrite(d.out.p ? d.out.p : (unsigned char *)"", 1, d.out.n, stdout);
    dumper_free(&d);
    buf_free(&in);
    return 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int unhex(const char *s, size_t n, buf_t *out)
{
    size_t i;
    out->n = 0;
    buf_need(out, 1);
    if (n == 1 && s[0] == '-')
        return 0;
    if (n % 2)
        return -1;
    for (i = 0; i < n; i += 2) {
        int hi = hexval(s[i]), lo = hexval(s[i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        buf_u8(out, (unsigned)(hi << 4 | lo));
    }
    return 0;
}

static int mode_encode_request(void)
{
    buf_t in = read_all(stdin), *fields = NULL;
    tsgi_wire_str_t *strs = NULL;
    tsgi_wire_request_t q;
    size_t nf = 0, i, size;
    char *line, *save = NULL, err[256];
    unsigned long long start;
    unsigned flags;
    unsigned char *out;
    int rc = 2;

    memset(&q, 0, sizeof(q));
    buf_put(&in, "", 0);
    line = strtok_r((char *)in.p, "\n", &save);
    if (!line || sscanf(line, "%llu %u", &start, &flags) != 2) {
        fprintf(stderr, "encode-request: first line must be \"<request_start_us> <flags>\"\n");
        goto done;
    }
    while ((line = strtok_r(NULL, "\n", &save)) != NULL) {
        char *sp = strchr(line, ' ');
        size_t parts = sp ? 2 : 1, k;
        for (k = 0; k < parts; k++) {
            const char *s = k == 0 ? line : sp + 1;
            size_t n = k == 0 && sp ? (size_t)(sp - line) : strlen(s);
            buf_t *nfp = realloc(fields, (nf + 1) * sizeof(*fields));
            if (!nfp)
                goto done;
            fields = nfp;
            memset(&fields[nf], 0, sizeof(*fields));
            if (unhex(s, n, &fields[nf++]) != 0) {
                fprintf(stderr, "encode-request: field %zu is not hex\n", nf);
                goto done;
            }
        }
    }
    if (nf < 4 || (nf - 4) % 2) {
        fprintf(stderr, "encode-request: need 4 fields and key/value pairs, got %zu fields\n", nf);
        goto done;
    }
    strs = calloc(nf, sizeof(*strs));
    if (!strs)
        goto done;
    for (i = 0; i < nf; i++) {
        strs[i].p = (const char *)fields[i].p;
        strs[i].n = fields[i].n;
    }
    q.request_start_us = start;
    q.flags = flags;
    q.script = strs[0];
    q.callable = strs[1];
    q.application_group = strs[2];
    q.process_group = strs[3];
    q.vars = strs + 4;
    q.count = (nf - 4) / 2;
    if (tsgi_wire_request_size(&q, &size, err, sizeof(err)) != 0) {
        fprintf(stderr, "encode-request: %s\n", err);
        rc = 1;
        goto done;
    }
    out = malloc(size);
    if (!out)
        goto done;
    tsgi_wire_encode_request(&q, out);
    rc = fwrite(out, 1, size, stdout) == size ? 0 : 2;
    free(out);
done:
    for (i = 0; i < nf; i++)
        buf_free(&fields[i]);
    free(fields);
    free(strs);
    buf_free(&in);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "dump") == 0)
        return mode_dump(argc >= 3 && strcmp(argv[2], "--status") == 0);
    if (argc >= 2 && strcmp(argv[1], "encode-request") == 0)
        return mode_encode_request();
    if (argc >= 2) {
        fprintf(stderr, "usage: wire_test [dump [--status] | encode-request]\n");
        return 2;
    }
    test_encoders();
    test_parser_valid();
    test_parser_idle_and_begin();
    test_parser_errors();
    test_decode_helpers();
    printf("wire_test: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
