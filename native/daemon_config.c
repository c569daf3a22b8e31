/*
 * Daemon mode configuration: TSGIDaemonProcess and TSGISocketPrefix (native/daemon.h).
 * Every option is checked while the configuration is read, so a mistake fails
 * `apachectl configtest` with the file and line (Apache adds them) and a message naming
 * the group, the option and the value.
 */
#include "httpd.h"
#include "http_config.h"
#include "http_log.h"

#include "apr_file_io.h"
#include "apr_lib.h"
#include "apr_strings.h"
#include "apr_tables.h"

#include "daemon.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/un.h>

APLOG_USE_MODULE(tsgi);

/* The groups of the configuration being read (and, once read, in force), in pconf. */
static apr_array_header_t *tsgi_groups;
static const char *tsgi_socket_prefix;

#define TSGI_OPTIONS                                                                              \
    "processes=, threads=, user=, group=, home=, maximum-requests=, inactivity-timeout=, "        \
    "request-timeout=, graceful-timeout=, startup-timeout=, queue-timeout=, connect-timeout=, "   \
    "socket-timeout=, display-name=, node=, node-options=, env=, env-file=, lang=, listen-backlog="

/* The longest suffix tsgi_daemon_post_config appends to the prefix:
 * ".<pid: up to 7 digits>.<index: up to 5>.status" and its NUL. */
#define TSGI_SOCKET_SUFFIX_MAX (1 + 7 + 1 + 5 + 7 + 1)

void tsgi_daemon_pre_config(apr_pool_t *pconf)
{
    tsgi_groups = apr_array_make(pconf, 4, sizeof(tsgi_daemon_group_t *));
    tsgi_socket_prefix = NULL;
}

tsgi_daemon_group_t *tsgi_daemon_find(const char *name)
{
    int i;
    if (!tsgi_groups || !name)
        return NULL;
    for (i = 0; i < tsgi_groups->nelts; i++) {
        tsgi_daemon_group_t *g = APR_ARRAY_IDX(tsgi_groups, i, tsgi_daemon_group_t *);
        if (!strcmp(g->name, name))
            return g;
    }
    return NULL;
}

const apr_array_header_t *tsgi_daemon_groups(void)
{
    return tsgi_groups;
}

const char *tsgi_daemon_socket_prefix(apr_pool_t *p)
{
    if (tsgi_socket_prefix)
        return ap_server_root_relative(p, tsgi_socket_prefix);
    return ap_runtime_dir_relative(p, "tsgi");
}

static const char *tsgi_check_prefix_length(apr_pool_t *p, const char *what, const char *prefix)
{
    struct sockaddr_un sa;
    if (strlen(prefix) + TSGI_SOCKET_SUFFIX_MAX > sizeof(sa.sun_path)) {
        return apr_psprintf(p,
                            "%s: socket prefix '%s' is too long: the socket paths made from it "
                            "('%s.<pid>.<n>.status') must fit in %d bytes",
                            what, prefix, prefix, (int)sizeof(sa.sun_path) - 1);
    }
    return NULL;
}

const char *tsgi_daemon_cmd_socket_prefix(cmd_parms *cmd, const char *prefix)
{
    const char *err, *resolved;
    if ((err = ap_check_cmd_context(cmd, GLOBAL_ONLY)) != NULL)
        return err;
    if (!*prefix)
        return "TSGISocketPrefix: the prefix is empty";
    if (prefix[strlen(prefix) - 1] == '/') {
        return apr_psprintf(cmd->pool,
                            "TSGISocketPrefix: '%s' ends with '/': give a directory and a name "
                            "prefix, e.g. /var/run/apache2/tsgi",
                            prefix);
    }
    resolved = ap_server_root_relative(cmd->pool, prefix);
    if (!resolved)
        return apr_psprintf(cmd->pool, "TSGISocketPrefix: invalid path '%s'", prefix);
    if ((err = tsgi_check_prefix_length(cmd->pool, "TSGISocketPrefix", resolved)) != NULL)
        return err;
    tsgi_socket_prefix = prefix;
    return NULL;
}

/* ---- option values ------------------------------------------------------------------ */

static const char *tsgi_opt_int(cmd_parms *cmd, const tsgi_daemon_group_t *g, const char *key,
                                const char *value, long min, long max, int *out)
{
    char *end = NULL;
    long n;
    errno = 0;
    n = strtol(value, &end, 10);
    if (errno != 0 || end == value || *end != '\0' || n < min || n > max) {
        return apr_psprintf(cmd->pool, "TSGIDaemonProcess %s: %s=%s: expected a whole number from %ld to %ld",
                            g->name, key, value, min, max);
    }
    *out = (int)n;
    return NULL;
}

static int tsgi_is_env_name(const char *s, apr_size_t len)
{
    apr_size_t i;
    if (len == 0 || !(apr_isalpha(s[0]) || s[0] == '_'))
        return 0;
    for (i = 1; i < len; i++) {
        if (!(apr_isalnum(s[i]) || s[i] == '_'))
            return 0;
    }
    return 1;
}

/* NAME=VALUE into g->env; `where` names the source for the error ("env=" or "file:line"). */
static const char *tsgi_add_env(cmd_parms *cmd, tsgi_daemon_group_t *g, const char *where, const char *entry)
{
    const char *eq = strchr(entry, '=');
    if (!eq || !tsgi_is_env_name(entry, (apr_size_t)(eq - entry))) {
        return apr_psprintf(cmd->pool,
                            "TSGIDaemonProcess %s: %s: expected NAME=VALUE with NAME made of letters, "
                            "digits and '_' (not starting with a digit), got '%s'",
                            g->name, where, entry);
    }
    apr_table_set(g->env, apr_pstrmemdup(cmd->pool, entry, (apr_size_t)(eq - entry)), eq + 1);
    return NULL;
}

/* env-file=PATH: NAME=VALUE lines; blank lines and lines starting with '#' are skipped. */
static const char *tsgi_read_env_file(cmd_parms *cmd, tsgi_daemon_group_t *g, const char *value)
{
    const char *path = ap_server_root_relative(cmd->pool, value);
    apr_file_t *f;
    apr_status_t rv;
    char line[8192];
    int lineno = 0;

    if (!path)
        return apr_psprintf(cmd->pool, "TSGIDaemonProcess %s: env-file=%s: invalid path", g->name, value);
    rv = apr_file_open(&f, path, APR_FOPEN_READ, APR_OS_DEFAULT, cmd->temp_pool);
    if (rv != APR_SUCCESS) {
        char buf[120];
        return apr_psprintf(cmd->pool, "TSGIDaemonProcess %s: env-file=%s: cannot open: %s", g->name, path,
                            apr_strerror(rv, buf, sizeof(buf)));
    }
    for (;;) {
        const char *err, *s;
        apr_size_t len;
        rv = apr_file_gets(line, sizeof(line), f);
        if (rv == APR_EOF)
            break;
        if (rv != APR_SUCCESS) {
            char buf[120];
            apr_file_close(f);
            return apr_psprintf(cmd->pool, "TSGIDaemonProcess %s: env-file=%s: read error after line %d: %s",
                                g->name, path, lineno, apr_strerror(rv, buf, sizeof(buf)));
        }
        lineno++;
        len = strlen(line);
        if (len == sizeof(line) - 1 && line[len - 1] != '\n') {
            apr_file_close(f);
            return apr_psprintf(cmd->pool, "TSGIDaemonProcess %s: env-file %s:%d: line longer than %d bytes",
                                g->name, path, lineno, (int)sizeof(line) - 2);
        }
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        for (s = line; apr_isspace(*s); s++)
            ;
        if (*s == '\0' || *s == '#')
            continue;
        err = tsgi_add_env(cmd, g, apr_psprintf(cmd->temp_pool, "env-file %s:%d", path, lineno), s);
        if (err) {
            apr_file_close(f);
            return err;
        }
    }
    apr_file_close(f);
    return NULL;
}

/* "#1234" (Apache's spelling of a numeric uid or gid): 1 and the number, or 0. */
static int tsgi_parse_numeric_id(const char *value, long *out)
{
    char *end = NULL;
    errno = 0;
    *out = strtol(value + 1, &end, 10);
    return errno == 0 && end != value + 1 && *end == '\0' && *out >= 0;
}

static const char *tsgi_opt_user(cmd_parms *cmd, tsgi_daemon_group_t *g, const char *value)
{
    struct passwd *pw;
    if (value[0] == '#') {
        long n;
        if (!tsgi_parse_numeric_id(value, &n))
            return apr_psprintf(cmd->pool, "TSGIDaemonProcess %s: user=%s: expected a user name or #uid", g->name, value);
        g->uid = (uid_t)n;
        pw = getpwuid(g->uid);
        /* A bare #uid without a passwd entry is allowed (as Apache's User): its group is
         * then required. */
        g->gid = pw ? pw->pw_gid : (gid_t)-1;
    }
    else {
        pw = getpwnam(value);
        if (!pw)
            return apr_psprintf(cmd->pool, "TSGIDaemonProcess %s: user=%s: no such user", g->name, value);
        g->uid = pw->pw_uid;
        g->gid = pw->pw_gid;
    }
    if (g->uid == 0) {
        return apr_psprintf(cmd->pool,
                            "TSGIDaemonProcess %s: user=%s: daemons must not run as root (uid 0); "
                            "name an unprivileged user",
                            g->name, value);
    }
    g->user = value;
    return NULL;
}

static const char *tsgi_opt_group(cmd_parms *cmd, tsgi_daemon_group_t *g, const char *value, gid_t *out)
{
    if (value[0] == '#') {
        long n;
        if (!tsgi_parse_numeric_id(value, &n))
            return apr_psprintf(cmd->pool, "TSGIDaemonProcess %s: group=%s: expected a group name or #gid", g->name, value);
        *out = (gid_t)n;
    }
    else {
        struct group *gr = getgrnam(value);
        if (!gr)
            return apr_psprintf(cmd->pool, "TSGIDaemonProcess %s: group=%s: no such group", g->name, value);
        *out = gr->gr_gid;
    }
    return NULL;
}

/* Letters, digits, '_', '-' and '.': a name that is safe in messages and process titles. */
int tsgi_daemon_is_group_name(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++) {
        if (!(apr_isalnum(*s) || *s == '_' || *s == '-' || *s == '.'))
            return 0;
    }
    return 1;
}

static const char *tsgi_daemon_option(cmd_parms *cmd, tsgi_daemon_group_t *g, const char *option, gid_t *gid,
                                      int *gid_given)
{
    const char *eq = strchr(option, '=');
    const char *key, *value;

    if (!eq || eq == option) {
        return apr_psprintf(cmd->pool, "TSGIDaemonProcess %s: unexpected argument '%s' (options are " TSGI_OPTIONS ")",
                            g->name, option);
    }
    key = apr_pstrmemdup(cmd->pool, option, (apr_size_t)(eq - option));
    value = eq + 1;

    if (!strcasecmp(key, "env"))
        return tsgi_add_env(cmd, g, "env=", value);
    if (!strcasecmp(key, "node-options")) {
        char **argv;
        int i;
        if (apr_tokenize_to_argv(value, &argv, cmd->pool) != APR_SUCCESS)
            return apr_psprintf(cmd->pool, "TSGIDaemonProcess %s: node-options=%s: cannot split", g->name, value);
        for (i = 0; argv[i]; i++) {
            if (argv[i][0] != '-') {
                return apr_psprintf(cmd->pool,
                                    "TSGIDaemonProcess %s: node-options=%s: '%s' is not an option "
                                    "(node options start with '-'; the script is mod_tsgi's)",
                                    g->name, value, argv[i]);
            }
            APR_ARRAY_PUSH(g->node_options, const char *) = argv[i];
        }
        return NULL;
    }
    if (!*value)
        return apr_psprintf(cmd->pool, "TSGIDaemonProcess %s: %s= needs a value", g->name, key);

    if (!strcasecmp(key, "processes")) {
        g->processes_given = 1;
        return tsgi_opt_int(cmd, g, "processes", value, 1, 256, &g->processes);
    }
    if (!strcasecmp(key, "threads"))
        return tsgi_opt_int(cmd, g, "threads", value, 1, 10000, &g->threads);
    if (!strcasecmp(key, "maximum-requests"))
        return tsgi_opt_int(cmd, g, "maximum-requests", value, 0, INT_MAX, &g->maximum_requests);
    if (!strcasecmp(key, "inactivity-timeout"))
        return tsgi_opt_int(cmd, g, "inactivity-timeout", value, 0, 86400 * 365, &g->inactivity_timeout);
    if (!strcasecmp(key, "request-timeout"))
        return tsgi_opt_int(cmd, g, "request-timeout", value, 0, 86400 * 365, &g->request_timeout);
    if (!strcasecmp(key, "graceful-timeout"))
        return tsgi_opt_int(cmd, g, "graceful-timeout", value, 0, 86400, &g->graceful_timeout);
    if (!strcasecmp(key, "startup-timeout"))
        return tsgi_opt_int(cmd, g, "startup-timeout", value, 1, 86400, &g->startup_timeout);
    if (!strcasecmp(key, "queue-timeout"))
        return tsgi_opt_int(cmd, g, "queue-timeout", value, 0, 86400, &g->queue_timeout);
    if (!strcasecmp(key, "connect-timeout"))
        return tsgi_opt_int(cmd, g, "connect-timeout", value, 1, 86400, &g->connect_timeout);
    if (!strcasecmp(key, "socket-timeout"))
        return tsgi_opt_int(cmd, g, "socket-timeout", value, 1, 86400, &g->socket_timeout);
    if (!strcasecmp(key, "listen-backlog"))
        return tsgi_opt_int(cmd, g, "listen-backlog", value, 1, 65535, &g->listen_backlog);
    if (!strcasecmp(key, "user"))
        return tsgi_opt_user(cmd, g, value);
    if (!strcasecmp(key, "group")) {
        const char *err = tsgi_opt_group(cmd, g, value, gid);
        if (err)
            return err;
        g->group = value;
        *gid_given = 1;
        return NULL;
    }
    if (!strcasecmp(key, "home")) {
        apr_finfo_t fi;
        if (value[0] != '/')
            return apr_psprintf(cmd->pool, "TSGIDaemonProcess %s: home=%s: expected an absolute path", g->name, value);
        if (apr_stat(&fi, value, APR_FINFO_TYPE, cmd->temp_pool) != APR_SUCCESS || fi.filetype != APR_DIR)
            return apr_psprintf(cmd->pool, "TSGIDaemonProcess %s: home=%s: not a directory", g->name, value);
        g->home = value;
        return NULL;
    }
    if (!strcasecmp(key, "display-name")) {
        if (!strcmp(value, "%{GROUP}"))
            g->display_name = apr_psprintf(cmd->pool, "(tsgi:%s)", g->name);
        else if (strchr(value, '%'))
            return apr_psprintf(cmd->pool, "TSGIDaemonProcess %s: display-name=%s: the only substitution is %%{GROUP}",
                                g->name, value);
        else
            g->display_name = value;
        return NULL;
    }
    if (!strcasecmp(key, "node")) {
        /* Its existence is checked at start, not here: a configuration that names a
         * runtime installed later must still pass configtest. */
        if (strchr(value, '/') && value[0] != '/')
            return apr_psprintf(cmd->pool,
                                "TSGIDaemonProcess %s: node=%s: expected an absolute path or a "
                                "name to find on PATH",
                                g->name, value);
        g->node = value;
        return NULL;
    }
    if (!strcasecmp(key, "env-file"))
        return tsgi_read_env_file(cmd, g, value);
    if (!strcasecmp(key, "lang")) {
        g->lang = value;
        return NULL;
    }
    return apr_psprintf(cmd->pool, "TSGIDaemonProcess %s: unknown option '%s' (options are " TSGI_OPTIONS ")", g->name,
                        key);
}

const char *tsgi_daemon_cmd(cmd_parms *cmd, int argc, char *const argv[])
{
    tsgi_daemon_group_t *g, *dup;
    const char *err;
    gid_t gid = 0;
    int gid_given = 0, i;

    if ((err = ap_check_cmd_context(cmd, NOT_IN_DIR_LOC_FILE)) != NULL)
        return err;
    if (argc < 1)
        return "TSGIDaemonProcess: expected a group name (TSGIDaemonProcess name [option=value ...])";
    if (!tsgi_daemon_is_group_name(argv[0])) {
        return apr_psprintf(cmd->pool,
                            "TSGIDaemonProcess: invalid group name '%s' (letters, digits, '_', '-' and "
                            "'.' only)",
                            argv[0]);
    }
    if (!tsgi_groups) /* pre_config always runs first; this only guards a misordered build */
        tsgi_groups = apr_array_make(cmd->pool, 4, sizeof(tsgi_daemon_group_t *));
    if ((dup = tsgi_daemon_find(argv[0])) != NULL) {
        return apr_psprintf(cmd->pool, "TSGIDaemonProcess %s: the name is already used by the group defined at %s",
                            argv[0], dup->defined_at);
    }

    g = apr_pcalloc(cmd->pool, sizeof(*g));
    g->name = argv[0];
    g->server = cmd->server;
    g->defined_at = cmd->directive && cmd->directive->filename
                        ? apr_psprintf(cmd->pool, "%s:%d", cmd->directive->filename, cmd->directive->line_num)
                        : "(unknown)";
    g->processes = TSGI_DAEMON_DEFAULT_PROCESSES;
    g->threads = TSGI_DAEMON_DEFAULT_THREADS;
    g->uid = (uid_t)-1;
    g->gid = (gid_t)-1;
    g->request_timeout = TSGI_DAEMON_DEFAULT_REQUEST_TIMEOUT;
    g->graceful_timeout = TSGI_DAEMON_DEFAULT_GRACEFUL_TIMEOUT;
    g->startup_timeout = TSGI_DAEMON_DEFAULT_STARTUP_TIMEOUT;
    g->queue_timeout = TSGI_DAEMON_DEFAULT_QUEUE_TIMEOUT;
    g->connect_timeout = TSGI_DAEMON_DEFAULT_CONNECT_TIMEOUT;
    g->listen_backlog = TSGI_DAEMON_DEFAULT_LISTEN_BACKLOG;
    g->node_options = apr_array_make(cmd->pool, 2, sizeof(const char *));
    g->env = apr_table_make(cmd->pool, 4);
    g->preload = apr_array_make(cmd->pool, 2, sizeof(const char *));

    for (i = 1; i < argc; i++) {
        if ((err = tsgi_daemon_option(cmd, g, argv[i], &gid, &gid_given)) != NULL)
            return err;
    }
    if (gid_given)
        g->gid = gid;
    if (g->user && g->gid == (gid_t)-1) {
        return apr_psprintf(cmd->pool,
                            "TSGIDaemonProcess %s: user=%s has no passwd entry to take its group "
                            "from: add group=",
                            g->name, g->user);
    }
    if (!g->display_name)
        g->display_name = apr_psprintf(cmd->pool, "tsgi-daemon (%s)", g->name);

    APR_ARRAY_PUSH(tsgi_groups, tsgi_daemon_group_t *) = g;
    return NULL;
}
