/** CGI variables from HTTP requests: the mod_wsgi mount table (reference/mod_wsgi.md §3.2) and header rules. */
import { describe, it, expect } from 'vitest';
import { addHeaderVariables, decodePath, mapMount, removeDotSegments, splitTarget } from '../../src/gateway/environ';

describe('mapMount: the golden table', () => {
  const rows: [string, string, [string, string] | null][] = [
    ['/rest', '/rest', ['/rest', '']],
    ['/rest', '/rest/', ['/rest', '/']],
    ['/rest', '/rest/a/b', ['/rest', '/a/b']],
    ['/rest', '/rest//a///b', ['/rest', '/a/b']],
    ['/rest', '/restful', null],
    ['/rest', '/other', null],
    ['/rest', '/rest/café', ['/rest', '/café']],
    ['/rest/', '/rest/x', ['/rest', '/x']],
    ['', '/', ['', '/']],
    ['', '/x/y', ['', '/x/y']],
    ['/', '/', ['', '/']],
    ['/', '/x/y', ['', '/x/y']],
    ['/rest', '/rest/a/../b', ['/rest', '/b']],
    ['/rest', '/rest/./a', ['/rest', '/a']],
    ['/a/b', '/a//b/c', ['/a/b', '/c']],
  ];
  it.each(rows)('mount %j, path %j → %j', (mount, path, expected) => {
    const got = mapMount(path, mount);
    expect(got === null ? null : [got.scriptName, got.pathInfo]).toEqual(expected);
  });
});

describe('paths', () => {
  it('splits the query off the raw target', () => {
    expect(splitTarget('/a/b?x=1&y=%20')).toEqual({ path: '/a/b', query: 'x=1&y=%20' });
    expect(splitTarget('/a')).toEqual({ path: '/a', query: '' });
  });

  it('%-decodes as UTF-8', () => {
    expect(decodePath('/rest/caf%C3%A9')).toBe('/rest/café');
    expect(decodePath('/a%20b')).toBe('/a b');
    expect(decodePath('/plain')).toBe('/plain');
  });

  it('rejects malformed escapes', () => {
    expect(decodePath('/bad%zz')).toBeNull();
    expect(decodePath('/bad%4')).toBeNull();
  });

  it('removes dot segments without climbing above the root', () => {
    expect(removeDotSegments('/a/b/../c')).toBe('/a/c');
    expect(removeDotSegments('/../../etc/passwd')).toBe('/etc/passwd');
    expect(removeDotSegments('/a/.')).toBe('/a/');
  });
});

describe('addHeaderVariables', () => {
  const env = (raw: string[], passAuthorization = false) => {
    const e: Record<string, unknown> = {};
    addHeaderVariables(e, raw, { passAuthorization });
    return e;
  };

  it('maps names to HTTP_*, and Content-Type/Length without the prefix', () => {
    expect(env(['Host', 'x', 'X-Forwarded-For', '1.2.3.4', 'Content-Type', 'text/plain', 'Content-Length', '5'])).toEqual({
      HTTP_HOST: 'x',
      HTTP_X_FORWARDED_FOR: '1.2.3.4',
      CONTENT_TYPE: 'text/plain',
      CONTENT_LENGTH: '5',
    });
  });

  it('drops names with an underscore (spoofing) or other odd characters', () => {
    expect(env(['X_Forwarded_For', 'evil', 'X.Y', 'z'])).toEqual({});
  });

  it('drops Proxy (httpoxy)', () => {
    expect(env(['Proxy', 'http://evil'])).toEqual({});
  });

  it('passes Authorization only when asked', () => {
    expect(env(['Authorization', 'Basic eA=='])).toEqual({});
    expect(env(['Authorization', 'Basic eA=='], true)).toEqual({ HTTP_AUTHORIZATION: 'Basic eA==' });
  });

  it('joins repeated headers with ", " and cookies with "; "', () => {
    expect(env(['Accept', 'a', 'accept', 'b', 'Cookie', 'x=1', 'Cookie', 'y=2'])).toEqual({ HTTP_ACCEPT: 'a, b', HTTP_COOKIE: 'x=1; y=2' });
  });
});

describe('header values from node:http', () => {
  it('are re-decoded from Latin-1 octets to UTF-8 when asked', () => {
    const e: Record<string, unknown> = {};
    addHeaderVariables(e, ['X-Name', Buffer.from('Zoë', 'utf8').toString('latin1')], { latin1Values: true });
    expect(e.HTTP_X_NAME).toBe('Zoë');
  });
});
