#!/usr/bin/env node
'use strict';
// The CGI interpreter for .tsgi files; the code is in src/cli/tsgi-cgi.ts (built to dist/).
require('../dist/cli/tsgi-cgi.js').main();
