// The sibling module imported by import-sibling.tsgi.
import type { Environ } from 'tsgi';

export function run(environ: Environ): string {
  return `just saying i did it (${environ.REQUEST_METHOD} ${environ.PATH_INFO || '/'})\n`;
}
