/*
 * mod_tsgi: runs TSGI (.tsgi) applications inside Apache httpd, as mod_wsgi runs WSGI
 * applications. This file is the Apache side: directives, URL mapping
 * (translate_name), SCRIPT_NAME/PATH_INFO and the CGI environ, and the handler.
 * The Node.js runtime (embedded mode) lives behind native/embed.h.
 *
 * Behaviour is mod_wsgi's where mod_wsgi defines it (shared/reference/mod_wsgi.md §1-§5);
 * see docs/embedded.md for what exists and what is missing.
 *
 * Log lines carry stable numbers "TSGInnnn" (as mod_wsgi's WSGInnnn, httpd's AHnnnnn).
 */
#include "httpd.h"
#include "http_config.h"
#include "http_core.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"
#include "http_ssl.h"
#include "ap_regex.h"
#include "util_script.h"
#include "mpm_common.h" /* child_stopping */

#include "apr_lib.h"
#include "apr_strings.h"
#include "apr_tables.h"

#include "embed.h"
#include "daemon.h"

#include <errno.h>
#include <stdlib.h>

#ifndef TSGI_VERSION
#define TSGI_VERSION "0.0.0"
#endif

#define TSGI_HANDLER "tsgi-script"
#define TSGI_HANDLER_MIME "application/x-httpd-tsgi"
#define TSGI_STATUS_HANDLER "tsgi-status"
#define TSGI_GLOBAL_GROUP "%{GLOBAL}"
#define TSGI_DEFAULT_CALLABLE "application"
#define TSGILOG(n) "TSGI" #n ": "

#define TSGI_UNSET (-1)

module AP_MODULE_DECLARE_DATA tsgi_module;



/* ------------------------------------------------------------------------------------
 * Configuration
 * --------------------------------------------------------------------------------- */

/* One TSGIScriptAlias or TSGIScriptAliasMatch, in declaration order. */
typedef struct {
    const char *location;          /* URL-path prefix; NULL for a regex */
    ap_regex_t *regexp;            /* TSGIScriptAliasMatch */
    const char *target;            /* script file or directory; $N allowed with a regex */
    const char *application_group; /* application-group= option, NULL when not given */
    const char *callable_object;   /* callable-object= option */
    int pass_authorization;        /* pass-authorization= option, TSGI_UNSET */
    const char *process_group;     /* process-group= option, NULL when not given */
    const char *defined_at;        /* "file:line", for messages */
} tsgi_alias_t;

typedef struct {
    apr_array_header_t *aliases; /* of tsgi_alias_t */
    int event_loop_timeout;      /* TSGIEventLoopTimeout (main server only), TSGI_UNSET */
    int restrict_embedded;       /* TSGIRestrictEmbedded (main server only), TSGI_UNSET */
} tsgi_server_conf_t;

/* Per-directory; also the server-wide defaults (directives given outside any container). */
typedef struct {
    const char *callable_object;   /* TSGICallableObject */
    int script_reloading;          /* TSGIScriptReloading, default On */
    int pass_authorization;        /* TSGIPassAuthorization, default Off */
    const char *application_group; /* TSGIApplicationGroup, default %{RESOURCE} */
    const char *process_group;     /* TSGIProcessGroup, default %{GLOBAL} (embedded) */
} tsgi_dir_conf_t;

static void *tsgi_create_server_conf(apr_pool_t *p, server_rec *s)
{
    tsgi_server_conf_t *conf = apr_pcalloc(p, sizeof(*conf));
    (void)s;
    conf->aliases = apr_array_make(p, 4, sizeof(tsgi_alias_t));
    conf->event_loop_timeout = TSGI_UNSET;
    conf->restrict_embedded = TSGI_UNSET;
    return conf;
}

static void *tsgi_merge_server_conf(apr_pool_t *p, void *base_, void *add_)
{
    tsgi_server_conf_t *base = base_, *add = add_;
    tsgi_server_conf_t *conf = apr_pcalloc(p, sizeof(*conf));
    /* As mod_alias and mod_wsgi: the virtual host's aliases first, then the main server's. */
    conf->aliases = apr_array_append(p, add->aliases, base->aliases);
    conf->event_loop_timeout = base->event_loop_timeout;
    conf->restrict_embedded = base->restrict_embedded;
    return conf;
}

static void *tsgi_create_dir_conf(apr_pool_t *p, char *dir)
{
    tsgi_dir_conf_t *conf = apr_pcalloc(p, sizeof(*conf));
    (void)dir;
    conf->callable_object = NULL;
    conf->script_reloading = TSGI_UNSET;
    conf->pass_authorization = TSGI_UNSET;
    conf->application_group = NULL;
    return conf;
}

static void *tsgi_merge_dir_conf(apr_pool_t *p, void *base_, void *add_)
{
    tsgi_dir_conf_t *base = base_, *add = add_;
    tsgi_dir_conf_t *conf = apr_pcalloc(p, sizeof(*conf));
    conf->callable_object = add->callable_object ? add->callable_object : base->callable_object;
    conf->script_reloading = add->script_reloading != TSGI_UNSET ? add->script_reloading : base->script_reloading;
    conf->pass_authorization = add->pass_authorization != TSGI_UNSET ? add->pass_authorization : base->pass_authorization;
    conf->application_group = add->application_group ? add->application_group : base->application_group;
    conf->process_group = add->process_group ? add->process_group : base->process_group;
    return conf;
}

/* ---- value parsers: each returns NULL or an error naming the directive and the value */

static const char *tsgi_parse_flag(cmd_parms *cmd, const char *what, const char *value, int *out)
{
    if (!strcasecmp(value, "On")) {
        *out = 1;
        return NULL;
    }
    if (!strcasecmp(value, "Off")) {
        *out = 0;
        return NULL;
    }
    return apr_psprintf(cmd->pool, "%s: expected On or Off, got '%s'", what, value);
}

/* A JavaScript IdentifierName in ASCII, the export the app's callable is found under. */
static int tsgi_is_identifier(const char *s)
{
    if (!(apr_isalpha(*s) || *s == '_' || *s == '$'))
        return 0;
    for (++s; *s; ++s) {
        if (!(apr_isalnum(*s) || *s == '_' || *s == '$'))
            return 0;
    }
    return 1;
}

static const char *tsgi_check_callable(cmd_parms *cmd, const char *what, const char *value)
{
    if (!tsgi_is_identifier(value)) {
        return apr_psprintf(cmd->pool,
                            "%s: '%s' is not a valid callable name (an exported "
                            "identifier such as 'application' is expected)",
                            what, value);
    }
    return NULL;
}

/* name, %{GLOBAL}, %{SERVER}, %{RESOURCE} or %{ENV:variable}, as WSGIApplicationGroup. */
static const char *tsgi_check_application_group(cmd_parms *cmd, const char *what, const char *value)
{
    if (!*value)
        return apr_psprintf(cmd->pool, "%s: the application group name is empty", what);
    if (*value != '%')
        return NULL;
    if (!strcmp(value, "%{GLOBAL}") || !strcmp(value, "%{SERVER}") || !strcmp(value, "%{RESOURCE}"))
        return NULL;
    if (!strncmp(value, "%{ENV:", 6)) {
        const char *end = strchr(value + 6, '}');
        if (end && end > value + 6 && end[1] == '\0')
            return NULL;
    }
    return apr_psprintf(cmd->pool,
                        "%s: invalid application group '%s' (expected a name, %%{GLOBAL}, "
                        "%%{SERVER}, %%{RESOURCE} or %%{ENV:variable})",
                        what, value);
}

static const char *tsgi_config_location(cmd_parms *cmd)
{
    if (cmd->directive && cmd->directive->filename)
        return apr_psprintf(cmd->pool, "%s:%d", cmd->directive->filename, cmd->directive->line_num);
    return "(unknown)";
}

/*
 * Process-group references, checked once the whole configuration is read (a group may be
 * defined after the lines that use it): tsgi_check_config. In .htaccess files, read per
 * request, the groups in force are known, so those are checked at once.
 */
typedef struct {
    const char *name;
    const char *where; /* "file:line" */
    const char *directive;
} tsgi_group_ref_t;

static apr_array_header_t *tsgi_group_refs; /* of tsgi_group_ref_t, in pconf */

static const char *tsgi_check_process_group(cmd_parms *cmd, const char *what, const char *value)
{
    tsgi_group_ref_t *ref;
    if (!strcmp(value, TSGI_GLOBAL_GROUP))
        return NULL;
    if (!tsgi_daemon_is_group_name(value)) {
        return apr_psprintf(cmd->pool,
                            "%s: invalid process group '%s' (expected the name of a "
                            "TSGIDaemonProcess, or %%{GLOBAL} for embedded mode)",
                            what, value);
    }
    if (ap_state_query(AP_SQ_MAIN_STATE) == AP_SQ_MS_RUN_MPM) {
        /* .htaccess: the configuration in force is complete. */
        if (!tsgi_daemon_find(value))
            return apr_psprintf(cmd->pool, "%s: no TSGIDaemonProcess named '%s' is defined", what, value);
        return NULL;
    }
    if (!tsgi_group_refs)
        tsgi_group_refs = apr_array_make(cmd->pool, 4, sizeof(tsgi_group_ref_t));
    ref = apr_array_push(tsgi_group_refs);
    ref->name = value;
    ref->where = tsgi_config_location(cmd);
    ref->directive = what;
    return NULL;
}

/* Parses the key=value options after the target of TSGIScriptAlias(Match). */
static const char *tsgi_parse_alias_option(cmd_parms *cmd, tsgi_alias_t *alias, const char *option)
{
    const char *directive = cmd->cmd->name;
    const char *eq = strchr(option, '=');
    const char *key, *value, *err;

    if (!eq || eq == option) {
        return apr_psprintf(cmd->pool,
                            "%s: unexpected argument '%s' (options are application-group=, "
                            "callable-object=, pass-authorization= and process-group=)",
                            directive, option);
    }
    key = apr_pstrmemdup(cmd->pool, option, eq - option);
    value = eq + 1;

    if (!strcasecmp(key, "application-group")) {
        const char *what = apr_pstrcat(cmd->pool, directive, " application-group=", NULL);
        if ((err = tsgi_check_application_group(cmd, what, value)) != NULL)
            return err;
        alias->application_group = value;
    }
    else if (!strcasecmp(key, "callable-object")) {
        const char *what = apr_pstrcat(cmd->pool, directive, " callable-object=", NULL);
        if ((err = tsgi_check_callable(cmd, what, value)) != NULL)
            return err;
        alias->callable_object = value;
    }
    else if (!strcasecmp(key, "pass-authorization")) {
        const char *what = apr_pstrcat(cmd->pool, directive, " pass-authorization=", NULL);
        if ((err = tsgi_parse_flag(cmd, what, value, &alias->pass_authorization)) != NULL)
            return err;
    }
    else if (!strcasecmp(key, "process-group")) {
        const char *what = apr_pstrcat(cmd->pool, directive, " process-group=", NULL);
        if ((err = tsgi_check_process_group(cmd, what, value)) != NULL)
            return err;
        alias->process_group = value;
    }
    else {
        return apr_psprintf(cmd->pool,
                            "%s: unknown option '%s' (options are application-group=, "
                            "callable-object=, pass-authorization= and process-group=)",
                            directive, key);
    }
    return NULL;
}

/* The target is a file system path; relative ones are taken from the ServerRoot. */
static const char *tsgi_resolve_target(cmd_parms *cmd, const char *target, const char **out)
{
    const char *resolved;
    if (!*target)
        return apr_psprintf(cmd->pool, "%s: the script path is empty", cmd->cmd->name);
    resolved = ap_server_root_relative(cmd->pool, target);
    if (!resolved)
        return apr_psprintf(cmd->pool, "%s: invalid script path '%s'", cmd->cmd->name, target);
    /* ap_server_root_relative canonicalises and may drop a trailing '/', which carries
     * meaning here (directory form): keep it. */
    if (target[strlen(target) - 1] == '/' && resolved[strlen(resolved) - 1] != '/')
        resolved = apr_pstrcat(cmd->pool, resolved, "/", NULL);
    *out = resolved;
    return NULL;
}

/* Appends one TSGIScriptAlias / TSGIScriptAliasMatch (a URL prefix or a regex) with its
 * option=value arguments. */
static const char *tsgi_add_alias(cmd_parms *cmd, const char *location, ap_regex_t *regexp, const char *target,
                                  int nopts, char *const opts[])
{
    tsgi_server_conf_t *sconf = ap_get_module_config(cmd->server->module_config, &tsgi_module);
    tsgi_alias_t *alias = apr_array_push(sconf->aliases);
    const char *err;
    int i;

    memset(alias, 0, sizeof(*alias));
    alias->location = location;
    alias->regexp = regexp;
    alias->target = target;
    alias->pass_authorization = TSGI_UNSET;
    alias->defined_at = tsgi_config_location(cmd);
    for (i = 0; i < nopts; i++) {
        if ((err = tsgi_parse_alias_option(cmd, alias, opts[i])) != NULL)
            return err;
    }
    return NULL;
}

/* TSGIScriptAlias URL-path file|directory [option=value ...] */
static const char *tsgi_cmd_script_alias(cmd_parms *cmd, void *mconfig, int argc, char *const argv[])
{
    const char *err, *url, *target;
    size_t ulen, tlen;
    (void)mconfig;

    if ((err = ap_check_cmd_context(cmd, NOT_IN_DIR_LOC_FILE)) != NULL)
        return err;
    if (argc < 2)
        return "TSGIScriptAlias: expected a URL-path and a script path "
               "(TSGIScriptAlias /url /path/to/app.tsgi)";
    url = argv[0];
    if (url[0] != '/')
        return apr_psprintf(cmd->pool, "TSGIScriptAlias: URL-path must start with '/', got '%s'", url);
    if ((err = tsgi_resolve_target(cmd, argv[1], &target)) != NULL)
        return err;

    ulen = strlen(url);
    tlen = strlen(target);
    /* mod_wsgi's trailing-slash trap (mod_wsgi.md §3.2): with a slash on the URL only,
     * `/rest` never matches and `/rest/x` maps to the file "<target>x". */
    if (ulen > 1 && url[ulen - 1] == '/' && target[tlen - 1] != '/') {
        return apr_psprintf(cmd->pool,
                            "TSGIScriptAlias: URL-path '%s' ends with '/' but the script path "
                            "'%s' does not: '%sx' would map to the file '%sx'. Use no "
                            "trailing slash on either (a script file) or on both (a directory "
                            "of scripts)",
                            url, argv[1], url, target);
    }
    if (ulen > 1 && url[ulen - 1] != '/' && target[tlen - 1] == '/') {
        ap_log_error(APLOG_MARK, APLOG_WARNING, 0, cmd->server,
                     TSGILOG(0001) "%s: TSGIScriptAlias %s %s: the script path ends with '/' "
                     "but the URL-path does not; use a slash on both for a directory of scripts",
                     tsgi_config_location(cmd), url, argv[1]);
    }

    return tsgi_add_alias(cmd, url, NULL, target, argc - 2, argv + 2);
}

static apr_status_t tsgi_regfree(void *preg)
{
    ap_regfree(preg);
    return APR_SUCCESS;
}

/* TSGIScriptAliasMatch regex file|directory [option=value ...] */
static const char *tsgi_cmd_script_alias_match(cmd_parms *cmd, void *mconfig, int argc, char *const argv[])
{
    ap_regex_t *re;
    const char *err, *target, *s;
    int rc;
    (void)mconfig;

    if ((err = ap_check_cmd_context(cmd, NOT_IN_DIR_LOC_FILE)) != NULL)
        return err;
    if (argc < 2)
        return "TSGIScriptAliasMatch: expected a regular expression and a script path "
               "(TSGIScriptAliasMatch ^/url/([^/]+) /path/to/$1.tsgi)";

    re = apr_pcalloc(cmd->pool, sizeof(*re));
    rc = ap_regcomp(re, argv[0], AP_REG_EXTENDED);
    if (rc != 0) {
        char msg[256];
        ap_regerror(rc, re, msg, sizeof(msg));
        return apr_psprintf(cmd->pool, "TSGIScriptAliasMatch: cannot compile regular expression '%s': %s",
                            argv[0], msg);
    }
    apr_pool_cleanup_register(cmd->pool, re, tsgi_regfree, apr_pool_cleanup_null);

    if ((err = tsgi_resolve_target(cmd, argv[1], &target)) != NULL)
        return err;
    /* $N beyond the groups of the regex would substitute nothing: refuse it. */
    for (s = target; *s; s++) {
        if (*s == '\\' && s[1]) {
            s++;
            continue;
        }
        if (*s == '$' && apr_isdigit(s[1]) && (apr_size_t)(s[1] - '0') > (apr_size_t)re->re_nsub) {
            return apr_psprintf(cmd->pool,
                                "TSGIScriptAliasMatch: script path '%s' uses $%c but the regular "
                                "expression '%s' has %d group(s)",
                                argv[1], s[1], argv[0], (int)re->re_nsub);
        }
    }

    return tsgi_add_alias(cmd, NULL, re, target, argc - 2, argv + 2);
}

static const char *tsgi_cmd_callable_object(cmd_parms *cmd, void *mconfig, const char *value)
{
    tsgi_dir_conf_t *dconf = mconfig;
    const char *err = tsgi_check_callable(cmd, "TSGICallableObject", value);
    if (err)
        return err;
    dconf->callable_object = value;
    return NULL;
}

static const char *tsgi_cmd_script_reloading(cmd_parms *cmd, void *mconfig, const char *value)
{
    tsgi_dir_conf_t *dconf = mconfig;
    return tsgi_parse_flag(cmd, "TSGIScriptReloading", value, &dconf->script_reloading);
}

static const char *tsgi_cmd_pass_authorization(cmd_parms *cmd, void *mconfig, const char *value)
{
    tsgi_dir_conf_t *dconf = mconfig;
    return tsgi_parse_flag(cmd, "TSGIPassAuthorization", value, &dconf->pass_authorization);
}

static const char *tsgi_cmd_application_group(cmd_parms *cmd, void *mconfig, const char *value)
{
    tsgi_dir_conf_t *dconf = mconfig;
    const char *err = tsgi_check_application_group(cmd, "TSGIApplicationGroup", value);
    if (err)
        return err;
    dconf->application_group = value;
    return NULL;
}

/*
 * TSGIEventLoopTimeout seconds|Off: the watchdog of each Node event loop (main server
 * config only; the analogue of mod_wsgi's deadlock-timeout). When requests wait on a
 * loop that has not turned for this long, they get 504 and its environment is stopped
 * and re-created.
 */
static const char *tsgi_cmd_event_loop_timeout(cmd_parms *cmd, void *mconfig, const char *value)
{
    tsgi_server_conf_t *sconf = ap_get_module_config(cmd->server->module_config, &tsgi_module);
    const char *err;
    char *end = NULL;
    long n;
    (void)mconfig;

    if ((err = ap_check_cmd_context(cmd, GLOBAL_ONLY)) != NULL)
        return err;
    if (!strcasecmp(value, "Off")) {
        sconf->event_loop_timeout = 0;
        return NULL;
    }
    errno = 0;
    n = strtol(value, &end, 10);
    if (errno != 0 || end == value || *end != '\0' || n < 1 || n > 86400) {
        return apr_psprintf(cmd->pool,
                            "TSGIEventLoopTimeout: expected a number of seconds from 1 to 86400, or Off, got '%s'",
                            value);
    }
    sconf->event_loop_timeout = (int)n;
    return NULL;
}

static const char *tsgi_cmd_process_group(cmd_parms *cmd, void *mconfig, const char *value)
{
    tsgi_dir_conf_t *dconf = mconfig;
    const char *err = tsgi_check_process_group(cmd, "TSGIProcessGroup", value);
    if (err)
        return err;
    dconf->process_group = value;
    return NULL;
}

static const char *tsgi_cmd_daemon_process(cmd_parms *cmd, void *mconfig, int argc, char *const argv[])
{
    (void)mconfig;
    return tsgi_daemon_cmd(cmd, argc, argv);
}

static const char *tsgi_cmd_socket_prefix(cmd_parms *cmd, void *mconfig, const char *value)
{
    const char *err;
    (void)mconfig;
    if ((err = ap_check_cmd_context(cmd, GLOBAL_ONLY)) != NULL)
        return err;
    return tsgi_daemon_cmd_socket_prefix(cmd, value);
}

static const char *tsgi_cmd_restrict_embedded(cmd_parms *cmd, void *mconfig, const char *value)
{
    tsgi_server_conf_t *sconf = ap_get_module_config(cmd->server->module_config, &tsgi_module);
    const char *err;
    (void)mconfig;
    if ((err = ap_check_cmd_context(cmd, GLOBAL_ONLY)) != NULL)
        return err;
    return tsgi_parse_flag(cmd, "TSGIRestrictEmbedded", value, &sconf->restrict_embedded);
}

static const command_rec tsgi_commands[] = {
    AP_INIT_TAKE_ARGV("TSGIScriptAlias", tsgi_cmd_script_alias, NULL, RSRC_CONF,
                      "URL-path, script file or directory, [application-group=name] "
                      "[callable-object=name] [pass-authorization=On|Off] [process-group=name]"),
    AP_INIT_TAKE_ARGV("TSGIScriptAliasMatch", tsgi_cmd_script_alias_match, NULL, RSRC_CONF,
                      "regular expression, script path (may use $1..$9), [options as "
                      "TSGIScriptAlias]"),
    AP_INIT_TAKE1("TSGICallableObject", tsgi_cmd_callable_object, NULL, OR_FILEINFO,
                  "name of the exported application callable (default 'application')"),
    AP_INIT_TAKE1("TSGIScriptReloading", tsgi_cmd_script_reloading, NULL, OR_FILEINFO,
                  "On (default) to reload a .tsgi script when its file changes, Off not to"),
    AP_INIT_TAKE1("TSGIPassAuthorization", tsgi_cmd_pass_authorization, NULL, OR_FILEINFO,
                  "On to pass the Authorization header to applications (default Off)"),
    AP_INIT_TAKE1("TSGIApplicationGroup", tsgi_cmd_application_group, NULL, ACCESS_CONF | RSRC_CONF,
                  "application group: a name, %{GLOBAL}, %{SERVER}, %{RESOURCE} (default) "
                  "or %{ENV:variable}"),
    AP_INIT_TAKE1("TSGIEventLoopTimeout", tsgi_cmd_event_loop_timeout, NULL, RSRC_CONF,
                  "seconds a Node event loop may stay blocked while requests wait before they get 504 "
                  "and its environment is re-created (default 30), or Off"),
    AP_INIT_TAKE_ARGV("TSGIDaemonProcess", tsgi_cmd_daemon_process, NULL, RSRC_CONF,
                      "name [option=value ...]: a group of daemon processes Apache starts and "
                      "supervises (docs/directives.md)"),
    AP_INIT_TAKE1("TSGIProcessGroup", tsgi_cmd_process_group, NULL, OR_FILEINFO,
                  "the TSGIDaemonProcess group that runs scripts here, or %{GLOBAL} (default) "
                  "for embedded mode"),
    AP_INIT_TAKE1("TSGIRestrictEmbedded", tsgi_cmd_restrict_embedded, NULL, RSRC_CONF,
                  "On to refuse (500) requests not delegated to a daemon group and not start "
                  "the embedded runtime (default Off)"),
    AP_INIT_TAKE1("TSGISocketPrefix", tsgi_cmd_socket_prefix, NULL, RSRC_CONF,
                  "directory and name prefix of the daemon sockets (default "
                  "DefaultRuntimeDir/tsgi)"),
    {NULL}
};

/* ------------------------------------------------------------------------------------
 * URL mapping (translate_name), mod_wsgi's wsgi_hook_intercept
 * --------------------------------------------------------------------------------- */

/*
 * mod_alias's prefix match (mod_wsgi.md §3.1 step 1): a run of '/' in the alias matches
 * a run of one or more '/' in the URI, anything else matches literally; an alias not
 * ending in '/' must end at the end of the URI or at a '/'. Returns the number of URI
 * characters consumed, 0 for no match.
 */
static apr_size_t tsgi_alias_matches(const char *uri, const char *alias)
{
    const char *aliasp = alias, *urip = uri;

    while (*aliasp) {
        if (*aliasp == '/') {
            if (*urip != '/')
                return 0;
            do {
                ++aliasp;
            } while (*aliasp == '/');
            do {
                ++urip;
            } while (*urip == '/');
        }
        else if (*urip++ != *aliasp++) {
            return 0;
        }
    }
    if (aliasp[-1] != '/' && *urip != '\0' && *urip != '/')
        return 0;
    return (apr_size_t)(urip - uri);
}

/* Per-request state, from translate_name to the handler. */
typedef struct {
    const tsgi_alias_t *alias; /* NULL when the handler was selected by AddHandler/SetHandler */
    const char *script_name;   /* computed by tsgi_compute_script_name */
    const char *path_info;
} tsgi_request_t;

static int tsgi_translate_name(request_rec *r)
{
    tsgi_server_conf_t *sconf = ap_get_module_config(r->server->module_config, &tsgi_module);
    const tsgi_alias_t *aliases = (const tsgi_alias_t *)sconf->aliases->elts;
    ap_regmatch_t matches[AP_MAX_REG_MATCH];
    int i;

    if (sconf->aliases->nelts == 0)
        return DECLINED;
    if (r->uri[0] != '/' && r->uri[0] != '\0')
        return DECLINED;

    for (i = 0; i < sconf->aliases->nelts; i++) {
        const tsgi_alias_t *alias = &aliases[i];
        const char *location = NULL, *target = NULL;
        apr_size_t l = 0;

        if (alias->regexp) {
            if (ap_regexec(alias->regexp, r->uri, AP_MAX_REG_MATCH, matches, 0) == 0 && matches[0].rm_eo > 0) {
                l = (apr_size_t)matches[0].rm_eo;
                location = apr_pstrmemdup(r->pool, r->uri, l);
                target = ap_pregsub(r->pool, alias->target, r->uri, AP_MAX_REG_MATCH, matches);
                if (!target) {
                    ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                                  TSGILOG(0002) "TSGIScriptAliasMatch: substitution of '%s' for URI '%s' failed",
                                  alias->target, r->uri);
                    return HTTP_INTERNAL_SERVER_ERROR;
                }
            }
        }
        else {
            l = tsgi_alias_matches(r->uri, alias->location);
            location = alias->location;
            target = alias->target;
        }

        if (l > 0) {
            tsgi_request_t *req = apr_pcalloc(r->pool, sizeof(*req));
            /* At the root the whole URI, with its leading '/', follows the target. */
            if (!strcmp(location, "/"))
                r->filename = apr_pstrcat(r->pool, target, r->uri, NULL);
            else
                r->filename = apr_pstrcat(r->pool, target, r->uri + l, NULL);
            r->handler = TSGI_HANDLER;
            apr_table_setn(r->notes, "alias-forced-type", r->handler);
            req->alias = alias;
            ap_set_module_config(r->request_config, &tsgi_module, req);
            ap_log_rerror(APLOG_MARK, APLOG_TRACE1, 0, r, "mapped %s to %s", r->uri, r->filename);
            return OK;
        }
    }
    return DECLINED;
}

/* ------------------------------------------------------------------------------------
 * SCRIPT_NAME / PATH_INFO, application group, environ
 * --------------------------------------------------------------------------------- */

static int tsgi_is_our_handler(request_rec *r)
{
    return r->handler && (!strcmp(r->handler, TSGI_HANDLER) || !strcmp(r->handler, TSGI_HANDLER_MIME));
}

static tsgi_request_t *tsgi_request(request_rec *r)
{
    tsgi_request_t *req = ap_get_module_config(r->request_config, &tsgi_module);
    if (!req) {
        req = apr_pcalloc(r->pool, sizeof(*req));
        ap_set_module_config(r->request_config, &tsgi_module, req);
    }
    return req;
}

/*
 * mod_wsgi.md §3.1 steps 3-5: the directory walk has split r->filename into the script
 * and r->path_info; SCRIPT_NAME is the part of r->uri before the path info (as
 * ap_add_cgi_vars, tolerating duplicate slashes), then runs of '/' collapse to one in both.
 */
static void tsgi_compute_script_name(request_rec *r, tsgi_request_t *req)
{
    char *script_name, *path_info;

    if (req->script_name)
        return;
    if (r->path_info && *r->path_info) {
        int start = ap_find_path_info(r->uri, r->path_info);
        script_name = apr_pstrmemdup(r->pool, r->uri, (apr_size_t)start);
        path_info = apr_pstrdup(r->pool, r->path_info);
    }
    else {
        script_name = apr_pstrdup(r->pool, r->uri);
        path_info = apr_pstrdup(r->pool, "");
    }
    ap_no2slash(script_name);
    ap_no2slash(path_info);
    req->script_name = script_name;
    req->path_info = path_info;
}

static tsgi_dir_conf_t *tsgi_dir_conf(request_rec *r)
{
    return ap_get_module_config(r->per_dir_config, &tsgi_module);
}

static const char *tsgi_callable_object(request_rec *r, const tsgi_request_t *req)
{
    const tsgi_dir_conf_t *dconf = tsgi_dir_conf(r);
    if (req->alias && req->alias->callable_object)
        return req->alias->callable_object;
    return dconf->callable_object ? dconf->callable_object : TSGI_DEFAULT_CALLABLE;
}

static int tsgi_pass_authorization(request_rec *r, const tsgi_request_t *req)
{
    const tsgi_dir_conf_t *dconf = tsgi_dir_conf(r);
    const core_dir_config *core = ap_get_core_module_config(r->per_dir_config);
    if (req->alias && req->alias->pass_authorization != TSGI_UNSET)
        return req->alias->pass_authorization;
    if (dconf->pass_authorization != TSGI_UNSET)
        return dconf->pass_authorization;
    /* Apache's own switch for CGI, honoured as mod_wsgi does. */
    return core && core->cgi_pass_auth == AP_CGI_PASS_AUTH_ON;
}

static int tsgi_script_reloading(request_rec *r)
{
    const tsgi_dir_conf_t *dconf = tsgi_dir_conf(r);
    return dconf->script_reloading != TSGI_UNSET ? dconf->script_reloading : 1;
}

/* The daemon group's name for this request, or NULL for embedded mode. */
static const char *tsgi_process_group(request_rec *r, const tsgi_request_t *req)
{
    const tsgi_dir_conf_t *dconf = tsgi_dir_conf(r);
    const char *name = NULL;
    if (req->alias && req->alias->process_group)
        name = req->alias->process_group;
    else if (dconf->process_group)
        name = dconf->process_group;
    if (!name || !strcmp(name, TSGI_GLOBAL_GROUP))
        return NULL;
    return name;
}

static int tsgi_restrict_embedded(request_rec *r)
{
    /* Main-server only; the merge copies it into every virtual host. */
    const tsgi_server_conf_t *sconf = ap_get_module_config(r->server->module_config, &tsgi_module);
    return sconf->restrict_embedded == 1;
}

/* "host[:port]" as mod_wsgi names a server: the port is left out when it is 80 or 443. */
static const char *tsgi_server_key(request_rec *r)
{
    apr_port_t port = ap_get_server_port(r);
    const char *host = r->server->server_hostname ? r->server->server_hostname : "";
    if (port != DEFAULT_HTTP_PORT && port != DEFAULT_HTTPS_PORT)
        return apr_psprintf(r->pool, "%s:%u", host, (unsigned)port);
    return host;
}

/* WSGIApplicationGroup's values (mod_wsgi.md §1.2); the default is %{RESOURCE}. */
static const char *tsgi_application_group(request_rec *r, const tsgi_request_t *req)
{
    const tsgi_dir_conf_t *dconf = tsgi_dir_conf(r);
    const char *spec = NULL;

    if (req->alias && req->alias->application_group)
        spec = req->alias->application_group;
    else if (dconf->application_group)
        spec = dconf->application_group;

    if (!spec || !strcmp(spec, "%{RESOURCE}"))
        return apr_pstrcat(r->pool, tsgi_server_key(r), "|", req->script_name, NULL);
    if (*spec != '%')
        return spec;
    if (!strcmp(spec, "%{GLOBAL}"))
        return "";
    if (!strcmp(spec, "%{SERVER}"))
        return tsgi_server_key(r);
    if (!strncmp(spec, "%{ENV:", 6)) {
        const char *name = apr_pstrmemdup(r->pool, spec + 6, strlen(spec) - 7);
        const char *value = apr_table_get(r->notes, name);
        if (!value)
            value = apr_table_get(r->subprocess_env, name);
        if (!value)
            value = getenv(name);
        return value ? value : "";
    }
    return spec;
}

/* The header name as a CGI variable, or NULL when it has characters other than
 * alphanumerics and '-' (so `X_Foo` cannot pose as `X-Foo`; mod_wsgi.md §3.3). */
static const char *tsgi_http2env(apr_pool_t *p, const char *name)
{
    char *env = apr_palloc(p, sizeof("HTTP_") + strlen(name));
    char *cp = env;
    memcpy(cp, "HTTP_", 5);
    cp += 5;
    for (; *name; name++) {
        if (apr_isalnum(*name))
            *cp++ = (char)apr_toupper(*name);
        else if (*name == '-')
            *cp++ = '_';
        else
            return NULL;
    }
    *cp = '\0';
    return env;
}

/* REQUEST_URI: the URI of the request line, raw, with its query (as ap_add_cgi_vars). */
static const char *tsgi_request_uri(request_rec *r)
{
    const char *first, *last;
    if (!r->the_request)
        return r->unparsed_uri ? r->unparsed_uri : "";
    first = r->the_request;
    while (*first && !apr_isspace(*first))
        ++first;
    while (apr_isspace(*first))
        ++first;
    last = first;
    while (*last && !apr_isspace(*last))
        ++last;
    return apr_pstrmemdup(r->pool, first, (apr_size_t)(last - first));
}

static void tsgi_set(apr_table_t *e, const char *key, const char *value)
{
    if (value)
        apr_table_setn(e, key, value);
}

static int tsgi_is_https(request_rec *r)
{
    const char *https = apr_table_get(r->subprocess_env, "HTTPS");
    if (https && (!strcasecmp(https, "on") || !strcasecmp(https, "1") || !strcasecmp(https, "yes")))
        return 1;
    return ap_ssl_conn_is_ssl(r->connection);
}

/*
 * The CGI variables of the app's environ (mod_wsgi.md §3.3): SetEnv and other
 * per-request variables first, then the request's own, which win. Never touches the
 * process environment.
 */
static apr_table_t *tsgi_build_environ(request_rec *r, tsgi_request_t *req, const char **url_scheme)
{
    apr_table_t *e = apr_table_copy(r->pool, r->subprocess_env);
    const apr_array_header_t *arr = apr_table_elts(r->headers_in);
    const apr_table_entry_t *hdrs = (const apr_table_entry_t *)arr->elts;
    conn_rec *c = r->connection;
    int pass_auth = tsgi_pass_authorization(r, req);
    int i;

    *url_scheme = tsgi_is_https(r) ? "https" : "http";

    /* Values other modules may have put in subprocess_env that an app must not see. */
    apr_table_unset(e, "HTTPS");
    apr_table_unset(e, "PATH");
    apr_table_unset(e, "PATH_TRANSLATED");
    apr_table_unset(e, "GATEWAY_INTERFACE");
    apr_table_unset(e, "SERVER_SIGNATURE");
    apr_table_unset(e, "REMOTE_HOST");
    apr_table_unset(e, "REMOTE_IDENT");
    apr_table_unset(e, "HTTP_AUTHORIZATION");
    apr_table_unset(e, "HTTP_PROXY_AUTHORIZATION");
    apr_table_unset(e, "HTTP_PROXY");

    for (i = 0; i < arr->nelts; i++) {
        const char *key = hdrs[i].key, *name;
        if (!key)
            continue;
        if (!strcasecmp(key, "Content-Type")) {
            apr_table_setn(e, "CONTENT_TYPE", hdrs[i].val);
            continue;
        }
        if (!strcasecmp(key, "Content-Length")) {
            apr_table_setn(e, "CONTENT_LENGTH", hdrs[i].val);
            continue;
        }
        if (!strcasecmp(key, "Proxy")) /* httpoxy */
            continue;
        if ((!strcasecmp(key, "Authorization") || !strcasecmp(key, "Proxy-Authorization")) && !pass_auth)
            continue;
        name = tsgi_http2env(r->pool, key);
        if (!name) {
            ap_log_rerror(APLOG_MARK, APLOG_TRACE1, 0, r, "not passing header with invalid name: %s", key);
            continue;
        }
        apr_table_mergen(e, name, hdrs[i].val);
    }

    tsgi_set(e, "SERVER_SOFTWARE", ap_get_server_banner());
    tsgi_set(e, "SERVER_NAME", ap_get_server_name_for_url(r));
    tsgi_set(e, "SERVER_ADDR", c->local_ip);
    tsgi_set(e, "SERVER_PORT", apr_psprintf(r->pool, "%u", (unsigned)ap_get_server_port(r)));
    tsgi_set(e, "SERVER_ADMIN", r->server->server_admin);
    tsgi_set(e, "SERVER_PROTOCOL", r->protocol);
    tsgi_set(e, "REMOTE_ADDR", r->useragent_ip);
    if (c->client_addr)
        tsgi_set(e, "REMOTE_PORT", apr_psprintf(r->pool, "%u", (unsigned)c->client_addr->port));
    tsgi_set(e, "REMOTE_USER", r->user);
    tsgi_set(e, "AUTH_TYPE", r->ap_auth_type);
    tsgi_set(e, "DOCUMENT_ROOT", ap_document_root(r));
    tsgi_set(e, "REQUEST_SCHEME", ap_http_scheme(r));
    tsgi_set(e, "CONTEXT_PREFIX", ap_context_prefix(r));
    tsgi_set(e, "CONTEXT_DOCUMENT_ROOT", ap_context_document_root(r));
    tsgi_set(e, "SCRIPT_FILENAME", r->filename);
    tsgi_set(e, "REQUEST_METHOD", r->method);
    tsgi_set(e, "QUERY_STRING", r->args ? r->args : "");
    tsgi_set(e, "REQUEST_URI", tsgi_request_uri(r));
    tsgi_set(e, "SCRIPT_NAME", req->script_name);
    tsgi_set(e, "PATH_INFO", req->path_info);
    if (r->prev) {
        tsgi_set(e, "REDIRECT_URL", r->prev->uri);
        tsgi_set(e, "REDIRECT_QUERY_STRING", r->prev->args);
        tsgi_set(e, "REDIRECT_REMOTE_USER", r->prev->user);
    }
    return e;
}

/* ------------------------------------------------------------------------------------
 * Hooks
 * --------------------------------------------------------------------------------- */

/*
 * After the directory walk has set r->path_info: the mapping, published in
 * r->subprocess_env as the mod_tsgi.* values the app's environ will carry, so the rest
 * of Apache can use them (mod_headers' %{mod_tsgi.script_name}e, a CustomLog format).
 */
static int tsgi_fixups(request_rec *r)
{
    tsgi_request_t *req;

    if (!tsgi_is_our_handler(r))
        return DECLINED;
    req = tsgi_request(r);
    tsgi_compute_script_name(r, req);
    apr_table_setn(r->subprocess_env, "mod_tsgi.script_name", req->script_name);
    apr_table_setn(r->subprocess_env, "mod_tsgi.path_info", req->path_info);
    {
        const char *group = tsgi_process_group(r, req);
        apr_table_setn(r->subprocess_env, "mod_tsgi.process_group", group ? group : "");
    }
    apr_table_setn(r->subprocess_env, "mod_tsgi.application_group", tsgi_application_group(r, req));
    apr_table_setn(r->subprocess_env, "mod_tsgi.callable_object", tsgi_callable_object(r, req));
    apr_table_setn(r->subprocess_env, "mod_tsgi.script_reloading", tsgi_script_reloading(r) ? "1" : "0");
    return OK;
}

static int tsgi_handler(request_rec *r)
{
    tsgi_request_t *req;
    tsgi_embed_request_t er;
    const char *url_scheme, *group_name;
    tsgi_daemon_group_t *group = NULL;
    apr_table_t *environ;

    if (r->handler && !strcmp(r->handler, TSGI_STATUS_HANDLER))
        return tsgi_daemon_status_handler(r);
    if (!tsgi_is_our_handler(r))
        return DECLINED;
    req = tsgi_request(r);

    /* The checks of mod_wsgi's handler (mod_wsgi.md §2.2 step 3), in its order. */
    if (!req->alias && !(ap_allow_options(r) & OPT_EXECCGI)) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      TSGILOG(0003) "Options ExecCGI is off in this directory: %s", r->filename);
        return HTTP_FORBIDDEN;
    }
    if (r->finfo.filetype == APR_NOFILE) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      TSGILOG(0004) "Target TSGI script not found or unable to stat: %s", r->filename);
        return HTTP_NOT_FOUND;
    }
    if (r->finfo.filetype == APR_DIR) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      TSGILOG(0005) "Attempt to invoke directory as TSGI application: %s", r->filename);
        return HTTP_FORBIDDEN;
    }
    if (r->finfo.filetype != APR_REG) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      TSGILOG(0006) "Target TSGI script is not a regular file: %s", r->filename);
        return HTTP_FORBIDDEN;
    }
    if (r->used_path_info == AP_REQ_REJECT_PATH_INFO && r->path_info && *r->path_info) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      TSGILOG(0007) "AcceptPathInfo off disallows user's path: %s%s", r->filename, r->path_info);
        return HTTP_NOT_FOUND;
    }

    group_name = tsgi_process_group(r, req);
    if (group_name) {
        group = tsgi_daemon_find(group_name);
        if (!group) {
            /* Only .htaccess or %{...} can get here: the configuration files are checked. */
            ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                          TSGILOG(0008) "no TSGIDaemonProcess named '%s' for %s", group_name, r->filename);
            return HTTP_INTERNAL_SERVER_ERROR;
        }
    }
    else if (tsgi_restrict_embedded(r)) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      TSGILOG(0009) "TSGIRestrictEmbedded On: %s is not delegated to a daemon "
                      "process group (TSGIProcessGroup or process-group=)",
                      r->filename);
        return HTTP_INTERNAL_SERVER_ERROR;
    }

    tsgi_compute_script_name(r, req);
    environ = tsgi_build_environ(r, req, &url_scheme);
    if (APLOGrtrace2(r)) {
        const apr_array_header_t *arr = apr_table_elts(environ);
        const apr_table_entry_t *ent = (const apr_table_entry_t *)arr->elts;
        int i;
        ap_log_rerror(APLOG_MARK, APLOG_TRACE2, 0, r, "environ tsgi.url_scheme=%s", url_scheme);
        for (i = 0; i < arr->nelts; i++) {
            /* The error log escapes non-printable bytes itself. */
            ap_log_rerror(APLOG_MARK, APLOG_TRACE2, 0, r, "environ %s=%s", ent[i].key, ent[i].val);
        }
    }

    memset(&er, 0, sizeof(er));
    er.r = r;
    er.environ = environ;
    er.url_scheme = url_scheme;
    er.script = r->filename;
    er.callable = tsgi_callable_object(r, req);
    er.application_group = tsgi_application_group(r, req);
    er.script_reloading = tsgi_script_reloading(r);
    if (group)
        return tsgi_daemon_forward(&er, group);
    return tsgi_embed_handle(&er);
}

static int tsgi_pre_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp)
{
    (void)plog;
    (void)ptemp;
    tsgi_group_refs = apr_array_make(pconf, 4, sizeof(tsgi_group_ref_t));
    tsgi_daemon_pre_config(pconf);
    return OK;
}

/* Every process-group reference names a defined group (also for `apachectl -t`). */
static int tsgi_check_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp, server_rec *s)
{
    int i, bad = 0;
    (void)pconf;
    (void)plog;
    (void)ptemp;
    for (i = 0; tsgi_group_refs && i < tsgi_group_refs->nelts; i++) {
        const tsgi_group_ref_t *ref = &APR_ARRAY_IDX(tsgi_group_refs, i, tsgi_group_ref_t);
        if (!tsgi_daemon_find(ref->name)) {
            ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_EMERG, 0, s,
                         TSGILOG(0010) "%s: %s: no TSGIDaemonProcess named '%s' is defined", ref->where,
                         ref->directive, ref->name);
            bad = 1;
        }
    }
    return bad ? HTTP_INTERNAL_SERVER_ERROR : OK;
}

static void tsgi_preload_add(tsgi_daemon_group_t *g, apr_pool_t *p, const char *script)
{
    int i;
    for (i = 0; i < g->preload->nelts; i++) {
        if (!strcmp(APR_ARRAY_IDX(g->preload, i, const char *), script))
            return;
    }
    APR_ARRAY_PUSH(g->preload, const char *) = apr_pstrdup(p, script);
}

/*
 * The scripts each group serves that are known from the configuration: file targets of
 * TSGIScriptAlias (the alias's process-group= or the server's TSGIProcessGroup). The
 * daemons load them at start, so the first request does not pay for it.
 */
static void tsgi_collect_preload(apr_pool_t *p, server_rec *main_server)
{
    server_rec *s;
    for (s = main_server; s; s = s->next) {
        const tsgi_server_conf_t *sconf = ap_get_module_config(s->module_config, &tsgi_module);
        const tsgi_dir_conf_t *dconf = ap_get_module_config(s->lookup_defaults, &tsgi_module);
        const tsgi_alias_t *aliases = (const tsgi_alias_t *)sconf->aliases->elts;
        int i;
        for (i = 0; i < sconf->aliases->nelts; i++) {
            const tsgi_alias_t *a = &aliases[i];
            const char *name = a->process_group ? a->process_group : dconf->process_group;
            tsgi_daemon_group_t *g;
            apr_size_t tlen = strlen(a->target);
            if (a->regexp || tlen == 0 || a->target[tlen - 1] == '/' || !name)
                continue;
            if ((g = tsgi_daemon_find(name)) != NULL)
                tsgi_preload_add(g, p, a->target);
        }
    }
}

static int tsgi_post_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp, server_rec *s)
{
    int rc;
    ap_add_version_component(pconf, "mod_tsgi/" TSGI_VERSION);
    if ((rc = tsgi_embed_post_config(pconf, s)) != OK)
        return rc;
    tsgi_collect_preload(pconf, s);
    return tsgi_daemon_post_config(pconf, plog, ptemp, s);
}

static void tsgi_child_init(apr_pool_t *pchild, server_rec *s)
{
    const tsgi_server_conf_t *sconf = ap_get_module_config(s->module_config, &tsgi_module);
    tsgi_embed_config_t cfg;
    tsgi_daemon_child_init(pchild, s);
    /* TSGIRestrictEmbedded On: no request can run embedded, so the runtime (and its
     * memory in every child) is not started at all. */
    if (sconf->restrict_embedded == 1)
        return;
    cfg.event_loop_timeout =
        sconf->event_loop_timeout == TSGI_UNSET ? TSGI_DEFAULT_EVENT_LOOP_TIMEOUT : sconf->event_loop_timeout;
    tsgi_embed_child_init(pchild, s, &cfg);
}

/* A stopping child (mpm_common.h, Apache >= 2.4.49): see tsgi_embed_child_stopping. */
static void tsgi_child_stopping(apr_pool_t *pchild, int graceful)
{
    tsgi_embed_child_stopping(pchild, graceful);
}

static void tsgi_register_hooks(apr_pool_t *p)
{
    /* As mod_wsgi: after mod_alias, so `Alias /static` beats `TSGIScriptAlias /`, and
     * before mod_userdir and mod_vhost_alias. */
    static const char *const before_us[] = {"mod_alias.c", NULL};
    static const char *const after_us[] = {"mod_userdir.c", "mod_vhost_alias.c", NULL};
    (void)p;

    ap_hook_pre_config(tsgi_pre_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_check_config(tsgi_check_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_post_config(tsgi_post_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_child_init(tsgi_child_init, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_child_stopping(tsgi_child_stopping, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_translate_name(tsgi_translate_name, before_us, after_us, APR_HOOK_MIDDLE);
    ap_hook_fixups(tsgi_fixups, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_handler(tsgi_handler, NULL, NULL, APR_HOOK_MIDDLE);
}

AP_DECLARE_MODULE(tsgi) = {
    STANDARD20_MODULE_STUFF,
    tsgi_create_dir_conf,
    tsgi_merge_dir_conf,
    tsgi_create_server_conf,
    tsgi_merge_server_conf,
    tsgi_commands,
    tsgi_register_hooks,
    AP_MODULE_FLAG_NONE
};
