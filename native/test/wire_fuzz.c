/*
 * Fuzzes native/wire.c (built with -fsanitize=address,undefined: any crash, undefined
 * behaviour or leak fails the run):
 *   - random valid daemon streams (HELLO, responses with headers and bodies, errors,
 *     GOAWAYs, STATUS replies) must parse to exactly the events they were built from;
 *   - the same streams mutated (bit flips, byte overwrites, cuts, insertions, spliced
 *     garbage, header fields set to edge values) must parse without misbehaving;
 *   - every stream is fed whole and in random splits, and both must give the same dump;
 *   - random REQUEST frames are encoded and read back field by field.
 *
 *   wire_fuzz [iterations [seed]]     (default 2000 iterations, seed from the clock)
 * The seed is printed first so that a failure can be replayed.
 */
#include "wire_testlib.h"

#include <stdint.h>
#include <time.h>

static uint64_t rng_state;

static uint32_t rnd(void)
{
    /* xorshift64*: deterministic for a seed, which is all a replay needs. */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545F4914F6CDD1Dull) >> 32);
}

static uint32_t below(uint32_t n)
{
    return n ? rnd() % n : 0;
}

static void fatal(const char *what, uint64_t seed, unsigned long iter, const char *detail)
{
    fprintf(stderr, "wire_fuzz: FAILED (%s) at iteration %lu, seed %llu\n%s\n", what, iter, (unsigned long long)seed,
            detail);
    exit(1);
}

static void rand_token(char *out, size_t max)
{
    static const char tc[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_!#$%&'*+.^`|~";
    size_t n = 1 + below((uint32_t)max - 1), i;
    for (i = 0; i < n; i++)
        out[i] = tc[below(sizeof(tc) - 1)];
    out[n] = 0;
}

static void rand_text(char *out, size_t max)
{
    size_t n = below((uint32_t)max), i;
    for (i = 0; i < n; i++) {
        char c = (char)(0x20 + below(0x5f));
        out[i] = below(16) ? c : (char)(0x80 + below(0x80)); /* some non-ASCII bytes too */
    }
    out[n] = 0;
}

/* A valid stream and, in `want`, the dump it must give. */
static void gen_valid(buf_t *in, buf_t *want, int *status_mode)
{
    unsigned long pid = rnd();
    int exchanges = 1 + (int)below(4), e;

    *status_mode = below(6) == 0;
    d_hello(in, pid);
    buf_printf(want, "HELLO pid=%lu\n", pid);
    for (e = 0; e < exchanges; e++) {
        if (below(5) == 0) {
            d_goaway(in);
            buf_printf(want, "GOAWAY\n");
        }
        if (*status_mode) {
            char json[200];
            rand_text(json, sizeof(json));
            d_status(in, json);
            buf_printf(want, "STATUS ");
            buf_hex(want, json, strlen(json));
            buf_printf(want, "\n");
            continue;
        }
        if (below(5) == 0) {
            char msg[100];
            unsigned code = 1 + below(9), flags = below(2);
            rand_text(msg, sizeof(msg));
            d_error(in, flags, code, msg);
            buf_printf(want, "ERROR flags=%u code=%u message=", flags, code);
            buf_hex(want, msg, strlen(msg));
            buf_printf(want, "\n");
            continue;
        }
        {
            char names[8][40], values[8][80], reason[40];
            const char *hv[16];
            size_t count = below(9), i, bodies = below(5);
            unsigned status = 100 + below(500);
            rand_text(reason, sizeof(reason));
            for (i = 0; i < count; i++) {
                rand_token(names[i], sizeof(names[i]));
                rand_text(values[i], sizeof(values[i]));
                hv[2 * i] = names[i];
                hv[2 * i + 1] = values[i];
            }
            d_head(in, status, reason, hv, count);
            buf_printf(want, "HEAD status=%u reason=", status);
            buf_hex(want, reason, strlen(reason));
            buf_printf(want, " count=%zu\n", count);
            for (i = 0; i < count; i++) {
                buf_printf(want, "H ");
                buf_hex(want, names[i], strlen(names[i]));
                buf_printf(want, " ");
                buf_hex(want, values[i], strlen(values[i]));
                buf_printf(want, "\n");
            }
            for (i = 0; i < bodies; i++) {
                unsigned char body[3000];
                size_t n = 1 + below(below(8) ? 64 : sizeof(body)), k;
                for (k = 0; k < n; k++)
                    body[k] = (unsigned char)rnd();
                d_body(in, body, n);
                buf_printf(want, "BODY ");
                buf_hex(want, body, n);
                buf_printf(want, "\n");
            }
            if (below(4) == 0) {
                char msg[60];
                unsigned code = 1 + below(9);
                rand_text(msg, sizeof(msg));
                d_error(in, TSGI_WIRE_CLOSE, code, msg);
                buf_printf(want, "ERROR flags=1 code=%u message=", code);
                buf_hex(want, msg, strlen(msg));
                buf_printf(want, "\n");
            }
            else {
                unsigned flags = below(2);
                d_end(in, flags);
                buf_printf(want, "END flags=%u\n", flags);
            }
        }
    }
}

static void mutate(buf_t *in)
{
    int rounds = 1 + (int)below(4), r;
    for (r = 0; r < rounds && in->n; r++) {
        size_t at = below((uint32_t)in->n);
        switch (below(7)) {
        case 0: /* flip a bit */
            in->p[at] ^= (unsigned char)(1u << below(8));
            break;
        case 1: /* overwrite a byte */
            in->p[at] = (unsigned char)rnd();
            break;
        case 2: /* cut the stream */
            in->n = at;
            break;
        case 3: { /* insert random bytes */
            size_t k, n = 1 + below(16);
            buf_need(in, n);
            memmove(in->p + at + n, in->p + at, in->n - at);
            for (k = 0; k < n; k++)
                in->p[at + k] = (unsigned char)rnd();
            in->n += n;
            break;
        }
        case 4: /* a 32-bit field (a length, most likely) set to an edge value */
            if (at + 4 <= in->n) {
                static const uint32_t edges[] = {0, 1, 7, 8, 0x7fffffffu, 0x80000000u, 0xffffffffu, 0x100000u,
                                                 0x100001u, 0x200000u, 4100, 4101, 12, 11};
                uint32_t v = edges[below(sizeof(edges) / sizeof(edges[0]))];
                in->p[at] = (unsigned char)(v >> 24);
                in->p[at + 1] = (unsigned char)(v >> 16);
                in->p[at + 2] = (unsigned char)(v >> 8);
                in->p[at + 3] = (unsigned char)v;
            }
            break;
        case 5: /* duplicate a slice */
        {
            size_t n = below((uint32_t)(in->n - at)) % 64;
            buf_need(in, n);
            memmove(in->p + at + n, in->p + at, in->n - at);
            in->n += n;
            break;
        }
        default: /* a frame type byte set to any type */
            in->p[at] = (unsigned char)(below(2) ? 0x80 + below(9) : below(256));
            break;
        }
    }
}

/* The dump of `in` cut into random pieces (some of them empty). */
static void dump_split(const buf_t *in, int status_mode, buf_t *out)
{
    dumper_t d;
    size_t pos = 0;
    dumper_init(&d, status_mode);
    while (pos < in->n) {
        size_t n = below(3) == 0 ? below(4) : 1 + below((uint32_t)(in->n - pos));
        if (n > in->n - pos)
            n = in->n - pos;
        dumper_feed(&d, in->p + pos, n);
        pos += n;
    }
    dumper_finish(&d);
    buf_put(out, d.out.p, d.out.n);
    dumper_free(&d);
}

static void dump_whole(const buf_t *in, int status_mode, buf_t *out)
{
    dumper_t d;
    dumper_init(&d, status_mode);
    dumper_feed(&d, in->p, in->n);
    dumper_finish(&d);
    buf_put(out, d.out.p, d.out.n);
    dumper_free(&d);
}

/* Encodes a random REQUEST and reads it back with an independent decoder. */
static void fuzz_request(uint64_t seed, unsigned long iter)
{
    char strs[40][64];
    tsgi_wire_str_t fields[40];
    tsgi_wire_request_t q;
    size_t count = below(18), i, size, off;
    unsigned char *out;
    char err[256];

    for (i = 0; i < 4 + 2 * count; i++) {
        size_t n = below(sizeof(strs[i])), k;
        for (k = 0; k < n; k++)
            strs[i][k] = (char)rnd();
        fields[i].p = strs[i];
        fields[i].n = n;
    }
    memset(&q, 0, sizeof(q));
    q.request_start_us = (uint64_t)rnd() << 32 | rnd();
    q.flags = below(8);
    q.script = fields[0];
    q.callable = fields[1];
    q.application_group = fields[2];
    q.process_group = fields[3];
    q.vars = fields + 4;
    q.count = count;
    if (tsgi_wire_request_size(&q, &size, err, sizeof(err)) != 0)
        fatal("request size", seed, iter, err);
    out = malloc(size);
    if (!out)
        exit(2);
    tsgi_wire_encode_request(&q, out);
#define U32(p) ((uint32_t)(p)[0] << 24 | (uint32_t)(p)[1] << 16 | (uint32_t)(p)[2] << 8 | (p)[3])
    if (out[0] != 2 || out[1] != q.flags || out[2] || out[3] || U32(out + 4) != size - 8)
        fatal("request header", seed, iter, "");
    if (((uint64_t)U32(out + 8) << 32 | U32(out + 12)) != q.request_start_us)
        fatal("request_start_us", seed, iter, "");
    off = 16;
    for (i = 0; i < 4 + 2 * count; i++) {
        uint32_t n;
        if (i == 4) {
            if (U32(out + off) != count)
                fatal("request count", seed, iter, "");
            off += 4;
        }
        n = U32(out + off);
        if (n != fields[i].n || off + 4 + n > size || memcmp(out + off + 4, fields[i].p, n) != 0)
            fatal("request field", seed, iter, "");
        off += 4 + n;
    }
    if (count == 0) {
        if (U32(out + off) != 0)
            fatal("request count 0", seed, iter, "");
        off += 4;
    }
    if (off != size)
        fatal("request size adds up", seed, iter, "");
#undef U32
    free(out);
}

int main(int argc, char **argv)
{
    unsigned long iterations = argc > 1 ? strtoul(argv[1], NULL, 10) : 2000, i, mutated_errors = 0;
    uint64_t seed = argc > 2 ? strtoull(argv[2], NULL, 10) : (uint64_t)time(NULL);

    printf("wire_fuzz: seed %llu, %lu iterations\n", (unsigned long long)seed, iterations);
    fflush(stdout);
    rng_state = seed * 2654435761u + 1;
    for (i = 0; i < iterations; i++) {
        buf_t in = {0}, want = {0}, whole = {0}, split = {0};
        int status_mode;

        gen_valid(&in, &want, &status_mode);
        dump_whole(&in, status_mode, &whole);
        if (strcmp((char *)whole.p, (char *)want.p) != 0) {
            buf_printf(&whole, "\n--- want ---\n%s", (char *)want.p);
            fatal("valid stream", seed, i, (char *)whole.p);
        }
        dump_split(&in, status_mode, &split);
        if (strcmp((char *)split.p, (char *)want.p) != 0)
            fatal("valid stream, split", seed, i, (char *)split.p);

        mutate(&in);
        whole.n = split.n = 0;
        dump_whole(&in, status_mode, &whole);
        dump_split(&in, status_mode, &split);
        if (whole.n != split.n || memcmp(whole.p, split.p, whole.n) != 0) {
            buf_printf(&whole, "\n--- split ---\n%s", (char *)split.p);
            fatal("mutated stream: whole and split differ", seed, i, (char *)whole.p);
        }
        if (!strncmp((char *)whole.p, "BUG ", 4) || strstr((char *)whole.p, "\nBUG "))
            fatal("parser contract", seed, i, (char *)whole.p);
        {
            /* Error texts go into log lines: nothing in them but printable ASCII. */
            const char *e = strstr((char *)whole.p, "PROTOCOL-ERROR ");
            if (e) {
                for (e += 15; *e && *e != '\n'; e++)
                    if ((unsigned char)*e < 0x20 || (unsigned char)*e >= 0x7f)
                        fatal("unprintable byte in an error text", seed, i, (char *)whole.p);
                mutated_errors++;
            }
        }

        /* Pure garbage now and then. */
        if (below(4) == 0) {
            size_t n = below(200), k;
            in.n = 0;
            for (k = 0; k < n; k++)
                buf_u8(&in, below(3) ? rnd() : 0);
            whole.n = split.n = 0;
            dump_whole(&in, below(2), &whole);
            dump_split(&in, 0, &split);
        }
        fuzz_request(seed, i);
        buf_free(&in);
        buf_free(&want);
        buf_free(&whole);
        buf_free(&split);
    }
    printf("wire_fuzz: ok, %lu iterations (%lu mutated streams ended in a protocol error)\n", iterations,
           mutated_errors);
    return 0;
}
