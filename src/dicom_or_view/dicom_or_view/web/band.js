/* The synthetic endoscope pattern's code band (dicom_or_core.sim.video), read back from
 * the pixels a page shows: sync byte | sequence (32 bits) | capture time ns (64 bits) |
 * CRC-16/CCITT-FALSE, in black / white cells across the frame's top rows. Reading it from
 * the canvas measures capture-to-display from the image itself, with no side channel.
 * In a page or a worker: self.orBand.decode(context2d, shownWidth, sourceWidth,
 * sourceHeight) -> {seq, ms} or null.
 */
"use strict";

self.orBand = (() => {
  const BITS = 8 + 32 + 64 + 16;
  const SYNC = 0xA5;

  function crc16(bytes) {
    let crc = 0xFFFF;
    for (const byte of bytes) {
      crc ^= byte << 8;
      for (let i = 0; i < 8; i += 1) {
        crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xFFFF : (crc << 1) & 0xFFFF;
      }
    }
    return crc;
  }

  function decode(g, shownWidth, sourceWidth, sourceHeight) {
    const cell = Math.max(4, Math.floor(Math.min(sourceWidth, sourceHeight) / 60));
    const columns = Math.floor(sourceWidth / cell);
    const rows = Math.ceil(BITS / columns);
    const k = shownWidth / sourceWidth;
    const height = Math.max(1, Math.ceil(rows * cell * k));
    const data = g.getImageData(0, 0, shownWidth, height).data;
    const bytes = new Uint8Array(BITS / 8);
    for (let i = 0; i < BITS; i += 1) {
      const x = Math.floor(((i % columns) + 0.5) * cell * k);
      const y = Math.min(height - 1, Math.floor((Math.floor(i / columns) + 0.5) * cell * k));
      const o = (y * shownWidth + x) * 4;
      if ((data[o] + data[o + 1] + data[o + 2]) / 3 > (16 + 235) / 2) {
        bytes[i >> 3] |= 0x80 >> (i & 7);
      }
    }
    if (bytes[0] !== SYNC) return null;
    const payload = bytes.subarray(1, 13);
    if (((bytes[13] << 8) | bytes[14]) !== crc16(payload)) return null;
    const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
    const ns = view.getBigUint64(4);
    return { seq: view.getUint32(0), ms: Number(ns / 1000000n) + Number(ns % 1000000n) / 1e6 };
  }

  return { decode, crc16 };
})();
