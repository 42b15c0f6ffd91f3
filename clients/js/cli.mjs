#!/usr/bin/env node
// node cli.mjs --bundle DIR [--backend node|web] check
// node cli.mjs --bundle DIR [--backend node|web] read FILE... | read --list PATHS_FILE
//
// check: one JSON line per conformance vector on stdout; exit 0 healthy, 1 not.
// read:  one JSON line per image, {"image", "text", "confidence"} or {"image", "error"}; exit 1
//        when any image failed. Exit 2 on a usage or bundle error, with one line on stderr.

import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

import { ClientError, ImageError } from "./src/errors.mjs";
import { BACKENDS, Recognizer } from "./src/recognizer.mjs";

const USAGE =
  "usage: node cli.mjs --bundle DIR [--backend node|web] check\n" +
  "       node cli.mjs --bundle DIR [--backend node|web] read FILE... | read --list PATHS_FILE";
const PROGRESS_EVERY = 100;

class UsageError extends ClientError {}

function parse(argv) {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        bundle: { type: "string" },
        backend: { type: "string", default: "node" },
        list: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (e) {
    throw new UsageError(e.message);
  }
  const { values, positionals } = parsed;
  if (values.help) return { help: true };
  const [command, ...files] = positionals;
  if (!values.bundle) throw new UsageError("--bundle DIR is required");
  if (!(values.backend in BACKENDS)) {
    const allowed = Object.keys(BACKENDS).join("|");
    throw new UsageError(`--backend must be one of ${allowed}, got ${values.backend}`);
  }
  if (command === "check") {
    if (files.length || values.list) throw new UsageError("check takes no files");
  } else if (command === "read") {
    if (values.list && files.length) throw new UsageError("read takes FILE... or --list, not both");
    if (!values.list && !files.length) throw new UsageError("read needs FILE... or --list PATHS_FILE");
  } else {
    throw new UsageError(`command must be check or read, got ${JSON.stringify(command ?? "nothing")}`);
  }
  return { ...values, command, files };
}

function listed(file) {
  try {
    return readFileSync(file, "utf8").split(/\r?\n/).filter((line) => line.trim());
  } catch (e) {
    throw new UsageError(`${file}: cannot read the list (${e.code})`);
  }
}

const print = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);

async function check(recognizer) {
  const report = await recognizer.check();
  for (const v of report.vectors) print(v);
  const passed = report.vectors.filter((v) => v.ok).length;
  const verdict = report.ok ? "healthy" : "NOT healthy";
  const why = report.ok ? "" : `; ${report.reason}`;
  process.stderr.write(`${recognizer.spec.dir}: ${verdict}: ${passed}/${report.vectors.length} ` +
    `conformance vectors pass (tolerance ${report.tolerance})${why}\n`);
  return report.ok ? 0 : 1;
}

async function read(recognizer, files) {
  let failed = 0;
  for (const [i, image] of files.entries()) {
    try {
      const { text, confidence } = await recognizer.recognizeFile(image);
      print({ image, text, confidence });
    } catch (e) {
      if (!(e instanceof ImageError)) throw e;
      failed++;
      print({ image, error: e.message });
    }
    if ((i + 1) % PROGRESS_EVERY === 0 && i + 1 < files.length) {
      process.stderr.write(`read: ${i + 1}/${files.length} images, ${failed} failed\n`);
    }
  }
  if (failed) process.stderr.write(`read: ${failed} of ${files.length} images failed\n`);
  return failed ? 1 : 0;
}

async function main(argv) {
  let recognizer;
  try {
    const args = parse(argv);
    if (args.help) {
      process.stdout.write(`${USAGE}\n`);
      return 0;
    }
    const files = args.command === "read" && args.list ? listed(args.list) : args.files;
    recognizer = await Recognizer.load(args.bundle, { backend: args.backend });
    return args.command === "check" ? await check(recognizer) : await read(recognizer, files);
  } catch (e) {
    if (!(e instanceof ClientError)) throw e;
    const hint = e instanceof UsageError ? " (node cli.mjs --help)" : "";
    process.stderr.write(`error: ${e.message}${hint}\n`);
    return 2;
  } finally {
    await recognizer?.close();
  }
}

process.exitCode = await main(process.argv.slice(2));
