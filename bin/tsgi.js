#!/usr/bin/env node
'use strict';
// The `tsgi` command; the code is in src/cli/tsgi.ts (built to dist/).
require('../dist/cli/tsgi.js').main().then((code) => { process.exitCode = code; });
