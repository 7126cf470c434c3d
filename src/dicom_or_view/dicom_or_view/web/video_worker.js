/* The live video, off the page's main thread: this worker has its own WebSocket to the
 * view ({"want": ["video"]}), each stream's canvas is an OffscreenCanvas handed over by the
 * page, and frames are decoded with createImageBitmap and drawn here, so traces, tables and
 * tools drawn on the main thread never delay a frame, nor a frame them. One frame per
 * stream decodes at a time; a newer one replaces a waiting one. The page gets one small
 * message per drawn frame (its header and age) for the overlay and the statistics.
 */
"use strict";

importScripts("/static/band.js");

const streams = {};   // series -> {canvas, g, busy, pending}
let measure = false;

function connect(url, token) {
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => ws.send(JSON.stringify({ token, want: ["video"] }));
  ws.onclose = () => setTimeout(() => connect(url, token), 2000);
  ws.onmessage = (event) => {
    const view = new DataView(event.data);
    const length = view.getUint32(0, true);
    const header = JSON.parse(new TextDecoder().decode(new Uint8Array(event.data, 4, length)));
    onFrame({ header, buffer: event.data, offset: 4 + length });
  };
}

function onFrame(m) {
  const stream = streams[m.header.series];
  if (!stream) return;
  if (stream.pending) self.postMessage({ type: "replaced" });
  stream.pending = m;
  if (!stream.busy) show(stream);
}

self.onmessage = (event) => {
  const m = event.data;
  if (m.type === "connect") {
    connect(m.url, m.token);
  } else if (m.type === "canvas") {
    streams[m.series] = { canvas: m.canvas, g: null, busy: false, pending: null };
    measure = m.measure;
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
