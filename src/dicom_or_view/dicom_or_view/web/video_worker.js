/* Decodes and draws the live video off the page's main thread: each stream's canvas is an
 * OffscreenCanvas handed over by the page; frames (the WebSocket's binary messages,
 * transferred, not copied) are decoded with createImageBitmap and drawn here, so traces,
 * tables and tools drawn on the main thread never delay a frame, nor a frame them.
 * One frame per stream decodes at a time; a newer one replaces a waiting one.
 */
"use strict";

importScripts("/static/band.js");

const streams = {};   // series -> {canvas, g, busy, pending}
let measure = false;

self.onmessage = (event) => {
  const m = event.data;
  if (m.type === "canvas") {
    streams[m.series] = { canvas: m.canvas, g: null, busy: false, pending: null };
    measure = m.measure;
  } else if (m.type === "frame") {
    const stream = streams[m.header.series];
    if (!stream) return;
    if (stream.pending) self.postMessage({ type: "replaced" });
    stream.pending = m;
    if (!stream.busy) show(stream);
  }
};

function show(stream) {
  const { header, buffer, offset } = stream.pending;
  stream.pending = null;
  stream.busy = true;
  createImageBitmap(new Blob([new Uint8Array(buffer, offset)], { type: "image/jpeg" }))
    .then((bitmap) => {
      const canvas = stream.canvas;
      if (!stream.g || canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
        canvas.width = bitmap.width; canvas.height = bitmap.height;
        stream.g = canvas.getContext("2d", { willReadFrequently: measure });
      }
      stream.g.drawImage(bitmap, 0, 0);
      bitmap.close();
      const drawn = Date.now();
      let band = null;
      if (measure) {
        const read = self.orBand.decode(stream.g, canvas.width, header.width, header.height);
        if (read) band = Date.now() - read.ms;
      }
      self.postMessage({ type: "drawn", header, age: drawn - header.capture_ms, band });
    })
    .catch((error) => self.postMessage({ type: "error", message: error.message }))
    .finally(() => {
      stream.busy = false;
      if (stream.pending) show(stream);
    });
}
