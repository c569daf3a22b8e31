/*
 * What embedded mode (embed.c) and daemon mode (daemon_client.c) both do to a response
 * that cannot be completed, and how both notice a client that went away.
 */
#ifndef TSGI_RESPONSE_H
#define TSGI_RESPONSE_H

#include "httpd.h"
#include "http_protocol.h"
#include "util_filter.h"
#include "apr_network_io.h"
#include "apr_portable.h"

#include <errno.h>
#include <sys/socket.h>
#include <sys/types.h>

/* A response that cannot be completed must not look complete: a 502 error bucket makes
 * the chunk filter drop the last-chunk and the connection close (as mod_proxy does).
 * Header-only (static inline) so that both builds of the module get it without another
 * source file in the module's source lists. */
static inline void tsgi_abort_response(request_rec *r)
{
    conn_rec *c = r->connection;
    apr_bucket_brigade *bb;
    /* The head and what was written go out first: an error bucket that reaches the HTTP
     * header filter before the head was sent would replace the response. */
    if (!c->aborted && ap_rflush(r) < 0)
        c->aborted = 1;
    bb = apr_brigade_create(r->pool, c->bucket_alloc);
    APR_BRIGADE_INSERT_TAIL(bb, ap_bucket_error_create(HTTP_BAD_GATEWAY, NULL, r->pool, c->bucket_alloc));
    APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_eos_create(c->bucket_alloc));
    if (ap_pass_brigade(r->output_filters, bb) != APR_SUCCESS)
        c->aborted = 1;
    c->keepalive = AP_CONN_CLOSE;
}

/*
 * Whether the client has gone while the app runs with nothing to write: the connection
 * was aborted, or the socket reports end-of-stream or an error. Like nginx's check of a
 * broken connection, it peeks without consuming; unread request bytes mean "still
 * there". HTTP/2 streams (c->master) share their socket and are not checked here.
 */
static inline int tsgi_client_gone(conn_rec *c)
{
    apr_socket_t *sock;
    apr_os_sock_t fd;
    char byte;
    ssize_t n;

    if (c->aborted)
        return 1;
    if (c->master)
        return 0;
    sock = ap_get_conn_socket(c);
    if (!sock || apr_os_sock_get(&fd, sock) != APR_SUCCESS)
        return 0;
    n = recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0)
        return 1;
    return n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
}

#endif
