// Greedy CTC decoding, step for step what runtime/ocr_bundles_runtime/decode.py computes:
//   best[t]   argmax over classes (the first index on ties, as numpy)
//   kept      steps whose best is not blank and differs from the previous step's best
//   text      charset[best] of the kept steps, concatenated
//   confidence the weakest kept step's probability of its best class; with no character, the
//             mean over all steps; 0 with no steps. Logits: 1 / sum(exp(x - max)) in float64
//             (JS numbers are float64, as numpy's astype(np.float64)); probabilities: the max.

// [T, C] rows of batch item 0 from a TBC or BTC output (a 2-D output is already [T, C]).
export function timeMajor(data, dims, layout) {
  if (dims.length === 2) return { T: dims[0], C: dims[1], data };
  if (dims.length !== 3) throw new RangeError(`output has ${dims.length} dimensions, not 2 or 3`);
  const C = dims[2];
  if (layout === "BTC") return { T: dims[1], C, data: data.subarray(0, dims[1] * C) };
  const [T, B] = dims;  // TBC: item 0 of every step
  const out = new Float32Array(T * C);
  for (let t = 0; t < T; t++) out.set(data.subarray(t * B * C, t * B * C + C), t * C);
  return { T, C, data: out };
}

// Per step: the best class, its value, and its margin over the second-best value.
export function bestPath({ T, C, data }) {
  const best = new Array(T);
  const value = new Array(T);
  const margin = new Array(T);
  for (let t = 0; t < T; t++) {
    const row = data.subarray(t * C, t * C + C);
    let b = 0;
    for (let c = 1; c < C; c++) {
      // numpy's argmax: strictly greater keeps the first of equal values; NaN counts as the max
      if (row[c] > row[b] || (Number.isNaN(row[c]) && !Number.isNaN(row[b]))) b = c;
    }
    let second = C > 1 ? -Infinity : row[b];  // one class: margin 0, as conformance.py has it
    for (let c = 0; c < C; c++) if (c !== b && row[c] > second) second = row[c];
    best[t] = b;
    value[t] = row[b];
    margin[t] = row[b] - second;
  }
  return { best, value, margin };
}

// Step positions a greedy CTC decode keeps: not blank, not a repeat of the previous step.
export function keptSteps(best, blank) {
  const kept = [];
  for (let t = 0; t < best.length; t++) {
    if (best[t] !== blank && (t === 0 || best[t] !== best[t - 1])) kept.push(t);
  }
  return kept;
}

// Probability of the best class at step t: the softmax's max without the full softmax.
export function stepProbability({ C, data }, t, kind) {
  const row = data.subarray(t * C, t * C + C);
  let max = -Infinity;
  for (let c = 0; c < C; c++) if (row[c] > max) max = row[c];
  if (kind === "probabilities") return max;
  let sum = 0;
  for (let c = 0; c < C; c++) sum += Math.exp(row[c] - max);
  return 1 / sum;
}

// {text, confidence, steps: {best, value, margin}} of a [T, C] output.
export function decode(steps, charset, blank, kind) {
  const path = bestPath(steps);
  const kept = keptSteps(path.best, blank);
  const text = kept.map((t) => charset[path.best[t]]).join("");
  let confidence = 0;
  if (kept.length) {
    confidence = kept.reduce((m, t) => Math.min(m, stepProbability(steps, t, kind)), Infinity);
  } else if (steps.T) {
    let sum = 0;
    for (let t = 0; t < steps.T; t++) sum += stepProbability(steps, t, kind);
    confidence = sum / steps.T;
  }
  return { text, confidence, steps: path };
}
