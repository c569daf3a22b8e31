/*
 * The boundary between the Apache side (mod_tsgi.c) and the runtime that runs the
 * applications. Two implementations: embed_none.c (no runtime: every request is a 503
 * with a clear log line) and, in embedded builds, the libnode host.
 */
#ifndef TSGI_EMBED_H
#define TSGI_EMBED_H

#include "httpd.h"
#include "apr_tables.h"

/* One request, as the handler hands it over; everything lives in r->pool. */
typedef struct {
    request_rec *r;
    apr_table_t *environ;          /* CGI variables (SCRIPT_NAME, PATH_INFO, HTTP_*, SetEnv ...) */
    const char *url_scheme;        /* "http" or "https" */
    const char *script;            /* absolute path of the .tsgi file */
    const char *callable;          /* export name, e.g. "application" */
    const char *application_group; /* "" for %{GLOBAL} */
    int script_reloading;          /* 1: reload the script when its file changes */
} tsgi_embed_request_t;

/* Process-wide settings of the runtime (main server config only). */
typedef struct {
    int event_loop_timeout; /* TSGIEventLoopTimeout: seconds, 0 = no watchdog */
} tsgi_embed_config_t;

#define TSGI_DEFAULT_EVENT_LOOP_TIMEOUT 30

/* post_config, in the parent: per-generation state only (nothing Node-related, P2). */
int tsgi_embed_post_config(apr_pool_t *pconf, server_rec *s);

/* child_init, in each child after fork and privilege drop: starts the runtime. */
void tsgi_embed_child_init(apr_pool_t *pchild, server_rec *s, const tsgi_embed_config_t *cfg);

/* child_stopping (Apache >= 2.4.49): graceful=0 makes waiting requests give up now. */
void tsgi_embed_child_stopping(apr_pool_t *pchild, int graceful);

/* Runs one request; returns OK or an HTTP status for Apache to answer with. */
int tsgi_embed_handle(const tsgi_embed_request_t *req);

#endif
