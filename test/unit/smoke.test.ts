import { describe, it, expect } from 'vitest';
import { runApp } from '../helpers/memory-sink';

describe('smoke', () => {
  it('hello', async () => {
    const r = await runApp((env, sr) => { sr('200 OK', [['Content-Type', 'text/plain']]); return ['Hello World!\n']; });
    expect(r.head?.code).toBe(200);
    expect(r.text).toBe('Hello World!\n');
    expect(r.head?.headers).toContainEqual(['Content-Length', '13']);
    expect(r.outcome.state).toBe('complete');
  });
});
