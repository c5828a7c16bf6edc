// Parses an AsyncAPI document with the AsyncAPI project's own parser and fails on any
// error, on an operation whose channel or messages do not resolve, on a message whose
// payload does not resolve, and on a queue channel no operation reads.
//
//   node check.mjs <document> <folder where `npm ci` installed package.json>
import { createRequire } from 'node:module';
import path from 'node:path';

const [document, installed] = process.argv.slice(2);
if (!document || !installed) {
  console.error('usage: node check.mjs <asyncapi.yaml> <node_modules parent folder>');
  process.exit(2);
}
const require = createRequire(path.resolve(installed, 'package.json'));
const { Parser, fromFile } = require('@asyncapi/parser');

const parser = new Parser();
const { document: doc, diagnostics } = await fromFile(parser, path.resolve(document)).parse();
const problems = [];
for (const d of diagnostics) {
  const where = (d.path || []).join('.');
  if (d.severity === 0) {
    problems.push(`error ${d.code}: ${d.message} at ${where}`);
  } else {
    console.log(`${['error', 'warning', 'info', 'hint'][d.severity]} ${d.code}: ${d.message} at ${where}`);
  }
}
if (!doc) {
  problems.push('no document was built');
} else {
  for (const op of doc.operations().all()) {
    if (op.channels().length === 0) problems.push(`operation ${op.id()} names no channel`);
    if (op.messages().length === 0) problems.push(`operation ${op.id()} has no message`);
  }
  for (const m of doc.allMessages().all()) {
    if (!m.hasPayload()) problems.push(`message ${m.id()} has no payload`);
  }
  for (const ch of doc.channels().all()) {
    const amqp = ch.bindings().get('amqp');
    const isQueue = amqp && amqp.value() && amqp.value().is === 'queue';
    if (isQueue && ch.operations().length === 0) {
      problems.push(`queue channel ${ch.id()} (${ch.address()}) has no operation`);
    }
  }
  console.log(
    `${doc.operations().length} operations, ${doc.channels().length} channels, ` +
      `${doc.allMessages().length} messages`
  );
}
for (const p of problems) console.log(p);
console.log(`${problems.length} problems`);
process.exit(problems.length === 0 ? 0 : 1);
