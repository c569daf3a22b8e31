/*
 * Embedded mode: a Node.js runtime (Debian's libnode108) inside each Apache child, as
 * shared/reference/embedding.md §2 describes and measured.
 *
 *   groups       each application group (TSGIApplicationGroup) runs in a Node
 *                Environment of its own (its own isolate: globals, module cache, heap;
 *                its own event loop, inbox and Node thread), so apps in different groups
 *                never share module state, and a blocked or exiting group leaves the
 *                others serving. All share the process-wide part (node's per-process
 *                init, V8, the platform). docs/embedded.md "Application groups" has the
 *                choice and its measured cost.
 *   child_init   starts the first Node thread, with every asynchronous signal blocked
 *                (SIGCHLD unblocked on Node threads only, P6); it initialises node and
 *                V8 there and runs the bootstrap (dist/embedded/bootstrap.js), which
 *                registers the request handler through the "tsgi" Node-API binding. The
 *                first request claims that Environment for its group; each other group
 *                gets its Node thread and Environment on its first request.
 *   handler      (request thread) copies the request into a job, posts it to the inbox
 *                and wakes the Node thread (uv_async_send); then it waits on the job's
 *                condition variable and does all Apache I/O itself: the head, response
 *                chunks (ap_rwrite + ap_rflush), and request-body reads (ap_get_brigade,
 *                64 KB at a time, only when JS has granted credit with read()). The Node
 *                thread never touches request_rec, pools or filters.
 *   Node thread  drains the inbox, calls the JS handler for each job (which returns the
 *                request's event function); JS answers through head()/write()/end()/
 *                read(), which fill the job under its mutex and signal.
 *   events       the request thread posts BODY (a chunk, EOF or a read failure queued),
 *                DRAIN (the queued response went out), ABORT (client gone, body read
 *                error, Timeout, hard stop) and DONE (it has left) to the event queue;
 *                the Node thread calls the request's event function for them
 *                (embedding.md §2.4). write() returns false once TSGI_HIGH_WATER bytes
 *                are queued; DRAIN follows once they are flushed.
 *
 * An Environment that ends (process.exit(), a fatal error) fails its in-flight jobs and
 * is re-created after a short pause; the child survives (P8).
 *
 * child_stopping (non-graceful) makes waiting request threads give up at once (P15).
 *
 * The watchdog (TSGIEventLoopTimeout, P18): a thread of the child pings the event loop
 * (uv_async_send) while requests wait on it. A ping not answered within the timeout
 * means the loop is blocked (a `while (true)`, a long sync call): the waiting requests
 * get 504 at once, and the Environment is stopped (node::Stop: TerminateExecution
 * breaks running JS) and re-created like after process.exit().
 */
#include "httpd.h"
#include "http_config.h"
#include "http_core.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"
#include "ap_mpm.h"
#include "util_filter.h"

#include "apr_strings.h"

#include <errno.h>
#include <pthread.h>
#include <sys/socket.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <node_api.h>
#include <node_version.h>
#include <uv.h>

#include "embed.h"
#include "response.h"
#include "shim.h"
#include "tsgi_paths.h"

APLOG_USE_MODULE(tsgi);

#ifndef TSGI_BOOTSTRAP
#error "TSGI_BOOTSTRAP (the path of dist/embedded/bootstrap.js) must be defined"
#endif

#define TSGI_NODE_STACK (8 * 1024 * 1024)
#define TSGI_PLATFORM_THREADS 2
#define TSGI_START_WAIT_SEC 30
#define TSGI_RECREATE_PAUSE_MS 200
#define TSGI_HIGH_WATER (64 * 1024)  /* response bytes queued before write() says "wait" */
#define TSGI_READ_BYTES (64 * 1024)  /* request-body bytes per read() credit */
#define TSGI_WAIT_SLICE_MS 200       /* how often a waiting request thread looks at its client */
#define TSGI_MAX_GROUPS 64           /* application groups (Node environments) per child */

/* Event bits, request thread -> Node thread (under rt.mu). */
#define EV_BODY 1u  /* a body chunk, the end of the body, or a read failure is queued */
#define EV_DRAIN 2u /* the queued response bytes went out */
#define EV_ABORT 4u /* the client is gone, the body could not be read, or a hard stop */
#define EV_DONE 8u  /* the request thread has left */

/* What the request's JS event function gets: fn(kind, arg?). */
enum { JS_BODY = 1, JS_EOF = 2, JS_BODY_ERROR = 3, JS_DRAIN = 4, JS_ABORT = 5 };

/* ------------------------------------------------------------------------------------
 * Jobs: one request, shared by its request thread and the Node thread
 * --------------------------------------------------------------------------------- */

typedef struct tsgi_chunk {
    struct tsgi_chunk *next;
    size_t len;
    char data[];
} tsgi_chunk_t;

enum { JOB_RUNNING = 0, JOB_DONE = 1, JOB_FAILED = 2 };
enum { IN_OPEN = 0, IN_EOF = 1, IN_FAILED = 2 };

typedef struct tsgi_job {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs; /* request thread, inbox/live lists, the JS external */

    /* In: one malloc'd block, immutable once posted. */
    char *block;
    const char *env_json; /* the environ as one JSON object of strings (tsgi_make_job) */
    size_t env_json_len;
    const char *script, *callable, *group, *scheme;
    int reloading;
    int has_body;

    /* Request body: under mu. */
    int in_credit;                    /* chunks JS asked for (read()) and has not been sent */
    tsgi_chunk_t *in_chunks, **in_tail; /* read, not yet handed to JS */
    int in_state;                     /* IN_OPEN, IN_EOF, IN_FAILED */
    int in_reported;                  /* Node side: EOF/failure handed to JS */
    char in_why[256];                 /* why the body read failed */

    /* Out: under mu. */
    int head_set;
    int status;
    char *reason;
    char **headers; /* malloc'd name, value, ... */
    int header_n;   /* number of pairs */
    tsgi_chunk_t *chunks, **chunks_tail;
    int state;
    char *failure; /* why, for JOB_FAILED (malloc'd) */
    int fail_status; /* for JOB_FAILED: the HTTP status when not 502 (504: watchdog) */
    int gone;      /* the request thread has left */
    size_t out_queued; /* response bytes written by JS, not yet flushed */
    int out_blocked;   /* write() said false: DRAIN is owed */
    int js_ended;      /* JS called end(): it wants no more events (its port is dropped) */
    char abort_why[256];

    /* Node thread only: a wake-up of the request thread held back until the current
     * callback into JS returns (tsgi_wake_locked), so that head, body and end of one
     * response cost the request thread one wake-up, not three. */
    int wake_owed;
    struct tsgi_job *owed_next;

    /* Events: under rt.mu. The queue holds one reference. */
    unsigned ev;
    int in_evq;
    struct tsgi_job *ev_next;

    /* Node thread only: the request's event function (a strong reference until DONE or
     * the end of the Environment), and the list of jobs holding one (with a reference). */
    napi_ref port;
    struct tsgi_job *port_prev, *port_next;

    unsigned generation;
    struct tsgi_group *grp; /* the application group it runs in */
    struct tsgi_job *next; /* inbox */
    struct tsgi_job *live_prev, *live_next;
} tsgi_job_t;

static void tsgi_job_release(tsgi_job_t *job)
{
    int last;
    tsgi_chunk_t *c, *n;
    int i;

    pthread_mutex_lock(&job->mu);
    last = --job->refs == 0;
    pthread_mutex_unlock(&job->mu);
    if (!last)
        return;
    for (c = job->chunks; c; c = n) {
        n = c->next;
        free(c);
    }
    for (c = job->in_chunks; c; c = n) {
        n = c->next;
        free(c);
    }
    for (i = 0; i < job->header_n * 2; i++)
        free(job->headers[i]);
    free(job->headers);
    free(job->reason);
    free(job->failure);
    free(job->block);
    pthread_cond_destroy(&job->cv);
    pthread_mutex_destroy(&job->mu);
    free(job);
}

static void tsgi_job_retain(tsgi_job_t *job)
{
    pthread_mutex_lock(&job->mu);
    job->refs++;
    pthread_mutex_unlock(&job->mu);
}

static void tsgi_wake_locked(tsgi_job_t *job);

/* Ends a job from the Node side (with job->mu held). */
static void tsgi_job_finish_locked(tsgi_job_t *job, int state, const char *why)
{
    if (job->state != JOB_RUNNING)
        return;
    job->state = state;
    if (why && !job->failure)
        job->failure = strdup(why);
    tsgi_wake_locked(job);
}

/* ------------------------------------------------------------------------------------
 * The runtime of this child
 * --------------------------------------------------------------------------------- */

/* RT_STALLED: the watchdog stopped a blocked Environment; a new one follows. */
enum { RT_OFF = 0, RT_STARTING, RT_READY, RT_FAILED, RT_STOPPED, RT_STALLED };

/*
 * An application group (TSGIApplicationGroup): its own Node Environment, with its own
 * isolate (globals, module cache, heap), event loop and Node thread. Groups share the
 * process-wide part (node's per-process init, V8, the platform and its workers). The
 * first group's thread is started in child_init (so the first request finds a ready
 * Environment) and is claimed by the first group asked for; the others start on their
 * first request. Groups live until the child exits. Everything here is under rt.mu
 * unless it says "Node thread only".
 */
typedef struct tsgi_group {
    struct tsgi_group *next; /* rt.groups */
    char *name;              /* malloc'd; NULL: started in child_init, not claimed yet */
    int first;               /* the thread that also does the process init and teardown */
    int state;
    char failure[512];
    unsigned generation;
    pthread_t thread;
    int thread_started;
    tsgi_shim_slot_t *slot;

    /* Node thread only, valid while an Environment runs. */
    uv_async_t async;
    int async_live; /* also read by request threads, under mu */
    napi_env env;
    napi_ref handler;
    napi_async_context actx;

    tsgi_job_t *inbox_head, *inbox_tail; /* under mu */
    tsgi_job_t *live;                    /* dispatched, not finished; under mu */
    tsgi_job_t *evq_head, *evq_tail;     /* jobs with events for JS; under mu */
    tsgi_job_t *ported;                  /* jobs with a JS event function; Node thread only */
    int defer_wakes;                     /* in tsgi_call_js: wake-ups wait for its end; Node thread only */
    tsgi_job_t *owed;                    /* jobs owed a wake-up (with a reference); Node thread only */

    /* The watchdog: an unanswered ping and when it was sent, when it stopped the
     * Environment, whether TSGI0131 was logged. */
    int wd_ping;
    int64_t wd_ping_sent, wd_fired_at;
    int wd_warned;
} tsgi_group_t;

/* The group whose Node thread this is (Node threads only). */
static __thread tsgi_group_t *tl_group;

/*
 * Wakes the request thread of a job (job->mu held): something for it to do. While the
 * Node thread is inside a call into JS made by tsgi_call_js (a request's dispatch or one
 * of its events, including the microtasks that run before the call returns), the wake-up
 * is held back until that call returns: a response the app completes there (head, body
 * and end, as the gateway does for an Array body) then reaches the request thread as one
 * wake-up, which also finds the response complete and writes it without a flush per
 * chunk. JS that runs from anywhere else (timers, I/O) wakes the request thread at once.
 */
static void tsgi_wake_locked(tsgi_job_t *job)
{
    tsgi_group_t *g = tl_group;
    if (g && g == job->grp && g->defer_wakes) {
        if (!job->wake_owed) {
            job->wake_owed = 1;
            job->refs++; /* the owed list's; job->mu is held */
            job->owed_next = g->owed;
            g->owed = job;
        }
        return;
    }
    pthread_cond_signal(&job->cv);
}

static void tsgi_job_release(tsgi_job_t *job);

/* Node thread: the held-back wake-ups, after a call into JS returned. */
static void tsgi_flush_wakes(tsgi_group_t *g)
{
    tsgi_job_t *job, *next;
    job = g->owed;
    g->owed = NULL;
    for (; job; job = next) {
        next = job->owed_next;
        job->owed_next = NULL;
        pthread_mutex_lock(&job->mu);
        job->wake_owed = 0;
        pthread_cond_signal(&job->cv);
        pthread_mutex_unlock(&job->mu);
        tsgi_job_release(job);
    }
}

/* napi_make_callback with the request threads' wake-ups held back until it returns. */
static napi_status tsgi_call_js(tsgi_group_t *g, napi_env env, napi_value recv, napi_value fn, size_t argc,
                                const napi_value *argv, napi_value *result)
{
    napi_status st;
    int outer = !g->defer_wakes;
    g->defer_wakes = 1;
    st = napi_make_callback(env, g->actx, recv, fn, argc, argv, result);
    if (outer) {
        g->defer_wakes = 0;
        tsgi_flush_wakes(g);
    }
    return st;
}

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stopping;  /* the pchild cleanup runs */
    int hard_stop; /* child_stopping, not graceful: waiting request threads give up (P15) */
    server_rec *server;
    int multithread, multiprocess;

    /* The process-wide part of Node (run by the first group's thread). */
    int init_state; /* RT_STARTING, RT_READY, RT_FAILED */
    char init_failure[512];

    tsgi_group_t *groups;
    int ngroups;
    int threads_running; /* group threads not yet ended */

    /* The watchdog: timeout in seconds (0: off). */
    int wd_timeout;
    pthread_cond_t wd_cv;
    pthread_t wd_thread;
    int wd_started;
} rt = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .init_state = RT_OFF,
        .wd_cv = PTHREAD_COND_INITIALIZER};

/* A group's name for log lines ("" is %{GLOBAL}); call with rt.mu held or on its thread. */
static const char *tsgi_group_label(const tsgi_group_t *g)
{
    if (!g->name)
        return "(not claimed yet)";
    return *g->name ? g->name : "%{GLOBAL}";
}

/* CLOCK_MONOTONIC in milliseconds. */
static int64_t tsgi_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int tsgi_hard_stop(void)
{
    return __atomic_load_n(&rt.hard_stop, __ATOMIC_ACQUIRE) || __atomic_load_n(&rt.stopping, __ATOMIC_ACQUIRE);
}

/* The watchdog has stopped this Environment: JS calls that fail now are expected. */
static int tsgi_stalled(tsgi_group_t *g)
{
    int stalled;
    pthread_mutex_lock(&rt.mu);
    stalled = g->state == RT_STALLED;
    pthread_mutex_unlock(&rt.mu);
    return stalled;
}

static void tsgi_live_remove_locked(tsgi_job_t *job)
{
    tsgi_group_t *g = job->grp;
    if (job->live_prev)
        job->live_prev->live_next = job->live_next;
    else if (g->live == job)
        g->live = job->live_next;
    if (job->live_next)
        job->live_next->live_prev = job->live_prev;
    job->live_prev = job->live_next = NULL;
}

/* The Environment has ended: fail everything it had (with rt.mu held). */
static void tsgi_fail_all_locked(tsgi_group_t *g, const char *why)
{
    tsgi_job_t *job, *next;
    for (job = g->inbox_head; job; job = next) {
        next = job->next;
        pthread_mutex_lock(&job->mu);
        tsgi_job_finish_locked(job, JOB_FAILED, why);
        pthread_mutex_unlock(&job->mu);
        tsgi_job_release(job);
    }
    g->inbox_head = g->inbox_tail = NULL;
    for (job = g->live; job; job = next) {
        next = job->live_next;
        job->live_prev = job->live_next = NULL;
        pthread_mutex_lock(&job->mu);
        tsgi_job_finish_locked(job, JOB_FAILED, why);
        pthread_mutex_unlock(&job->mu);
        tsgi_job_release(job);
    }
    g->live = NULL;
    for (job = g->evq_head; job; job = next) {
        next = job->ev_next;
        job->ev_next = NULL;
        job->ev = 0;
        job->in_evq = 0;
        tsgi_job_release(job);
    }
    g->evq_head = g->evq_tail = NULL;
}

/* The watchdog: fails the jobs waiting on a blocked Environment (inbox and live) with
 * `status` (with rt.mu held). Their events stay queued: the Environment's
 * end releases them. */
static void tsgi_fail_waiting_locked(tsgi_group_t *g, int status, const char *why)
{
    tsgi_job_t *job, *next;
    for (job = g->inbox_head; job; job = next) {
        next = job->next;
        job->next = NULL;
        pthread_mutex_lock(&job->mu);
        if (job->state == JOB_RUNNING)
            job->fail_status = status;
        tsgi_job_finish_locked(job, JOB_FAILED, why);
        pthread_mutex_unlock(&job->mu);
        tsgi_job_release(job);
    }
    g->inbox_head = g->inbox_tail = NULL;
    for (job = g->live; job; job = next) {
        next = job->live_next;
        job->live_prev = job->live_next = NULL;
        pthread_mutex_lock(&job->mu);
        if (job->state == JOB_RUNNING)
            job->fail_status = status;
        tsgi_job_finish_locked(job, JOB_FAILED, why);
        pthread_mutex_unlock(&job->mu);
        tsgi_job_release(job);
    }
    g->live = NULL;
}

/* Appends a job to its group's event queue (the jobs with events for JS). The caller
 * holds rt.mu. */
static void tsgi_evq_push(tsgi_group_t *g, tsgi_job_t *job)
{
    job->ev_next = NULL;
    if (g->evq_tail)
        g->evq_tail->ev_next = job;
    else
        g->evq_head = job;
    g->evq_tail = job;
}

/* Request thread: tells JS about `bits` (EV_*) of a job. Dropped when the job's
 * Environment has ended (its JS is gone with it). */
static void tsgi_post_event(request_rec *r, tsgi_job_t *job, unsigned bits)
{
    tsgi_group_t *g = job->grp;
    int rc = 0;
    pthread_mutex_lock(&rt.mu);
    if (g->async_live && job->generation == g->generation) {
        job->ev |= bits;
        if (!job->in_evq) {
            job->in_evq = 1;
            tsgi_job_retain(job);
            tsgi_evq_push(g, job);
        }
        rc = uv_async_send(&g->async);
    }
    pthread_mutex_unlock(&rt.mu);
    if (rc != 0)
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "TSGI0105: uv_async_send failed (%d)", rc);
}

/* ------------------------------------------------------------------------------------
 * The "tsgi" binding (Node-API, plain C), on the Node thread
 * --------------------------------------------------------------------------------- */

/* Throws a JS error for a failed napi call and returns NULL from the binding function. */
#define NAPI_OK(env, call)                                                                           \
    do {                                                                                            \
        napi_status status_ = (call);                                                               \
        if (status_ != napi_ok) {                                                                   \
            napi_throw_error((env), NULL, "tsgi binding: " #call " failed");                        \
            return NULL;                                                                            \
        }                                                                                           \
    } while (0)

static char *tsgi_js_string(napi_env env, napi_value v)
{
    size_t len = 0;
    char *s;
    if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok)
        return NULL;
    s = malloc(len + 1);
    if (!s)
        return NULL;
    if (napi_get_value_string_utf8(env, v, s, len + 1, &len) != napi_ok) {
        free(s);
        return NULL;
    }
    return s;
}

static tsgi_job_t *tsgi_js_job(napi_env env, napi_value v)
{
    void *p = NULL;
    if (napi_get_value_external(env, v, &p) != napi_ok || !p) {
        napi_throw_type_error(env, NULL, "tsgi binding: not a request handle");
        return NULL;
    }
    return p;
}

/* setHandler(fn): the function the Node thread calls for each request. */
static napi_value tsgi_js_set_handler(napi_env env, napi_callback_info info)
{
    tsgi_group_t *g = tl_group;
    size_t argc = 1;
    napi_value argv[1];
    napi_valuetype type;
    NAPI_OK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    NAPI_OK(env, napi_typeof(env, argv[0], &type));
    if (argc < 1 || type != napi_function) {
        napi_throw_type_error(env, NULL, "setHandler(fn): fn must be a function");
        return NULL;
    }
    if (!g || g->env != env) {
        napi_throw_error(env, NULL, "setHandler(): not the Environment of an application group");
        return NULL;
    }
    if (g->handler) {
        NAPI_OK(env, napi_delete_reference(env, g->handler));
        g->handler = NULL;
    }
    NAPI_OK(env, napi_create_reference(env, argv[0], 1, &g->handler));
    return NULL;
}

/* head(h, status, reason, [name, value, ...]) */
static napi_value tsgi_js_head(napi_env env, napi_callback_info info)
{
    size_t argc = 4;
    napi_value argv[4];
    tsgi_job_t *job;
    int32_t status;
    uint32_t n, i;
    char *reason, **headers;
    bool is_array;

    NAPI_OK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc < 4) {
        napi_throw_type_error(env, NULL, "head(h, status, reason, headers)");
        return NULL;
    }
    if (!(job = tsgi_js_job(env, argv[0])))
        return NULL;
    NAPI_OK(env, napi_get_value_int32(env, argv[1], &status));
    NAPI_OK(env, napi_is_array(env, argv[3], &is_array));
    if (!is_array) {
        napi_throw_type_error(env, NULL, "head(): headers must be a flat array");
        return NULL;
    }
    NAPI_OK(env, napi_get_array_length(env, argv[3], &n));
    if (!(reason = tsgi_js_string(env, argv[2]))) {
        napi_throw_type_error(env, NULL, "head(): reason must be a string");
        return NULL;
    }
    headers = calloc(n ? n : 1, sizeof(char *));
    if (!headers) {
        free(reason);
        napi_throw_error(env, NULL, "head(): out of memory");
        return NULL;
    }
    for (i = 0; i < n; i++) {
        napi_value v;
        if (napi_get_element(env, argv[3], i, &v) != napi_ok || !(headers[i] = tsgi_js_string(env, v))) {
            uint32_t j;
            for (j = 0; j < i; j++)
                free(headers[j]);
            free(headers);
            free(reason);
            napi_throw_type_error(env, NULL, "head(): header names and values must be strings");
            return NULL;
        }
    }

    pthread_mutex_lock(&job->mu);
    if (job->head_set || job->state != JOB_RUNNING) {
        pthread_mutex_unlock(&job->mu);
        for (i = 0; i < n; i++)
            free(headers[i]);
        free(headers);
        free(reason);
        return NULL;
    }
    job->head_set = 1;
    job->status = status;
    job->reason = reason;
    job->headers = headers;
    job->header_n = (int)(n / 2);
    tsgi_wake_locked(job);
    pthread_mutex_unlock(&job->mu);
    return NULL;
}

/* write(h, uint8array) -> false once TSGI_HIGH_WATER bytes are queued (or the request
 * thread has left): wait for the DRAIN event (or ABORT) before writing more. */
static napi_value tsgi_js_write(napi_env env, napi_callback_info info)
{
    size_t argc = 2;
    napi_value argv[2], result;
    tsgi_job_t *job;
    bool is_typedarray;
    napi_typedarray_type ttype;
    size_t length, offset;
    void *data;
    napi_value arraybuffer;
    tsgi_chunk_t *chunk;
    int more;

    NAPI_OK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc < 2) {
        napi_throw_type_error(env, NULL, "write(h, chunk)");
        return NULL;
    }
    if (!(job = tsgi_js_job(env, argv[0])))
        return NULL;
    NAPI_OK(env, napi_is_typedarray(env, argv[1], &is_typedarray));
    if (!is_typedarray) {
        napi_throw_type_error(env, NULL, "write(): chunk must be a Uint8Array");
        return NULL;
    }
    NAPI_OK(env, napi_get_typedarray_info(env, argv[1], &ttype, &length, &data, &arraybuffer, &offset));
    if (ttype != napi_uint8_array) {
        napi_throw_type_error(env, NULL, "write(): chunk must be a Uint8Array");
        return NULL;
    }
    NAPI_OK(env, napi_get_boolean(env, true, &result));
    if (length == 0)
        return result;
    chunk = malloc(sizeof(*chunk) + length);
    if (!chunk) {
        napi_throw_error(env, NULL, "write(): out of memory");
        return NULL;
    }
    chunk->next = NULL;
    chunk->len = length;
    memcpy(chunk->data, data, length);

    pthread_mutex_lock(&job->mu);
    if (job->state != JOB_RUNNING || job->gone) {
        pthread_mutex_unlock(&job->mu);
        free(chunk);
        NAPI_OK(env, napi_get_boolean(env, false, &result));
        return result;
    }
    *job->chunks_tail = chunk;
    job->chunks_tail = &chunk->next;
    job->out_queued += length;
    more = job->out_queued < TSGI_HIGH_WATER;
    if (!more)
        job->out_blocked = 1;
    tsgi_wake_locked(job);
    pthread_mutex_unlock(&job->mu);
    if (!more)
        NAPI_OK(env, napi_get_boolean(env, false, &result));
    return result;
}

/* read(h): credit for one request-body chunk (at most TSGI_READ_BYTES); it arrives as a
 * BODY event (a chunk, EOF, or a read failure). */
static napi_value tsgi_js_read(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1];
    tsgi_job_t *job;

    NAPI_OK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc < 1) {
        napi_throw_type_error(env, NULL, "read(h)");
        return NULL;
    }
    if (!(job = tsgi_js_job(env, argv[0])))
        return NULL;
    pthread_mutex_lock(&job->mu);
    if (job->has_body && job->state == JOB_RUNNING && !job->gone && job->in_state == IN_OPEN) {
        job->in_credit++;
        tsgi_wake_locked(job);
    }
    pthread_mutex_unlock(&job->mu);
    return NULL;
}

static void tsgi_port_drop(napi_env env, tsgi_job_t *job);

/* end(h, ok[, why]): the response is complete (ok) or cannot be completed. */
static napi_value tsgi_js_end(napi_env env, napi_callback_info info)
{
    size_t argc = 3;
    napi_value argv[3];
    tsgi_job_t *job;
    bool ok;
    char *why = NULL;
    int was_live;

    NAPI_OK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc < 2) {
        napi_throw_type_error(env, NULL, "end(h, ok)");
        return NULL;
    }
    if (!(job = tsgi_js_job(env, argv[0])))
        return NULL;
    NAPI_OK(env, napi_get_value_bool(env, argv[1], &ok));
    if (argc >= 3)
        why = tsgi_js_string(env, argv[2]);

    pthread_mutex_lock(&rt.mu);
    was_live = job->live_prev || job->live_next || job->grp->live == job;
    if (was_live)
        tsgi_live_remove_locked(job);
    pthread_mutex_unlock(&rt.mu);

    pthread_mutex_lock(&job->mu);
    tsgi_job_finish_locked(job, ok ? JOB_DONE : JOB_FAILED, why ? why : "the application failed after its headers were sent");
    job->js_ended = 1; /* the request thread need not post DONE: the port goes now */
    pthread_mutex_unlock(&job->mu);
    free(why);
    if (job->grp == tl_group && job->grp->env == env)
        tsgi_port_drop(env, job);
    if (was_live)
        tsgi_job_release(job);
    return NULL;
}

/* log(level, message): one entry in Apache's error log (level: an APLOG_* number). */
static napi_value tsgi_js_log(napi_env env, napi_callback_info info)
{
    size_t argc = 2;
    napi_value argv[2];
    int32_t level;
    char *msg;

    NAPI_OK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc < 2) {
        napi_throw_type_error(env, NULL, "log(level, message)");
        return NULL;
    }
    NAPI_OK(env, napi_get_value_int32(env, argv[0], &level));
    if (level < APLOG_EMERG || level > APLOG_TRACE8)
        level = APLOG_ERR;
    if (!(msg = tsgi_js_string(env, argv[1]))) {
        napi_throw_type_error(env, NULL, "log(): message must be a string");
        return NULL;
    }
    ap_log_error(APLOG_MARK, level, 0, rt.server, "%s", msg);
    free(msg);
    return NULL;
}

static void tsgi_finalize_job(napi_env env, void *data, void *hint)
{
    (void)env;
    (void)hint;
    tsgi_job_release(data);
}

static void tsgi_async_cb(uv_async_t *handle);

static napi_value tsgi_register_binding(napi_env env, napi_value exports)
{
    tsgi_group_t *g = tl_group;
    static const struct {
        const char *name;
        napi_callback fn;
    } fns[] = {
        {"setHandler", tsgi_js_set_handler}, {"head", tsgi_js_head}, {"write", tsgi_js_write},
        {"read", tsgi_js_read},              {"end", tsgi_js_end},   {"log", tsgi_js_log},
    };
    napi_value v, resource_name, resource;
    uv_loop_t *loop;
    size_t i;

    for (i = 0; i < sizeof(fns) / sizeof(fns[0]); i++) {
        NAPI_OK(env, napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].fn, NULL, &v));
        NAPI_OK(env, napi_set_named_property(env, exports, fns[i].name, v));
    }
    NAPI_OK(env, napi_get_boolean(env, rt.multithread, &v));
    NAPI_OK(env, napi_set_named_property(env, exports, "multithread", v));
    NAPI_OK(env, napi_get_boolean(env, rt.multiprocess, &v));
    NAPI_OK(env, napi_set_named_property(env, exports, "multiprocess", v));

    if (!g) /* not a group's Node thread (a Worker has no linked bindings of ours) */
        return exports;
    if (g->env == env)
        return exports;
    g->env = env;
    g->handler = NULL;
    NAPI_OK(env, napi_create_string_utf8(env, "mod_tsgi.request", NAPI_AUTO_LENGTH, &resource_name));
    NAPI_OK(env, napi_create_object(env, &resource));
    NAPI_OK(env, napi_async_init(env, resource, resource_name, &g->actx));
    NAPI_OK(env, napi_get_uv_event_loop(env, &loop));
    g->async.data = g;
    if (uv_async_init(loop, &g->async, tsgi_async_cb) != 0) {
        napi_throw_error(env, NULL, "tsgi binding: uv_async_init failed");
        return NULL;
    }
    pthread_mutex_lock(&rt.mu);
    g->async_live = 1;
    pthread_mutex_unlock(&rt.mu);
    return exports;
}

/* Calls the JS handler for one job: handler(h, environJson, hasBody, script, callable,
 * group, reloading, scheme) -> the request's event function, kept until DONE (or until
 * JS calls end()). The environ is one JSON text (built by the request thread) that JS
 * parses: one Node-API string instead of two per variable and a property store each. */
static void tsgi_dispatch(napi_env env, tsgi_job_t *job)
{
    tsgi_group_t *g = job->grp;
    napi_value argv[8], fn, global, result, ext;
    napi_status st;
    bool pending = false;
    int js_ended;
    const char *why = NULL;

    if (!g->handler) {
        why = "the bootstrap registered no request handler";
        goto fail;
    }
    tsgi_job_retain(job); /* the external's reference, dropped by its finalizer */
    if (napi_create_external(env, job, tsgi_finalize_job, NULL, &ext) != napi_ok) {
        tsgi_job_release(job);
        why = "napi_create_external failed";
        goto fail;
    }
    argv[0] = ext;
    if (napi_create_string_utf8(env, job->env_json, job->env_json_len, &argv[1]) != napi_ok) {
        why = "building the environ failed";
        goto fail;
    }
    if (napi_get_boolean(env, job->has_body, &argv[2]) != napi_ok) {
        why = "napi_get_boolean failed";
        goto fail;
    }
    if (napi_create_string_utf8(env, job->script, NAPI_AUTO_LENGTH, &argv[3]) != napi_ok ||
        napi_create_string_utf8(env, job->callable, NAPI_AUTO_LENGTH, &argv[4]) != napi_ok ||
        napi_create_string_utf8(env, job->group, NAPI_AUTO_LENGTH, &argv[5]) != napi_ok ||
        napi_get_boolean(env, job->reloading, &argv[6]) != napi_ok ||
        napi_create_string_utf8(env, job->scheme, NAPI_AUTO_LENGTH, &argv[7]) != napi_ok ||
        napi_get_reference_value(env, g->handler, &fn) != napi_ok || napi_get_global(env, &global) != napi_ok) {
        why = "preparing the handler call failed";
        goto fail;
    }
    /* make_callback (not call_function): nextTicks and microtasks run after it. The
     * receiver must be an object (P1). */
    st = tsgi_call_js(g, env, global, fn, 8, argv, &result);
    if (st != napi_ok && tsgi_stalled(g)) {
        /* TerminateExecution from the watchdog ended this call; the job has its 504. */
        if (napi_is_exception_pending(env, &pending) == napi_ok && pending) {
            napi_value exc;
            if (napi_get_and_clear_last_exception(env, &exc) != napi_ok)
                ap_log_error(APLOG_MARK, APLOG_DEBUG, 0, rt.server, "napi_get_and_clear_last_exception failed");
        }
        return;
    }
    if (napi_is_exception_pending(env, &pending) == napi_ok && pending) {
        napi_value exc, str;
        char *msg = NULL;
        if (napi_get_and_clear_last_exception(env, &exc) == napi_ok && napi_coerce_to_string(env, exc, &str) == napi_ok)
            msg = tsgi_js_string(env, str);
        ap_log_error(APLOG_MARK, APLOG_ERR, 0, rt.server, "TSGI0110: the request handler threw: %s",
                     msg ? msg : "(unprintable exception)");
        free(msg);
        why = "the request handler threw";
        goto fail;
    }
    if (st != napi_ok) {
        why = "napi_make_callback failed";
        goto fail;
    }
    pthread_mutex_lock(&job->mu);
    js_ended = job->js_ended;
    pthread_mutex_unlock(&job->mu);
    if (js_ended) /* answered already (end() ran in the call): no events to hear */
        return;
    {
        napi_valuetype type;
        if (napi_typeof(env, result, &type) != napi_ok || type != napi_function ||
            napi_create_reference(env, result, 1, &job->port) != napi_ok) {
            job->port = NULL;
            why = "the request handler returned no event function";
            goto fail;
        }
        tsgi_job_retain(job); /* the ported list's */
        job->port_prev = NULL;
        job->port_next = g->ported;
        if (g->ported)
            g->ported->port_prev = job;
        g->ported = job;
    }
    return;

fail:
    ap_log_error(APLOG_MARK, APLOG_ERR, 0, rt.server, "TSGI0111: cannot run %s: %s", job->script, why);
    pthread_mutex_lock(&rt.mu);
    if (job->live_prev || job->live_next || g->live == job) {
        tsgi_live_remove_locked(job);
        pthread_mutex_unlock(&rt.mu);
        pthread_mutex_lock(&job->mu);
        tsgi_job_finish_locked(job, JOB_FAILED, why);
        pthread_mutex_unlock(&job->mu);
        tsgi_job_release(job);
        return;
    }
    pthread_mutex_unlock(&rt.mu);
}

/* Node thread: deletes a job's event-function reference (its DONE, or the end of the
 * Environment: Node-API does not free references with the Environment). */
static void tsgi_port_drop(napi_env env, tsgi_job_t *job)
{
    tsgi_group_t *g = job->grp;
    if (!job->port)
        return;
    if (napi_delete_reference(env, job->port) != napi_ok)
        ap_log_error(APLOG_MARK, APLOG_ERR, 0, rt.server, "TSGI0115: napi_delete_reference failed");
    job->port = NULL;
    if (job->port_prev)
        job->port_prev->port_next = job->port_next;
    else if (g->ported == job)
        g->ported = job->port_next;
    if (job->port_next)
        job->port_next->port_prev = job->port_prev;
    job->port_prev = job->port_next = NULL;
    tsgi_job_release(job);
}

/* Calls a request's event function: fn(kind[, arg]); arg is a Buffer or a string. */
static void tsgi_call_port(napi_env env, tsgi_job_t *job, int kind, const tsgi_chunk_t *chunk, const char *text)
{
    tsgi_group_t *g = job->grp;
    napi_value fn, global, argv[2], result;
    bool pending = false;
    size_t argc = 1;

    if (!job->port || napi_get_reference_value(env, job->port, &fn) != napi_ok || !fn)
        return;
    if (napi_create_int32(env, kind, &argv[0]) != napi_ok || napi_get_global(env, &global) != napi_ok)
        goto fail;
    if (chunk) {
        if (napi_create_buffer_copy(env, chunk->len, chunk->data, NULL, &argv[1]) != napi_ok)
            goto fail;
        argc = 2;
    }
    else if (text) {
        if (napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &argv[1]) != napi_ok)
            goto fail;
        argc = 2;
    }
    if (tsgi_call_js(g, env, global, fn, argc, argv, &result) != napi_ok &&
        !(napi_is_exception_pending(env, &pending) == napi_ok && pending))
        goto fail;
    if (napi_is_exception_pending(env, &pending) == napi_ok && pending) {
        napi_value exc, str;
        char *msg = NULL;
        if (napi_get_and_clear_last_exception(env, &exc) == napi_ok && napi_coerce_to_string(env, exc, &str) == napi_ok)
            msg = tsgi_js_string(env, str);
        ap_log_error(APLOG_MARK, APLOG_ERR, 0, rt.server, "TSGI0114: a request event handler threw: %s",
                     msg ? msg : "(unprintable exception)");
        free(msg);
    }
    return;
fail:
    if (!tsgi_stalled(g))
        ap_log_error(APLOG_MARK, APLOG_ERR, 0, rt.server, "TSGI0114: cannot deliver event %d for %s", kind,
                     job->script);
}

/* Hands a job's pending events (bits) to its JS event function. */
static void tsgi_deliver(napi_env env, tsgi_job_t *job, unsigned bits)
{
    tsgi_chunk_t *chunks = NULL, *c, *n;
    int in_state = IN_OPEN;
    char in_why[sizeof(job->in_why)], abort_why[sizeof(job->abort_why)];

    pthread_mutex_lock(&job->mu);
    if (bits & EV_BODY) {
        chunks = job->in_chunks;
        job->in_chunks = NULL;
        job->in_tail = &job->in_chunks;
        if (job->in_state != IN_OPEN && !job->in_reported) {
            in_state = job->in_state;
            job->in_reported = 1;
            memcpy(in_why, job->in_why, sizeof(in_why));
        }
    }
    if (bits & EV_ABORT)
        memcpy(abort_why, job->abort_why, sizeof(abort_why));
    pthread_mutex_unlock(&job->mu);

    for (c = chunks; c; c = n) {
        n = c->next;
        tsgi_call_port(env, job, JS_BODY, c, NULL);
        free(c);
    }
    /* ABORT before a body failure: when the client is gone, JS must see the abort
     * first (the gateway's client-gone outcome), not a read error the app answers. */
    if (bits & EV_ABORT)
        tsgi_call_port(env, job, JS_ABORT, NULL, abort_why);
    if (in_state == IN_EOF)
        tsgi_call_port(env, job, JS_EOF, NULL, NULL);
    else if (in_state == IN_FAILED)
        tsgi_call_port(env, job, JS_BODY_ERROR, NULL, in_why);
    if (bits & EV_DRAIN)
        tsgi_call_port(env, job, JS_DRAIN, NULL, NULL);
    if (bits & EV_DONE)
        tsgi_port_drop(env, job);
}

/* Delivers the event queue. A job stays marked queued while its events are handed
 * over, so posts meanwhile only add bits; it is queued again if they did. */
static void tsgi_drain_events(tsgi_group_t *g, napi_env env)
{
    tsgi_job_t *job, *next;
    napi_handle_scope scope;

    pthread_mutex_lock(&rt.mu);
    job = g->evq_head;
    g->evq_head = g->evq_tail = NULL;
    pthread_mutex_unlock(&rt.mu);

    for (; job; job = next) {
        unsigned bits;
        int requeued = 0;
        pthread_mutex_lock(&rt.mu);
        next = job->ev_next;
        job->ev_next = NULL;
        bits = job->ev;
        job->ev = 0;
        pthread_mutex_unlock(&rt.mu);

        if (napi_open_handle_scope(env, &scope) != napi_ok) {
            ap_log_error(APLOG_MARK, APLOG_ERR, 0, rt.server, "TSGI0112: napi_open_handle_scope failed");
        }
        else {
            tsgi_deliver(env, job, bits);
            if (napi_close_handle_scope(env, scope) != napi_ok)
                ap_log_error(APLOG_MARK, APLOG_ERR, 0, rt.server, "TSGI0113: napi_close_handle_scope failed");
        }

        pthread_mutex_lock(&rt.mu);
        if (job->ev && g->async_live) {
            requeued = 1;
            tsgi_evq_push(g, job);
            if (uv_async_send(&g->async) != 0)
                ap_log_error(APLOG_MARK, APLOG_ERR, 0, rt.server, "TSGI0105: uv_async_send failed");
        }
        else {
            job->ev = 0;
            job->in_evq = 0;
        }
        pthread_mutex_unlock(&rt.mu);
        if (!requeued)
            tsgi_job_release(job);
    }
}

/* The inbox has jobs (uv_async_send coalesces wake-ups: drain it all). */
static void tsgi_async_cb(uv_async_t *handle)
{
    tsgi_group_t *g = handle->data;
    napi_env env = g->env;
    napi_handle_scope scope;
    tsgi_job_t *job, *next;

    pthread_mutex_lock(&rt.mu);
    g->wd_ping = 0; /* the loop turns */
    job = g->inbox_head;
    g->inbox_head = g->inbox_tail = NULL;
    /* Each job moves to the live list, keeping the inbox's reference; this callback
     * holds one more while it works on the job (a stopping child may fail the live list
     * from another thread meanwhile). */
    for (next = job; next; next = next->next) {
        tsgi_job_retain(next);
        next->live_prev = NULL;
        next->live_next = g->live;
        if (g->live)
            g->live->live_prev = next;
        g->live = next;
    }
    pthread_mutex_unlock(&rt.mu);

    for (; job; job = next) {
        int gone;
        next = job->next;
        job->next = NULL;
        pthread_mutex_lock(&job->mu);
        gone = job->gone || job->state != JOB_RUNNING; /* left, or failed by the watchdog */
        pthread_mutex_unlock(&job->mu);
        if (gone) {
            int was_live;
            pthread_mutex_lock(&rt.mu);
            was_live = job->live_prev || job->live_next || g->live == job;
            if (was_live)
                tsgi_live_remove_locked(job);
            pthread_mutex_unlock(&rt.mu);
            if (was_live)
                tsgi_job_release(job);
        }
        else if (napi_open_handle_scope(env, &scope) != napi_ok) {
            /* stays live: failed when the Environment ends */
            ap_log_error(APLOG_MARK, APLOG_ERR, 0, rt.server, "TSGI0112: napi_open_handle_scope failed");
        }
        else {
            tsgi_dispatch(env, job);
            if (napi_close_handle_scope(env, scope) != napi_ok)
                ap_log_error(APLOG_MARK, APLOG_ERR, 0, rt.server, "TSGI0113: napi_close_handle_scope failed");
        }
        tsgi_job_release(job);
    }
    tsgi_drain_events(g, env);
}

/* ------------------------------------------------------------------------------------
 * The Node thread
 * --------------------------------------------------------------------------------- */

/* "application group 'name'", "application group %{GLOBAL}", or the unclaimed first one. */
static void tsgi_group_describe_locked(const tsgi_group_t *g, char *buf, size_t len)
{
    if (g->name && *g->name)
        apr_snprintf(buf, len, "application group '%s'", g->name);
    else
        apr_snprintf(buf, len, "application group %s", tsgi_group_label(g));
}

static void tsgi_group_describe(const tsgi_group_t *g, char *buf, size_t len)
{
    pthread_mutex_lock(&rt.mu);
    tsgi_group_describe_locked(g, buf, len);
    pthread_mutex_unlock(&rt.mu);
}

static void tsgi_on_ready(void *data)
{
    tsgi_group_t *g = data;
    char label[300];
    pthread_mutex_lock(&rt.mu);
    g->state = RT_READY;
    g->wd_ping = 0;
    g->wd_warned = 0;
    pthread_cond_broadcast(&rt.cv);
    pthread_mutex_unlock(&rt.mu);
    tsgi_group_describe(g, label, sizeof(label));
    ap_log_error(APLOG_MARK, APLOG_INFO, 0, rt.server, "TSGI0120: embedded runtime ready (Node %s, pid %ld, %s)",
                 NODE_VERSION_STRING, (long)getpid(), label);
}

static void tsgi_on_exit(void *data, int code)
{
    char label[300];
    tsgi_group_describe(data, label, sizeof(label));
    ap_log_error(APLOG_MARK, APLOG_WARNING, 0, rt.server,
                 "TSGI0121: process.exit(%d) called by JavaScript: the Node environment of %s "
                 "stops and is re-created; the Apache child keeps running",
                 code, label);
}

static void tsgi_on_teardown(void *data, struct uv_loop_s *loop)
{
    tsgi_group_t *g = data;
    pthread_mutex_lock(&rt.mu);
    if (g->async_live) {
        g->async_live = 0;
        pthread_mutex_unlock(&rt.mu);
        uv_close((uv_handle_t *)&g->async, NULL);
        uv_run(loop, UV_RUN_NOWAIT);
    }
    else {
        pthread_mutex_unlock(&rt.mu);
    }
    /* Node-API frees neither references nor async contexts with the Environment. */
    if (g->env) {
        while (g->ported)
            tsgi_port_drop(g->env, g->ported);
        if (g->handler && napi_delete_reference(g->env, g->handler) != napi_ok)
            ap_log_error(APLOG_MARK, APLOG_ERR, 0, rt.server, "TSGI0115: napi_delete_reference failed");
        if (g->actx && napi_async_destroy(g->env, g->actx) != napi_ok)
            ap_log_error(APLOG_MARK, APLOG_ERR, 0, rt.server, "TSGI0115: napi_async_destroy failed");
    }
    g->handler = NULL;
    g->env = NULL;
    g->actx = NULL;
}

static const char tsgi_bootstrap_source[] =
    "'use strict';\n"
    "const path = " TSGI_BOOTSTRAP_JSON ";\n"
    "require('module').createRequire(path)(path).start(process._linkedBinding('tsgi'));\n";

/* Runs a group's Environments, one after another, until the child stops or its bootstrap fails. */
static void tsgi_group_loop(tsgi_group_t *g)
{
    char err[512] = "", label[300];
    tsgi_shim_hooks_t hooks = {g, tsgi_register_binding, tsgi_on_ready, tsgi_on_exit, tsgi_on_teardown};

    for (;;) {
        int was_ready, rc;
        rc = tsgi_shim_run(g->slot, tsgi_bootstrap_source, &hooks, err, sizeof(err));

        tsgi_group_describe(g, label, sizeof(label));
        pthread_mutex_lock(&rt.mu);
        was_ready = g->state == RT_READY || g->state == RT_STALLED;
        g->generation++;
        tsgi_fail_all_locked(g, "the Node environment ended");
        if (rt.stopping) {
            g->state = RT_STOPPED;
            pthread_cond_broadcast(&rt.cv);
            pthread_mutex_unlock(&rt.mu);
            break;
        }
        if (!was_ready) {
            /* The bootstrap itself failed: retrying would only fail again. */
            g->state = RT_FAILED;
            apr_snprintf(g->failure, sizeof(g->failure), "%s", rc ? err : "the bootstrap did not start");
            pthread_cond_broadcast(&rt.cv);
            pthread_mutex_unlock(&rt.mu);
            ap_log_error(APLOG_MARK, APLOG_CRIT, 0, rt.server, "TSGI0123: the embedded runtime failed to start (%s): %s",
                         label, g->failure);
            break;
        }
        g->state = RT_STARTING;
        {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_nsec += TSGI_RECREATE_PAUSE_MS * 1000000L;
            until.tv_sec += until.tv_nsec / 1000000000L;
            until.tv_nsec %= 1000000000L;
            while (!rt.stopping && pthread_cond_timedwait(&rt.cv, &rt.mu, &until) != ETIMEDOUT)
                ;
        }
        if (rt.stopping) {
            g->state = RT_STOPPED;
            pthread_cond_broadcast(&rt.cv);
            pthread_mutex_unlock(&rt.mu);
            break;
        }
        pthread_mutex_unlock(&rt.mu);
        ap_log_error(APLOG_MARK, APLOG_WARNING, 0, rt.server, "TSGI0124: re-creating the Node environment of %s",
                     label);
    }
}

/*
 * A group's Node thread. The first group's thread (started in child_init) also does the
 * process-wide init (node, V8, the platform: created here, so the platform's workers
 * inherit this thread's signal mask) and, at child exit, the process teardown once every
 * other group's thread has ended.
 */
static void *tsgi_group_main(void *arg)
{
    tsgi_group_t *g = arg;
    sigset_t chld;
    int init_ok, run;

    tl_group = g;
    /* libuv reaps child processes from SIGCHLD: Node threads only (P6). */
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    pthread_sigmask(SIG_UNBLOCK, &chld, NULL);

    if (g->first) {
        static const char *const argv[] = {"apache2"};
        char err[512] = "";
        int rc = tsgi_shim_process_init(1, argv, TSGI_PLATFORM_THREADS, err, sizeof(err));
        if (rc != 0)
            ap_log_error(APLOG_MARK, APLOG_CRIT, 0, rt.server, "TSGI0122: cannot start the embedded runtime: %s", err);
        pthread_mutex_lock(&rt.mu);
        rt.init_state = rc == 0 ? RT_READY : RT_FAILED;
        if (rc != 0)
            apr_cpystrn(rt.init_failure, err, sizeof(rt.init_failure));
        pthread_cond_broadcast(&rt.cv);
        pthread_mutex_unlock(&rt.mu);
    }

    pthread_mutex_lock(&rt.mu);
    while (rt.init_state == RT_STARTING && !rt.stopping)
        pthread_cond_wait(&rt.cv, &rt.mu);
    init_ok = rt.init_state == RT_READY;
    run = init_ok && !rt.stopping;
    if (!run) {
        g->state = rt.stopping ? RT_STOPPED : RT_FAILED;
        apr_cpystrn(g->failure, rt.init_failure, sizeof(g->failure));
        pthread_cond_broadcast(&rt.cv);
    }
    pthread_mutex_unlock(&rt.mu);

    if (run)
        tsgi_group_loop(g);

    pthread_mutex_lock(&rt.mu);
    rt.threads_running--;
    pthread_cond_broadcast(&rt.cv);
    if (g->first && init_ok) {
        /* V8 and the platform go last, after every group's Environment. */
        while (!rt.stopping || rt.threads_running > 0)
            pthread_cond_wait(&rt.cv, &rt.mu);
    }
    pthread_mutex_unlock(&rt.mu);
    if (g->first && init_ok)
        tsgi_shim_teardown_process();
    return NULL;
}

/* Blocks every asynchronous signal in the calling thread (for the threads it creates:
 * Apache's signals stay Apache's, embedding.md §2.3); the old mask goes to *old. */
static void tsgi_block_signals(sigset_t *old)
{
    sigset_t all;
    sigfillset(&all);
    sigdelset(&all, SIGSEGV);
    sigdelset(&all, SIGBUS);
    sigdelset(&all, SIGFPE);
    sigdelset(&all, SIGILL);
    pthread_sigmask(SIG_BLOCK, &all, old);
}

/*
 * With rt.mu held: a new group (name NULL: the first one, claimed by the first request)
 * and its Node thread, or NULL with `why` filled in. Groups are never freed: a request
 * thread of a stopping event child may still look at its job's group after the pchild
 * cleanup (the child exits right after; the list keeps them reachable).
 */
static tsgi_group_t *tsgi_group_create_locked(const char *name, int first, char *why, size_t whylen)
{
    tsgi_group_t *g = calloc(1, sizeof(*g));
    pthread_attr_t attr;
    sigset_t old;
    int rc;

    if (!g || (name && !(g->name = strdup(name))) || !(g->slot = tsgi_shim_slot_new())) {
        if (g) {
            free(g->name);
            free(g);
        }
        apr_snprintf(why, whylen, "out of memory");
        return NULL;
    }
    g->first = first;
    g->state = RT_STARTING;
    if ((rc = pthread_attr_init(&attr)) != 0) {
        apr_snprintf(why, whylen, "pthread_attr_init failed (%d)", rc);
        goto fail;
    }
    if ((rc = pthread_attr_setstacksize(&attr, TSGI_NODE_STACK)) != 0) {
        pthread_attr_destroy(&attr);
        apr_snprintf(why, whylen, "pthread_attr_setstacksize failed (%d)", rc);
        goto fail;
    }
    tsgi_block_signals(&old);
    rc = pthread_create(&g->thread, &attr, tsgi_group_main, g);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        apr_snprintf(why, whylen, "cannot create a Node thread (%d)", rc);
        goto fail;
    }
    g->thread_started = 1;
    rt.threads_running++;
    g->next = rt.groups;
    rt.groups = g;
    rt.ngroups++;
    return g;
fail:
    tsgi_shim_slot_free(g->slot);
    free(g->name);
    free(g);
    return NULL;
}

/* The watchdog's look at one group (rt.mu held; released while it logs and stops). */
static void tsgi_watchdog_check_locked(tsgi_group_t *g, int64_t now, int64_t timeout_ms)
{
    char why[160], label[300];
    tsgi_job_t *job;
    int n = 0;

    if (g->state == RT_STALLED) {
        /* TerminateExecution cannot interrupt a blocking system call. */
        if (!g->wd_warned && now - g->wd_fired_at > timeout_ms) {
            g->wd_warned = 1;
            tsgi_group_describe_locked(g, label, sizeof(label));
            ap_log_error(APLOG_MARK, APLOG_CRIT, 0, rt.server,
                         "TSGI0131: the Node thread of %s has not stopped %d s after the "
                         "watchdog stopped its environment (blocked outside JavaScript?); its requests get 503 "
                         "until it does",
                         label, rt.wd_timeout);
        }
        return;
    }
    if (g->state != RT_READY || !g->async_live || !(g->inbox_head || g->live || g->evq_head)) {
        g->wd_ping = 0;
        return;
    }
    if (!g->wd_ping) {
        int rc;
        g->wd_ping = 1;
        g->wd_ping_sent = now;
        if ((rc = uv_async_send(&g->async)) != 0)
            ap_log_error(APLOG_MARK, APLOG_ERR, 0, rt.server, "TSGI0105: uv_async_send failed (%d)", rc);
        return;
    }
    if (now - g->wd_ping_sent < timeout_ms)
        return;

    /* No new job joins a STALLED group (tsgi_embed_handle waits for the next Environment). */
    g->state = RT_STALLED;
    g->wd_ping = 0;
    g->wd_fired_at = now;
    g->wd_warned = 0;
    for (job = g->inbox_head; job; job = job->next)
        n++;
    for (job = g->live; job; job = job->live_next)
        n++;
    tsgi_group_describe_locked(g, label, sizeof(label));
    apr_snprintf(why, sizeof(why),
                 "the Node event loop of its application group was blocked for more than %d s (TSGIEventLoopTimeout)",
                 rt.wd_timeout);
    pthread_mutex_unlock(&rt.mu);
    ap_log_error(APLOG_MARK, APLOG_ERR, 0, rt.server,
                 "TSGI0130: watchdog: the Node event loop of %s has not turned for %d s; %d "
                 "waiting request(s) get 504, and its Node environment is stopped and re-created",
                 label, rt.wd_timeout, n);
    pthread_mutex_lock(&rt.mu);
    tsgi_fail_waiting_locked(g, HTTP_GATEWAY_TIME_OUT, why);
    pthread_mutex_unlock(&rt.mu);
    tsgi_shim_stop(g->slot, 0);
    pthread_mutex_lock(&rt.mu);
}

/*
 * The watchdog thread (TSGIEventLoopTimeout, P18). While requests wait on a group's Node
 * thread (queued, dispatched and not finished, or with events for JS), it pings that
 * event loop with uv_async_send; tsgi_async_cb answers. An idle loop answers at once
 * (the ping wakes it); a loop blocked in JS or in a sync call does not. A ping left
 * unanswered for the timeout fails the waiting requests with 504 and stops the
 * Environment (node::Stop: TerminateExecution breaks running JS, then the loop ends);
 * tsgi_group_loop re-creates it. Other groups are not touched.
 */
static void *tsgi_watchdog_main(void *arg)
{
    int64_t timeout_ms = (int64_t)rt.wd_timeout * 1000, tick_ms = timeout_ms / 4;
    (void)arg;

    if (tick_ms > 1000)
        tick_ms = 1000;
    if (tick_ms < 100)
        tick_ms = 100;
    pthread_mutex_lock(&rt.mu);
    while (!rt.stopping) {
        struct timespec until;
        tsgi_group_t *g;
        int64_t now;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += (long)(tick_ms % 1000) * 1000000L;
        until.tv_sec += (time_t)(tick_ms / 1000) + until.tv_nsec / 1000000000L;
        until.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&rt.wd_cv, &rt.mu, &until);
        if (rt.stopping)
            break;
        now = tsgi_now_ms();
        /* Groups are only ever added at the head: the walk survives the unlocks. */
        for (g = rt.groups; g && !rt.stopping; g = g->next)
            tsgi_watchdog_check_locked(g, now, timeout_ms);
    }
    pthread_mutex_unlock(&rt.mu);
    return NULL;
}

/* pchild cleanup: stop every group's Environment, join the threads (embedding.md §2.1). */
static apr_status_t tsgi_child_exit(void *data)
{
    tsgi_group_t *g;
    (void)data;
    pthread_mutex_lock(&rt.mu);
    __atomic_store_n(&rt.stopping, 1, __ATOMIC_RELEASE);
    for (g = rt.groups; g; g = g->next)
        tsgi_fail_all_locked(g, "the Apache child is stopping");
    pthread_cond_broadcast(&rt.cv);
    pthread_cond_broadcast(&rt.wd_cv);
    pthread_mutex_unlock(&rt.mu);
    if (rt.wd_started) {
        int rc = pthread_join(rt.wd_thread, NULL);
        if (rc != 0)
            ap_log_error(APLOG_MARK, APLOG_ERR, rc, rt.server, "TSGI0125: pthread_join of the watchdog failed");
        rt.wd_started = 0;
    }
    /* No group is added once rt.stopping is set. */
    for (g = rt.groups; g; g = g->next)
        tsgi_shim_stop(g->slot, 1);
    for (g = rt.groups; g; g = g->next) {
        if (g->thread_started) {
            int rc = pthread_join(g->thread, NULL);
            if (rc != 0)
                ap_log_error(APLOG_MARK, APLOG_ERR, rc, rt.server, "TSGI0125: pthread_join of a Node thread failed");
            g->thread_started = 0;
        }
    }
    return APR_SUCCESS;
}

/*
 * child_stopping (Apache >= 2.4.49, mpm_common.h): on a non-graceful stop (stop,
 * restart) every request thread waiting on JS gives up at once, and JS hears ABORT; on a
 * graceful one (graceful, graceful-stop) in-flight requests run to their end (P15).
 */
void tsgi_embed_child_stopping(apr_pool_t *pchild, int graceful)
{
    tsgi_group_t *g;
    tsgi_job_t *job;
    int n = 0;
    (void)pchild;
    if (graceful) {
        ap_log_error(APLOG_MARK, APLOG_DEBUG, 0, rt.server,
                     "TSGI0129: the child is stopping gracefully: requests in flight finish");
        return;
    }
    pthread_mutex_lock(&rt.mu);
    __atomic_store_n(&rt.hard_stop, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&rt.cv);
    for (g = rt.groups; g; g = g->next) {
        for (job = g->inbox_head; job; job = job->next, n++) {
            pthread_mutex_lock(&job->mu);
            pthread_cond_broadcast(&job->cv);
            pthread_mutex_unlock(&job->mu);
        }
        for (job = g->live; job; job = job->live_next, n++) {
            pthread_mutex_lock(&job->mu);
            pthread_cond_broadcast(&job->cv);
            pthread_mutex_unlock(&job->mu);
        }
    }
    pthread_mutex_unlock(&rt.mu);
    ap_log_error(APLOG_MARK, n ? APLOG_INFO : APLOG_DEBUG, 0, rt.server,
                 "TSGI0129: the child is stopping (not gracefully): %d request(s) waiting on JavaScript give up", n);
}

int tsgi_embed_post_config(apr_pool_t *pconf, server_rec *s)
{
    struct stat st;
    (void)pconf;
    /* Statics outlive graceful restarts (P16): reset what belongs to a generation. */
    rt.init_state = RT_OFF;
    rt.init_failure[0] = '\0';
    rt.groups = NULL;
    rt.ngroups = 0;
    rt.threads_running = 0;
    if (ap_state_query(AP_SQ_MAIN_STATE) == AP_SQ_MS_CREATE_PRE_CONFIG)
        return OK;
    if (stat(TSGI_BOOTSTRAP, &st) != 0) {
        ap_log_error(APLOG_MARK, APLOG_WARNING, errno, s,
                     "TSGI0126: the embedded runtime's bootstrap %s is missing; build it with "
                     "`npm run build` (requests will get 503)",
                     TSGI_BOOTSTRAP);
    }
    return OK;
}

void tsgi_embed_child_init(apr_pool_t *pchild, server_rec *s, const tsgi_embed_config_t *cfg)
{
    char why[120] = "";
    tsgi_group_t *g;
    int threaded = 0, forked = 0;

    rt.server = s;
    rt.stopping = 0;
    rt.hard_stop = 0;
    rt.wd_timeout = cfg->event_loop_timeout;
    if (ap_mpm_query(AP_MPMQ_IS_THREADED, &threaded) != APR_SUCCESS)
        threaded = 0;
    if (ap_mpm_query(AP_MPMQ_IS_FORKED, &forked) != APR_SUCCESS)
        forked = 0;
    rt.multithread = threaded != AP_MPMQ_NOT_SUPPORTED;
    rt.multiprocess = forked != AP_MPMQ_NOT_SUPPORTED;

    /* The first group's Environment starts now, before its name is known: the first
     * request claims it, so it finds a ready Environment. */
    pthread_mutex_lock(&rt.mu);
    rt.init_state = RT_STARTING;
    g = tsgi_group_create_locked(NULL, 1, why, sizeof(why));
    if (!g) {
        rt.init_state = RT_FAILED;
        apr_snprintf(rt.init_failure, sizeof(rt.init_failure), "%s", why);
    }
    pthread_mutex_unlock(&rt.mu);
    if (!g) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, 0, s, "TSGI0128: cannot start the Node thread: %s", why);
        return;
    }
    if (rt.wd_timeout > 0) {
        sigset_t old;
        int rc;
        tsgi_block_signals(&old);
        rc = pthread_create(&rt.wd_thread, NULL, tsgi_watchdog_main, NULL);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (rc != 0)
            ap_log_error(APLOG_MARK, APLOG_CRIT, rc, s,
                         "TSGI0128: cannot create the watchdog thread: blocked event loops go unnoticed");
        rt.wd_started = rc == 0;
    }
    apr_pool_cleanup_register(pchild, NULL, tsgi_child_exit, apr_pool_cleanup_null);
}

/* ------------------------------------------------------------------------------------
 * The request thread
 * --------------------------------------------------------------------------------- */

/*
 * The application group a request runs in: found by name, or (on its first request)
 * the first group claimed, or a new one created with its own Node thread. NULL, with a
 * log line, when it cannot be had (the request gets 503).
 */
static tsgi_group_t *tsgi_group_get(request_rec *r, const char *name, const char *script)
{
    tsgi_group_t *g, *spare = NULL;
    char why[160] = "";
    int created = 0, count = 0;

    pthread_mutex_lock(&rt.mu);
    for (g = rt.groups; g; g = g->next) {
        if (!g->name) {
            spare = g;
            continue;
        }
        if (!strcmp(g->name, name))
            break;
    }
    if (!g && spare) {
        if ((spare->name = strdup(name)) != NULL)
            g = spare;
        else
            apr_snprintf(why, sizeof(why), "out of memory");
    }
    if (!g && !*why) {
        if (tsgi_hard_stop())
            apr_snprintf(why, sizeof(why), "the Apache child is stopping");
        else if (rt.init_state == RT_FAILED)
            apr_snprintf(why, sizeof(why), "%s", rt.init_failure);
        else if (rt.ngroups >= TSGI_MAX_GROUPS)
            apr_snprintf(why, sizeof(why), "this child already runs %d application groups (the most it will)",
                         rt.ngroups);
        else if ((g = tsgi_group_create_locked(name, 0, why, sizeof(why))) != NULL)
            created = 1;
    }
    count = rt.ngroups;
    pthread_mutex_unlock(&rt.mu);
    if (created) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      "TSGI0132: starting a Node environment for application group '%s' (%d in this child)", name,
                      count);
    }
    else if (!g) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "TSGI0133: cannot run %s in application group '%s': %s", script,
                      name, why);
    }
    return g;
}

/* Waits until the group's Environment is ready; returns 0, or an HTTP status with a log line. */
static int tsgi_wait_ready(request_rec *r, tsgi_group_t *g, const char *script)
{
    struct timespec until;
    int state;
    char failure[sizeof(g->failure)];

    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += TSGI_START_WAIT_SEC;
    pthread_mutex_lock(&rt.mu);
    while ((g->state == RT_STARTING || g->state == RT_STALLED) && !rt.stopping && !rt.hard_stop) {
        if (pthread_cond_timedwait(&rt.cv, &rt.mu, &until) == ETIMEDOUT)
            break;
    }
    state = g->state;
    memcpy(failure, g->failure, sizeof(failure));
    pthread_mutex_unlock(&rt.mu);
    if (state == RT_READY)
        return 0;
    if (state == RT_FAILED) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      "TSGI0100: embedded runtime not available in this child (%s): cannot run %s", failure, script);
    }
    else {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "TSGI0101: embedded runtime not ready after %d s: cannot run %s",
                      TSGI_START_WAIT_SEC, script);
    }
    return HTTP_SERVICE_UNAVAILABLE;
}

/*
 * Reads the next piece of the request body (at most TSGI_READ_BYTES) with the input
 * filters (HTTP_IN dechunks and enforces Content-Length and LimitRequestBody). Returns
 * IN_OPEN with *out set (or NULL when the filters returned nothing yet), IN_EOF at the
 * end of the body (*out may hold its last bytes), or IN_FAILED with `why` filled in and
 * *client_gone set when the failure means the client is gone: a read error or an early
 * end is never reported as the end of the body (P17).
 */
static int tsgi_read_chunk(request_rec *r, apr_bucket_brigade *bb, tsgi_chunk_t **out, int *client_gone, char *why,
                           size_t whylen)
{
    apr_status_t rv;
    apr_bucket *b;
    apr_off_t len = 0;
    apr_size_t n;
    int eos = 0;
    tsgi_chunk_t *chunk;

    *out = NULL;
    rv = ap_get_brigade(r->input_filters, bb, AP_MODE_READBYTES, APR_BLOCK_READ, TSGI_READ_BYTES);
    if (rv == APR_SUCCESS) {
        for (b = APR_BRIGADE_FIRST(bb); b != APR_BRIGADE_SENTINEL(bb); b = APR_BUCKET_NEXT(b)) {
            if (APR_BUCKET_IS_EOS(b)) {
                eos = 1;
                apr_bucket_delete(b); /* nothing may follow EOS; flatten only the data */
                break;
            }
        }
        rv = apr_brigade_length(bb, 1, &len);
    }
    if (rv != APR_SUCCESS) {
        char err[120];
        apr_brigade_cleanup(bb);
        if (rv == APR_ENOSPC || rv == AP_FILTER_ERROR) {
            /* LimitRequestBody (or a filter that already answered): the client is still there. */
            apr_snprintf(why, whylen, "the request body could not be read: %s",
                         rv == APR_ENOSPC ? "it is larger than LimitRequestBody" : "an input filter refused it");
        }
        else {
            *client_gone = 1;
            apr_snprintf(why, whylen, "the request body could not be read (the client is gone): %s (%d)",
                         apr_strerror(rv, err, sizeof(err)), rv);
        }
        r->connection->keepalive = AP_CONN_CLOSE;
        return IN_FAILED;
    }
    if (len > 0) {
        chunk = malloc(sizeof(*chunk) + (size_t)len);
        if (!chunk) {
            apr_brigade_cleanup(bb);
            apr_snprintf(why, whylen, "out of memory reading the request body");
            r->connection->keepalive = AP_CONN_CLOSE;
            return IN_FAILED;
        }
        n = (apr_size_t)len;
        rv = apr_brigade_flatten(bb, chunk->data, &n);
        if (rv != APR_SUCCESS) {
            char err[120];
            free(chunk);
            apr_brigade_cleanup(bb);
            *client_gone = 1;
            apr_snprintf(why, whylen, "the request body could not be read: %s (%d)", apr_strerror(rv, err, sizeof(err)),
                         rv);
            r->connection->keepalive = AP_CONN_CLOSE;
            return IN_FAILED;
        }
        chunk->next = NULL;
        chunk->len = n;
        *out = chunk;
    }
    apr_brigade_cleanup(bb);
    return eos ? IN_EOF : IN_OPEN;
}

/* The length of `s` as the inside of a JSON string; with `out`, also writes it there.
 * Bytes >= 0x80 pass as they are (the Node thread decodes the text as UTF-8, exactly as
 * it would decode the plain value); '"', '\\' and control characters are escaped. */
static size_t tsgi_json_escape(const char *s, char *out)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            if (out) {
                out[n] = '\\';
                out[n + 1] = (char)c;
            }
            n += 2;
        }
        else if (c < 0x20) {
            if (out) {
                memcpy(out + n, "\\u00", 4);
                out[n + 4] = hex[c >> 4];
                out[n + 5] = hex[c & 15];
            }
            n += 6;
        }
        else {
            if (out)
                out[n] = (char)c;
            n++;
        }
    }
    return n;
}

/* Copies what the Node thread will read into one malloc'd block: the environ as a JSON
 * object ({"NAME":"value",...}; a name given twice keeps its last value, as assigning
 * them one by one did) and the fixed strings. */
static tsgi_job_t *tsgi_make_job(const tsgi_embed_request_t *req)
{
    const apr_array_header_t *arr = apr_table_elts(req->environ);
    const apr_table_entry_t *ent = (const apr_table_entry_t *)arr->elts;
    const char *fixed[4] = {req->script, req->callable, req->application_group, req->url_scheme};
    size_t size = 0, off;
    tsgi_job_t *job;
    char *p;
    int i, n = 0;

    size = 3; /* {} and its NUL */
    for (i = 0; i < arr->nelts; i++) {
        if (!ent[i].key || !ent[i].val)
            continue;
        size += tsgi_json_escape(ent[i].key, NULL) + tsgi_json_escape(ent[i].val, NULL) + 6; /* "":"", */
        n++;
    }
    for (i = 0; i < 4; i++)
        size += strlen(fixed[i]) + 1;
    job = calloc(1, sizeof(*job));
    if (!job)
        return NULL;
    job->block = malloc(size);
    if (!job->block) {
        free(job);
        return NULL;
    }
    p = job->block;
    off = 0;
    p[off++] = '{';
    n = 0;
    for (i = 0; i < arr->nelts; i++) {
        if (!ent[i].key || !ent[i].val)
            continue;
        if (n++)
            p[off++] = ',';
        p[off++] = '"';
        off += tsgi_json_escape(ent[i].key, p + off);
        memcpy(p + off, "\":\"", 3);
        off += 3;
        off += tsgi_json_escape(ent[i].val, p + off);
        p[off++] = '"';
    }
    p[off++] = '}';
    job->env_json = p;
    job->env_json_len = off;
    p[off++] = '\0';
#define TSGI_COPY(dst, src)                 \
    do {                                    \
        size_t l_ = strlen(src) + 1;        \
        memcpy(p + off, (src), l_);         \
        (dst) = p + off;                    \
        off += l_;                          \
    } while (0)
    TSGI_COPY(job->script, fixed[0]);
    TSGI_COPY(job->callable, fixed[1]);
    TSGI_COPY(job->group, fixed[2]);
    TSGI_COPY(job->scheme, fixed[3]);
#undef TSGI_COPY
    job->reloading = req->script_reloading;
    job->refs = 1;
    job->chunks_tail = &job->chunks;
    job->in_tail = &job->in_chunks;
    if (pthread_mutex_init(&job->mu, NULL) != 0) {
        free(job->block);
        free(job);
        return NULL;
    }
    if (pthread_cond_init(&job->cv, NULL) != 0) {
        pthread_mutex_destroy(&job->mu);
        free(job->block);
        free(job);
        return NULL;
    }
    return job;
}

static void tsgi_apply_head(request_rec *r, tsgi_job_t *job)
{
    int i;
    r->status = job->status;
    r->status_line = apr_psprintf(r->pool, "%03d %s", job->status, job->reason);
    for (i = 0; i < job->header_n; i++) {
        const char *name = job->headers[i * 2], *value = job->headers[i * 2 + 1];
        if (!strcasecmp(name, "Content-Type"))
            ap_set_content_type(r, apr_pstrdup(r->pool, value));
        else
            apr_table_add(r->headers_out, name, value);
    }
}

int tsgi_embed_handle(const tsgi_embed_request_t *req)
{
    request_rec *r = req->r;
    conn_rec *c = r->connection;
    tsgi_job_t *job;
    apr_bucket_brigade *bb;
    int rc, has_body, head_applied = 0, state = JOB_RUNNING, client_gone = 0, aborted_js = 0, js_ended;
    const char *leave_why = NULL;
    apr_interval_time_t timeout = r->server->timeout;
    apr_time_t last_event;
    tsgi_group_t *g;

    if (!(g = tsgi_group_get(r, req->application_group, req->script)))
        return HTTP_SERVICE_UNAVAILABLE;
    if ((rc = tsgi_wait_ready(r, g, req->script)) != 0)
        return rc;
    /* The body is read later, piece by piece, as JS asks for it; chunked bodies too. */
    if ((rc = ap_setup_client_block(r, REQUEST_CHUNKED_DECHUNK)) != OK)
        return rc;
    has_body = ap_should_client_block(r);
    if (!(job = tsgi_make_job(req))) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "TSGI0103: out of memory for %s", req->script);
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    job->has_body = has_body;
    job->grp = g;
    job->refs = 2; /* this thread + the inbox */
    bb = apr_brigade_create(r->pool, c->bucket_alloc);

    pthread_mutex_lock(&rt.mu);
    if (g->state != RT_READY || !g->async_live || tsgi_hard_stop()) {
        pthread_mutex_unlock(&rt.mu);
        job->refs = 1;
        tsgi_job_release(job);
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "TSGI0104: the embedded runtime stopped: cannot run %s", req->script);
        return HTTP_SERVICE_UNAVAILABLE;
    }
    job->generation = g->generation;
    if (g->inbox_tail)
        g->inbox_tail->next = job;
    else
        g->inbox_head = job;
    g->inbox_tail = job;
    rc = uv_async_send(&g->async);
    pthread_mutex_unlock(&rt.mu);
    if (rc != 0)
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "TSGI0105: uv_async_send failed (%d)", rc);

    last_event = apr_time_now();
    pthread_mutex_lock(&job->mu);
    for (;;) {
        tsgi_chunk_t *chunks, *ch, *n;
        int apply_head, want_read;
        size_t written = 0;

        if (job->state == JOB_RUNNING && tsgi_hard_stop()) {
            leave_why = "the Apache child is stopping";
            break;
        }
        chunks = job->chunks;
        apply_head = job->head_set && !head_applied;
        want_read = job->in_credit > 0 && job->in_state == IN_OPEN;
        state = job->state;
        job->chunks = NULL;
        job->chunks_tail = &job->chunks;

        if (apply_head || chunks || want_read) {
            tsgi_chunk_t *in = NULL;
            int in_state = IN_OPEN;
            char in_why[sizeof(job->in_why)] = "";
            unsigned events = 0;

            pthread_mutex_unlock(&job->mu);
            last_event = apr_time_now();
            if (apply_head) {
                tsgi_apply_head(r, job); /* head fields are immutable once set */
                head_applied = 1;
            }
            for (ch = chunks; ch; ch = n) {
                n = ch->next;
                if (!client_gone && ap_rwrite(ch->data, (int)ch->len, r) < 0)
                    client_gone = 1;
                written += ch->len;
                free(ch);
            }
            /* Flushed (the core output filter blocks on a flush) before DRAIN tells JS to go on. */
            if (chunks && !client_gone && state == JOB_RUNNING && ap_rflush(r) < 0)
                client_gone = 1;
            if (client_gone && !leave_why)
                leave_why = "writing to the client failed (the client closed the connection)";
            if (want_read && !client_gone) {
                int gone_by_read = 0;
                in_state = tsgi_read_chunk(r, bb, &in, &gone_by_read, in_why, sizeof(in_why));
                if (gone_by_read) {
                    client_gone = 1;
                    leave_why = apr_pstrdup(r->pool, in_why);
                }
            }

            pthread_mutex_lock(&job->mu);
            job->out_queued -= written < job->out_queued ? written : job->out_queued;
            if (job->out_blocked && job->out_queued < TSGI_HIGH_WATER && !client_gone) {
                job->out_blocked = 0;
                events |= EV_DRAIN;
            }
            if (want_read && (in || in_state != IN_OPEN)) {
                if (in) {
                    *job->in_tail = in;
                    job->in_tail = &in->next;
                }
                job->in_credit--;
                if (in_state != IN_OPEN) {
                    job->in_state = in_state;
                    job->in_credit = 0;
                    apr_cpystrn(job->in_why, in_why, sizeof(job->in_why));
                }
                events |= EV_BODY;
            }
            else if (want_read && client_gone) {
                /* The read was not even tried: the body fails with the connection. */
                job->in_state = IN_FAILED;
                job->in_credit = 0;
                apr_cpystrn(job->in_why, leave_why, sizeof(job->in_why));
                events |= EV_BODY;
            }
            if (events) {
                pthread_mutex_unlock(&job->mu);
                tsgi_post_event(r, job, events);
                pthread_mutex_lock(&job->mu);
            }
            if (client_gone)
                break;
            continue; /* look again before sleeping */
        }
        if (state != JOB_RUNNING)
            break;
        if (!tsgi_hard_stop()) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_nsec += TSGI_WAIT_SLICE_MS * 1000000L;
            until.tv_sec += until.tv_nsec / 1000000000L;
            until.tv_nsec %= 1000000000L;
            pthread_cond_timedwait(&job->cv, &job->mu, &until);
        }
        if (job->state != JOB_RUNNING || job->chunks || (job->head_set && !head_applied) ||
            (job->in_credit > 0 && job->in_state == IN_OPEN))
            continue; /* work first: a response that is complete is not given up */
        if (apr_time_now() - last_event > timeout) {
            leave_why = "no response within the Timeout";
            break;
        }
        if (tsgi_client_gone(c)) {
            client_gone = 1;
            leave_why = "the client closed the connection";
            break;
        }
    }
    state = job->state;
    job->gone = 1;
    if (state == JOB_RUNNING) {
        /* JS is still at it: it hears why (the request's AbortSignal fires). */
        apr_cpystrn(job->abort_why, leave_why ? leave_why : "the request ended", sizeof(job->abort_why));
        aborted_js = 1;
    }
    js_ended = job->js_ended;
    pthread_mutex_unlock(&job->mu);
    /* After end() JS holds no event function for the job: nothing to tell it (the usual
     * case, and one hand-off to the Node thread less per request). */
    if (!js_ended || aborted_js)
        tsgi_post_event(r, job, aborted_js ? EV_ABORT | EV_DONE : EV_DONE);

    if (client_gone) {
        c->keepalive = AP_CONN_CLOSE;
        /* When JS was still running, the gateway logs the request's one line. */
        ap_log_rerror(APLOG_MARK, aborted_js ? APLOG_DEBUG : APLOG_INFO, 0, r,
                      "TSGI0106: client went away while %s was answering: %s", req->script,
                      leave_why ? leave_why : "writing to the client failed");
        if (head_applied && !c->aborted)
            tsgi_abort_response(r);
        /* Without a head, the status is for the access log: nobody reads the answer. */
        rc = head_applied ? OK : HTTP_BAD_REQUEST;
    }
    else if (state == JOB_DONE) {
        rc = OK;
    }
    else if (state == JOB_RUNNING) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "TSGI0107: %s: %s", req->script, leave_why);
        if (head_applied) {
            tsgi_abort_response(r);
            rc = OK;
        }
        else {
            rc = tsgi_hard_stop() ? HTTP_SERVICE_UNAVAILABLE : HTTP_GATEWAY_TIME_OUT;
        }
    }
    else if (job->fail_status == HTTP_GATEWAY_TIME_OUT) { /* the watchdog */
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "TSGI0109: %s: %s", req->script,
                      job->failure ? job->failure : "the Node event loop was blocked");
        if (head_applied) {
            tsgi_abort_response(r);
            rc = OK;
        }
        else {
            rc = HTTP_GATEWAY_TIME_OUT;
        }
    }
    else { /* JOB_FAILED */
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "TSGI0108: %s: %s", req->script,
                      job->failure ? job->failure : "the request failed");
        if (head_applied) {
            tsgi_abort_response(r);
            rc = OK;
        }
        else {
            rc = HTTP_BAD_GATEWAY;
        }
    }
    tsgi_job_release(job);
    return rc;
}
