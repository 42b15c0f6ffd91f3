// One loaded bundle: its primary model in an onnxruntime session built with the manifest's
// runtime settings, the CTC contract, and the conformance vectors that say whether this
// runtime computes what the build measured.
//
// Not here (the Python runtime's, runtime/ocr_bundles_runtime/recognizer.py): the fallback model, the
// escalation server, signatures, host-side preprocessing, batching.

import { readFileSync } from "node:fs";
import path from "node:path";

import { OPT_LEVELS, parseBundle, readConformance, readVerified } from "./bundle.mjs";
import { decode, timeMajor } from "./ctc.mjs";
import { BundleError, ImageError } from "./errors.mjs";
import { checkSize, decodeImage } from "./image.mjs";

export const BACKENDS = { node: "onnxruntime-node", web: "onnxruntime-web" };
const PROVIDERS = { node: ["cpu"], web: ["wasm"] };

// onnxruntime SessionOptions for manifest.runtime, as runtime/ocr_bundles_runtime/session.py session_plan.
// Config entries go through `extra`, whose keys both backends join with "." into
// SessionOptions config keys ("session.x64quantprecision").
export function sessionOptions(runtime, backend) {
  return {
    executionProviders: PROVIDERS[backend],
    intraOpNumThreads: runtime.intraOpThreads,
    interOpNumThreads: 1,
    executionMode: "sequential",  // one run at a time: no inter-op pool
    graphOptimizationLevel: OPT_LEVELS[runtime.graphOptimizationLevel],
    enableCpuMemArena: runtime.enableCpuMemArena,
    enableMemPattern: runtime.enableMemPattern,
    logSeverityLevel: 3,
    extra: {
      session: {
        "intra_op.allow_spinning": runtime.allowSpinning ? "1" : "0",
        // exact: the U8U8 int8 kernel on x86 without VNNI, whose sums do not saturate
        x64quantprecision: runtime.int8Kernels === "exact" ? "1" : "0",
      },
    },
  };
}

// The onnxruntime module of `backend` ("node": native CPU, "web": WebAssembly).
export async function loadBackend(backend) {
  if (!(backend in BACKENDS)) {
    const allowed = Object.keys(BACKENDS).join("|");
    throw new BundleError(`backend ${JSON.stringify(backend)} is not one of ${allowed}`);
  }
  const ort = await import(BACKENDS[backend]);
  if (backend === "web") ort.env.wasm.numThreads = 1;  // no worker threads: the same sums every run
  return ort;
}

// ImageError when the graph would resize the image past preprocess.max_pixels (a 1e6 x 1 strip
// is small but resizes huge), as runtime/ocr_bundles_runtime/preprocess.py checked_width refuses it.
export function checkResized(width, height, resize, source = "image") {
  if (resize === null || resize.maxPixels === null) return;
  let w = Math.trunc(width * (resize.height / height) * resize.widthScale);
  if (resize.maxWidth) w = Math.min(w, resize.maxWidth);
  if (w * resize.height > resize.maxPixels) {
    throw new ImageError(
      `${source}: ${width}x${height} would resize to ${w}x${resize.height} pixels > limit ` +
        `${resize.maxPixels}`,
    );
  }
}

// One conformance vector against a recognize() result (runtime/ocr_bundles_runtime/conformance.py's rule):
// it passes when the text is equal, the step count is equal, every step's value is within
// `tolerance`, and the best class is equal at every step whose expected margin exceeds twice
// the tolerance (closer classes may legitimately swap between kernels).
export function compareVector(vector, got, tolerance) {
  const reasons = [];
  if (got.text !== vector.text) {
    reasons.push(`read ${JSON.stringify(got.text)}, expected ${JSON.stringify(vector.text)}`);
  }
  const { best, value } = got.steps;
  let maxDiff = null;
  if (best.length !== vector.best.length) {
    reasons.push(`${best.length} output steps, expected ${vector.best.length}`);
  } else {
    maxDiff = 0;
    let far = 0;
    const swapped = [];
    for (let t = 0; t < best.length; t++) {
      const diff = Math.abs(value[t] - vector.value[t]);
      if (!(diff <= tolerance)) far++;  // NaN counts as far
      maxDiff = Math.max(maxDiff, Number.isNaN(diff) ? Infinity : diff);
      if (vector.margin[t] > 2 * tolerance && best[t] !== vector.best[t]) swapped.push(t);
    }
    if (far) reasons.push(`${far} step values differ by more than ${tolerance} (max ${maxDiff})`);
    if (swapped.length) reasons.push(`best class differs at steps ${swapped.join(",")}`);
  }
  return { image: vector.image, ok: reasons.length === 0, max_value_diff: maxDiff, reasons };
}

export class Recognizer {
  constructor(spec, ort, session) {
    this.spec = spec;
    this.ort = ort;
    this.session = session;
  }

  // Load the bundle folder `dir`; BundleError (naming the file) when it cannot be used.
  static async load(dir, { backend = "node" } = {}) {
    const spec = parseBundle(dir);
    if (spec.conformance !== null) readConformance(dir, spec.manifest, spec.conformance);  // fail early
    const model = readVerified(dir, spec.manifest, spec.modelFile);
    const ort = await loadBackend(backend);
    let session;
    try {
      session = await ort.InferenceSession.create(
        new Uint8Array(model.buffer, model.byteOffset, model.length),
        sessionOptions(spec.runtime, backend),
      );
    } catch (e) {
      const first = String(e.message || e).split("\n")[0];
      const file = path.join(dir, spec.modelFile);
      throw new BundleError(`${file}: ${BACKENDS[backend]} cannot load it (${first})`);
    }
    for (const [field, name, names] of [["input.name", spec.inputName, session.inputNames],
      ["output.name", spec.outputName, session.outputNames]]) {
      if (!names.includes(name)) {
        throw new BundleError(
          `${path.join(dir, spec.modelFile)}: has no ${JSON.stringify(name)} (manifest ${field}); ` +
            `it has ${JSON.stringify(names)}; the bundle's files do not belong together`,
        );
      }
    }
    return new Recognizer(spec, ort, session);
  }

  // {text, confidence, steps: {best, value, margin}} of decoded pixels (image.mjs decodeImage).
  async recognize({ data, height, width, channels }, source = "image") {
    const s = this.spec;
    const shape = `${height}x${width}x${channels}`;
    if (![1, 3, 4].includes(channels) || data.length !== height * width * channels || !height || !width) {
      throw new ImageError(`${source}: ${shape} pixels with ${data.length} bytes`);
    }
    if (!s.channels.includes(channels)) {
      throw new ImageError(`${source}: ${channels} channels; the model takes ${s.channels.join(" or ")}`);
    }
    checkSize(width, height, s.maxPixels, source);
    checkResized(width, height, s.resize, source);
    const x = new this.ort.Tensor("uint8", data, [height, width, channels]);
    let out;
    try {
      out = (await this.session.run({ [s.inputName]: x }))[s.outputName];
    } catch (e) {  // e.g. an image narrower than the model's smallest width
      const first = String(e.message || e).split("\n")[0];
      throw new ImageError(`${source}: the model cannot run on ${shape} pixels (${first})`);
    }
    const dims = out.dims.map(Number);
    if (dims.length < 2 || dims.at(-1) !== s.charset.length) {
      throw new BundleError(
        `${path.join(s.dir, s.modelFile)}: outputs shape ${JSON.stringify(dims)} but ` +
          `${s.manifest.charset} has ${s.charset.length} classes; the bundle's files do not ` +
          "belong together",
      );
    }
    const decoded = decode(timeMajor(out.data, dims, s.layout), s.charset, s.blank, s.kind);
    out.dispose?.();
    return { ...decoded, text: s.strip ? decoded.text.trim() : decoded.text };
  }

  // recognize() of a PNG or JPEG file; ImageError when it is unreadable or undecodable.
  async recognizeFile(file) {
    let bytes;
    try {
      bytes = readFileSync(file);
    } catch (e) {
      throw new ImageError(`${file}: cannot read (${e.code})`);
    }
    return this.recognize(decodeImage(bytes, file, { maxPixels: this.spec.maxPixels }), file);
  }

  // Whether this runtime computes what the build measured: {ok, tolerance, vectors: [{image,
  // ok, max_value_diff, reasons}], reason}; reason: the first failure, empty when ok.
  async check() {
    const s = this.spec;
    if (s.conformance === null) {
      const reason = "the bundle has no conformance vectors; rebuild it";
      return { ok: false, tolerance: null, vectors: [], reason };
    }
    const { tolerance, vectors } = readConformance(s.dir, s.manifest, s.conformance);
    const results = [];
    for (const vector of vectors) {
      let got;
      try {
        const bytes = readVerified(s.dir, s.manifest, vector.image);
        const pixels = decodeImage(bytes, vector.image, { maxPixels: s.maxPixels });
        got = await this.recognize(pixels, vector.image);
      } catch (e) {
        if (!(e instanceof ImageError)) throw e;  // a bundle error is the caller's, not a vector's
        results.push({ image: vector.image, ok: false, max_value_diff: null, reasons: [e.message] });
        continue;
      }
      results.push(compareVector(vector, got, tolerance));
    }
    const failed = results.find((r) => !r.ok);
    const reason = failed ? `${failed.image}: ${failed.reasons.join("; ")}` : "";
    return { ok: !failed, tolerance, vectors: results, reason };
  }

  async close() {
    await this.session.release();
  }
}
