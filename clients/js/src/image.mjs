// PNG and JPEG bytes -> pixels as the bundle's model takes them: {data, height, width, channels},
// data a Uint8Array in [H, W, C] order. The model does resize, gray conversion and normalization.
//
// Channels follow the file: a gray PNG gives 1, a PNG with an alpha channel or a transparent
// palette gives 4 (RGBA, straight alpha), any other PNG 3; a JPEG always gives 3 (RGB). The
// graph composites alpha on white as the Python runtime does on the host.

import jpeg from "jpeg-js";
import pngjs from "pngjs";

import { ImageError } from "./errors.mjs";

const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
const JPEG_SIGNATURE = [0xff, 0xd8, 0xff];

const startsWith = (bytes, signature) => signature.every((b, i) => bytes[i] === b);

// Pixels of a PNG or JPEG file's bytes; ImageError (naming `source`) for anything else, and
// for an image of more than `maxPixels` pixels (refused before its pixels are decoded).
export function decodeImage(bytes, source = "image", { maxPixels = null } = {}) {
  let pixels;
  if (startsWith(bytes, PNG_SIGNATURE)) {
    if (bytes.length >= 24) {  // IHDR's width and height, before any pixel is inflated
      const header = new DataView(bytes.buffer, bytes.byteOffset, 24);
      checkSize(header.getUint32(16), header.getUint32(20), maxPixels, source);
    }
    pixels = decodePng(bytes, source);
  } else if (startsWith(bytes, JPEG_SIGNATURE)) {
    const size = jpegSize(bytes);
    if (size) checkSize(size.width, size.height, maxPixels, source);
    pixels = decodeJpeg(bytes, source, maxPixels);
  } else {
    throw new ImageError(`${source}: neither PNG nor JPEG (starts with ${hex(bytes.subarray(0, 4))})`);
  }
  checkSize(pixels.width, pixels.height, maxPixels, source);
  return pixels;
}

// ImageError unless width x height is at most `maxPixels` (null: no limit).
export function checkSize(width, height, maxPixels, source = "image") {
  if (maxPixels !== null && width * height > maxPixels) {
    throw new ImageError(`${source}: ${width}x${height} pixels > limit ${maxPixels}`);
  }
}

// A JPEG's width and height from its start-of-frame segment, or null when there is none.
export function jpegSize(bytes) {
  const u16 = (at) => (bytes[at] << 8) | bytes[at + 1];
  let at = 2;
  while (at + 9 < bytes.length && bytes[at] === 0xff) {
    const marker = bytes[at + 1];
    if (marker === 0xff) { at++; continue; }  // fill byte
    // SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC)
    if (marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker)) {
      return { height: u16(at + 5), width: u16(at + 7) };
    }
    at += 2 + u16(at + 2);
  }
  return null;
}

// PNG pixels as Pillow (the Python runtime) reads them: 16-bit samples to 8 bits as Pillow
// does (gray: rounded, v * 255 / 65535; colour and alpha: the high byte), and a tRNS colour
// key on a gray or RGB image ignored (pngjs would make those pixels transparent black).
export function decodePng(bytes, source = "image") {
  let png;
  try {
    const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
    png = pngjs.PNG.sync.read(buffer, { skipRescale: bytes[24] === 16 });  // IHDR bit depth
  } catch (e) {
    throw new ImageError(`${source}: undecodable PNG (${e.message})`);
  }
  const { width, height, colorType, depth, transColor } = png;
  const rgba = png.data;  // RGBA, 8 bits per sample (16 when depth is 16)
  const keyed = transColor && (colorType === 0 || colorType === 2);
  const channels = colorType & 4 || (colorType === 3 && png.alpha) ? 4 : colorType & 2 ? 3 : 1;
  const key = keyed ? keyColour(transColor, depth) : null;
  const to8 = depth !== 16 ? (v) => v
    : colorType === 0 ? (v) => Math.round(v * (255 / 65535))
      : (v) => v >> 8;
  const out = new Uint8Array(width * height * channels);
  for (let i = 0, j = 0; i < out.length; i += channels, j += 4) {
    const restore = keyed && rgba[j + 3] === 0;  // a pixel pngjs blanked for the colour key
    for (let c = 0; c < channels; c++) out[i + c] = to8(restore ? key[c] : rgba[j + c]);
  }
  return { data: out, height, width, channels };
}

// The tRNS colour key as RGB samples at the depth pngjs leaves the data in.
function keyColour(transColor, depth) {
  const scale = depth < 8 ? (v) => Math.floor((v * 255) / (2 ** depth - 1) + 0.5) : (v) => v;
  const rgb = transColor.length === 1 ? [transColor[0], transColor[0], transColor[0]] : transColor;
  return rgb.map(scale);
}

export function decodeJpeg(bytes, source = "image", maxPixels = null) {
  let img;
  const limits = maxPixels === null ? {} : { maxResolutionInMP: maxPixels / 1e6 };
  try {
    img = jpeg.decode(bytes, { formatAsRGBA: false, useTArray: true, ...limits });
  } catch (e) {
    throw new ImageError(`${source}: undecodable JPEG (${e.message || e})`);
  }
  return { data: img.data, height: img.height, width: img.width, channels: 3 };
}

const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(" ") || "nothing";
