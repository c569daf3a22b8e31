/*
 * Daemon mode, the Apache parent's side: for each TSGIDaemonProcess group it owns the
 * listening sockets and the secret, starts the group's Node supervisor
 * (dist/daemon-mode.js --apache, "THE APACHE->DAEMON LAUNCH CONTRACT" in docs/daemon.md
 * and native/daemon.h) and keeps it running.
 *
 * Why the state is retained (ap_retained_data_*) instead of living in pconf: a graceful
 * restart clears pconf, but the children of the old generation keep serving requests
 * and keep connecting to the group's socket. So the socket (same path, same listening
 * descriptor) and the secret outlive generations; only the supervisor is replaced, and
 * the new one retires the old one once its own workers are ready.
 *
 * Supervision uses APR's "other child" registry, which every Unix MPM feeds from its
 * waitpid() loop: a supervisor that dies unexpectedly is logged and respawned at once,
 * with a start delay that doubles while it keeps dying young. Nothing Node-related ever
 * runs in this process: it forks and execs node.
 *
 * Only data is retained, never a function pointer: mod_so unloads and reloads this module
 * at every restart, possibly at another address. So the other-child registrations and
 * the stop cleanup live in each generation's pconf (registered after LoadModule's
 * unload cleanup, they run before it) and are made again by every post_config.
 */
#include "httpd.h"
#include "http_config.h"
#include "http_core.h"
#include "http_log.h"
#include "http_main.h"
#include "ap_mpm.h"
#include "mpm_common.h"
#include "unixd.h"
#include "util_time.h"

#include "apr_base64.h"
#include "apr_file_io.h"
#include "apr_portable.h"
#include "apr_strings.h"
#include "apr_thread_proc.h"

#include "daemon.h"
#include "tsgi_paths.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

APLOG_USE_MODULE(tsgi);

#define TSGILOG(n) "TSGI" #n ": "
#define TSGI_RETAINED_KEY "mod_tsgi_daemon_supervisor"
#define TSGI_DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/* Crash-loop damping: a supervisor that dies is replaced at once; if the replacement
 * dies within TSGI_YOUNG of its start too, the next start waits TSGI_DELAY_MIN, doubling
 * up to TSGI_DELAY_MAX while they keep dying young. */
#define TSGI_YOUNG apr_time_from_sec(10)
#define TSGI_DELAY_MIN apr_time_from_msec(500)
#define TSGI_DELAY_MAX apr_time_from_sec(30)

typedef struct tsgi_rgroup tsgi_rgroup_t;
typedef struct tsgi_retained tsgi_retained_t;

/* One supervisor process. */
typedef struct tsgi_sup {
    tsgi_rgroup_t *rg;
    apr_proc_t proc;
    apr_time_t started; /* when node starts (the spawn time plus its start delay) */
    pid_t replaces;     /* the previous generation's supervisor it is to retire, or 0 */
    int retired;        /* replaced or its group removed: its exit is expected */
    int alive;
    struct tsgi_sup *next; /* in tsgi_retained_t.sups (live) or .free */
} tsgi_sup_t;

/* A group as the parent keeps it across generations. */
struct tsgi_rgroup {
    const char *name;
    int index;
    const char *socket_path;
    const char *status_path;
    int data_fd;
    int status_fd;
    unsigned char secret[TSGI_SECRET_LEN];
    tsgi_sup_t *current;          /* the supervisor of the configuration in force */
    apr_interval_time_t delay;    /* the next start delay */
    int young_deaths;             /* consecutive deaths within TSGI_YOUNG of the start */
    tsgi_daemon_group_t *config;  /* in the pconf in force; NULL while it is being replaced */
    uid_t uid;                    /* what the current supervisor runs as */
    int graceful_timeout;         /* s, of the configuration last in force (for stop) */
    int removed;
    tsgi_rgroup_t *next;
};

struct tsgi_retained {
    /* Unmanaged: it must outlive every pconf, including the last one, whose cleanup
     * (tsgi_generation_ends) still uses it when the parent exits and then destroys it
     * (a child of the process pool would be destroyed before pconf). */
    apr_pool_t *pool;
    apr_pool_t *pconf; /* the generation in force: other-child registrations live here */
    pid_t parent_pid;
    int next_index;
    tsgi_rgroup_t *groups;
    tsgi_sup_t *sups; /* every live supervisor, current or retired */
    tsgi_sup_t *free;
    const char *daemon_js;
};

static tsgi_retained_t *tsgi_rt;

static int tsgi_spawn(tsgi_retained_t *rt, tsgi_rgroup_t *rg, pid_t replaces, apr_pool_t *ptemp);

/* ---- small helpers ------------------------------------------------------------------ */

static const char *tsgi_json_str(apr_pool_t *p, const char *s)
{
    apr_size_t n = 2;
    const unsigned char *c;
    char *out, *o;
    for (c = (const unsigned char *)s; *c; c++)
        n += (*c < 0x20) ? 6 : (*c == '"' || *c == '\\') ? 2 : 1;
    out = o = apr_palloc(p, n + 1);
    *o++ = '"';
    for (c = (const unsigned char *)s; *c; c++) {
        if (*c == '"' || *c == '\\') {
            *o++ = '\\';
            *o++ = (char)*c;
        }
        else if (*c < 0x20) {
            apr_snprintf(o, 7, "\\u%04x", *c);
            o += 6;
        }
        else {
            *o++ = (char)*c;
        }
    }
    *o++ = '"';
    *o = '\0';
    return out;
}

/*
 * The MPMs reap with apr_proc_wait_all_procs and hand APR's one number on to the other-
 * child callback: the exit code or the signal number, without saying which (a raw wait
 * status only arrives through apr_proc_other_child_refresh_all, at stop). So the log says
 * both readings; the daemons' own log says which it was when they could log at all.
 */
static const char *tsgi_describe_status(apr_pool_t *p, int status)
{
    if (status == -1)
        return "was lost (no longer our child)";
    if (status > 255 && (status & 0x7f) == 0)
        return apr_psprintf(p, "exited with code %d", (status >> 8) & 0xff);
    if (status == 0)
        return "exited with code 0";
    if (status < NSIG)
        return apr_psprintf(p, "ended with exit code or signal %d (%s)", status, strsignal(status));
    return apr_psprintf(p, "exited with code %d", status);
}

static int tsgi_mpm_stopping(void)
{
    int state = AP_MPMQ_RUNNING;
    if (ap_mpm_query(AP_MPMQ_MPM_STATE, &state) != APR_SUCCESS)
        return 0;
    return state == AP_MPMQ_STOPPING;
}

/* `name` on PATH, or NULL. */
static const char *tsgi_which(apr_pool_t *p, const char *name)
{
    const char *path = getenv("PATH");
    char *copy, *dir, *last;
    if (strchr(name, '/'))
        return access(name, X_OK) == 0 ? name : NULL;
    copy = apr_pstrdup(p, path && *path ? path : TSGI_DEFAULT_PATH);
    for (dir = apr_strtok(copy, ":", &last); dir; dir = apr_strtok(NULL, ":", &last)) {
        const char *full = apr_pstrcat(p, *dir ? dir : ".", "/", name, NULL);
        struct stat st;
        if (stat(full, &st) == 0 && S_ISREG(st.st_mode) && access(full, X_OK) == 0)
            return full;
    }
    return NULL;
}

static uid_t tsgi_group_uid(const tsgi_daemon_group_t *g)
{
    return g->user ? g->uid : ap_unixd_config.user_id;
}

static gid_t tsgi_group_gid(const tsgi_daemon_group_t *g)
{
    return (g->user || g->group) ? g->gid : ap_unixd_config.group_id;
}

static const char *tsgi_loglevel_name(server_rec *s)
{
    int level = ap_get_server_module_loglevel(s, APLOG_MODULE_INDEX);
    if (level <= APLOG_ERR)
        return "error";
    if (level == APLOG_WARNING)
        return "warn";
    if (level <= APLOG_INFO)
        return "info";
    return "debug";
}

/* ---- sockets ------------------------------------------------------------------------ */

/* A Unix stream socket at `path`, bound with mode 0600, owned by `owner` (when we are
 * root), listening. Returns the descriptor (close-on-exec) or -1 with a logged error. */
static int tsgi_listen_unix(server_rec *s, const tsgi_rgroup_t *rg, const char *path, uid_t owner, int backlog)
{
    struct sockaddr_un sa;
    mode_t old;
    int fd, rc, err;

    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(sa.sun_path)) {
        ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_ERR, 0, s,
                     TSGILOG(0201) "group %s: socket path %s is longer than %d bytes: set a shorter "
                     "TSGISocketPrefix",
                     rg->name, path, (int)sizeof(sa.sun_path) - 1);
        return -1;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_ERR, errno, s, TSGILOG(0202) "group %s: socket()", rg->name);
        return -1;
    }
    if (unlink(path) != 0 && errno != ENOENT) {
        err = errno;
        ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_ERR, err, s, TSGILOG(0203) "group %s: cannot remove stale %s",
                     rg->name, path);
        close(fd);
        return -1;
    }
    /* Never reachable by others, not even between bind() and chmod(). */
    old = umask(0077);
    rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    err = errno;
    umask(old);
    if (rc != 0) {
        ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_ERR, err, s,
                     TSGILOG(0204) "group %s: cannot bind %s (does its directory exist? TSGISocketPrefix)",
                     rg->name, path);
        close(fd);
        return -1;
    }
    if (chmod(path, 0600) != 0 || (geteuid() == 0 && chown(path, owner, (gid_t)-1) != 0)) {
        ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_ERR, errno, s,
                     TSGILOG(0205) "group %s: cannot set mode 0600 and owner %ld of %s", rg->name, (long)owner, path);
        close(fd);
        unlink(path);
        return -1;
    }
    if (listen(fd, backlog) != 0) {
        ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_ERR, errno, s, TSGILOG(0206) "group %s: listen(%s)", rg->name,
                     path);
        close(fd);
        unlink(path);
        return -1;
    }
    return fd;
}

static void tsgi_close_group_sockets(tsgi_rgroup_t *rg)
{
    if (rg->data_fd >= 0) {
        close(rg->data_fd);
        rg->data_fd = -1;
        unlink(rg->socket_path);
    }
    if (rg->status_fd >= 0) {
        close(rg->status_fd);
        rg->status_fd = -1;
        unlink(rg->status_path);
    }
}

/* ---- supervisors -------------------------------------------------------------------- */

static void tsgi_sup_unlink(tsgi_retained_t *rt, tsgi_sup_t *sup)
{
    tsgi_sup_t **pp;
    for (pp = &rt->sups; *pp; pp = &(*pp)->next) {
        if (*pp == sup) {
            *pp = sup->next;
            break;
        }
    }
    sup->alive = 0;
    sup->next = rt->free;
    rt->free = sup;
}

static void tsgi_forget_group(tsgi_retained_t *rt, tsgi_rgroup_t *rg)
{
    tsgi_rgroup_t **pp;
    tsgi_close_group_sockets(rg);
    for (pp = &rt->groups; *pp; pp = &(*pp)->next) {
        if (*pp == rg) {
            *pp = rg->next;
            break;
        }
    }
}

static int tsgi_is_live_sup(tsgi_retained_t *rt, pid_t pid)
{
    tsgi_sup_t *sup;
    for (sup = rt->sups; sup; sup = sup->next) {
        if (sup->proc.pid == pid)
            return 1;
    }
    return 0;
}

static int tsgi_group_has_live_sup(tsgi_retained_t *rt, tsgi_rgroup_t *rg)
{
    tsgi_sup_t *sup;
    for (sup = rt->sups; sup; sup = sup->next) {
        if (sup->rg == rg)
            return 1;
    }
    return 0;
}

/* APR's other-child callback: the MPM reaped one of our supervisors, or asks. */
static void tsgi_sup_maintenance(int reason, void *data, int status)
{
    tsgi_sup_t *sup = data;
    tsgi_retained_t *rt = tsgi_rt;
    tsgi_rgroup_t *rg = sup->rg;
    server_rec *s;
    apr_pool_t *p;
    apr_time_t now, lived;

    if (reason != APR_OC_REASON_DEATH && reason != APR_OC_REASON_LOST)
        return;
    apr_proc_other_child_unregister(sup);
    if (!rt || !sup->alive)
        return;
    s = rg->config ? rg->config->server : ap_server_conf;
    if (apr_pool_create(&p, rt->pool) != APR_SUCCESS)
        return;
    now = apr_time_now();
    lived = now - sup->started;

    if (sup->retired || rg->current != sup) {
        ap_log_error(APLOG_MARK, APLOG_INFO, 0, s,
                     TSGILOG(0210) "group %s: the previous supervisor (pid %ld) %s", rg->name, (long)sup->proc.pid,
                     tsgi_describe_status(p, status));
        tsgi_sup_unlink(rt, sup);
        if (rg->removed && !tsgi_group_has_live_sup(rt, rg))
            tsgi_forget_group(rt, rg);
        apr_pool_destroy(p);
        return;
    }

    tsgi_sup_unlink(rt, sup);
    rg->current = NULL;
    rg->young_deaths = lived < TSGI_YOUNG ? rg->young_deaths + 1 : 0;
    if (rg->young_deaths <= 1)
        rg->delay = 0;
    else if (rg->delay == 0)
        rg->delay = TSGI_DELAY_MIN;
    else
        rg->delay = rg->delay * 2 > TSGI_DELAY_MAX ? TSGI_DELAY_MAX : rg->delay * 2;

    if (tsgi_mpm_stopping() || !rg->config) {
        /* Stopping: the stop cleanup handles the rest. Between generations: the next
         * post_config starts it. */
        ap_log_error(APLOG_MARK, APLOG_INFO, 0, s,
                     TSGILOG(0211) "group %s: supervisor (pid %ld) %s", rg->name, (long)sup->proc.pid,
                     tsgi_describe_status(p, status));
        apr_pool_destroy(p);
        return;
    }
    ap_log_error(APLOG_MARK, APLOG_ERR, 0, s,
                 TSGILOG(0212) "group %s: supervisor (pid %ld) %s after %ld ms; starting a new one%s", rg->name,
                 (long)sup->proc.pid, tsgi_describe_status(p, status), (long)apr_time_as_msec(lived),
                 rg->delay ? apr_psprintf(p, " in %ld ms (it keeps dying young)", (long)apr_time_as_msec(rg->delay))
                           : "");
    /* A successor that died before it was ready never retired its predecessor: its
     * replacement inherits the job. */
    tsgi_spawn(rt, rg, sup->replaces && tsgi_is_live_sup(rt, sup->replaces) ? sup->replaces : 0, p);
    apr_pool_destroy(p);
}

/* The launch config (one JSON object) for `rg`'s supervisor. */
static const char *tsgi_launch_json(apr_pool_t *p, const tsgi_rgroup_t *rg, pid_t replaces)
{
    const tsgi_daemon_group_t *g = rg->config;
    char b64[64]; /* base64 of 32 bytes: 44 characters and a NUL */
    const char *preload = "";
    int i;

    apr_base64_encode_binary(b64, rg->secret, TSGI_SECRET_LEN);
    for (i = 0; i < g->preload->nelts; i++) {
        preload = apr_pstrcat(p, preload, i ? ", " : "", tsgi_json_str(p, APR_ARRAY_IDX(g->preload, i, const char *)),
                              NULL);
    }
    return apr_psprintf(p,
                        "{\"group\": %s, \"secret\": \"%s\", \"processes\": %d, \"processesGiven\": %s, "
                        "\"threads\": %d, \"maximumRequests\": %d, \"inactivityTimeoutMs\": %" APR_INT64_T_FMT ", "
                        "\"requestTimeoutMs\": %" APR_INT64_T_FMT ", \"gracefulTimeoutMs\": %" APR_INT64_T_FMT ", "
                        "\"startupTimeoutMs\": %" APR_INT64_T_FMT ", \"queueTimeoutMs\": %" APR_INT64_T_FMT ", "
                        "\"displayName\": %s, \"preload\": [%s], \"logLevel\": \"%s\", \"replaces\": %ld, "
                        "\"startDelayMs\": %" APR_INT64_T_FMT ", \"parentPid\": %ld}\n",
                        tsgi_json_str(p, g->name), b64, g->processes, g->processes_given ? "true" : "false",
                        g->threads, g->maximum_requests, (apr_int64_t)g->inactivity_timeout * 1000,
                        (apr_int64_t)g->request_timeout * 1000, (apr_int64_t)g->graceful_timeout * 1000,
                        (apr_int64_t)g->startup_timeout * 1000, (apr_int64_t)g->queue_timeout * 1000,
                        tsgi_json_str(p, g->display_name), preload, tsgi_loglevel_name(g->server), (long)replaces,
                        (apr_int64_t)apr_time_as_msec(rg->delay), (long)getpid());
}

/* In the forked child, before exec: report on fd 2 (the error log) in its format. */
static void tsgi_child_fail(int code, const char *group, const char *what, int err, apr_interval_time_t delay)
{
    char date[APR_CTIME_LEN + 8];
    int date_len = (int)sizeof(date);
    if (ap_recent_ctime_ex(date, apr_time_now(), AP_CTIME_OPTION_USEC, &date_len) != APR_SUCCESS)
        date[0] = '\0';
    dprintf(2, "[%s] [tsgi:error] [pid %ld] TSGI%04d: group %s: %s: %s\n", date, (long)getpid(), code, group, what,
            strerror(err));
    /* A start that cannot even exec node is a crash loop too: damp it here, since the
     * start delay is otherwise node's to sleep. */
    if (delay > 0) {
        struct timespec ts;
        ts.tv_sec = (time_t)apr_time_sec(delay);
        ts.tv_nsec = (long)(apr_time_usec(delay) * 1000);
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
    }
    _exit(127);
}

/* Forks and execs the group's supervisor; registers it. Returns 0 or -1 (logged). */
static int tsgi_spawn(tsgi_retained_t *rt, tsgi_rgroup_t *rg, pid_t replaces, apr_pool_t *ptemp)
{
    tsgi_daemon_group_t *g = rg->config;
    server_rec *s = g->server;
    apr_array_header_t *argv, *envp;
    const apr_array_header_t *env = apr_table_elts(g->env);
    const apr_table_entry_t *ent = (const apr_table_entry_t *)env->elts;
    const char *node, *json, *path, *home, *user_name = NULL;
    int as_root = geteuid() == 0;
    uid_t uid = tsgi_group_uid(g);
    gid_t gid = tsgi_group_gid(g);
    int pipefd[2], errfd = -1, i;
    apr_size_t len, off;
    tsgi_sup_t *sup;
    struct sigaction ign, old_pipe;
    pid_t pid;

    node = g->node ? g->node : "node";
    if (!strchr(node, '/')) {
        const char *found = tsgi_which(ptemp, node);
        if (!found) {
            ap_log_error(APLOG_MARK, APLOG_ERR, 0, s,
                         TSGILOG(0220) "group %s: no '%s' executable on PATH (%s): set node= on "
                         "TSGIDaemonProcess (%s)",
                         rg->name, node, getenv("PATH") ? getenv("PATH") : TSGI_DEFAULT_PATH, g->defined_at);
        }
        else {
            node = found;
        }
    }
    else if (access(node, X_OK) != 0) {
        ap_log_error(APLOG_MARK, APLOG_ERR, errno, s,
                     TSGILOG(0221) "group %s: node=%s is not an executable file (TSGIDaemonProcess at %s)", rg->name,
                     node, g->defined_at);
    }

    argv = apr_array_make(ptemp, 8, sizeof(const char *));
    APR_ARRAY_PUSH(argv, const char *) = node;
    for (i = 0; i < g->node_options->nelts; i++)
        APR_ARRAY_PUSH(argv, const char *) = APR_ARRAY_IDX(g->node_options, i, const char *);
    APR_ARRAY_PUSH(argv, const char *) = rt->daemon_js;
    APR_ARRAY_PUSH(argv, const char *) = "--apache";
    APR_ARRAY_PUSH(argv, const char *) = NULL;

    {
        /* home=, else the daemon user's home when it exists (nobody's is /nonexistent), else /. */
        struct passwd *pw = getpwuid(as_root ? uid : geteuid());
        struct stat hst;
        if (as_root && pw)
            user_name = apr_pstrdup(ptemp, pw->pw_name);
        if (g->home)
            home = g->home;
        else if (pw && pw->pw_dir && stat(pw->pw_dir, &hst) == 0 && S_ISDIR(hst.st_mode))
            home = apr_pstrdup(ptemp, pw->pw_dir);
        else
            home = "/";
    }

    path = getenv("PATH");
    envp = apr_array_make(ptemp, 8, sizeof(const char *));
    APR_ARRAY_PUSH(envp, const char *) = apr_pstrcat(ptemp, "PATH=", path && *path ? path : TSGI_DEFAULT_PATH, NULL);
    APR_ARRAY_PUSH(envp, const char *) = apr_pstrcat(ptemp, "HOME=", home, NULL);
    if (g->lang) {
        APR_ARRAY_PUSH(envp, const char *) = apr_pstrcat(ptemp, "LANG=", g->lang, NULL);
        APR_ARRAY_PUSH(envp, const char *) = apr_pstrcat(ptemp, "LC_ALL=", g->lang, NULL);
    }
    for (i = 0; i < env->nelts; i++)
        APR_ARRAY_PUSH(envp, const char *) = apr_pstrcat(ptemp, ent[i].key, "=", ent[i].val, NULL);
    APR_ARRAY_PUSH(envp, const char *) = NULL;

    json = tsgi_launch_json(ptemp, rg, replaces);
    len = strlen(json);

    if (s->error_log) {
        apr_os_file_t osf;
        if (apr_os_file_get(&osf, s->error_log) == APR_SUCCESS)
            errfd = osf;
    }
    if (pipe2(pipefd, O_CLOEXEC) != 0) {
        ap_log_error(APLOG_MARK, APLOG_ERR, errno, s, TSGILOG(0222) "group %s: pipe() for the launch config",
                     rg->name);
        return -1;
    }
    if (len > 65536 && fcntl(pipefd[1], F_SETPIPE_SZ, (int)len + 1) < 0) {
        ap_log_error(APLOG_MARK, APLOG_WARNING, errno, s,
                     TSGILOG(0223) "group %s: cannot grow the config pipe to %ld bytes", rg->name, (long)len);
    }

    pid = fork();
    if (pid < 0) {
        ap_log_error(APLOG_MARK, APLOG_ERR, errno, s, TSGILOG(0224) "group %s: fork()", rg->name);
        close(pipefd[0]);
        close(pipefd[1]);
        return -1;
    }
    if (pid == 0) {
        /* The child: nothing here may touch Apache's state; exec or _exit. */
        sigset_t none;
        int sig, hi_data, hi_status, hi_cfg, hi_err, devnull;
        apr_interval_time_t delay = rg->delay;

        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        for (sig = 1; sig < NSIG; sig++)
            signal(sig, SIG_DFL); /* ignored signals would stay ignored across exec */
        if (setsid() < 0)
            tsgi_child_fail(230, rg->name, "setsid()", errno, delay);

        /* Out of the way of 0-5 first, so no dup2 below overwrites a source. */
        hi_data = fcntl(rg->data_fd, F_DUPFD_CLOEXEC, 10);
        hi_status = fcntl(rg->status_fd, F_DUPFD_CLOEXEC, 10);
        hi_cfg = fcntl(pipefd[0], F_DUPFD_CLOEXEC, 10);
        devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
        hi_err = errfd >= 0 ? fcntl(errfd, F_DUPFD_CLOEXEC, 10) : devnull;
        if (hi_data < 0 || hi_status < 0 || hi_cfg < 0 || devnull < 0 || hi_err < 0)
            tsgi_child_fail(231, rg->name, "dup of the inherited descriptors", errno, delay);
        if (dup2(devnull, 0) < 0 || dup2(hi_err, 1) < 0 || dup2(hi_err, 2) < 0 || dup2(hi_data, 3) < 0 ||
            dup2(hi_cfg, 4) < 0 || dup2(hi_status, 5) < 0)
            tsgi_child_fail(232, rg->name, "dup2 to descriptors 0-5", errno, delay);
        /* Everything else goes, Apache's listeners and log pipes included. */
        if (syscall(SYS_close_range, 6U, ~0U, 0U) != 0) {
            long max = sysconf(_SC_OPEN_MAX), fd;
            for (fd = 6; fd < (max > 0 ? max : 65536); fd++)
                close((int)fd);
        }

        if (as_root) {
            if (user_name ? initgroups(user_name, gid) != 0 : setgroups(1, &gid) != 0)
                tsgi_child_fail(233, rg->name, "initgroups/setgroups", errno, delay);
            if (setgid(gid) != 0)
                tsgi_child_fail(234, rg->name, "setgid", errno, delay);
            if (setuid(uid) != 0)
                tsgi_child_fail(235, rg->name, "setuid", errno, delay);
        }
        if (chdir(home) != 0)
            tsgi_child_fail(236, rg->name, apr_pstrcat(ptemp, "chdir(", home, ")", NULL), errno, delay);
        execve(node, (char *const *)argv->elts, (char *const *)envp->elts);
        tsgi_child_fail(237, rg->name, apr_pstrcat(ptemp, "cannot execute node ", node, NULL), errno, delay);
    }

    close(pipefd[0]);
    /* The child may be gone already (exec failed): an EPIPE, not a SIGPIPE. */
    memset(&ign, 0, sizeof(ign));
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    sigaction(SIGPIPE, &ign, &old_pipe);
    for (off = 0; off < len;) {
        ssize_t n = write(pipefd[1], json + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (errno != EPIPE)
                ap_log_error(APLOG_MARK, APLOG_ERR, errno, s,
                             TSGILOG(0225) "group %s: writing the launch config to pid %ld", rg->name, (long)pid);
            break;
        }
        off += (apr_size_t)n;
    }
    sigaction(SIGPIPE, &old_pipe, NULL);
    close(pipefd[1]);

    if (rt->free) {
        sup = rt->free;
        rt->free = sup->next;
    }
    else {
        sup = apr_palloc(rt->pool, sizeof(*sup));
    }
    memset(sup, 0, sizeof(*sup));
    sup->rg = rg;
    sup->proc.pid = pid;
    sup->proc.in = sup->proc.out = sup->proc.err = NULL;
    sup->replaces = replaces;
    sup->started = apr_time_now() + rg->delay;
    sup->alive = 1;
    sup->next = rt->sups;
    rt->sups = sup;
    rg->current = sup;
    rg->uid = uid;
    apr_proc_other_child_register(&sup->proc, tsgi_sup_maintenance, sup, NULL, rt->pconf);
    ap_log_error(APLOG_MARK, APLOG_INFO, 0, s,
                 TSGILOG(0226) "group %s: started supervisor pid %ld (%s %s --apache, %d process(es)%s%s)", rg->name,
                 (long)pid, node, rt->daemon_js, g->processes,
                 replaces ? apr_psprintf(ptemp, ", replacing pid %ld", (long)replaces) : "",
                 rg->delay ? apr_psprintf(ptemp, ", start delay %ld ms", (long)apr_time_as_msec(rg->delay)) : "");
    return 0;
}

/* ---- the parent's stop -------------------------------------------------------------- */

static int tsgi_pgroup_alive(pid_t pgid)
{
    return kill(-pgid, 0) == 0 || errno == EPERM;
}

/*
 * The parent is exiting: SIGTERM every supervisor's process group, wait (bounded by the
 * longest graceful-timeout + 2 s) for them to drain, SIGKILL what is left, remove the
 * sockets.
 */
static void tsgi_stop_all(tsgi_retained_t *rt)
{
    tsgi_sup_t *sup;
    tsgi_rgroup_t *rg;
    apr_time_t deadline;
    int longest = 0, any;

    for (rg = rt->groups; rg; rg = rg->next) {
        if (rg->graceful_timeout > longest)
            longest = rg->graceful_timeout;
    }
    for (sup = rt->sups; sup; sup = sup->next)
        kill(-sup->proc.pid, SIGTERM);
    deadline = apr_time_now() + apr_time_from_sec(longest + 2);
    do {
        any = 0;
        for (sup = rt->sups; sup; sup = sup->next) {
            (void)waitpid(sup->proc.pid, NULL, WNOHANG);
            if (tsgi_pgroup_alive(sup->proc.pid))
                any = 1;
        }
        if (any)
            apr_sleep(apr_time_from_msec(50));
    } while (any && apr_time_now() < deadline);
    for (sup = rt->sups; sup; sup = sup->next) {
        if (tsgi_pgroup_alive(sup->proc.pid)) {
            ap_log_error(APLOG_MARK, APLOG_WARNING, 0, ap_server_conf,
                         TSGILOG(0240) "group %s: supervisor %ld did not stop within %d s: SIGKILL", sup->rg->name,
                         (long)sup->proc.pid, longest + 2);
            kill(-sup->proc.pid, SIGKILL);
            (void)waitpid(sup->proc.pid, NULL, 0);
        }
    }
    rt->sups = NULL;
    for (rg = rt->groups; rg; rg = rg->next)
        tsgi_close_group_sockets(rg);
}

/*
 * A generation's pconf goes away: on a restart its groups must not be used until the
 * next post_config; when the parent exits (the only time the main state is EXITING),
 * everything stops. Apache's children may run pool cleanups at their exit too, hence
 * the pid check.
 */
static apr_status_t tsgi_generation_ends(void *data)
{
    tsgi_retained_t *rt = data;
    tsgi_rgroup_t *rg;
    for (rg = rt->groups; rg; rg = rg->next)
        rg->config = NULL;
    rt->pconf = NULL;
    if (getpid() == rt->parent_pid && ap_state_query(AP_SQ_MAIN_STATE) == AP_SQ_MS_EXITING) {
        tsgi_stop_all(rt);
        apr_pool_destroy(rt->pool);
        memset(rt, 0, sizeof(*rt));
    }
    tsgi_rt = NULL;
    return APR_SUCCESS;
}

/* ---- post_config -------------------------------------------------------------------- */

static tsgi_retained_t *tsgi_retained(server_rec *s)
{
    tsgi_retained_t *rt = ap_retained_data_get(TSGI_RETAINED_KEY);
    if (!rt) {
        rt = ap_retained_data_create(TSGI_RETAINED_KEY, sizeof(*rt));
        memset(rt, 0, sizeof(*rt));
    }
    if (!rt->pool) {
        /* The process pool's allocator: an allocator of its own would only be referenced
         * from pool memory, which leak checkers do not scan. */
        if (apr_pool_create_unmanaged_ex(&rt->pool, NULL, apr_pool_allocator_get(s->process->pool)) != APR_SUCCESS)
            return NULL;
        apr_pool_tag(rt->pool, "tsgi_daemon_retained");
        rt->parent_pid = getpid();
    }
    return rt;
}

static tsgi_rgroup_t *tsgi_rgroup(tsgi_retained_t *rt, server_rec *s, const tsgi_daemon_group_t *g, apr_pool_t *ptemp)
{
    tsgi_rgroup_t *rg;
    const char *prefix;
    apr_status_t rv;

    for (rg = rt->groups; rg; rg = rg->next) {
        if (!strcmp(rg->name, g->name))
            return rg;
    }
    rg = apr_pcalloc(rt->pool, sizeof(*rg));
    rg->name = apr_pstrdup(rt->pool, g->name);
    rg->index = rt->next_index++;
    rg->data_fd = rg->status_fd = -1;
    prefix = tsgi_daemon_socket_prefix(ptemp);
    rg->socket_path = apr_psprintf(rt->pool, "%s.%ld.%d.sock", prefix, (long)rt->parent_pid, rg->index);
    rg->status_path = apr_psprintf(rt->pool, "%s.%ld.%d.status", prefix, (long)rt->parent_pid, rg->index);
    if ((rv = apr_generate_random_bytes(rg->secret, TSGI_SECRET_LEN)) != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_ERR, rv, s,
                     TSGILOG(0207) "group %s: cannot make its secret (apr_generate_random_bytes)", g->name);
        return NULL;
    }
    rg->next = rt->groups;
    rt->groups = rg;
    return rg;
}

int tsgi_daemon_post_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp, server_rec *s)
{
    const apr_array_header_t *groups = tsgi_daemon_groups();
    tsgi_retained_t *rt;
    tsgi_rgroup_t *rg, *next;
    apr_finfo_t fi;
    int i, as_root = geteuid() == 0;
    (void)plog;

    /* The first of the two configuration passes at start, and -t/-S/-M, start nothing. */
    if (ap_state_query(AP_SQ_MAIN_STATE) == AP_SQ_MS_CREATE_PRE_CONFIG || ap_state_query(AP_SQ_RUN_MODE) != AP_SQ_RM_NORMAL)
        return OK;

    rt = ap_retained_data_get(TSGI_RETAINED_KEY);
    if ((!groups || groups->nelts == 0) && (!rt || !rt->groups))
        return OK;
    if (!(rt = tsgi_retained(s)))
        return HTTP_INTERNAL_SERVER_ERROR;
    tsgi_rt = rt;
    rt->pconf = pconf;
    apr_pool_cleanup_register(pconf, rt, tsgi_generation_ends, apr_pool_cleanup_null);
    /* The supervisors still running from the last generation (current ones and those
     * draining) are watched again from this one. */
    {
        tsgi_sup_t *sup;
        for (sup = rt->sups; sup; sup = sup->next)
            apr_proc_other_child_register(&sup->proc, tsgi_sup_maintenance, sup, NULL, pconf);
    }

    if (groups && groups->nelts > 0) {
        rt->daemon_js = apr_pstrdup(rt->pool, TSGI_DAEMON_MODE_JS);
        if (apr_stat(&fi, rt->daemon_js, APR_FINFO_TYPE, ptemp) != APR_SUCCESS || fi.filetype != APR_REG) {
            ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_EMERG, 0, s,
                         TSGILOG(0208) "daemon mode: %s does not exist: build the Node side first (npm run "
                         "build) or remove the TSGIDaemonProcess directives",
                         rt->daemon_js);
            return HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    for (i = 0; groups && i < groups->nelts; i++) {
        tsgi_daemon_group_t *g = APR_ARRAY_IDX(groups, i, tsgi_daemon_group_t *);
        uid_t uid = tsgi_group_uid(g);
        tsgi_sup_t *old;

        if (!as_root && (g->user || g->group)) {
            ap_log_error(APLOG_MARK, APLOG_WARNING, 0, g->server,
                         TSGILOG(0209) "group %s: user=/group= ignored: Apache does not run as root (%s)", g->name,
                         g->defined_at);
        }
        if (!(rg = tsgi_rgroup(rt, s, g, ptemp)))
            return HTTP_INTERNAL_SERVER_ERROR;
        rg->removed = 0;
        /* Made once; every generation re-applies owner, mode and backlog. */
        if (rg->data_fd < 0) {
            rg->data_fd = tsgi_listen_unix(g->server, rg, rg->socket_path, ap_unixd_config.user_id, g->listen_backlog);
            if (rg->data_fd < 0)
                return HTTP_INTERNAL_SERVER_ERROR;
        }
        else if (listen(rg->data_fd, g->listen_backlog) != 0 ||
                 (as_root && chown(rg->socket_path, ap_unixd_config.user_id, (gid_t)-1) != 0)) {
            ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_ERR, errno, g->server,
                         TSGILOG(0213) "group %s: cannot re-apply owner and backlog of %s", g->name, rg->socket_path);
        }
        if (rg->status_fd < 0) {
            rg->status_fd = tsgi_listen_unix(g->server, rg, rg->status_path, as_root ? uid : geteuid(), 16);
            if (rg->status_fd < 0)
                return HTTP_INTERNAL_SERVER_ERROR;
        }
        else if (as_root && chown(rg->status_path, uid, (gid_t)-1) != 0) {
            ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_ERR, errno, g->server,
                         TSGILOG(0214) "group %s: cannot chown %s", g->name, rg->status_path);
        }

        g->socket_path = rg->socket_path;
        memcpy(g->secret, rg->secret, TSGI_SECRET_LEN);
        if (g->socket_timeout == 0)
            g->socket_timeout = (int)apr_time_sec(g->server->timeout) > 0 ? (int)apr_time_sec(g->server->timeout) : 60;
        g->ready = 1;
        rg->config = g;
        rg->graceful_timeout = g->graceful_timeout;

        old = rg->current;
        if (old) {
            /* A graceful restart: the new supervisor retires the old one once it is ready,
             * except across a user change, where it could not signal it. */
            pid_t old_pid = old->proc.pid;
            uid_t old_uid = rg->uid;
            old->retired = 1;
            rg->current = NULL;
            rg->delay = 0;
            rg->young_deaths = 0;
            if (tsgi_spawn(rt, rg, old_pid, ptemp) != 0 || (as_root && old_uid != uid))
                kill(old_pid, SIGTERM);
        }
        else {
            (void)tsgi_spawn(rt, rg, 0, ptemp);
        }
    }

    /* Groups gone from the configuration: their supervisors drain and stop. */
    for (rg = rt->groups; rg; rg = next) {
        next = rg->next;
        if (rg->config)
            continue;
        rg->removed = 1;
        if (rg->current) {
            rg->current->retired = 1;
            ap_log_error(APLOG_MARK, APLOG_INFO, 0, s,
                         TSGILOG(0215) "group %s: no longer configured: stopping supervisor pid %ld", rg->name,
                         (long)rg->current->proc.pid);
            kill(rg->current->proc.pid, SIGTERM);
            rg->current = NULL;
        }
        if (!tsgi_group_has_live_sup(rt, rg))
            tsgi_forget_group(rt, rg);
    }
    return OK;
}
