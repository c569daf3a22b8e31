/*
 * Daemon mode: the boundary between mod_tsgi.c (directives, mapping, the handler), the
 * Apache parent's supervisor of the daemon pools (daemon_supervisor.c), and the Apache
 * child's side of the wire (daemon_client.c). The wire itself is docs/protocol.md,
 * encoded and parsed by wire.c.
 *
 * Lifetimes: a tsgi_daemon_group_t is made while the configuration is read (pconf of
 * that generation). post_config fills in socket_path and secret in the parent; children
 * are forked afterwards and see the filled-in copy.
 */
#ifndef TSGI_DAEMON_H
#define TSGI_DAEMON_H

#include "httpd.h"
#include "http_config.h"
#include "apr_tables.h"

#include <sys/types.h>

#include "embed.h" /* tsgi_embed_request_t: the request record both modes run */

#define TSGI_SECRET_LEN 32

/* Option defaults (docs/directives.md). Timeouts are on by default, unlike mod_wsgi. */
#define TSGI_DAEMON_DEFAULT_PROCESSES 1
#define TSGI_DAEMON_DEFAULT_THREADS 15
#define TSGI_DAEMON_DEFAULT_REQUEST_TIMEOUT 60  /* s */
#define TSGI_DAEMON_DEFAULT_GRACEFUL_TIMEOUT 15 /* s */
#define TSGI_DAEMON_DEFAULT_STARTUP_TIMEOUT 30  /* s */
#define TSGI_DAEMON_DEFAULT_QUEUE_TIMEOUT 30    /* s */
#define TSGI_DAEMON_DEFAULT_CONNECT_TIMEOUT 15  /* s */
#define TSGI_DAEMON_DEFAULT_LISTEN_BACKLOG 100
/* socket-timeout defaults to the server's Timeout. */

typedef struct tsgi_daemon_group {
    /* ---- TSGIDaemonProcess name [option=value ...] ---------------------------------- */
    const char *name;
    server_rec *server;      /* the server or VirtualHost that defines it: its error log */
    const char *defined_at;  /* "file:line", for messages */
    int processes;
    int processes_given;     /* processes= was written (tsgi.multiprocess, as mod_wsgi) */
    int threads;             /* concurrent requests per process */
    const char *user;        /* as written (name or #uid); NULL: Apache's User */
    const char *group;       /* as written (name or #gid); NULL: the user's group */
    uid_t uid;               /* resolved at config time (only used when Apache runs as root) */
    gid_t gid;
    const char *home;        /* working directory; NULL: the user's home or / */
    int maximum_requests;    /* 0: never */
    int inactivity_timeout;  /* s, 0: never */
    int request_timeout;     /* s, 0: never */
    int graceful_timeout;    /* s */
    int startup_timeout;     /* s */
    int queue_timeout;       /* s, 0: never */
    int connect_timeout;     /* s */
    int socket_timeout;      /* s; 0 until post_config: then the server's Timeout */
    int listen_backlog;
    const char *display_name; /* process title; NULL: "tsgi-daemon (NAME)" */
    const char *node;         /* node executable; NULL: `node` found on PATH at spawn time */
    apr_array_header_t *node_options; /* of const char *: extra node argv before the script */
    apr_table_t *env;         /* env=NAME=VALUE and env-file= entries, in order */
    const char *lang;         /* lang=: LANG and LC_ALL of the daemons */
    /* Scripts routed to this group by TSGIScriptAlias ... process-group= (file targets)
     * or a server-level TSGIProcessGroup: the launch config's "preload". Filled by
     * mod_tsgi.c's post_config before tsgi_daemon_post_config runs; of const char *. */
    apr_array_header_t *preload;

    /* ---- filled in by tsgi_daemon_post_config in the parent ------------------------ */
    const char *socket_path;
    unsigned char secret[TSGI_SECRET_LEN];
    int ready;                /* 1 when socket_path and secret are valid */
} tsgi_daemon_group_t;

/* ---- configuration (daemon_config.c) ------------------------------------------------ */

/* TSGIDaemonProcess: parses and registers a group; returns NULL or the error message
 * ("TSGIDaemonProcess app: threads=abc: not a number ..."). */
const char *tsgi_daemon_cmd(cmd_parms *cmd, int argc, char *const argv[]);

/* TSGISocketPrefix: main server only. */
const char *tsgi_daemon_cmd_socket_prefix(cmd_parms *cmd, const char *prefix);

/* Whether `s` can name a group: letters, digits, '_', '-' and '.'. */
int tsgi_daemon_is_group_name(const char *s);

/* The group of that name in the configuration being read or in force; NULL if none. */
tsgi_daemon_group_t *tsgi_daemon_find(const char *name);

/* All groups of the configuration in force (of tsgi_daemon_group_t *), or NULL. */
const apr_array_header_t *tsgi_daemon_groups(void);

/* pre_config: forget the previous generation's groups. */
void tsgi_daemon_pre_config(apr_pool_t *pconf);

/* The socket prefix in force: TSGISocketPrefix or DefaultRuntimeDir/tsgi. */
const char *tsgi_daemon_socket_prefix(apr_pool_t *p);

/* ---- the Apache parent (daemon_supervisor.c) ---------------------------------------- */

/* post_config: on the real start (not the first config pass, not -t), creates the
 * sockets and secrets (kept across graceful restarts), spawns one supervisor (a node
 * process running dist/daemon-mode.js) per group, and retires the previous generation's
 * supervisors once their successors are ready. */
int tsgi_daemon_post_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp, server_rec *s);

/* ---- the Apache child (daemon_client.c) ------------------------------------------- */

/* child_init: the per-group connection pools. */
void tsgi_daemon_child_init(apr_pool_t *pchild, server_rec *s);

/* Forwards one request to the group's daemons and relays the response; returns OK or an
 * HTTP status for Apache to answer with (502, 503, 504, 500, 400). */
int tsgi_daemon_forward(const tsgi_embed_request_t *req, tsgi_daemon_group_t *group);

/* SetHandler tsgi-status: every group's status, as HTML (or JSON with ?json). */
int tsgi_daemon_status_handler(request_rec *r);

#endif
