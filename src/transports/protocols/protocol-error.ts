/**
 * The error every wire-protocol codec (SCGI, uwsgi, …) throws for bytes it cannot accept.
 * The message says what was wrong and where, so the one log line the connection gets
 * is enough to find the misconfigured or misbehaving peer. Anything else a codec throws
 * is a bug in the codec.
 */
export class ProtocolError extends Error {
  override name = 'TsgiProtocolError';
  constructor(
    /** 'SCGI', 'uwsgi', …: prefixes the message. */
    readonly protocol: string,
    message: string,
  ) {
    super(`${protocol}: ${message}`);
  }
}

/** A byte for an error message: `0x47 ('G')`. */
export function describeByte(b: number): string {
  const hex = `0x${b.toString(16).padStart(2, '0')}`;
  return b >= 0x20 && b < 0x7f ? `${hex} (${JSON.stringify(String.fromCharCode(b))})` : hex;
}

/** True when four bytes start like an HTTP request line: a peer speaking HTTP to a gateway-protocol socket. */
export function looksLikeHttp(first4: Uint8Array): boolean {
  const s = Buffer.from(first4.buffer, first4.byteOffset, Math.min(first4.byteLength, 4)).toString('latin1');
  return ['GET ', 'HEAD', 'POST', 'PUT ', 'DELE', 'OPTI', 'PATC', 'TRAC', 'CONN', 'PRI '].includes(s);
}
