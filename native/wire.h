/*
 * The Apache child's side of the daemon wire protocol (docs/protocol.md): encoders for
 * the frames a client sends and an incremental parser of the frames a daemon sends.
 *
 * Pure C99: no APR, no I/O, no global state. The only allocation is the parser's payload
 * buffer (bounded by the largest frame limit, 1 MiB), freed by tsgi_wire_parser_free().
 * Every check of docs/protocol.md §2/§6 that the header allows is made from the header,
 * before a byte of its payload is buffered; the fields of HELLO, HEAD and ERROR are
 * verified to add up to the payload exactly when the frame is complete.
 */
#ifndef TSGI_WIRE_H
#define TSGI_WIRE_H

#include <stddef.h>
#include <stdint.h>

#define TSGI_WIRE_VERSION 1
#define TSGI_WIRE_HEADER_LEN 8
#define TSGI_WIRE_SECRET_LEN 32

/* Client -> daemon. */
#define TSGI_WIRE_C_HELLO 0x01
#define TSGI_WIRE_C_REQUEST 0x02
#define TSGI_WIRE_C_BODY 0x03
#define TSGI_WIRE_C_BODY_END 0x04
#define TSGI_WIRE_C_ABORT 0x05
#define TSGI_WIRE_C_STATUS 0x06

/* Daemon -> client. */
#define TSGI_WIRE_D_HELLO 0x81
#define TSGI_WIRE_D_HEAD 0x82
#define TSGI_WIRE_D_BODY 0x83
#define TSGI_WIRE_D_END 0x84
#define TSGI_WIRE_D_ERROR 0x85
#define TSGI_WIRE_D_GOAWAY 0x86
#define TSGI_WIRE_D_STATUS 0x87

/* Flags. */
#define TSGI_WIRE_REQ_HAS_BODY 0x01
#define TSGI_WIRE_REQ_RELOAD 0x02
#define TSGI_WIRE_REQ_HTTPS 0x04
#define TSGI_WIRE_CLOSE 0x01 /* END, ERROR */

/* Limits (payload bytes). */
#define TSGI_WIRE_HELLO_PAYLOAD 40         /* client HELLO, exactly */
#define TSGI_WIRE_DHELLO_PAYLOAD 12        /* daemon HELLO, exactly */
#define TSGI_WIRE_REQUEST_MAX (2u << 20)
#define TSGI_WIRE_BODY_MAX (1u << 20)
#define TSGI_WIRE_ABORT_MAX 1024u
#define TSGI_WIRE_HEAD_MAX (1u << 20)
#define TSGI_WIRE_ERROR_MAX (4u + 4096u)
#define TSGI_WIRE_STATUS_MAX (1u << 20)

/* Sizes of whole encoded frames. */
#define TSGI_WIRE_HELLO_SIZE (TSGI_WIRE_HEADER_LEN + TSGI_WIRE_HELLO_PAYLOAD)
#define TSGI_WIRE_ABORT_SIZE_MAX (TSGI_WIRE_HEADER_LEN + TSGI_WIRE_ABORT_MAX)

/* ERROR codes (docs/protocol.md §4). */
#define TSGI_WIRE_E_APP 1
#define TSGI_WIRE_E_TIMEOUT 2
#define TSGI_WIRE_E_QUEUE_TIMEOUT 3
#define TSGI_WIRE_E_BAD_REQUEST 4
#define TSGI_WIRE_E_UNAVAILABLE 5
#define TSGI_WIRE_E_PROTOCOL 6
#define TSGI_WIRE_E_AUTH 7
#define TSGI_WIRE_E_VERSION 8
#define TSGI_WIRE_E_BODY 9

/* A byte string (not NUL-terminated on the wire). */
typedef struct {
    const char *p;
    size_t n;
} tsgi_wire_str_t;

/* ---- encoders (client frames) ----------------------------------------------------- */

void tsgi_wire_put_header(unsigned char out[TSGI_WIRE_HEADER_LEN], unsigned type, unsigned flags,
                          uint32_t length);

/* HELLO with the group's secret; always TSGI_WIRE_HELLO_SIZE bytes. */
size_t tsgi_wire_encode_hello(unsigned char out[TSGI_WIRE_HELLO_SIZE],
                              const unsigned char secret[TSGI_WIRE_SECRET_LEN]);

typedef struct {
    uint64_t request_start_us;
    unsigned flags; /* TSGI_WIRE_REQ_* */
    tsgi_wire_str_t script, callable, application_group, process_group;
    const tsgi_wire_str_t *vars; /* 2 * count entries: key, value, key, value ... */
    size_t count;
} tsgi_wire_request_t;

/* The size of the whole REQUEST frame (header included) in *size; -1 with `err` naming
 * what is wrong when it cannot be encoded (undefined flags, over the 2 MiB limit). */
int tsgi_wire_request_size(const tsgi_wire_request_t *q, size_t *size, char *err, size_t errlen);

/* Writes the REQUEST frame: exactly the size tsgi_wire_request_size() gave. */
void tsgi_wire_encode_request(const tsgi_wire_request_t *q, unsigned char *out);

/* The header of a BODY frame of `length` bytes (1 .. TSGI_WIRE_BODY_MAX). */
void tsgi_wire_encode_body_header(unsigned char out[TSGI_WIRE_HEADER_LEN], uint32_t length);

/* BODY_END and STATUS: header-only frames; return TSGI_WIRE_HEADER_LEN. */
size_t tsgi_wire_encode_body_end(unsigned char out[TSGI_WIRE_HEADER_LEN]);
size_t tsgi_wire_encode_status(unsigned char out[TSGI_WIRE_HEADER_LEN]);

/* ABORT with `reason`, cut to TSGI_WIRE_ABORT_MAX bytes at a UTF-8 character boundary;
 * returns the frame's size (at most TSGI_WIRE_ABORT_SIZE_MAX). */
size_t tsgi_wire_encode_abort(unsigned char out[TSGI_WIRE_ABORT_SIZE_MAX], const char *reason, size_t len);

/* ---- decoders (daemon frame payloads) ------------------------------------------------ */

typedef struct {
    unsigned status;      /* 100 .. 599 */
    const char *reason;   /* reason_len bytes, no CR/LF/NUL */
    size_t reason_len;
    uint32_t count;       /* header pairs */
    const unsigned char *pairs; /* the encoded pairs, verified */
    size_t pairs_len;
} tsgi_wire_head_t;

typedef struct {
    const unsigned char *p, *end;
    uint32_t left;
} tsgi_wire_head_iter_t;

/* Each returns 0, or -1 with `err` naming the frame and what was wrong. */
int tsgi_wire_decode_hello(const unsigned char *payload, size_t len, uint32_t *pid, char *err, size_t errlen);
int tsgi_wire_decode_head(const unsigned char *payload, size_t len, tsgi_wire_head_t *head, char *err,
                          size_t errlen);
int tsgi_wire_decode_error(const unsigned char *payload, size_t len, unsigned *code, const char **msg,
                           size_t *msg_len, char *err, size_t errlen);

/* Header pairs of a decoded HEAD, in order, without copying. */
void tsgi_wire_head_iter(const tsgi_wire_head_t *head, tsgi_wire_head_iter_t *it);
/* 1 and the next pair, or 0 at the end. */
int tsgi_wire_head_next(tsgi_wire_head_iter_t *it, const char **name, size_t *name_len, const char **value,
                        size_t *value_len);

/* The HTTP status an ERROR before HEAD answers with (§4), and the code's name. */
int tsgi_wire_error_status(unsigned code);
const char *tsgi_wire_error_name(unsigned code);

/* ---- the parser of daemon frames --------------------------------------------------- */

enum {
    TSGI_WIRE_NEED_MORE = 0, /* everything given was consumed; no event yet */
    TSGI_WIRE_FRAME = 1,     /* a whole frame other than BODY: see frame->type */
    TSGI_WIRE_BODY = 2,      /* a piece of a BODY frame's payload (frame->data, frame->len) */
    TSGI_WIRE_ERROR = -1     /* a protocol error: parser->err; the connection is unusable */
};

/* What the client waits for (tsgi_wire_parser_begin). */
enum { TSGI_WIRE_EXPECT_IDLE = 0, TSGI_WIRE_EXPECT_HEAD, TSGI_WIRE_EXPECT_BODY, TSGI_WIRE_EXPECT_STATUS };

typedef struct {
    unsigned type, flags;
    const unsigned char *data; /* payload, or the BODY piece; valid until the next parse call */
    size_t len;
    int last;                  /* BODY: this piece ends its frame */
    /* Decoded, by type: */
    uint32_t pid;              /* HELLO */
    tsgi_wire_head_t head;     /* HEAD */
    unsigned code;             /* ERROR */
    const char *message;       /* ERROR (message_len bytes) */
    size_t message_len;
} tsgi_wire_frame_t;

typedef struct {
    unsigned char hdr[TSGI_WIRE_HEADER_LEN];
    size_t hdr_have;
    int in_payload;            /* the header is read and accepted */
    unsigned type, flags;
    uint32_t length, got;
    unsigned char *buf;        /* payload of a frame split across calls */
    size_t cap;
    int hello_seen;
    int expect;                /* TSGI_WIRE_EXPECT_* */
    int failed;
    char err[256];
} tsgi_wire_parser_t;

/* hello_seen: 1 for a connection whose daemon HELLO was already read (a pooled one). */
void tsgi_wire_parser_init(tsgi_wire_parser_t *p, int hello_seen);
void tsgi_wire_parser_free(tsgi_wire_parser_t *p);

/* A request (TSGI_WIRE_EXPECT_HEAD) or a STATUS (TSGI_WIRE_EXPECT_STATUS) was sent; -1
 * when the previous exchange has not ended. */
int tsgi_wire_parser_begin(tsgi_wire_parser_t *p, int expect);

/* Between exchanges and between frames: the connection could carry another request. */
int tsgi_wire_parser_idle(const tsgi_wire_parser_t *p);

/* Consumes bytes of `in` (*used says how many) up to the next event and returns it. Call
 * again with the rest of the input after FRAME or BODY. */
int tsgi_wire_parse(tsgi_wire_parser_t *p, const unsigned char *in, size_t len, size_t *used,
                    tsgi_wire_frame_t *frame);

/* "HEAD", "BODY" ... or "0x07" for a type this side does not know (static storage for
 * known types, `buf` otherwise). */
const char *tsgi_wire_type_name(unsigned type, char buf[8]);

#endif
