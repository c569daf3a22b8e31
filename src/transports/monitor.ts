/**
 * The one hook a process manager (src/daemon-mode.ts) needs from a transport: to know
 * when each request begins and ends (request counts, in-flight counts, maximum-requests,
 * concurrency limits), and to end one early on its behalf (request-timeout).
 */
export interface RequestMonitor {
  /**
   * A request has begun; `what` names it in log entries ("GET /path?q"). `expire` ends it early: the transport answers 504 when nothing
   * was sent yet and the protocol lets it (HTTP), otherwise cuts the response short so the
   * web server sees it incomplete; either way the application's tsgi.signal fires.
   * Returns the function the transport calls exactly once, when the request is over.
   */
  begin(what: string, expire: () => void): () => void;
}

/** The error tsgi.signal carries when the manager ends a request (request-timeout). */
export class RequestExpired extends Error {
  override readonly name = 'RequestExpired';
}
