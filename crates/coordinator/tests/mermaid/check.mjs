// Parses Mermaid diagrams with Mermaid's own parser and fails on the first that does not
// parse; prints each diagram's type.
//
//   node check.mjs <folder where `npm ci` installed package.json> <diagram file>...
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { createRequire } from 'node:module';

const [installed, ...files] = process.argv.slice(2);
if (!installed || files.length === 0) {
  console.error('usage: node check.mjs <node_modules parent folder> <diagram file>...');
  process.exit(2);
}
const require = createRequire(path.resolve(installed, 'package.json'));
// Mermaid expects a browser: jsdom gives it the window and document it sanitises with.
const { JSDOM } = require('jsdom');
const dom = new JSDOM('<!doctype html><html><body></body></html>');
globalThis.window = dom.window;
globalThis.document = dom.window.document;
const entry = path.join(path.dirname(require.resolve('mermaid/package.json')), 'dist/mermaid.core.mjs');
const { default: mermaid } = await import(pathToFileURL(entry).href);

let failed = 0;
for (const file of files) {
  try {
    const { diagramType } = await mermaid.parse(readFileSync(file, 'utf8'));
    console.log(`${file}: ${diagramType}`);
  } catch (e) {
    console.log(`${file}: ${String((e && e.message) || e)}`);
    failed += 1;
  }
}
process.exit(failed ? 1 : 0);
