/*
 * Embedded mode: a Node.js runtime (Debian's libnode108) inside each Apache child, as
 * shared/reference/embedding.md §2 describes and measured.
 *
 *   child_init   starts one Node thread per child, with every asynchronous signal
 *                blocked (SIGCHLD unblocked on that thread only, P6); it initialises node
 *                and V8 there and runs the bootstrap (dist/embedded/bootstrap.js), which
 *                registers the request handler through the "tsgi" Node-API binding.
 *   handler      (request thread) reads the request body, copies the request into a
 *                job, posts it to the inbox and wakes the Node thread (uv_async_send);
 *                then it waits on the job's condition variable and does all Apache I/O
 *                itself: head, body chunks, end. The Node thread never touches
 *                request_rec, pools or filters.
 *   Node thread  drains the inbox, calls the JS handler for each job; JS answers through
 *                head()/write()/end(), which fill the job under its mutex and signal.
 *
 * An Environment that ends (process.exit(), a fatal error) fails its in-flight jobs and
 * is re-created after a short pause; the child survives (P8).
 *
 * Not yet: request-body streaming and response backpressure (the body is read whole
 * before the app runs; response chunks queue without limit), client-disconnect events
 * to JS, the child_stopping hook, the event-loop watchdog. See docs/embedded.md.
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

/* ------------------------------------------------------------------------------------
 * Jobs: one request, shared by its request thread and the Node thread
 * --------------------------------------------------------------------------------- */

typedef struct tsgi_chunk {
    struct tsgi_chunk *next;
    size_t len;
    char data[];
} tsgi_chunk_t;

enum { JOB_RUNNING = 0, JOB_DONE = 1, JOB_FAILED = 2 };

typedef struct tsgi_job {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs; /* request thread, inbox/live lists, the JS external */

    /* In: one malloc'd block, immutable once posted. */
    char *block;
    const char **env; /* key, value, key, value ... */
    int env_n;        /* number of pairs */
    const char *script, *callable, *group, *scheme;
    int reloading;
    char *body; /* malloc'd, NULL without a body */
    size_t body_len;

    /* Out: under mu. */
    int head_set;
    int status;
    char *reason;
    char **headers; /* malloc'd name, value, ... */
    int header_n;   /* number of pairs */
    tsgi_chunk_t *chunks, **chunks_tail;
    int state;
    char *failure; /* why, for JOB_FAILED (malloc'd) */
    int gone;      /* the request thread has left */

    unsigned generation;
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
    for (i = 0; i < job->header_n * 2; i++)
        free(job->headers[i]);
    free(job->headers);
    free(job->reason);
    free(job->failure);
    free(job->body);
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

/* Ends a job from the Node side (with job->mu held). */
static void tsgi_job_finish_locked(tsgi_job_t *job, int state, const char *why)
{
    if (job->state != JOB_RUNNING)
        return;
    job->state = state;
    if (why && !job->failure)
        job->failure = strdup(why);
    pthread_cond_signal(&job->cv);
}

/* ------------------------------------------------------------------------------------
 * The runtime of this child
 * --------------------------------------------------------------------------------- */

enum { RT_OFF = 0, RT_STARTING, RT_READY, RT_FAILED, RT_STOPPED };

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int state;
    char failure[512];
    unsigned generation;
    int stopping;

    pthread_t thread;
    int thread_started;
    server_rec *server;
    int multithread, multiprocess;

    /* Node thread only, valid while an Environment runs. */
    uv_async_t async;
    int async_live; /* also read by request threads, under mu */
    napi_env env;
    napi_ref handler;
    napi_async_context actx;

    tsgi_job_t *inbox_head, *inbox_tail; /* under mu */
    tsgi_job_t *live;                    /* dispatched, not finished; under mu */
} rt = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, RT_OFF, "", 0, 0, 0, 0, NULL, 0, 0,
        {0}, 0, NULL, NULL, NULL, NULL, NULL, NULL};

static void tsgi_live_remove_locked(tsgi_job_t *job)
{
    if (job->live_prev)
        job->live_prev->live_next = job->live_next;
    else if (rt.live == job)
        rt.live = job->live_next;
    if (job->live_next)
        job->live_next->live_prev = job->live_prev;
    job->live_prev = job->live_next = NULL;
}

/* The Environment has ended: fail everything it had (with rt.mu held). */
static void tsgi_fail_all_locked(const char *why)
{
    tsgi_job_t *job, *next;
    for (job = rt.inbox_head; job; job = next) {
        next = job->next;
        pthread_mutex_lock(&job->mu);
        tsgi_job_finish_locked(job, JOB_FAILED, why);
        pthread_mutex_unlock(&job->mu);
        tsgi_job_release(job);
    }
    rt.inbox_head = rt.inbox_tail = NULL;
    for (job = rt.live; job; job = next) {
        next = job->live_next;
        job->live_prev = job->live_next = NULL;
        pthread_mutex_lock(&job->mu);
        tsgi_job_finish_locked(job, JOB_FAILED, why);
        pthread_mutex_unlock(&job->mu);
        tsgi_job_release(job);
    }
    rt.live = NULL;
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
    size_t argc = 1;
    napi_value argv[1];
    napi_valuetype type;
    NAPI_OK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    NAPI_OK(env, napi_typeof(env, argv[0], &type));
    if (argc < 1 || type != napi_function) {
        napi_throw_type_error(env, NULL, "setHandler(fn): fn must be a function");
        return NULL;
    }
    if (rt.handler) {
        NAPI_OK(env, napi_delete_reference(env, rt.handler));
        rt.handler = NULL;
    }
    NAPI_OK(env, napi_create_reference(env, argv[0], 1, &rt.handler));
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
    pthread_cond_signal(&job->cv);
    pthread_mutex_unlock(&job->mu);
    return NULL;
}

/* write(h, uint8array) -> true (backpressure is not implemented yet) */
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
    pthread_cond_signal(&job->cv);
    pthread_mutex_unlock(&job->mu);
    return result;
}

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
    was_live = job->live_prev || job->live_next || rt.live == job;
    if (was_live)
        tsgi_live_remove_locked(job);
    pthread_mutex_unlock(&rt.mu);

    pthread_mutex_lock(&job->mu);
    tsgi_job_finish_locked(job, ok ? JOB_DONE : JOB_FAILED, why ? why : "the application failed after its headers were sent");
    pthread_mutex_unlock(&job->mu);
    free(why);
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
    static const struct {
        const char *name;
        napi_callback fn;
    } fns[] = {
        {"setHandler", tsgi_js_set_handler}, {"head", tsgi_js_head}, {"write", tsgi_js_write},
        {"end", tsgi_js_end},                {"log", tsgi_js_log},
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

    if (rt.env == env)
        return exports;
    rt.env = env;
    rt.handler = NULL;
    NAPI_OK(env, napi_create_string_utf8(env, "mod_tsgi.request", NAPI_AUTO_LENGTH, &resource_name));
    NAPI_OK(env, napi_create_object(env, &resource));
    NAPI_OK(env, napi_async_init(env, resource, resource_name, &rt.actx));
    NAPI_OK(env, napi_get_uv_event_loop(env, &loop));
    if (uv_async_init(loop, &rt.async, tsgi_async_cb) != 0) {
        napi_throw_error(env, NULL, "tsgi binding: uv_async_init failed");
        return NULL;
    }
    pthread_mutex_lock(&rt.mu);
    rt.async_live = 1;
    pthread_mutex_unlock(&rt.mu);
    return exports;
}

/* Calls the JS handler for one job: handler(h, [k, v, ...], body|null, script, callable,
 * group, reloading, scheme). */
static void tsgi_dispatch(napi_env env, tsgi_job_t *job)
{
    napi_value argv[8], fn, global, result, ext, arr, v;
    napi_status st;
    bool pending = false;
    int i;
    const char *why = NULL;

    if (!rt.handler) {
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
    if (napi_create_array_with_length(env, (size_t)job->env_n * 2, &arr) != napi_ok) {
        why = "napi_create_array_with_length failed";
        goto fail;
    }
    for (i = 0; i < job->env_n * 2; i++) {
        if (napi_create_string_utf8(env, job->env[i], NAPI_AUTO_LENGTH, &v) != napi_ok ||
            napi_set_element(env, arr, (uint32_t)i, v) != napi_ok) {
            why = "building the environ failed";
            goto fail;
        }
    }
    argv[1] = arr;
    if (job->body) {
        if (napi_create_buffer_copy(env, job->body_len, job->body, NULL, &argv[2]) != napi_ok) {
            why = "napi_create_buffer_copy failed";
            goto fail;
        }
    }
    else if (napi_get_null(env, &argv[2]) != napi_ok) {
        why = "napi_get_null failed";
        goto fail;
    }
    if (napi_create_string_utf8(env, job->script, NAPI_AUTO_LENGTH, &argv[3]) != napi_ok ||
        napi_create_string_utf8(env, job->callable, NAPI_AUTO_LENGTH, &argv[4]) != napi_ok ||
        napi_create_string_utf8(env, job->group, NAPI_AUTO_LENGTH, &argv[5]) != napi_ok ||
        napi_get_boolean(env, job->reloading, &argv[6]) != napi_ok ||
        napi_create_string_utf8(env, job->scheme, NAPI_AUTO_LENGTH, &argv[7]) != napi_ok ||
        napi_get_reference_value(env, rt.handler, &fn) != napi_ok || napi_get_global(env, &global) != napi_ok) {
        why = "preparing the handler call failed";
        goto fail;
    }
    /* make_callback (not call_function): nextTicks and microtasks run after it. The
     * receiver must be an object (P1). */
    st = napi_make_callback(env, rt.actx, global, fn, 8, argv, &result);
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
    return;

fail:
    ap_log_error(APLOG_MARK, APLOG_ERR, 0, rt.server, "TSGI0111: cannot run %s: %s", job->script, why);
    pthread_mutex_lock(&rt.mu);
    if (job->live_prev || job->live_next || rt.live == job) {
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

/* The inbox has jobs (uv_async_send coalesces wake-ups: drain it all). */
static void tsgi_async_cb(uv_async_t *handle)
{
    napi_env env = rt.env;
    napi_handle_scope scope;
    tsgi_job_t *job, *next;
    (void)handle;

    pthread_mutex_lock(&rt.mu);
    job = rt.inbox_head;
    rt.inbox_head = rt.inbox_tail = NULL;
    /* Each job moves to the live list, keeping the inbox's reference; this callback
     * holds one more while it works on the job (a stopping child may fail the live list
     * from another thread meanwhile). */
    for (next = job; next; next = next->next) {
        tsgi_job_retain(next);
        next->live_prev = NULL;
        next->live_next = rt.live;
        if (rt.live)
            rt.live->live_prev = next;
        rt.live = next;
    }
    pthread_mutex_unlock(&rt.mu);

    for (; job; job = next) {
        int gone;
        next = job->next;
        job->next = NULL;
        pthread_mutex_lock(&job->mu);
        gone = job->gone;
        pthread_mutex_unlock(&job->mu);
        if (gone) {
            int was_live;
            pthread_mutex_lock(&rt.mu);
            was_live = job->live_prev || job->live_next || rt.live == job;
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
}

/* ------------------------------------------------------------------------------------
 * The Node thread
 * --------------------------------------------------------------------------------- */

static void tsgi_on_ready(void *data)
{
    (void)data;
    pthread_mutex_lock(&rt.mu);
    rt.state = RT_READY;
    pthread_cond_broadcast(&rt.cv);
    pthread_mutex_unlock(&rt.mu);
    ap_log_error(APLOG_MARK, APLOG_INFO, 0, rt.server, "TSGI0120: embedded runtime ready (Node %s, pid %ld)",
                 NODE_VERSION_STRING, (long)getpid());
}

static void tsgi_on_exit(void *data, int code)
{
    (void)data;
    ap_log_error(APLOG_MARK, APLOG_WARNING, 0, rt.server,
                 "TSGI0121: process.exit(%d) called by JavaScript: the Node environment of this "
                 "child stops and is re-created; the Apache child keeps running",
                 code);
}

static void tsgi_on_teardown(void *data, struct uv_loop_s *loop)
{
    (void)data;
    pthread_mutex_lock(&rt.mu);
    if (rt.async_live) {
        rt.async_live = 0;
        pthread_mutex_unlock(&rt.mu);
        uv_close((uv_handle_t *)&rt.async, NULL);
        uv_run(loop, UV_RUN_NOWAIT);
    }
    else {
        pthread_mutex_unlock(&rt.mu);
    }
    /* The references die with the Environment. */
    rt.handler = NULL;
    rt.env = NULL;
    rt.actx = NULL;
}

static const char tsgi_bootstrap_source[] =
    "'use strict';\n"
    "const path = " TSGI_BOOTSTRAP_JSON ";\n"
    "require('module').createRequire(path)(path).start(process._linkedBinding('tsgi'));\n";

static void *tsgi_node_main(void *arg)
{
    static const char *const argv[] = {"apache2"};
    sigset_t chld;
    char err[512] = "";
    tsgi_shim_hooks_t hooks = {NULL, tsgi_register_binding, tsgi_on_ready, tsgi_on_exit, tsgi_on_teardown};
    (void)arg;

    /* libuv reaps child processes from SIGCHLD: this thread only (P6). */
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    pthread_sigmask(SIG_UNBLOCK, &chld, NULL);

    if (tsgi_shim_process_init(1, argv, TSGI_PLATFORM_THREADS, err, sizeof(err)) != 0) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, 0, rt.server, "TSGI0122: cannot start the embedded runtime: %s", err);
        pthread_mutex_lock(&rt.mu);
        rt.state = RT_FAILED;
        apr_cpystrn(rt.failure, err, sizeof(rt.failure));
        pthread_cond_broadcast(&rt.cv);
        pthread_mutex_unlock(&rt.mu);
        return NULL;
    }

    for (;;) {
        int was_ready, rc;
        rc = tsgi_shim_run(tsgi_bootstrap_source, &hooks, err, sizeof(err));

        pthread_mutex_lock(&rt.mu);
        was_ready = rt.state == RT_READY;
        rt.generation++;
        tsgi_fail_all_locked("the Node environment ended");
        if (rt.stopping) {
            rt.state = RT_STOPPED;
            pthread_cond_broadcast(&rt.cv);
            pthread_mutex_unlock(&rt.mu);
            break;
        }
        if (!was_ready) {
            /* The bootstrap itself failed: retrying would only fail again. */
            rt.state = RT_FAILED;
            apr_snprintf(rt.failure, sizeof(rt.failure), "%s", rc ? err : "the bootstrap did not start");
            pthread_cond_broadcast(&rt.cv);
            pthread_mutex_unlock(&rt.mu);
            ap_log_error(APLOG_MARK, APLOG_CRIT, 0, rt.server, "TSGI0123: the embedded runtime failed to start: %s",
                         rt.failure);
            break;
        }
        rt.state = RT_STARTING;
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
            rt.state = RT_STOPPED;
            pthread_mutex_unlock(&rt.mu);
            break;
        }
        pthread_mutex_unlock(&rt.mu);
        ap_log_error(APLOG_MARK, APLOG_WARNING, 0, rt.server, "TSGI0124: re-creating the Node environment");
    }
    tsgi_shim_teardown_process();
    return NULL;
}

/* pchild cleanup: stop Node, join its thread (embedding.md §2.1). */
static apr_status_t tsgi_child_exit(void *data)
{
    (void)data;
    pthread_mutex_lock(&rt.mu);
    rt.stopping = 1;
    tsgi_fail_all_locked("the Apache child is stopping");
    pthread_cond_broadcast(&rt.cv);
    pthread_mutex_unlock(&rt.mu);
    tsgi_shim_stop(1);
    if (rt.thread_started) {
        int rc = pthread_join(rt.thread, NULL);
        if (rc != 0)
            ap_log_error(APLOG_MARK, APLOG_ERR, rc, rt.server, "TSGI0125: pthread_join of the Node thread failed");
        rt.thread_started = 0;
    }
    return APR_SUCCESS;
}

int tsgi_embed_post_config(apr_pool_t *pconf, server_rec *s)
{
    struct stat st;
    (void)pconf;
    /* Statics outlive graceful restarts (P16): reset what belongs to a generation. */
    rt.state = RT_OFF;
    rt.failure[0] = '\0';
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

void tsgi_embed_child_init(apr_pool_t *pchild, server_rec *s)
{
    sigset_t all, old;
    pthread_attr_t attr;
    int rc, threaded = 0, forked = 0;

    rt.server = s;
    rt.stopping = 0;
    if (ap_mpm_query(AP_MPMQ_IS_THREADED, &threaded) != APR_SUCCESS)
        threaded = 0;
    if (ap_mpm_query(AP_MPMQ_IS_FORKED, &forked) != APR_SUCCESS)
        forked = 0;
    rt.multithread = threaded != AP_MPMQ_NOT_SUPPORTED;
    rt.multiprocess = forked != AP_MPMQ_NOT_SUPPORTED;

    pthread_mutex_lock(&rt.mu);
    rt.state = RT_STARTING;
    pthread_mutex_unlock(&rt.mu);

    /* The Node thread (and the platform and libuv threads it creates) inherit a mask
     * with every asynchronous signal blocked: Apache's signals stay Apache's (§2.3). */
    sigfillset(&all);
    sigdelset(&all, SIGSEGV);
    sigdelset(&all, SIGBUS);
    sigdelset(&all, SIGFPE);
    sigdelset(&all, SIGILL);
    if ((rc = pthread_attr_init(&attr)) != 0 || (rc = pthread_attr_setstacksize(&attr, TSGI_NODE_STACK)) != 0) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, rc, s, "TSGI0127: pthread_attr for the Node thread failed");
        rt.state = RT_FAILED;
        apr_cpystrn(rt.failure, "pthread_attr failed", sizeof(rt.failure));
        return;
    }
    pthread_sigmask(SIG_BLOCK, &all, &old);
    rc = pthread_create(&rt.thread, &attr, tsgi_node_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, rc, s, "TSGI0128: cannot create the Node thread");
        rt.state = RT_FAILED;
        apr_cpystrn(rt.failure, "cannot create the Node thread", sizeof(rt.failure));
        return;
    }
    rt.thread_started = 1;
    apr_pool_cleanup_register(pchild, NULL, tsgi_child_exit, apr_pool_cleanup_null);
}

/* ------------------------------------------------------------------------------------
 * The request thread
 * --------------------------------------------------------------------------------- */

/* Waits until the runtime is ready; returns 0, or an HTTP status with a log line. */
static int tsgi_wait_ready(request_rec *r, const char *script)
{
    struct timespec until;
    int state;

    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += TSGI_START_WAIT_SEC;
    pthread_mutex_lock(&rt.mu);
    while (rt.state == RT_STARTING && !rt.stopping) {
        if (pthread_cond_timedwait(&rt.cv, &rt.mu, &until) == ETIMEDOUT)
            break;
    }
    state = rt.state;
    pthread_mutex_unlock(&rt.mu);
    if (state == RT_READY)
        return 0;
    if (state == RT_FAILED) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      "TSGI0100: embedded runtime not available in this child (%s): cannot run %s", rt.failure,
                      script);
    }
    else {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "TSGI0101: embedded runtime not ready after %d s: cannot run %s",
                      TSGI_START_WAIT_SEC, script);
    }
    return HTTP_SERVICE_UNAVAILABLE;
}

/* Reads the whole request body (LimitRequestBody applies). 0 or an HTTP status. */
static int tsgi_read_body(request_rec *r, char **body, size_t *body_len)
{
    int rc;
    size_t cap = 0, len = 0;
    char *buf = NULL;

    *body = NULL;
    *body_len = 0;
    if ((rc = ap_setup_client_block(r, REQUEST_CHUNKED_DECHUNK)) != OK)
        return rc;
    if (!ap_should_client_block(r))
        return 0;
    for (;;) {
        long n;
        if (cap - len < 8192) {
            char *bigger;
            cap = cap ? cap * 2 : 65536;
            if (!(bigger = realloc(buf, cap))) {
                free(buf);
                return HTTP_INTERNAL_SERVER_ERROR;
            }
            buf = bigger;
        }
        n = ap_get_client_block(r, buf + len, cap - len);
        if (n == 0)
            break;
        if (n < 0) {
            /* A read error is an abort, never an end of body (P17). */
            free(buf);
            ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, "TSGI0102: reading the request body failed");
            return HTTP_BAD_REQUEST;
        }
        len += (size_t)n;
    }
    *body = buf ? buf : malloc(1);
    if (!*body)
        return HTTP_INTERNAL_SERVER_ERROR;
    *body_len = len;
    return 0;
}

/* Copies what the Node thread will read into one malloc'd block. */
static tsgi_job_t *tsgi_make_job(const tsgi_embed_request_t *req)
{
    const apr_array_header_t *arr = apr_table_elts(req->environ);
    const apr_table_entry_t *ent = (const apr_table_entry_t *)arr->elts;
    const char *fixed[4] = {req->script, req->callable, req->application_group, req->url_scheme};
    size_t size = 0, off;
    tsgi_job_t *job;
    char *p;
    int i, n = 0;

    for (i = 0; i < arr->nelts; i++) {
        if (!ent[i].key || !ent[i].val)
            continue;
        size += strlen(ent[i].key) + strlen(ent[i].val) + 2;
        n++;
    }
    for (i = 0; i < 4; i++)
        size += strlen(fixed[i]) + 1;
    job = calloc(1, sizeof(*job));
    if (!job)
        return NULL;
    job->block = malloc(size + sizeof(char *) * (size_t)n * 2 + sizeof(char *));
    if (!job->block) {
        free(job);
        return NULL;
    }
    job->env = (const char **)job->block;
    p = job->block + sizeof(char *) * (size_t)n * 2 + sizeof(char *);
    off = 0;
#define TSGI_COPY(dst, src)                 \
    do {                                    \
        size_t l_ = strlen(src) + 1;        \
        memcpy(p + off, (src), l_);         \
        (dst) = p + off;                    \
        off += l_;                          \
    } while (0)
    n = 0;
    for (i = 0; i < arr->nelts; i++) {
        if (!ent[i].key || !ent[i].val)
            continue;
        TSGI_COPY(job->env[n * 2], ent[i].key);
        TSGI_COPY(job->env[n * 2 + 1], ent[i].val);
        n++;
    }
    job->env_n = n;
    TSGI_COPY(job->script, fixed[0]);
    TSGI_COPY(job->callable, fixed[1]);
    TSGI_COPY(job->group, fixed[2]);
    TSGI_COPY(job->scheme, fixed[3]);
#undef TSGI_COPY
    job->reloading = req->script_reloading;
    job->refs = 1;
    job->chunks_tail = &job->chunks;
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

/* A response that cannot be completed must not look complete: a 502 error bucket makes
 * the chunk filter drop the last-chunk and the connection close (as mod_proxy does). */
static void tsgi_abort_response(request_rec *r)
{
    conn_rec *c = r->connection;
    apr_bucket_brigade *bb = apr_brigade_create(r->pool, c->bucket_alloc);
    APR_BRIGADE_INSERT_TAIL(bb, ap_bucket_error_create(HTTP_BAD_GATEWAY, NULL, r->pool, c->bucket_alloc));
    APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_eos_create(c->bucket_alloc));
    if (ap_pass_brigade(r->output_filters, bb) != APR_SUCCESS)
        c->aborted = 1;
    c->keepalive = AP_CONN_CLOSE;
}

int tsgi_embed_handle(const tsgi_embed_request_t *req)
{
    request_rec *r = req->r;
    tsgi_job_t *job;
    char *body;
    size_t body_len;
    int rc, head_applied = 0, state = JOB_RUNNING, client_gone = 0;
    apr_interval_time_t timeout = r->server->timeout;
    apr_time_t last_event;

    if ((rc = tsgi_wait_ready(r, req->script)) != 0)
        return rc;
    if ((rc = tsgi_read_body(r, &body, &body_len)) != 0)
        return rc;
    if (!(job = tsgi_make_job(req))) {
        free(body);
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "TSGI0103: out of memory for %s", req->script);
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    job->body = body;
    job->body_len = body_len;
    job->refs = 2; /* this thread + the inbox */

    pthread_mutex_lock(&rt.mu);
    if (rt.state != RT_READY || !rt.async_live) {
        pthread_mutex_unlock(&rt.mu);
        job->refs = 1;
        tsgi_job_release(job);
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "TSGI0104: the embedded runtime stopped: cannot run %s", req->script);
        return HTTP_SERVICE_UNAVAILABLE;
    }
    job->generation = rt.generation;
    if (rt.inbox_tail)
        rt.inbox_tail->next = job;
    else
        rt.inbox_head = job;
    rt.inbox_tail = job;
    rc = uv_async_send(&rt.async);
    pthread_mutex_unlock(&rt.mu);
    if (rc != 0)
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "TSGI0105: uv_async_send failed (%d)", rc);

    last_event = apr_time_now();
    pthread_mutex_lock(&job->mu);
    for (;;) {
        tsgi_chunk_t *chunks = job->chunks, *c, *n;
        int apply_head = job->head_set && !head_applied;
        state = job->state;
        job->chunks = NULL;
        job->chunks_tail = &job->chunks;

        if (apply_head || chunks) {
            pthread_mutex_unlock(&job->mu);
            last_event = apr_time_now();
            if (apply_head) {
                tsgi_apply_head(r, job); /* head fields are immutable once set */
                head_applied = 1;
            }
            for (c = chunks; c; c = n) {
                n = c->next;
                if (!client_gone && ap_rwrite(c->data, (int)c->len, r) < 0)
                    client_gone = 1;
                free(c);
            }
            if (!client_gone && state == JOB_RUNNING && ap_rflush(r) < 0)
                client_gone = 1;
            pthread_mutex_lock(&job->mu);
            if (client_gone)
                break;
            continue; /* look again before sleeping */
        }
        if (state != JOB_RUNNING)
            break;
        {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_sec += 1;
            pthread_cond_timedwait(&job->cv, &job->mu, &until);
        }
        if (rt.stopping || apr_time_now() - last_event > timeout) {
            state = job->state;
            if (state == JOB_RUNNING)
                break;
        }
    }
    job->gone = 1;
    pthread_mutex_unlock(&job->mu);

    if (client_gone) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, "TSGI0106: client went away while %s was answering", req->script);
        rc = OK;
    }
    else if (state == JOB_DONE) {
        rc = OK;
    }
    else if (state == JOB_RUNNING) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "TSGI0107: %s: %s", req->script,
                      rt.stopping ? "the Apache child is stopping" : "no response within the Timeout");
        if (head_applied) {
            tsgi_abort_response(r);
            rc = OK;
        }
        else {
            rc = rt.stopping ? HTTP_SERVICE_UNAVAILABLE : HTTP_GATEWAY_TIME_OUT;
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
