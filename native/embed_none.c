/*
 * The runtime of a build without embedded Node.js: the module parses its configuration
 * and maps URLs, and every request for a script is answered 503 with one log line, so a
 * configuration can be checked and its mapping inspected (the mod_tsgi.* variables set
 * in fixups), but nothing pretends to run an application.
 */
#include "httpd.h"
#include "http_config.h"
#include "http_log.h"

#include "embed.h"

APLOG_USE_MODULE(tsgi);

int tsgi_embed_post_config(apr_pool_t *pconf, server_rec *s)
{
    (void)pconf;
    (void)s;
    return OK;
}

void tsgi_embed_child_init(apr_pool_t *pchild, server_rec *s, const tsgi_embed_config_t *cfg)
{
    (void)pchild;
    (void)s;
    (void)cfg;
}

void tsgi_embed_child_stopping(apr_pool_t *pchild, int graceful)
{
    (void)pchild;
    (void)graceful;
}

int tsgi_embed_handle(const tsgi_embed_request_t *req)
{
    ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, req->r,
                  "TSGI0100: embedded runtime not available in this build: cannot run %s",
                  req->script);
    return HTTP_SERVICE_UNAVAILABLE;
}
