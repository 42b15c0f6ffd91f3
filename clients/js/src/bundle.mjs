// Reading a bundle folder: manifest.json, the paths it names (never outside the folder) and
// the SHA-256 of every file read. Everything is validated here, before a model is loaded.
//
// Mirrors runtime/ocr_bundles_runtime/manifest.py (format check, `inside`, `read_verified`); the JS client
// reads format v3 and v4 bundles whose model takes pixels (input.feed "pixels") only.

import { createHash } from "node:crypto";
import { readFileSync, realpathSync } from "node:fs";
import path from "node:path";

import { BundleError } from "./errors.mjs";

export const FORMAT = "ocr-ctc-bundle";
export const FORMAT_VERSION = 4;
// v3 differs only in writing numbers for a tensor feed's named dims, which the client refuses
export const READABLE_VERSIONS = [3, 4];
export const MANIFEST = "manifest.json";
const LAYOUTS = ["TBC", "BTC"];
const KINDS = ["logits", "probabilities"];
// runtime.graph_optimization_level (runtime/ocr_bundles_runtime/session.py names) -> onnxruntime-common names
export const OPT_LEVELS = { disable: "disabled", basic: "basic", extended: "extended", all: "all" };
const INT8_KERNELS = ["exact", "fast"];

// The parsed manifest as JSON, refused unless it is an ocr-ctc-bundle v3 object.
export function readManifest(dir) {
  const where = path.join(dir, MANIFEST);
  let raw;
  try {
    raw = readFileSync(where, "utf8");
  } catch (e) {
    throw new BundleError(`${where}: unreadable (${e.code}); is ${dir} a bundle folder?`);
  }
  let manifest;
  try {
    manifest = JSON.parse(raw);
  } catch (e) {
    throw new BundleError(`${where}: not JSON (${e.message})`);
  }
  if (manifest === null || typeof manifest !== "object" || Array.isArray(manifest)) {
    throw new BundleError(`${where}: not a JSON object`);
  }
  if (manifest.format !== FORMAT || !READABLE_VERSIONS.includes(manifest.format_version)) {
    throw new BundleError(
      `${where}: format ${JSON.stringify(manifest.format)} v${manifest.format_version} is not ` +
        `${JSON.stringify(FORMAT)} v${READABLE_VERSIONS.join(" or v")}; rebuild the bundle with ` +
        `the current ` +
        `pipeline (dvc repro bundle@<class>)`,
    );
  }
  return manifest;
}

// `dir/name`, refused unless `name` is a plain relative path that stays inside `dir`.
export function inside(dir, name) {
  const where = path.join(dir, MANIFEST);
  const parts = typeof name === "string" ? name.split("/") : [];
  if (!name || typeof name !== "string" || name.startsWith("/") || name.includes("\\") ||
      /^[A-Za-z]:/.test(name) || parts.includes("..")) {
    throw new BundleError(
      `${where}: path ${JSON.stringify(name)} leaves the bundle folder; a manifest may only ` +
        `name files inside it`,
    );
  }
  const target = path.join(dir, ...parts);
  let real;
  try {
    real = realpathSync(target);
  } catch (e) {
    throw new BundleError(`${target}: cannot read (${e.code}); the bundle is incomplete`);
  }
  const root = realpathSync(dir);
  if (real !== root && !real.startsWith(root + path.sep)) {  // a symlink pointing out
    throw new BundleError(`${where}: ${JSON.stringify(name)} resolves outside the bundle folder`);
  }
  return real;
}

// A bundle file's bytes, refused unless their SHA-256 is the manifest's.
export function readVerified(dir, manifest, name) {
  const entry = (manifest.files || {})[name];
  if (!entry || typeof entry.sha256 !== "string") {
    throw new BundleError(`${path.join(dir, MANIFEST)}: ${name} is not listed in 'files'`);
  }
  const file = inside(dir, name);
  const data = readFileSync(file);
  const digest = createHash("sha256").update(data).digest("hex");
  if (digest !== entry.sha256) {
    throw new BundleError(
      `${path.join(dir, name)}: SHA-256 ${digest.slice(0, 12)}… does not match the manifest's ` +
        `${entry.sha256.slice(0, 12)}… (corrupted or replaced file); copy the bundle again`,
    );
  }
  return data;
}

// A hash-checked bundle file parsed as JSON.
export function readVerifiedJson(dir, manifest, name) {
  const data = readVerified(dir, manifest, name);
  try {
    return JSON.parse(data.toString("utf8"));
  } catch (e) {
    throw new BundleError(`${path.join(dir, name)}: not JSON (${e.message})`);
  }
}

// Everything the recognizer needs besides the session, validated: a bad manifest fails here,
// not on the first image.
export function parseBundle(dir) {
  const manifest = readManifest(dir);
  const where = path.join(dir, MANIFEST);
  const bad = (field, message) => new BundleError(`${where}: ${field} ${message}`);
  for (const name of Object.keys(manifest.files || {})) inside(dir, name);

  const input = manifest.input || {};
  if (input.feed !== "pixels") {
    throw bad(
      "input.feed",
      `is ${JSON.stringify(input.feed)}, not "pixels": this bundle expects the host to ` +
        `preprocess (the Python runtime does); rebuild it with bundle.preprocess: graph`,
    );
  }
  if (input.dtype !== "uint8" || !Array.isArray(input.shape) || input.shape.length !== 3) {
    throw bad("input", `must be uint8 [H, W, C] pixels, got ${input.dtype} ${JSON.stringify(input.shape)}`);
  }
  const channels = input.channels ?? (Number.isInteger(input.shape[2]) ? [input.shape[2]] : [1, 3, 4]);
  if (!Array.isArray(channels) || !channels.length || !channels.every((c) => [1, 3, 4].includes(c))) {
    throw bad("input.channels", `must list channel counts among 1, 3, 4, got ${JSON.stringify(channels)}`);
  }
  const maxPixels = input.max_pixels ?? null;
  if (maxPixels !== null && !(Number.isInteger(maxPixels) && maxPixels > 0)) {
    throw bad("input.max_pixels", `must be a positive integer or null, got ${JSON.stringify(maxPixels)}`);
  }
  const output = { kind: "logits", ...manifest.output };  // kind's default: manifest_record.py's
  if (!LAYOUTS.includes(output.layout) || !KINDS.includes(output.kind)) {
    throw bad(
      "output",
      `layout ${JSON.stringify(output.layout)} / kind ${JSON.stringify(output.kind)} is not one ` +
        `of ${LAYOUTS.join("|")} / ${KINDS.join("|")}`,
    );
  }
  const charset = readVerifiedJson(dir, manifest, manifest.charset);
  if (!Array.isArray(charset) || !charset.every((c) => typeof c === "string")) {
    throw new BundleError(`${path.join(dir, manifest.charset)}: not a JSON list of strings`);
  }
  if (!Number.isInteger(output.blank) || output.blank < 0 || output.blank >= charset.length) {
    throw bad("output.blank", `${output.blank} is outside the charset (${charset.length} classes)`);
  }
  if (output.classes !== undefined && output.classes !== charset.length) {
    throw bad("output.classes", `${output.classes} differs from ${manifest.charset}'s ${charset.length}`);
  }
  const threshold = manifest.confidence_threshold;
  if (typeof threshold !== "number" || !(threshold >= 0 && threshold <= 1)) {
    throw bad("confidence_threshold", `${threshold} is outside [0, 1]`);
  }
  const files = ((manifest.models || {}).primary || {}).files || {};
  // .ort first: what the pipeline ships for apps; the fallback model is the Python runtime's
  const modelFormat = files.ort ? "ort" : files.onnx ? "onnx" : null;
  if (!modelFormat) throw bad("models.primary.files", `names neither an "ort" nor an "onnx" file`);
  const conformance = manifest.conformance ?? null;  // null: check() reports not healthy
  if (conformance !== null && typeof conformance !== "string") {
    throw bad("conformance", `must be a file name or null, got ${JSON.stringify(conformance)}`);
  }
  return {
    dir,
    manifest,
    inputName: input.name,
    outputName: output.name,
    channels,  // the C values the graph accepts
    maxPixels,  // refuse larger images before decoding them (null: no limit)
    resize: parseResize(where, manifest.preprocess),
    layout: output.layout,
    blank: output.blank,
    kind: output.kind,
    charset,
    threshold,
    strip: Boolean((manifest.scoring || {}).strip),
    modelFile: files[modelFormat],
    modelFormat,
    runtime: parseRuntime(where, manifest.runtime || {}),
    conformance,
  };
}

// The graph's resize (manifest.preprocess) as far as the size refusal needs it, or null.
export function parseResize(where, pre) {
  if (pre === undefined || pre === null) return null;
  const out = {
    height: pre.height,
    widthScale: pre.width_scale ?? 1,
    maxWidth: pre.max_width ?? null,
    maxPixels: pre.max_pixels ?? null,
  };
  const ok = Number.isInteger(out.height) && out.height > 0 && typeof out.widthScale === "number" &&
    out.widthScale > 0 && (out.maxWidth === null || Number.isInteger(out.maxWidth)) &&
    (out.maxPixels === null || Number.isInteger(out.maxPixels));
  if (!ok) {
    throw new BundleError(
      `${where}: preprocess needs an integer height > 0, width_scale > 0, integer or null ` +
        `max_width and max_pixels; got ${JSON.stringify(pre)}`,
    );
  }
  return out;
}

// manifest.runtime with the defaults of runtime/ocr_bundles_runtime/session.py Runtime, types checked.
export function parseRuntime(where, rt) {
  const out = {
    intraOpThreads: rt.intra_op_threads ?? 1,
    graphOptimizationLevel: rt.graph_optimization_level ?? "all",
    allowSpinning: rt.allow_spinning ?? false,
    enableCpuMemArena: rt.enable_cpu_mem_arena ?? true,
    enableMemPattern: rt.enable_mem_pattern ?? true,
    int8Kernels: rt.int8_kernels ?? "exact",
  };
  const bad = (field, value, allowed) =>
    new BundleError(`${where}: runtime.${field} must be ${allowed}, got ${JSON.stringify(value)}`);
  if (!Number.isInteger(out.intraOpThreads) || out.intraOpThreads < 1 || out.intraOpThreads > 256) {
    throw bad("intra_op_threads", out.intraOpThreads, "an integer in 1..256");
  }
  if (!(out.graphOptimizationLevel in OPT_LEVELS)) {
    throw bad("graph_optimization_level", out.graphOptimizationLevel, Object.keys(OPT_LEVELS).join("|"));
  }
  for (const [field, key] of [["allow_spinning", "allowSpinning"],
    ["enable_cpu_mem_arena", "enableCpuMemArena"], ["enable_mem_pattern", "enableMemPattern"]]) {
    if (typeof out[key] !== "boolean") throw bad(field, out[key], "true or false");
  }
  if (!INT8_KERNELS.includes(out.int8Kernels)) {
    throw bad("int8_kernels", out.int8Kernels, INT8_KERNELS.join("|"));
  }
  return out;
}

// conformance.json: {tolerance, vectors: [{image, text, best, value, margin}]}, hash-checked.
export function readConformance(dir, manifest, name) {
  const file = path.join(dir, name);
  const doc = readVerifiedJson(dir, manifest, name);
  const ok = doc && typeof doc.tolerance === "number" && doc.tolerance >= 0 &&
    Array.isArray(doc.vectors) && doc.vectors.length > 0 &&
    doc.vectors.every((v) => typeof v.image === "string" && typeof v.text === "string" &&
      [v.best, v.value, v.margin].every(Array.isArray) &&
      v.best.length === v.value.length && v.value.length === v.margin.length);
  if (!ok) {
    throw new BundleError(
      `${file}: expected {tolerance >= 0, vectors: [{image, text, best, value, margin}, ...]} ` +
        `with at least one vector and best/value/margin of equal length`,
    );
  }
  return doc;
}
