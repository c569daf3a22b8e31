/**
 * Apache common log format, so `tsgi serve` logs read like an Apache access log:
 *   127.0.0.1 - - [21/Nov/2026:19:15:00 +0000] "GET / HTTP/1.1" 200 13
 * An aborted response is marked with a trailing `aborted` / `client-gone` field, so a
 * truncated response is visible in the log too.
 */
import type { RequestOutcome } from '../gateway/run';

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

export function clfDate(d: Date): string {
  const off = -d.getTimezoneOffset();
  const sign = off >= 0 ? '+' : '-';
  const abs = Math.abs(off);
  const p2 = (n: number) => String(n).padStart(2, '0');
  return `${p2(d.getDate())}/${MONTHS[d.getMonth()]}/${d.getFullYear()}:${p2(d.getHours())}:${p2(d.getMinutes())}:${p2(d.getSeconds())} ${sign}${p2(Math.floor(abs / 60))}${p2(abs % 60)}`;
}

export function commonLogLine(remote: string | undefined, when: Date, requestLine: string, outcome: RequestOutcome): string {
  const status = outcome.code === 0 ? '-' : String(outcome.code);
  const bytes = outcome.bytes === 0 ? '-' : String(outcome.bytes);
  const safeLine = requestLine.replace(/["\\\x00-\x1f\x7f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
  const note = outcome.state === 'aborted' || outcome.state === 'client-gone' ? ` ${outcome.state}` : '';
  return `${remote ?? '-'} - - [${clfDate(when)}] "${safeLine}" ${status} ${bytes}${note}\n`;
}
