/*
 * Daemon mode, the Apache child's side (daemon.h): forwards a request to its group's
 * daemons over docs/protocol.md and relays the response.
 *
 *   pools      per group, a LIFO of idle connections (the most recently used one is the
 *              one most likely still open and warm); each is polled before reuse, and one
 *              with anything to read (a GOAWAY, end-of-stream) is dropped.
 *   exchange   one non-blocking socket and poll() in both directions: the request body
 *              goes out in 64 KiB frames while response frames are read and relayed, so
 *              a daemon that answers before it reads its input cannot deadlock us.
 *   outcomes   each failure ends in exactly one TSGI03xx line in the request's (virtual)
 *              server error log and one status: 502 for a daemon that died or broke the
 *              protocol, 504 for silence past socket-timeout, 503 for connect failures,
 *              §4's status for an ERROR before HEAD; after HEAD the truncation is made
 *              visible to the client instead (the response never ends cleanly).
 */
#include "httpd.h"
#include "http_config.h"
#include "http_core.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"
#include "util_filter.h"

#include "apr_lib.h"
#include "apr_strings.h"
#include "apr_thread_mutex.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "daemon.h"
#include "response.h"
#include "wire.h"

APLOG_USE_MODULE(tsgi);

#define TSGILOG(n) "TSGI" #n ": "

#define TSGI_BODY_FRAME (64 * 1024)      /* request body bytes per BODY frame */
#define TSGI_RECV_BYTES (64 * 1024)      /* response bytes per recv() */
#define TSGI_OUT_BUFFERED (256 * 1024)   /* response bytes held before they are passed on */
#define TSGI_POOL_MAX_IDLE 64            /* idle connections kept per group and child */
/* A pooled connection pins its requests to one daemon process: a process that joins the
 * pool (a replacement after a crash, a bigger pool after a restart) only gets work over
 * new connections. Retiring connections after half a second spreads the load again within
 * about that long (a replacement serves well within a second of a crash), for the cost of
 * two connects per pooled connection and second (~0.5 % CPU under full load here). */
#define TSGI_CONN_MAX_AGE apr_time_from_msec(500)
#define TSGI_CONNECT_BACKOFF_MAX_MS 200
#define TSGI_CLIENT_CHECK_MS 200         /* how often a waiting request looks at its client */
#define TSGI_STATUS_TIMEOUT_MS 5000      /* a group slower than this shows as not answering */
#define TSGI_STATUS_CONNECT_TIMEOUT 2    /* s: the status page does not wait out connect-timeout */

typedef struct tsgi_conn {
    int fd;
    uint32_t pid;  /* the daemon process on the other end (its HELLO), 0 until known */
    int fresh;     /* connected for this request: HELLO goes first */
    apr_time_t born;
    struct tsgi_conn *next;
} tsgi_conn_t;

typedef struct {
    const char *name;
    apr_thread_mutex_t *mu; /* NULL: no pooling (the mutex could not be made) */
    tsgi_conn_t *idle;
    int nidle;
} tsgi_pool_t;

static apr_array_header_t *tsgi_pools; /* of tsgi_pool_t, in pchild */

static void conn_close(tsgi_conn_t *c)
{
    if (!c)
        return;
    if (c->fd >= 0)
        close(c->fd);
    free(c);
}

static apr_status_t pools_cleanup(void *data)
{
    int i;
    (void)data;
    for (i = 0; tsgi_pools && i < tsgi_pools->nelts; i++) {
        tsgi_pool_t *p = &APR_ARRAY_IDX(tsgi_pools, i, tsgi_pool_t);
        while (p->idle) {
            tsgi_conn_t *c = p->idle;
            p->idle = c->next;
            conn_close(c);
        }
        p->nidle = 0;
    }
    tsgi_pools = NULL;
    return APR_SUCCESS;
}

void tsgi_daemon_child_init(apr_pool_t *pchild, server_rec *s)
{
    const apr_array_header_t *groups = tsgi_daemon_groups();
    int i;

    tsgi_pools = NULL;
    if (!groups || groups->nelts == 0)
        return;
    tsgi_pools = apr_array_make(pchild, groups->nelts, sizeof(tsgi_pool_t));
    for (i = 0; i < groups->nelts; i++) {
        const tsgi_daemon_group_t *g = APR_ARRAY_IDX(groups, i, tsgi_daemon_group_t *);
        tsgi_pool_t *p = apr_array_push(tsgi_pools);
        apr_status_t rv;
        memset(p, 0, sizeof(*p));
        p->name = apr_pstrdup(pchild, g->name);
        rv = apr_thread_mutex_create(&p->mu, APR_THREAD_MUTEX_DEFAULT, pchild);
        if (rv != APR_SUCCESS) {
            p->mu = NULL;
            ap_log_error(APLOG_MARK, APLOG_WARNING, rv, s,
                         TSGILOG(0301) "group %s: no connection pool in this child (mutex: %pm): every request "
                                       "connects anew",
                         g->name, &rv);
        }
    }
    apr_pool_cleanup_register(pchild, NULL, pools_cleanup, apr_pool_cleanup_null);
}

static tsgi_pool_t *pool_of(const tsgi_daemon_group_t *g)
{
    int i;
    for (i = 0; tsgi_pools && i < tsgi_pools->nelts; i++) {
        tsgi_pool_t *p = &APR_ARRAY_IDX(tsgi_pools, i, tsgi_pool_t);
        if (!strcmp(p->name, g->name))
            return p;
    }
    return NULL;
}

/* An idle connection that is still good, or NULL. Anything readable on an idle
 * connection (GOAWAY, end-of-stream, an error) means the daemon is done with it. */
static tsgi_conn_t *pool_take(tsgi_pool_t *p)
{
    for (;;) {
        tsgi_conn_t *c = NULL;
        struct pollfd pfd;
        if (!p || !p->mu || apr_thread_mutex_lock(p->mu) != APR_SUCCESS)
            return NULL;
        if ((c = p->idle) != NULL) {
            p->idle = c->next;
            p->nidle--;
        }
        apr_thread_mutex_unlock(p->mu);
        if (!c)
            return NULL;
        pfd.fd = c->fd;
        pfd.events = POLLIN;
        pfd.revents = 0;
        if (apr_time_now() - c->born < TSGI_CONN_MAX_AGE && poll(&pfd, 1, 0) == 0) {
            c->fresh = 0;
            c->next = NULL;
            return c;
        }
        conn_close(c);
    }
}

static void pool_put(tsgi_pool_t *p, tsgi_conn_t *c)
{
    if (!p || !p->mu || apr_thread_mutex_lock(p->mu) != APR_SUCCESS) {
        conn_close(c);
        return;
    }
    if (p->nidle < TSGI_POOL_MAX_IDLE && apr_time_now() - c->born < TSGI_CONN_MAX_AGE) {
        c->next = p->idle;
        p->idle = c;
        p->nidle++;
        c = NULL;
    }
    apr_thread_mutex_unlock(p->mu);
    conn_close(c);
}

static int wait_ms(apr_time_t deadline)
{
    apr_time_t left = deadline - apr_time_now();
    return left <= 0 ? 0 : (int)((left + 999) / 1000);
}

/*
 * A new connection to the group's socket, or an HTTP status after one log line. A full
 * backlog (EAGAIN), no listener yet (ECONNREFUSED: a daemon restarting) or no socket yet
 * (ENOENT) are retried with a growing pause until connect-timeout; EACCES will not get
 * better by waiting.
 */
static int conn_open(request_rec *r, const tsgi_daemon_group_t *g, const char *what, int timeout_s,
                     tsgi_conn_t **out)
{
    struct sockaddr_un sa;
    apr_time_t deadline = apr_time_now() + apr_time_from_sec(timeout_s > 0 ? timeout_s : 1);
    int delay_ms = 5, err = 0, tries = 0;
    tsgi_conn_t *c;

    *out = NULL;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    if (!g->ready || !g->socket_path) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      TSGILOG(0302) "group %s: no daemon socket in this child (the group was not started): %s",
                      g->name, what);
        return HTTP_SERVICE_UNAVAILABLE;
    }
    if (strlen(g->socket_path) >= sizeof(sa.sun_path)) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      TSGILOG(0303) "group %s: socket path %s is longer than %d bytes: %s", g->name, g->socket_path,
                      (int)sizeof(sa.sun_path) - 1, what);
        return HTTP_SERVICE_UNAVAILABLE;
    }
    memcpy(sa.sun_path, g->socket_path, strlen(g->socket_path) + 1);
    for (;;) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            err = errno;
            ap_log_rerror(APLOG_MARK, APLOG_ERR, err, r, TSGILOG(0304) "group %s: socket() failed: %s", g->name,
                          what);
            return HTTP_SERVICE_UNAVAILABLE;
        }
        tries++;
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
            err = 0;
        }
        else {
            err = errno;
            if (err == EINPROGRESS) {
                struct pollfd pfd = {fd, POLLOUT, 0};
                socklen_t len = sizeof(err);
                int n = poll(&pfd, 1, wait_ms(deadline));
                if (n <= 0)
                    err = n == 0 ? ETIMEDOUT : errno;
                else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
                    err = errno;
            }
        }
        if (err == 0) {
            if (!(c = calloc(1, sizeof(*c)))) {
                close(fd);
                ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, TSGILOG(0305) "group %s: out of memory: %s", g->name,
                              what);
                return HTTP_INTERNAL_SERVER_ERROR;
            }
            c->fd = fd;
            c->fresh = 1;
            c->born = apr_time_now();
            *out = c;
            return OK;
        }
        close(fd);
        if (err == EACCES || err == EPERM) {
            ap_log_rerror(APLOG_MARK, APLOG_ERR, err, r,
                          TSGILOG(0306) "group %s: permission denied connecting to %s: the socket must be owned by "
                                        "the user Apache's children run as (User), mode 0600; a process that "
                                        "is not an Apache child cannot use it: %s",
                          g->name, g->socket_path, what);
            return HTTP_SERVICE_UNAVAILABLE;
        }
        if ((err == ECONNREFUSED || err == EAGAIN || err == ENOENT || err == EINTR) && apr_time_now() < deadline) {
            apr_sleep(apr_time_from_msec(delay_ms));
            delay_ms = delay_ms * 2 > TSGI_CONNECT_BACKOFF_MAX_MS ? TSGI_CONNECT_BACKOFF_MAX_MS : delay_ms * 2;
            continue;
        }
        ap_log_rerror(APLOG_MARK, APLOG_ERR, err, r,
                      TSGILOG(0307) "group %s: could not connect to %s within connect-timeout (%d s, %d attempts%s): "
                                    "%s",
                      g->name, g->socket_path, timeout_s, tries,
                      err == EAGAIN ? ", the listen backlog is full" : err == ECONNREFUSED ? ", no daemon listens" : "",
                      what);
        return HTTP_SERVICE_UNAVAILABLE;
    }
}

/* ---- one exchange on one connection ---------------------------------------------------- */

enum {
    X_DONE,          /* the trailer arrived: END, ERROR (err_msg set) or STATUS */
    X_EOF,           /* end-of-stream or reset before the trailer */
    X_PROTOCOL,      /* the daemon broke the protocol: parser.err */
    X_TIMEOUT,       /* nothing within socket-timeout */
    X_CLIENT_GONE,   /* passing the response on failed */
    X_BODY_FAILED,   /* reading the request body failed: body_rv */
    X_STALE,         /* a pooled connection was closed before it took the request: retry */
    X_NO_HELLO,      /* connected, but no daemon greeted within connect-timeout */
    X_SYSTEM         /* poll/send failed otherwise: sys_errno */
};

enum { B_NONE, B_OPEN, B_DONE };

typedef struct {
    request_rec *r;
    const tsgi_daemon_group_t *g;
    tsgi_conn_t *conn;
    tsgi_wire_parser_t parser;
    int timeout_ms;
    /* outgoing */
    const unsigned char *out;
    size_t out_len, out_off;
    unsigned char *obuf; /* BODY header + TSGI_BODY_FRAME bytes + BODY_END */
    unsigned char abort_frame[TSGI_WIRE_ABORT_SIZE_MAX];
    int body;            /* B_* */
    int body_touched;    /* bytes of the request body were read from the client */
    apr_status_t body_rv;
    apr_bucket_brigade *ib, *ob;
    apr_off_t ob_bytes;
    int sent_any, received_any, write_failed;
    /* incoming */
    unsigned char *rbuf;
    int head_applied, trailer, close_flag, goaway;
    unsigned err_code;
    const char *err_msg;
    const char *status_json; /* STATUS reply */
    size_t status_len;
    int sys_errno;
    apr_time_t sent_at; /* the REQUEST (or STATUS) was handed to the socket */
    apr_time_t last_io; /* the socket last made progress: socket-timeout counts from here */
    /* A new connection only counts as made once a daemon greets on it: the listening
     * socket belongs to the Apache parent, so connect() succeeds even when no daemon is
     * there to accept (not started yet, exec failing, all blocked). */
    apr_time_t hello_deadline;
} tsgi_x_t;

static apr_status_t parser_cleanup(void *data)
{
    tsgi_wire_parser_free(data);
    return APR_SUCCESS;
}

static void apply_head(request_rec *r, const tsgi_wire_head_t *h)
{
    tsgi_wire_head_iter_t it;
    const char *n, *v;
    size_t nl, vl;

    r->status = (int)h->status;
    r->status_line = apr_psprintf(r->pool, "%03u %.*s", h->status, (int)h->reason_len, h->reason);
    tsgi_wire_head_iter(h, &it);
    while (tsgi_wire_head_next(&it, &n, &nl, &v, &vl)) {
        if (nl == 12 && !strncasecmp(n, "Content-Type", 12))
            ap_set_content_type(r, apr_pstrmemdup(r->pool, v, vl));
        else
            apr_table_addn(r->headers_out, apr_pstrmemdup(r->pool, n, nl), apr_pstrmemdup(r->pool, v, vl));
    }
}

/* Passes what the response has buffered on to the client, with a flush if asked. */
static int pass_out(tsgi_x_t *x, int flush)
{
    request_rec *r = x->r;
    conn_rec *c = r->connection;
    if (!x->ob_bytes && !flush)
        return 0;
    if (flush)
        APR_BRIGADE_INSERT_TAIL(x->ob, apr_bucket_flush_create(c->bucket_alloc));
    if (ap_pass_brigade(r->output_filters, x->ob) != APR_SUCCESS || c->aborted) {
        apr_brigade_cleanup(x->ob);
        c->aborted = 1;
        return -1;
    }
    apr_brigade_cleanup(x->ob);
    x->ob_bytes = 0;
    return 0;
}

/* Reads what the daemon sent and acts on it. Returns -1 to go on, or an X_* outcome. */
static int x_read(tsgi_x_t *x)
{
    ssize_t n = recv(x->conn->fd, x->rbuf, TSGI_RECV_BYTES, 0);
    size_t pos = 0, used;
    tsgi_wire_frame_t f;

    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return -1;
        x->sys_errno = errno;
        return X_EOF;
    }
    if (n == 0)
        return X_EOF;
    x->received_any = 1;
    while (pos < (size_t)n) {
        int rc = tsgi_wire_parse(&x->parser, x->rbuf + pos, (size_t)n - pos, &used, &f);
        pos += used;
        if (rc == TSGI_WIRE_NEED_MORE)
            break;
        if (rc == TSGI_WIRE_ERROR)
            return X_PROTOCOL;
        if (x->trailer) {
            /* Only a GOAWAY may follow the trailer before the next request. */
            if (rc == TSGI_WIRE_FRAME && f.type == TSGI_WIRE_D_GOAWAY) {
                x->goaway = 1;
                continue;
            }
            apr_cpystrn(x->parser.err, "a frame after the response's trailer", sizeof(x->parser.err));
            return X_PROTOCOL;
        }
        if (rc == TSGI_WIRE_BODY) {
            apr_brigade_write(x->ob, NULL, NULL, (const char *)f.data, f.len);
            x->ob_bytes += (apr_off_t)f.len;
            if (x->ob_bytes >= TSGI_OUT_BUFFERED && pass_out(x, 0) != 0)
                return X_CLIENT_GONE;
            continue;
        }
        switch (f.type) {
        case TSGI_WIRE_D_HELLO:
            x->conn->pid = f.pid;
            break;
        case TSGI_WIRE_D_HEAD:
            apply_head(x->r, &f.head);
            x->head_applied = 1;
            break;
        case TSGI_WIRE_D_GOAWAY:
            x->goaway = 1;
            break;
        case TSGI_WIRE_D_STATUS:
            x->status_json = apr_pstrmemdup(x->r->pool, (const char *)f.data, f.len);
            x->status_len = f.len;
            x->trailer = 1;
            break;
        case TSGI_WIRE_D_END:
            x->trailer = 1;
            x->close_flag = (f.flags & TSGI_WIRE_CLOSE) != 0;
            break;
        case TSGI_WIRE_D_ERROR:
            x->trailer = 1;
            x->close_flag = 1; /* a failed exchange never leaves the connection in the pool */
            x->err_code = f.code;
            x->err_msg = apr_pstrmemdup(x->r->pool, f.message, f.message_len);
            break;
        default:
            break;
        }
    }
    return -1;
}

/* Why a body read failed, in words: AP_FILTER_ERROR means a filter (HTTP_IN for
 * LimitRequestBody) has already answered the client. */
static const char *body_failure(apr_status_t rv, char *buf, size_t len)
{
    if (rv == AP_FILTER_ERROR || rv == APR_ENOSPC)
        return "it is larger than LimitRequestBody (or an input filter refused it)";
    if (rv == APR_INCOMPLETE || rv == APR_EOF)
        return "the client closed the connection before sending all of it";
    return apr_strerror(rv, buf, len);
}

/* Queues the next piece of the request body (blocking on the client, as mod_proxy
 * does). Returns -1 to go on, or X_BODY_FAILED with ABORT queued. */
static int x_next_body(tsgi_x_t *x)
{
    request_rec *r = x->r;
    apr_bucket *b;
    apr_off_t len = 0;
    apr_size_t n;
    apr_status_t rv;
    int eos = 0;

    rv = ap_get_brigade(r->input_filters, x->ib, AP_MODE_READBYTES, APR_BLOCK_READ, TSGI_BODY_FRAME);
    if (rv == APR_SUCCESS) {
        for (b = APR_BRIGADE_FIRST(x->ib); b != APR_BRIGADE_SENTINEL(x->ib); b = APR_BUCKET_NEXT(b)) {
            if (APR_BUCKET_IS_EOS(b)) {
                eos = 1;
                apr_bucket_delete(b);
                break;
            }
        }
        rv = apr_brigade_length(x->ib, 1, &len);
    }
    n = (apr_size_t)len;
    if (rv == APR_SUCCESS && len > TSGI_BODY_FRAME)
        rv = APR_EGENERAL; /* the filters returned more than asked for: never past the buffer */
    if (rv == APR_SUCCESS && len > 0)
        rv = apr_brigade_flatten(x->ib, (char *)x->obuf + TSGI_WIRE_HEADER_LEN, &n);
    apr_brigade_cleanup(x->ib);
    if (rv != APR_SUCCESS) {
        char reason[200], buf[120];
        x->body_rv = rv;
        apr_snprintf(reason, sizeof(reason), "the request body could not be read: %s", body_failure(rv, buf, sizeof(buf)));
        x->out = x->abort_frame;
        x->out_len = tsgi_wire_encode_abort(x->abort_frame, reason, strlen(reason));
        x->out_off = 0;
        x->body = B_DONE;
        r->connection->keepalive = AP_CONN_CLOSE;
        return X_BODY_FAILED;
    }
    x->out_len = 0;
    if (n > 0) {
        x->body_touched = 1;
        tsgi_wire_encode_body_header(x->obuf, (uint32_t)n);
        x->out_len = TSGI_WIRE_HEADER_LEN + n;
    }
    if (eos) {
        x->out_len += tsgi_wire_encode_body_end(x->obuf + x->out_len);
        x->body = B_DONE;
    }
    x->out = x->obuf;
    x->out_off = 0;
    return -1;
}

/* Writes what is pending; -1 to go on, or an outcome. A write that fails ends the sending
 * side only: what the daemon already sent (an ERROR, say) is still read. */
static int x_write(tsgi_x_t *x)
{
    while (x->out_off < x->out_len) {
        ssize_t n = send(x->conn->fd, x->out + x->out_off, x->out_len - x->out_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return -1;
            if (errno == EINTR)
                continue;
            if ((errno == EPIPE || errno == ECONNRESET) && !x->conn->fresh && !x->sent_any && !x->body_touched)
                return X_STALE;
            x->sys_errno = errno;
            x->write_failed = 1;
            x->out_off = x->out_len = 0;
            if (x->body == B_OPEN)
                x->body = B_DONE;
            return -1;
        }
        x->sent_any = 1;
        x->out_off += (size_t)n;
    }
    return -1;
}

static int x_run(tsgi_x_t *x)
{
    int rc, timeout;
    for (;;) {
        struct pollfd pfd;
        int n, pending = x->out_off < x->out_len;

        if (!pending && x->trailer) {
            if (x->body != B_OPEN)
                return X_DONE;
            /* The response is complete before its body was all sent: tell the daemon. */
            x->out = x->abort_frame;
            x->out_len = tsgi_wire_encode_abort(x->abort_frame, "response complete", 17);
            x->out_off = 0;
            x->body = B_DONE;
            continue;
        }
        if (!pending && x->body == B_OPEN) {
            /* Before blocking on the client, relay whatever the daemon already sent. */
            pfd.fd = x->conn->fd;
            pfd.events = POLLIN;
            pfd.revents = 0;
            if (poll(&pfd, 1, 0) > 0 && (rc = x_read(x)) >= 0)
                return rc;
            if (x->trailer)
                continue;
            if (x->ob_bytes && pass_out(x, 1) != 0)
                return X_CLIENT_GONE;
            if ((rc = x_next_body(x)) == X_BODY_FAILED) {
                /* The ABORT goes out if it can; the connection is closed either way. */
                pfd.events = POLLOUT;
                if (poll(&pfd, 1, x->timeout_ms) > 0)
                    (void)x_write(x);
                return X_BODY_FAILED;
            }
            continue;
        }
        if (pending) {
            /* The socket is nearly always writable: write first, poll only on EAGAIN
             * (one poll per request less than asking first). */
            if ((rc = x_write(x)) >= 0)
                return rc;
            pending = x->out_off < x->out_len;
            if (!pending)
                continue;
        }
        pfd.fd = x->conn->fd;
        pfd.events = (short)((x->trailer ? 0 : POLLIN) | (pending ? POLLOUT : 0));
        pfd.revents = 0;
        /* Waiting in slices: between them, a client that went away is noticed even while
         * the app has nothing to send (the daemon then hears of it by the close). */
        timeout = wait_ms(x->last_io + apr_time_from_msec(x->timeout_ms));
        if (x->hello_deadline && !x->parser.hello_seen && wait_ms(x->hello_deadline) < timeout)
            timeout = wait_ms(x->hello_deadline);
        n = poll(&pfd, 1, timeout < TSGI_CLIENT_CHECK_MS ? timeout : TSGI_CLIENT_CHECK_MS);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            x->sys_errno = errno;
            return X_SYSTEM;
        }
        if (n == 0) {
            apr_time_t now = apr_time_now();
            if (x->hello_deadline && !x->parser.hello_seen && now >= x->hello_deadline)
                return X_NO_HELLO;
            if (now - x->last_io >= apr_time_from_msec(x->timeout_ms))
                return X_TIMEOUT;
            if (tsgi_client_gone(x->r->connection))
                return X_CLIENT_GONE;
            continue;
        }
        x->last_io = apr_time_now();
        if (pending && (pfd.revents & (POLLOUT | POLLERR | POLLHUP)) && (rc = x_write(x)) >= 0)
            return rc;
        if (!x->trailer && (pfd.revents & (POLLIN | POLLERR | POLLHUP))) {
            if ((rc = x_read(x)) >= 0)
                return rc;
            /* Flush when nothing more is there to read at once: streaming stays live. */
            if (x->ob_bytes && !x->trailer) {
                struct pollfd more = {x->conn->fd, POLLIN, 0};
                if (poll(&more, 1, 0) == 0 && pass_out(x, 1) != 0)
                    return X_CLIENT_GONE;
            }
        }
    }
}

static void x_init(tsgi_x_t *x, request_rec *r, const tsgi_daemon_group_t *g, tsgi_conn_t *conn, int expect)
{
    memset(x, 0, sizeof(*x));
    x->r = r;
    x->g = g;
    x->conn = conn;
    x->timeout_ms = (int)((g->socket_timeout > 0 ? g->socket_timeout : (int)apr_time_sec(r->server->timeout)) * 1000);
    if (x->timeout_ms <= 0)
        x->timeout_ms = 60000;
    tsgi_wire_parser_init(&x->parser, !conn->fresh);
    apr_pool_cleanup_register(r->pool, &x->parser, parser_cleanup, apr_pool_cleanup_null);
    (void)tsgi_wire_parser_begin(&x->parser, expect);
    x->rbuf = apr_palloc(r->pool, TSGI_RECV_BYTES);
    x->sent_at = x->last_io = apr_time_now();
    if (conn->fresh)
        x->hello_deadline =
            x->sent_at + apr_time_from_sec(expect == TSGI_WIRE_EXPECT_STATUS ? TSGI_STATUS_CONNECT_TIMEOUT
                                           : g->connect_timeout > 0         ? g->connect_timeout
                                                                            : TSGI_DAEMON_DEFAULT_CONNECT_TIMEOUT);
    x->ob = apr_brigade_create(r->pool, r->connection->bucket_alloc);
}

/* Frees the parser's buffer now rather than with the request. */
static void x_done(tsgi_x_t *x)
{
    apr_pool_cleanup_run(x->r->pool, &x->parser, parser_cleanup);
}

/* Whether the connection can carry the next request. */
static int x_reusable(const tsgi_x_t *x)
{
    return x->trailer && !x->close_flag && !x->goaway && !x->write_failed && x->body != B_OPEN &&
           x->out_off >= x->out_len && tsgi_wire_parser_idle(&x->parser);
}

/* ---- forwarding --------------------------------------------------------------------------- */

/* The REQUEST frame, with the HELLO in front (used for a new connection). */
static int build_request(const tsgi_embed_request_t *req, const tsgi_daemon_group_t *g, const char *what,
                         unsigned char **frame, size_t *size)
{
    request_rec *r = req->r;
    const apr_array_header_t *arr = apr_table_elts(req->environ);
    const apr_table_entry_t *ent = (const apr_table_entry_t *)arr->elts;
    tsgi_wire_str_t *vars = apr_palloc(r->pool, sizeof(*vars) * 2 * (size_t)(arr->nelts ? arr->nelts : 1));
    tsgi_wire_request_t q;
    char err[256];
    int i;

    memset(&q, 0, sizeof(q));
    for (i = 0; i < arr->nelts; i++) {
        if (!ent[i].key || !ent[i].val)
            continue;
        vars[2 * q.count].p = ent[i].key;
        vars[2 * q.count].n = strlen(ent[i].key);
        vars[2 * q.count + 1].p = ent[i].val;
        vars[2 * q.count + 1].n = strlen(ent[i].val);
        q.count++;
    }
    q.vars = vars;
    q.request_start_us = (uint64_t)(r->request_time > 0 ? r->request_time : apr_time_now());
    if (ap_request_has_body(r))
        q.flags |= TSGI_WIRE_REQ_HAS_BODY;
    if (req->script_reloading)
        q.flags |= TSGI_WIRE_REQ_RELOAD;
    if (req->url_scheme && !strcmp(req->url_scheme, "https"))
        q.flags |= TSGI_WIRE_REQ_HTTPS;
    q.script.p = req->script;
    q.script.n = strlen(req->script);
    q.callable.p = req->callable;
    q.callable.n = strlen(req->callable);
    q.application_group.p = req->application_group ? req->application_group : "";
    q.application_group.n = strlen(q.application_group.p);
    q.process_group.p = g->name;
    q.process_group.n = strlen(g->name);
    if (tsgi_wire_request_size(&q, size, err, sizeof(err)) != 0) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, TSGILOG(0308) "group %s: cannot forward %s: %s", g->name, what,
                      err);
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    *frame = apr_palloc(r->pool, TSGI_WIRE_HELLO_SIZE + *size);
    tsgi_wire_encode_hello(*frame, g->secret);
    tsgi_wire_encode_request(&q, *frame + TSGI_WIRE_HELLO_SIZE);
    return OK;
}

/* Ends an exchange that failed after HEAD: the client must see the truncation. */
static int truncated(request_rec *r)
{
    tsgi_abort_response(r);
    return OK;
}

int tsgi_daemon_forward(const tsgi_embed_request_t *req, tsgi_daemon_group_t *group)
{
    request_rec *r = req->r;
    conn_rec *c = r->connection;
    const tsgi_daemon_group_t *g = group;
    tsgi_pool_t *pool = pool_of(g);
    const char *what = apr_psprintf(r->pool, "%s %s", r->method, r->unparsed_uri);
    unsigned char *frame;
    size_t size;
    int rc, stale_retries = 0, unavailable_retried = 0, force_new = 0;
    tsgi_x_t x;

    if ((rc = build_request(req, g, what, &frame, &size)) != OK)
        return rc;
    for (;;) {
        tsgi_conn_t *conn = force_new ? NULL : pool_take(pool);
        const char *pid;
        int outcome;

        if (!conn && (rc = conn_open(r, g, what, g->connect_timeout, &conn)) != OK)
            return rc;
        x_init(&x, r, g, conn, TSGI_WIRE_EXPECT_HEAD);
        x.body = ap_request_has_body(r) ? B_OPEN : B_NONE;
        if (x.body == B_OPEN) {
            x.obuf = apr_palloc(r->pool, TSGI_WIRE_HEADER_LEN + TSGI_BODY_FRAME + TSGI_WIRE_HEADER_LEN);
            x.ib = apr_brigade_create(r->pool, c->bucket_alloc);
        }
        /* HELLO and REQUEST in one write on a new connection. */
        x.out = conn->fresh ? frame : frame + TSGI_WIRE_HELLO_SIZE;
        x.out_len = conn->fresh ? TSGI_WIRE_HELLO_SIZE + size : size;
        outcome = x_run(&x);
        x_done(&x);
        pid = conn->pid ? apr_psprintf(r->pool, "%lu", (unsigned long)conn->pid) : "unknown";

        if (outcome == X_STALE && stale_retries++ < 2) {
            /* A pooled connection the daemon had closed: nothing was consumed, try again. */
            conn_close(conn);
            apr_brigade_cleanup(x.ob);
            continue;
        }
        if (outcome == X_DONE && !x.err_msg) {
            if (pass_out(&x, 0) != 0) {
                conn_close(conn);
                ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                              TSGILOG(0309) "group %s (daemon pid %s): the client went away during %s", g->name,
                              pid, what);
                c->keepalive = AP_CONN_CLOSE;
                return OK;
            }
            if (x_reusable(&x))
                pool_put(pool, conn);
            else
                conn_close(conn);
            return OK;
        }
        conn_close(conn);

        switch (outcome) {
        case X_DONE: /* an ERROR trailer */
            if (x.head_applied) {
                ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                              TSGILOG(0314) "group %s (daemon pid %s): %s failed after its response started "
                                            "(%s: %s): the response is truncated",
                              g->name, pid, what, tsgi_wire_error_name(x.err_code), x.err_msg);
                return truncated(r);
            }
            if (x.err_code == TSGI_WIRE_E_UNAVAILABLE && !unavailable_retried && !x.body_touched) {
                /* The daemon is stopping and did not start it: once more, on a new connection. */
                unavailable_retried = force_new = 1;
                apr_brigade_cleanup(x.ob);
                continue;
            }
            ap_log_rerror(APLOG_MARK, x.err_code == TSGI_WIRE_E_BAD_REQUEST ? APLOG_INFO : APLOG_ERR, 0, r,
                          TSGILOG(0315) "group %s (daemon pid %s): %s: %s (%s)", g->name, pid, what,
                          tsgi_wire_error_name(x.err_code), x.err_msg);
            r->connection->keepalive = x.body == B_OPEN ? AP_CONN_CLOSE : r->connection->keepalive;
            return tsgi_wire_error_status(x.err_code);
        case X_CLIENT_GONE:
            ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                          TSGILOG(0309) "group %s (daemon pid %s): the client went away during %s", g->name, pid,
                          what);
            c->keepalive = AP_CONN_CLOSE;
            return x.head_applied ? OK : HTTP_BAD_REQUEST;
        case X_BODY_FAILED: {
            char buf[120];
            int clients_doing = x.body_rv == AP_FILTER_ERROR || x.body_rv == APR_ENOSPC ||
                                x.body_rv == APR_INCOMPLETE || x.body_rv == APR_EOF;
            /* A refused or abandoned body is the client's doing (HTTP_IN logs refusals): info. */
            ap_log_rerror(APLOG_MARK, clients_doing ? APLOG_INFO : APLOG_ERR, 0, r,
                          TSGILOG(0310) "group %s (daemon pid %s): %s: reading the request body failed: %s", g->name,
                          pid, what, body_failure(x.body_rv, buf, sizeof(buf)));
            if (x.head_applied)
                return truncated(r);
            return ap_map_http_request_error(x.body_rv, HTTP_BAD_REQUEST);
        }
        case X_NO_HELLO:
            ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                          TSGILOG(0318) "group %s: no daemon accepted the connection to %s within connect-timeout "
                                        "(%d s; is the group's daemon running? its start is logged): %s",
                          g->name, g->socket_path, g->connect_timeout, what);
            return HTTP_SERVICE_UNAVAILABLE;
        case X_TIMEOUT:
            ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                          TSGILOG(0311) "group %s (daemon pid %s): no frame within socket-timeout (%d s) during "
                                        "%s%s",
                          g->name, pid, x.timeout_ms / 1000, what, x.head_applied ? ": the response is truncated" : "");
            return x.head_applied ? truncated(r) : HTTP_GATEWAY_TIME_OUT;
        case X_PROTOCOL:
            ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                          TSGILOG(0312) "group %s (daemon pid %s): protocol error from the daemon during %s: %s%s",
                          g->name, pid, what, x.parser.err, x.head_applied ? "; the response is truncated" : "");
            return x.head_applied ? truncated(r) : HTTP_BAD_GATEWAY;
        default: /* X_EOF, X_SYSTEM, X_STALE after its retries */
            if (outcome == X_EOF && !x.head_applied && g->request_timeout > 0 &&
                apr_time_now() - x.sent_at >= apr_time_from_sec(g->request_timeout)) {
                /* A process blocked past request-timeout is killed by its supervisor and
                 * cannot say so: the time it had is what tells this apart from a crash. */
                ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                              TSGILOG(0317) "group %s: the daemon (pid %s) closed the connection after "
                                            "request-timeout (%d s) during %s: recycled for it",
                              g->name, pid, g->request_timeout, what);
                return HTTP_GATEWAY_TIME_OUT;
            }
            ap_log_rerror(APLOG_MARK, APLOG_ERR, x.sys_errno, r,
                          TSGILOG(0313) "group %s: the daemon (pid %s) %s during %s%s", g->name, pid,
                          outcome == X_SYSTEM ? "could not be talked to" : "closed the connection (it died?)", what,
                          x.head_applied ? ": the response is truncated" : ", before the response started");
            return x.head_applied ? truncated(r) : HTTP_BAD_GATEWAY;
        }
    }
}

/* ---- SetHandler tsgi-status --------------------------------------------------------------- */

/*
 * Just enough JSON to check a daemon's STATUS reply and pick the per-process fields out of
 * it (docs/protocol.md §5): values are kept as raw spans of the text, never copied.
 */
typedef struct {
    const char *p;
    size_t n;
} span_t;

typedef struct {
    const char *p, *end;
} js_t;

static void js_ws(js_t *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

static int js_lit(js_t *j, char c)
{
    js_ws(j);
    if (j->p < j->end && *j->p == c) {
        j->p++;
        return 1;
    }
    return 0;
}

/* A string; *s is its content between the quotes (escapes left as they are). */
static int js_string(js_t *j, span_t *s)
{
    js_ws(j);
    if (j->p >= j->end || *j->p != '"')
        return -1;
    s->p = ++j->p;
    while (j->p < j->end && *j->p != '"') {
        if ((unsigned char)*j->p < 0x20)
            return -1;
        if (*j->p == '\\' && ++j->p >= j->end)
            return -1;
        j->p++;
    }
    if (j->p >= j->end)
        return -1;
    s->n = (size_t)(j->p - s->p);
    j->p++;
    return 0;
}

/* Skips one value; *raw is its text. Nesting is bounded: a reply is not a stack attack. */
static int js_value(js_t *j, span_t *raw, int depth)
{
    span_t s;
    js_ws(j);
    if (j->p >= j->end || depth > 32)
        return -1;
    raw->p = j->p;
    if (*j->p == '"') {
        if (js_string(j, &s) != 0)
            return -1;
    }
    else if (*j->p == '{' || *j->p == '[') {
        char close = *j->p == '{' ? '}' : ']';
        int first = 1;
        j->p++;
        while (!js_lit(j, close)) {
            span_t v;
            if (!first && !js_lit(j, ','))
                return -1;
            first = 0;
            if (close == '}' && (js_string(j, &s) != 0 || !js_lit(j, ':')))
                return -1;
            if (js_value(j, &v, depth + 1) != 0)
                return -1;
        }
    }
    else {
        const char *start = j->p;
        while (j->p < j->end && (apr_isalnum(*j->p) || *j->p == '-' || *j->p == '+' || *j->p == '.'))
            j->p++;
        if (j->p == start)
            return -1;
    }
    raw->n = (size_t)(j->p - raw->p);
    return 0;
}

static int span_is(const span_t *s, const char *lit)
{
    return s->n == strlen(lit) && !memcmp(s->p, lit, s->n);
}

#define PROC_FIELDS 6
static const char *const proc_keys[PROC_FIELDS] = {"pid", "state", "requests", "inflight", "rssBytes", "uptimeMs"};

typedef struct {
    span_t group_pid, threads;
    apr_array_header_t *procs; /* of span_t[PROC_FIELDS] */
} status_t;

/* Checks a STATUS reply and collects its fields; -1 if it is not the JSON object of §5. */
static int status_parse(apr_pool_t *p, const char *text, size_t len, status_t *st)
{
    js_t j = {text, text + len};
    int first = 1;
    span_t key, v;

    memset(st, 0, sizeof(*st));
    st->procs = apr_array_make(p, 4, sizeof(span_t) * PROC_FIELDS);
    if (!js_lit(&j, '{'))
        return -1;
    while (!js_lit(&j, '}')) {
        if ((!first && !js_lit(&j, ',')) || js_string(&j, &key) != 0 || !js_lit(&j, ':'))
            return -1;
        first = 0;
        if (span_is(&key, "processes")) {
            int pfirst = 1;
            if (!js_lit(&j, '['))
                return -1;
            while (!js_lit(&j, ']')) {
                span_t *fields = apr_array_push(st->procs);
                int ofirst = 1, k;
                memset(fields, 0, sizeof(span_t) * PROC_FIELDS);
                if ((!pfirst && !js_lit(&j, ',')) || !js_lit(&j, '{'))
                    return -1;
                pfirst = 0;
                while (!js_lit(&j, '}')) {
                    if ((!ofirst && !js_lit(&j, ',')) || js_string(&j, &key) != 0 || !js_lit(&j, ':') ||
                        js_value(&j, &v, 2) != 0)
                        return -1;
                    ofirst = 0;
                    for (k = 0; k < PROC_FIELDS; k++)
                        if (span_is(&key, proc_keys[k]))
                            fields[k] = v;
                }
            }
            continue;
        }
        if (js_value(&j, &v, 1) != 0)
            return -1;
        if (span_is(&key, "pid"))
            st->group_pid = v;
        else if (span_is(&key, "threads"))
            st->threads = v;
    }
    js_ws(&j);
    return j.p == j.end ? 0 : -1;
}

/* A JSON string literal of `s`. */
static const char *json_quote(apr_pool_t *p, const char *s)
{
    apr_size_t n = 2;
    const char *q;
    char *out, *o;
    for (q = s; *q; q++)
        n += ((unsigned char)*q < 0x20 || *q == '"' || *q == '\\') ? 6 : 1;
    o = out = apr_palloc(p, n + 1);
    *o++ = '"';
    for (q = s; *q; q++) {
        if ((unsigned char)*q < 0x20 || *q == '"' || *q == '\\')
            o += apr_snprintf(o, 7, "\\u%04x", (unsigned char)*q);
        else
            *o++ = *q;
    }
    *o++ = '"';
    *o = 0;
    return out;
}

/* A span for the HTML page: strings without their quotes, everything escaped. */
static const char *span_html(apr_pool_t *p, const span_t *s)
{
    if (!s->p)
        return "-";
    if (s->n >= 2 && s->p[0] == '"')
        return ap_escape_html(p, apr_pstrmemdup(p, s->p + 1, s->n - 2));
    return ap_escape_html(p, apr_pstrmemdup(p, s->p, s->n));
}

static const char *span_scaled(apr_pool_t *p, const span_t *s, double div, const char *unit)
{
    char *end;
    double v;
    const char *t;
    if (!s->p)
        return "-";
    t = apr_pstrmemdup(p, s->p, s->n);
    v = strtod(t, &end);
    if (end == t || *end)
        return span_html(p, s);
    return apr_psprintf(p, "%.1f %s", v / div, unit);
}

/* One group's STATUS reply (validated JSON), or NULL with *why set. */
static const char *status_query(request_rec *r, const tsgi_daemon_group_t *g, const char **why)
{
    tsgi_pool_t *pool = pool_of(g);
    tsgi_conn_t *conn = pool_take(pool);
    unsigned char frame[TSGI_WIRE_HELLO_SIZE + TSGI_WIRE_HEADER_LEN];
    status_t st;
    tsgi_x_t x;
    int outcome;

    if (!conn && conn_open(r, g, "tsgi-status", TSGI_STATUS_CONNECT_TIMEOUT, &conn) != OK) {
        *why = "cannot connect (see the error log)";
        return NULL;
    }
    tsgi_wire_encode_hello(frame, g->secret);
    tsgi_wire_encode_status(frame + TSGI_WIRE_HELLO_SIZE);
    x_init(&x, r, g, conn, TSGI_WIRE_EXPECT_STATUS);
    if (x.timeout_ms > TSGI_STATUS_TIMEOUT_MS)
        x.timeout_ms = TSGI_STATUS_TIMEOUT_MS;
    x.body = B_NONE;
    x.out = conn->fresh ? frame : frame + TSGI_WIRE_HELLO_SIZE;
    x.out_len = conn->fresh ? sizeof(frame) : TSGI_WIRE_HEADER_LEN;
    outcome = x_run(&x);
    x_done(&x);
    if (outcome == X_DONE && x.status_json) {
        if (x_reusable(&x))
            pool_put(pool, conn);
        else
            conn_close(conn);
        if (status_parse(r->pool, x.status_json, x.status_len, &st) == 0)
            return x.status_json;
        *why = "its STATUS reply is not the JSON object of docs/protocol.md section 5";
    }
    else {
        conn_close(conn);
        *why = outcome == X_NO_HELLO ? "no daemon accepted the connection"
               : outcome == X_TIMEOUT ? "no answer within the timeout"
               : x.err_msg           ? apr_psprintf(r->pool, "%s: %s", tsgi_wire_error_name(x.err_code), x.err_msg)
               : outcome == X_PROTOCOL ? apr_pstrcat(r->pool, "protocol error: ", x.parser.err, NULL)
                                     : "the daemon closed the connection";
    }
    ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r, TSGILOG(0316) "tsgi-status: group %s does not answer: %s", g->name,
                  *why);
    return NULL;
}

int tsgi_daemon_status_handler(request_rec *r)
{
    const apr_array_header_t *groups = tsgi_daemon_groups();
    int as_json = r->args && (!strcmp(r->args, "json") || !strncmp(r->args, "json&", 5) ||
                              !strncmp(r->args, "json=", 5));
    int i, k;

    r->allowed |= (AP_METHOD_BIT << M_GET);
    if (r->method_number != M_GET)
        return HTTP_METHOD_NOT_ALLOWED;
    ap_set_content_type(r, as_json ? "application/json" : "text/html; charset=utf-8");
    apr_table_setn(r->headers_out, "Cache-Control", "no-store");
    if (as_json)
        ap_rputs("[", r);
    else
        ap_rputs("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>tsgi daemon status</title></head>"
                 "<body>\n<h1>tsgi daemon status</h1>\n",
                 r);
    for (i = 0; groups && i < groups->nelts; i++) {
        const tsgi_daemon_group_t *g = APR_ARRAY_IDX(groups, i, tsgi_daemon_group_t *);
        const char *why = NULL, *json = status_query(r, g, &why);
        status_t st;

        if (as_json) {
            if (i)
                ap_rputs(",", r);
            if (json)
                ap_rputs(json, r);
            else
                ap_rprintf(r, "{\"group\":%s,\"error\":%s}", json_quote(r->pool, g->name),
                           json_quote(r->pool, why));
            continue;
        }
        ap_rprintf(r, "<h2>group %s</h2>\n", ap_escape_html(r->pool, g->name));
        if (!json || status_parse(r->pool, json, strlen(json), &st) != 0) {
            ap_rprintf(r, "<p class=\"down\">not answering: %s</p>\n", ap_escape_html(r->pool, why ? why : "?"));
            continue;
        }
        ap_rprintf(r, "<p>supervisor pid %s, threads per process %s</p>\n", span_html(r->pool, &st.group_pid),
                   span_html(r->pool, &st.threads));
        ap_rputs("<table border=\"1\">\n<tr><th>pid</th><th>state</th><th>requests</th><th>in-flight</th>"
                 "<th>RSS</th><th>uptime</th></tr>\n",
                 r);
        for (k = 0; k < st.procs->nelts; k++) {
            const span_t *f = (const span_t *)(st.procs->elts + (size_t)k * st.procs->elt_size);
            ap_rprintf(r, "<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>\n",
                       span_html(r->pool, &f[0]), span_html(r->pool, &f[1]), span_html(r->pool, &f[2]),
                       span_html(r->pool, &f[3]), span_scaled(r->pool, &f[4], 1048576.0, "MiB"),
                       span_scaled(r->pool, &f[5], 1000.0, "s"));
        }
        ap_rputs("</table>\n", r);
    }
    if (as_json)
        ap_rputs("]\n", r);
    else
        ap_rprintf(r, "%s</body></html>\n", groups && groups->nelts ? "" : "<p>no TSGIDaemonProcess groups</p>\n");
    return OK;
}
