/**
 * Status and response-header rules of TSGI 1.0 (docs/spec.md §5), shared by the
 * gateway core (which enforces them) and the validate middleware (which reports them).
 */
import { SpecViolation } from './errors';
import type { Header } from '../tsgi';

/** RFC 9110 token characters (header names, methods). */
export const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** Latin-1 without control characters (HTAB allowed inside a value). */
const FIELD_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;
const STATUS = /^([1-5][0-9][0-9]) ([\t\x20-\x7e\x80-\xff]*)$/;

/** Connection-specific headers an application must not set: the server owns the connection. */
export const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-authenticate',
  'proxy-authorization',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

/** Statuses that never carry a body. */
export function statusForbidsBody(code: number): boolean {
  return code < 200 || code === 204 || code === 304;
}

export interface ParsedStatus {
  code: number;
  reason: string;
}

/** Parses `"NNN Reason"`, or throws a SpecViolation saying what is wrong with it. */
export function parseStatus(status: unknown): ParsedStatus {
  if (typeof status !== 'string') {
    throw new SpecViolation(`status must be a string like "200 OK", got ${describe(status)}`);
  }
  const m = STATUS.exec(status);
  if (!m) {
    if (/[\r\n]/.test(status)) throw new SpecViolation(`status contains CR or LF: ${JSON.stringify(status)}`);
    throw new SpecViolation(`status must be "NNN Reason" (three digits, a space, a reason phrase), got ${JSON.stringify(status)}`);
  }
  const code = Number(m[1]);
  if (code < 200) {
    throw new SpecViolation(`status ${code}: informational (1xx) responses are sent by the server, not the application`);
  }
  return { code, reason: m[2] };
}

/**
 * Checks the header list and returns the declared Content-Length (null when absent).
 * Throws a SpecViolation naming the first bad header.
 */
export function checkHeaders(headers: unknown): number | null {
  if (!Array.isArray(headers)) {
    throw new SpecViolation(`headers must be an array of [name, value] pairs, got ${describe(headers)}`);
  }
  let contentLength: number | null = null;
  for (let i = 0; i < headers.length; i++) {
    const pair: unknown = headers[i];
    if (!Array.isArray(pair) || pair.length !== 2) {
      throw new SpecViolation(`header #${i} must be a [name, value] pair, got ${describe(pair)}`);
    }
    const [name, value] = pair as unknown[];
    if (typeof name !== 'string' || typeof value !== 'string') {
      throw new SpecViolation(`header #${i}: name and value must be strings, got [${describe(name)}, ${describe(value)}]`);
    }
    if (!TOKEN.test(name)) {
      if (/[\r\n]/.test(name)) throw new SpecViolation(`header name contains CR or LF: ${JSON.stringify(name)}`);
      throw new SpecViolation(`header name ${JSON.stringify(name)} is not a valid token`);
    }
    if (!FIELD_VALUE.test(value)) {
      if (/[\r\n]/.test(value)) throw new SpecViolation(`header ${name} contains CR or LF in its value: ${JSON.stringify(value)}`);
      throw new SpecViolation(`header ${name} has a control or non-Latin-1 character in its value: ${JSON.stringify(value)}`);
    }
    const lower = name.toLowerCase();
    if (lower === 'status') {
      throw new SpecViolation('a header named "Status" is not allowed; pass the status to startResponse');
    }
    if (HOP_BY_HOP.has(lower)) {
      throw new SpecViolation(`hop-by-hop header ${name} is not allowed; the server manages the connection`);
    }
    if (lower === 'content-length') {
      if (!/^[0-9]{1,15}$/.test(value)) {
        throw new SpecViolation(`Content-Length must be a non-negative integer, got ${JSON.stringify(value)}`);
      }
      const n = Number(value);
      if (contentLength !== null && contentLength !== n) {
        throw new SpecViolation(`conflicting Content-Length headers: ${contentLength} and ${n}`);
      }
      contentLength = n;
    }
  }
  return contentLength;
}

/** True when the header list has a header with this (lower-case) name. */
export function hasHeader(headers: readonly Header[], lowerName: string): boolean {
  for (const [n] of headers) if (n.toLowerCase() === lowerName) return true;
  return false;
}

/** A short description of a value for error messages. */
export function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return `array(${v.length})`;
  if (v instanceof Uint8Array) return `Uint8Array(${v.byteLength})`;
  if (typeof v === 'string') return v.length > 40 ? `string ${JSON.stringify(v.slice(0, 40))}…` : `string ${JSON.stringify(v)}`;
  if (typeof v === 'object') return `object ${Object.prototype.toString.call(v)}`;
  return `${typeof v} ${String(v)}`;
}
