/* The OR view page: plain JavaScript, no framework, no build step, no internet.
 *
 * Live data comes over one WebSocket (/ws) from the view node; the DICOM side (live series,
 * recorded instances, their rendering) from the bridge's DICOMweb API (QIDO-RS / WADO-RS,
 * PS3.18), which the view node proxies under /dicom-web. Times: capture times are the host
 * clock (ms since the epoch), which Date.now() reads on the same host.
 */
"use strict";

const orView = window.orView = {
  frames: {},        // series -> frames drawn
  latency: [],       // capture -> drawn, ms (video; capture time sent with the frame)
  bandLatency: [],   // the same, read from the drawn pixels' code band (?measure=1)
  measure: new URLSearchParams(location.search).has("measure"),
  waveLag: [],       // last sample's time -> drawn, ms (waveforms)
  messages: 0,
  replaced: 0,       // frames replaced by a newer one before they were drawn
  session: null,
  recorder: null,
  streams: [],
  dicomweb: "",
};
const MAX_STATS = 5000;
let token = sessionStorage.getItem("or_view_token") || "";
const TAGS = {
  modality: "00080060", description: "0008103E", series: "0020000E", study: "0020000D",
  retrieveUrl: "00081190", cineRate: "00180040", sampling: "003A001A",
  sopClass: "00080016", sop: "00080018", number: "00200013", frames: "00280008",
  acquired: "0008002A", availability: "00080056", seriesNumber: "00200011",
};
const SOP_CLASSES = {
  "1.2.840.10008.5.1.4.1.1.77.1.1.1": "Video Endoscopic",
  "1.2.840.10008.5.1.4.1.1.77.1.4.1": "Video Photographic",
  "1.2.840.10008.5.1.4.1.1.77.1.1": "VL Endoscopic",
  "1.2.840.10008.5.1.4.1.1.9.1.1": "12-lead ECG",
  "1.2.840.10008.5.1.4.1.1.9.1.2": "General ECG",
  "1.2.840.10008.5.1.4.1.1.9.2.1": "Hemodynamic",
  "1.2.840.10008.5.1.4.1.1.9.1.3": "Ambulatory ECG",
  "1.2.840.10008.5.1.4.1.1.9.5.1": "Arterial Pulse",
  "1.2.840.10008.5.1.4.1.1.9.6.1": "Respiratory",
  "1.2.840.10008.5.1.4.1.1.9.8.1": "General Audio / Waveform",
  "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR",
  "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture",
  "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color SC",
};
const WAVEFORM_CLASS = /^1\.2\.840\.10008\.5\.1\.4\.1\.1\.9\./;
const VIDEO_CLASS = /^1\.2\.840\.10008\.5\.1\.4\.1\.1\.77\.1\.(1\.1|4\.1)$/;
const COLORS = ["#3fb950", "#58a6ff", "#f0883e", "#d2a8ff", "#ffa657", "#79c0ff", "#ff7b72"];
const PX_PER_MM = 96 / 25.4;           // CSS pixels per millimetre
const SWEEP_MM_PER_S = 25;             // ECG paper speed

const $ = (id) => document.getElementById(id);
function text(value) { return value === undefined || value === null ? "" : String(value); }
function value(item, tag) {
  const element = item[tag];
  if (!element || !element.Value || !element.Value.length) return "";
  const v = element.Value[0];
  return typeof v === "object" && v !== null ? text(v.Alphabetic) : text(v);
}
function cell(row, content, cls) {
  const td = row.insertCell();
  if (content instanceof Node) td.appendChild(content); else td.textContent = text(content);
  if (cls) td.className = cls;
  return td;
}
function badge(label, cls) {
  const span = document.createElement("span");
  span.className = "state " + cls;
  span.textContent = label;
  return span;
}
function authHeaders(extra) {
  const headers = Object.assign({}, extra || {});
  if (token) headers.Authorization = "Bearer " + token;
  return headers;
}
async function api(path, options) {
  const response = await fetch(path, Object.assign({}, options || {}, {
    headers: authHeaders((options || {}).headers) }));
  if (!response.ok) throw new Error(`${path}: ${response.status} ${await response.text()}`);
  return response;
}
function push(list, item) { list.push(item); if (list.length > MAX_STATS) list.shift(); }

/* ---- WebSocket ------------------------------------------------------------------------ */

const WS_URL = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
// Video in a Web Worker, on a connection of its own: frames never wait for the page's
// thread (traces, tables). A browser without OffscreenCanvas takes them here.
const OFFSCREEN = typeof HTMLCanvasElement.prototype.transferControlToOffscreen === "function";

function connect() {
  const ws = new WebSocket(WS_URL);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    ws.send(JSON.stringify({ token, want: OFFSCREEN ? ["data"] : ["data", "video"] }));
    $("connection").textContent = "live";
    $("connection").className = "state ok";
  };
  ws.onclose = () => {
    $("connection").textContent = "disconnected";
    $("connection").className = "state bad";
    setTimeout(connect, 2000);
  };
  ws.onmessage = (event) => {
    orView.messages += 1;
    if (typeof event.data === "string") onText(JSON.parse(event.data));
    else onFrame(event.data);
  };
}

function onText(message) {
  switch (message.type) {
    case "session": orView.session = message; showSession(); refreshInstances(); break;
    case "recorder": orView.recorder = message; showRecorder(); break;
    case "streams": orView.streams = message.streams; showStreams(); break;
    case "dicomweb": orView.dicomweb = message.url; refreshSeries(); refreshInstances(); break;
    case "wave": onWave(message); break;
    case "pose": onPose(message); break;
    default: break;
  }
}

/* ---- Session -------------------------------------------------------------------------- */

function showSession() {
  const s = orView.session;
  $("s-patient").textContent = `${s.patient_name} (${s.patient_id})` +
    (s.sex ? `, ${s.sex}` : "") + (s.birth_date ? `, born ${s.birth_date}` : "");
  $("s-study").textContent = `${s.study_description || "-"}` +
    (s.accession_number ? ` - accession ${s.accession_number}` : "");
  $("s-procedure").textContent = s.procedure || "-";
  $("s-or").textContent = s.operating_room || "-";
}

function tick() {
  $("clock").textContent = new Date().toLocaleTimeString();
  const s = orView.session;
  if (s && s.start) {
    const seconds = Math.max(0, Math.floor((Date.now() - new Date(s.start).getTime()) / 1000));
    const h = Math.floor(seconds / 3600), m = Math.floor(seconds / 60) % 60, sec = seconds % 60;
    $("s-elapsed").textContent = `${h}:${String(m).padStart(2, "0")}:${String(sec).padStart(2, "0")}` +
      ` (since ${s.start.replace("T", " ")})`;
  }
}

/* ---- Live series (QIDO-RS) ------------------------------------------------------------- */

async function refreshSeries() {
  if (!orView.dicomweb) return;
  try {
    const answer = await (await api("/dicom-web/series?includefield=all",
      { headers: { Accept: "application/dicom+json" } })).json();
    const body = $("series").tBodies[0];
    body.replaceChildren();
    const live = answer.filter((s) => value(s, TAGS.retrieveUrl).startsWith("ros2:"));
    for (const s of live) {
      const row = body.insertRow();
      const description = value(s, TAGS.description);
      const state = description.includes("[SOURCE LOST]") ? ["SOURCE LOST", "bad"]
        : description.includes("[STALE]") ? ["STALE", "warn"] : ["LIVE", "ok"];
      row.dataset.series = value(s, TAGS.series);
      cell(row, value(s, TAGS.modality));
      cell(row, description.replace(/ \[(STALE|SOURCE LOST)\]$/, ""));
      cell(row, rateOf(s));
      cell(row, badge(state[0], state[1]));
      cell(row, value(s, TAGS.retrieveUrl), "url");
    }
  } catch (error) {
    console.warn("QIDO-RS series:", error.message);
  }
}

function rateOf(s) {
  const cine = value(s, TAGS.cineRate), sampling = value(s, TAGS.sampling);
  if (cine) return `${cine} frames/s`;
  if (sampling) return `${Number(sampling)} Hz`;
  const stream = orView.streams.find((x) => x.series === value(s, TAGS.series));
  return stream && stream.rate_hz ? `${stream.rate_hz} Hz` : "";
}

/* ---- Streams: video, waveforms, tools ------------------------------------------------- */

const videos = {};   // series -> {canvas, overlay, ...}
const videoWorker = OFFSCREEN ? new Worker("/static/video_worker.js") : null;
if (videoWorker) videoWorker.onmessage = (event) => onDrawn(event.data);
const waves = {};    // series -> {channels: [{label, unit, canvas, t[], v[]}], ...}

function showStreams() {
  for (const s of orView.streams) {
    if (s.kind === "video" && !videos[s.series]) addVideo(s);
    if (s.kind === "waveform" && !waves[s.series]) addWave(s);
    if (s.kind === "pose") $("tool-frame").textContent = `frame ${s.frame}`;
  }
}

function addVideo(s) {
  const box = document.createElement("div");
  box.className = "video";
  const canvas = document.createElement("canvas");
  canvas.width = 640; canvas.height = 360;
  canvas.dataset.series = s.series;
  canvas.setAttribute("aria-label", `live video ${s.description}`);
  const overlay = document.createElement("div");
  overlay.className = "overlay";
  overlay.textContent = `${s.description}: waiting for frames`;
  box.append(canvas, overlay);
  $("videos").appendChild(box);
  // A browser without OffscreenCanvas (Safari before 16.4) draws on the page's thread.
  const local = !OFFSCREEN;
  if (!local) {
    const offscreen = canvas.transferControlToOffscreen();
    videoWorker.postMessage({ type: "canvas", series: s.series, canvas: offscreen,
                              measure: orView.measure }, [offscreen]);
  }
  videos[s.series] = { canvas, overlay, description: s.description, local, busy: false,
                       count: 0, since: performance.now(), fps: 0 };
  orView.frames[s.series] = 0;
}

function onFrame(buffer) {
  const view = new DataView(buffer);
  const length = view.getUint32(0, true);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, length)));
  const video = videos[header.series];
  if (!video) return;
  drawHere(video, header, new Uint8Array(buffer, 4 + length));
}

function drawHere(video, header, jpeg) {
  if (video.busy) { orView.replaced += 1; return; }   // the next frame comes soon
  video.busy = true;
  createImageBitmap(new Blob([jpeg], { type: "image/jpeg" })).then((bitmap) => {
    video.canvas.width = bitmap.width; video.canvas.height = bitmap.height;
    video.canvas.getContext("2d").drawImage(bitmap, 0, 0);
    bitmap.close();
    onDrawn({ type: "drawn", header, age: Date.now() - header.capture_ms, band: null });
  }).catch((error) => console.warn("frame:", error.message))
    .finally(() => { video.busy = false; });
}

function onDrawn(message) {
  if (message.type === "replaced") { orView.replaced += 1; return; }
  if (message.type === "error") { console.warn("frame:", message.message); return; }
  const { header, age, band } = message;
  const video = videos[header.series];
  push(orView.latency, age);
  if (band !== null) push(orView.bandLatency, band);
  orView.frames[header.series] += 1;
  video.count += 1;
  const now = performance.now();
  if (now - video.since >= 1000) {
    video.fps = video.count * 1000 / (now - video.since);
    video.count = 0; video.since = now;
  }
  video.overlay.textContent = `${video.description} - frame ${header.seq}, ` +
    `age ${age.toFixed(0)} ms, ${header.width}x${header.height}, ${video.fps.toFixed(1)} fps`;
}

function addWave(s) {
  const box = document.createElement("div");
  box.className = "wave";
  const channels = [];
  for (const [index, channel] of s.channels.slice(0, 3).entries()) {
    // ECG in mV (ECG paper's unit) whatever the device's unit: uV from most monitors.
    const factor = channel.unit === "uV" ? 0.001 : 1;
    const unit = channel.unit === "uV" ? "mV" : channel.unit;
    const label = document.createElement("div");
    label.className = "label";
    label.textContent = `${s.modality} ${channel.label} [${unit}]`;
    const canvas = document.createElement("canvas");
    canvas.dataset.series = s.series;
    canvas.dataset.channel = channel.label;
    box.append(label, canvas);
    channels.push({ index, label: channel.label, unit, factor, canvas, t: [], v: [] });
  }
  $("waves").appendChild(box);
  waves[s.series] = { channels, last: 0 };
}

function onWave(message) {
  const wave = waves[message.series];
  if (!wave) return;
  for (const channel of wave.channels) {
    const data = message.data[channel.index];
    if (!data) continue;
    for (let i = 0; i < data.length; i += 1) {
      channel.t.push(message.t0_ms + i * message.period_ms);
      channel.v.push(data[i] * channel.factor);
    }
    const keep = channel.t.length - 20000;
    if (keep > 0) { channel.t.splice(0, keep); channel.v.splice(0, keep); }
  }
  const count = message.data[0] ? message.data[0].length : 0;
  wave.last = Math.max(wave.last, message.t0_ms + (count - 1) * message.period_ms);
}

/* The physical scale of a unit: ECG paper for mV (10 mm/mV, 0.5 mV grid), otherwise a range
 * fitted to the data with round grid steps. */
function scaleFor(channel, t0) {
  if (channel.unit === "mV") return { mmPerUnit: 10, paper: true };   // 10 mm/mV
  let min = Infinity, max = -Infinity;
  for (let i = channel.t.length - 1; i >= 0 && channel.t[i] >= t0; i -= 1) {
    min = Math.min(min, channel.v[i]); max = Math.max(max, channel.v[i]);
  }
  if (!isFinite(min)) { min = 0; max = 1; }
  if (channel.unit === "%" && max <= 100 && min >= 0) { min = Math.min(min, 80); max = 100; }
  const span = Math.max(max - min, 1e-6);
  const step = Math.pow(10, Math.floor(Math.log10(span / 2)));
  const grid = span / step > 10 ? step * 5 : span / step > 4 ? step * 2 : step;
  return { lo: Math.floor(min / grid) * grid, hi: Math.ceil(max / grid) * grid + 1e-9,
           grid, paper: false };
}

function drawWaves() {
  const now = Date.now();
  for (const wave of Object.values(waves)) {
    if (!wave.last) continue;
    push(orView.waveLag, now - wave.last);
    for (const channel of wave.channels) drawChannel(channel, wave.last);
  }
}

function drawChannel(channel, tEnd) {
  const canvas = channel.canvas;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width; canvas.height = height;
  }
  const pxPerMs = SWEEP_MM_PER_S * PX_PER_MM / 1000;
  const t0 = tEnd - width / pxPerMs;
  const scale = scaleFor(channel, t0);
  // The grid changes only with the size or the scale: drawn once, then copied.
  const key = `${width}x${height}:${scale.paper}:${scale.lo}:${scale.hi}:${scale.grid}`;
  if (channel.gridKey !== key) {
    channel.grid = channel.grid || document.createElement("canvas");
    channel.grid.width = width; channel.grid.height = height;
    channel.gridKey = key;
    channel.y = drawGrid(channel.grid.getContext("2d"), channel, scale, width, height);
  }
  const g = canvas.getContext("2d");
  g.drawImage(channel.grid, 0, 0);
  drawTrace(g, channel, channel.y, t0, tEnd, width, pxPerMs);
}

function drawGrid(g, channel, scale, width, height) {
  g.fillStyle = "#0b0f12"; g.fillRect(0, 0, width, height);
  let y;
  g.lineWidth = 1;
  // Time grid: 1 mm minor (ECG only), 5 mm = 200 ms major, as on ECG paper.
  for (let mm = 0; mm * PX_PER_MM < width; mm += 1) {
    if (!scale.paper && mm % 5) continue;
    g.strokeStyle = mm % 5 ? "rgba(248,81,73,.10)" : "rgba(248,81,73,.28)";
    const x = width - mm * PX_PER_MM;
    g.beginPath(); g.moveTo(x, 0); g.lineTo(x, height); g.stroke();
  }
  if (scale.paper) {
    const px = scale.mmPerUnit * PX_PER_MM;
    y = (v) => height / 2 - v * px;
    for (let mm = -Math.floor(height / 2 / PX_PER_MM); mm * PX_PER_MM <= height / 2; mm += 1) {
      g.strokeStyle = mm % 5 ? "rgba(248,81,73,.10)" : "rgba(248,81,73,.28)";
      const yy = height / 2 - mm * PX_PER_MM;
      g.beginPath(); g.moveTo(0, yy); g.lineTo(width, yy); g.stroke();
    }
    g.fillStyle = "#8b98a5"; g.font = "10px sans-serif";
    g.fillText("10 mm/mV, 25 mm/s; grid 1 mm = 0.1 mV / 40 ms", 4, height - 4);
  } else {
    const span = scale.hi - scale.lo;
    y = (v) => height - 4 - (v - scale.lo) / span * (height - 8);
    g.fillStyle = "#8b98a5"; g.font = "10px sans-serif";
    for (let v = scale.lo; v <= scale.hi; v += scale.grid) {
      g.strokeStyle = "rgba(88,166,255,.18)";
      g.beginPath(); g.moveTo(0, y(v)); g.lineTo(width, y(v)); g.stroke();
      g.fillText(`${+v.toFixed(3)} ${channel.unit}`, 4, Math.max(10, y(v) - 2));
    }
  }
  return y;
}

function drawTrace(g, channel, y, t0, tEnd, width, pxPerMs) {
  g.strokeStyle = COLORS[channel.index % COLORS.length];
  g.lineWidth = 1.5;
  g.beginPath();
  let first = channel.t.length - 1;
  while (first > 0 && channel.t[first - 1] >= t0) first -= 1;
  // Several samples per pixel column (500 Hz at 25 mm/s): each column's extremes, so a
  // QRS peak is never dropped and the path stays a few hundred segments.
  let column = NaN, lo = 0, hi = 0, started = false;
  const flush = () => {
    if (Number.isNaN(column)) return;
    if (started) g.lineTo(column, y(lo)); else { g.moveTo(column, y(lo)); started = true; }
    if (hi !== lo) g.lineTo(column, y(hi));
  };
  for (let i = first; i < channel.t.length; i += 1) {
    const x = Math.round(width - (tEnd - channel.t[i]) * pxPerMs), v = channel.v[i];
    if (x !== column) { flush(); column = x; lo = hi = v; }
    else { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  }
  flush();
  g.stroke();
}

const tools = {};   // tool id -> last sample

let toolsChanged = false;
function onPose(message) { tools[message.tool] = message; toolsChanged = true; }

function drawTools() {
  if (!toolsChanged) return;
  toolsChanged = false;
  const list = Object.values(tools);
  const range = (axis) => {
    let lo = Infinity, hi = -Infinity;
    for (const t of list) { lo = Math.min(lo, t[axis]); hi = Math.max(hi, t[axis]); }
    if (!isFinite(lo)) return [-100, 100];
    const pad = Math.max(50, (hi - lo) * 0.2);
    return [lo - pad, hi + pad];
  };
  plot($("tools-top"), list, "x", "y", range("x"), range("y"));
  plot($("tools-side"), list, "x", "z", range("x"), range("z"));
  const ul = $("tool-list");
  if (ul.childElementCount !== list.length) ul.replaceChildren();
  list.forEach((t, i) => {
    let li = ul.children[i];
    if (!li) { li = document.createElement("li"); ul.appendChild(li); }
    li.innerHTML = "";
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = COLORS[i % COLORS.length];
    li.append(swatch, `${t.tool}: `, badge(t.visible ? "visible" : "occluded",
      t.visible ? "ok" : "warn"), ` (${t.x.toFixed(0)}, ${t.y.toFixed(0)}, ${t.z.toFixed(0)}) mm`);
  });
}

function plot(canvas, list, a, b, ra, rb) {
  const g = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
  g.fillStyle = "#0b0f12"; g.fillRect(0, 0, w, h);
  const span = Math.max(ra[1] - ra[0], rb[1] - rb[0]);   // one scale for both axes
  const ca = (ra[0] + ra[1]) / 2, cb = (rb[0] + rb[1]) / 2, k = Math.min(w, h) / span;
  const px = (v) => w / 2 + (v - ca) * k, py = (v) => h / 2 - (v - cb) * k;
  const step = Math.pow(10, Math.floor(Math.log10(span / 2)));
  g.strokeStyle = "rgba(88,166,255,.15)"; g.fillStyle = "#8b98a5"; g.font = "10px sans-serif";
  for (let v = Math.ceil((ca - span) / step) * step; v < ca + span; v += step) {
    g.beginPath(); g.moveTo(px(v), 0); g.lineTo(px(v), h); g.stroke();
  }
  for (let v = Math.ceil((cb - span) / step) * step; v < cb + span; v += step) {
    g.beginPath(); g.moveTo(0, py(v)); g.lineTo(w, py(v)); g.stroke();
  }
  g.fillText(`grid ${step} mm`, 4, h - 4);
  list.forEach((t, i) => {
    g.fillStyle = COLORS[i % COLORS.length];
    g.globalAlpha = t.visible ? 1 : 0.35;
    g.beginPath(); g.arc(px(t[a]), py(t[b]), 5, 0, 2 * Math.PI); g.fill();
    g.fillText(t.tool, px(t[a]) + 7, py(t[b]) - 7);
    g.globalAlpha = 1;
  });
}

/* ---- Recorder ------------------------------------------------------------------------- */

function showRecorder() {
  const r = orView.recorder;
  $("recorder-summary").innerHTML = "";
  $("recorder-summary").append("instances: ",
    ...summary([["writing", r.instances_writing], ["final", r.instances_final],
                ["stored", r.instances_stored], ["committed", r.instances_committed],
                ["failed", r.instances_failed]]),
    ` - disk free ${r.disk_free_mib >= 0 ? (r.disk_free_mib / 1024).toFixed(1) + " GiB" : "unknown"}`);
  $("recorder-summary").dataset.final = r.instances_final;
  const body = $("recorder").tBodies[0];
  body.replaceChildren();
  for (const s of r.streams) {
    const row = body.insertRow();
    row.dataset.series = s.series_instance_uid;
    cell(row, s.topic);
    cell(row, s.kind);
    const state = s.refused ? ["REFUSED", "bad"] : s.waiting_for_descriptor ? ["WAITING", "warn"]
      : s.recording ? ["RECORDING", "ok"] : ["IDLE", "idle"];
    cell(row, badge(state[0], state[1]));
    cell(row, s.samples);
    cell(row, s.lost_messages);
    cell(row, s.instances);
    cell(row, s.finalising);
    cell(row, s.errors ? `${s.errors} ${s.last_error}` : 0);
  }
  const p = r.pacs;
  const pacs = $("pacs");
  pacs.innerHTML = "";
  if (!p || !p.enabled) {
    pacs.append("PACS: local only (no destination configured)");
  } else {
    pacs.append("PACS: ", badge(p.reachable ? "reachable" : p.contacted ? "unreachable" : "not contacted",
      p.reachable ? "ok" : "warn"), " ", ...summary([["queue", p.queue], ["stored", p.stored],
      ["storage commitment", p.committed], ["failed", p.failed], ["retries", p.retries]]),
      p.last_error ? ` - ${p.last_error}` : "");
  }
  const mpps = r.mpps;
  if (mpps && mpps.enabled) {
    pacs.append(document.createElement("br"), `MPPS ${mpps.destination}: `,
      mpps.open_step ? badge(`IN PROGRESS ${mpps.open_step_id}`, "ok")
        : badge(mpps.last_step_status || "no step", mpps.last_step_status ? "idle" : "warn"),
      " ", ...summary([["pending", mpps.pending], ["sent", mpps.sent],
                       ["refused", mpps.refused], ["retries", mpps.retries]]),
      mpps.last_error ? ` - ${mpps.last_error}` : "");
  }
}

function summary(pairs) {
  const out = [];
  pairs.forEach(([label, number], i) => {
    const b = document.createElement("b");
    b.textContent = text(number);
    out.push(`${i ? ", " : ""}${label} `, b);
  });
  return out;
}

async function control(command) {
  $("control-result").textContent = `${command}...`;
  try {
    const answer = await (await api("/api/record", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ command, series: [] }) })).json();
    $("control-result").textContent = `${command}: ${answer.message}` +
      (answer.sop_instance_uids.length ? ` (${answer.sop_instance_uids.length} instance(s))` : "");
    setTimeout(refreshInstances, 1500);
  } catch (error) {
    $("control-result").textContent = `${command} failed: ${error.message}`;
  }
}

/* ---- Recorded instances (QIDO-RS) and the player (WADO-RS) ------------------------------ */

function studyUid() { return orView.session ? orView.session.study_instance_uid : ""; }

async function refreshInstances() {
  const study = studyUid();
  if (!orView.dicomweb || !study) return;
  try {
    const answer = await (await api(`/dicom-web/studies/${study}/instances?includefield=all`,
      { headers: { Accept: "application/dicom+json" } })).json();
    const body = $("instances").tBodies[0];
    const seen = new Set([...body.rows].map((r) => r.dataset.sop));
    for (const item of answer) {
      const sop = value(item, TAGS.sop);
      if (!sop || seen.has(sop)) continue;
      const sopClass = value(item, TAGS.sopClass);
      const row = body.insertRow();
      row.dataset.sop = sop;
      row.dataset.sopClass = sopClass;
      const series = orView.streams.find((s) => s.series === value(item, TAGS.series));
      cell(row, series ? `${series.modality} ${series.description}` : value(item, TAGS.series));
      cell(row, SOP_CLASSES[sopClass] || sopClass);
      cell(row, value(item, TAGS.number));
      cell(row, value(item, TAGS.frames));
      cell(row, value(item, TAGS.acquired).slice(0, 14).replace(/(\d{8})(\d{2})(\d{2})(\d{2})/, "$1 $2:$3:$4"));
      const button = document.createElement("button");
      button.type = "button";
      const path = `studies/${study}/series/${value(item, TAGS.series)}/instances/${sop}`;
      if (VIDEO_CLASS.test(sopClass)) {
        button.textContent = "play";
        button.className = "play-video";
        button.onclick = () => playVideo(path);
      } else if (WAVEFORM_CLASS.test(sopClass)) {
        button.textContent = "show";
        button.className = "show-wave";
        button.onclick = () => showWaveform(path);
      } else {
        button.hidden = true;
      }
      cell(row, button);
    }
  } catch (error) {
    console.warn("QIDO-RS instances:", error.message);
  }
}

async function playVideo(path) {
  const video = $("player-video");
  video.hidden = false;
  const url = `/dicom-web/${path}/rendered`;
  if (token) {   // a media element cannot send a header: fetch, then play the blob
    const blob = await (await api(url, { headers: { Accept: "video/mp4" } })).blob();
    video.src = URL.createObjectURL(blob);
  } else {
    video.src = url;
  }
  $("player-info").textContent = `WADO-RS ${url} (video/mp4, remuxed from the stored stream)`;
  video.play().catch((error) => console.warn("play:", error.message));
}

async function showWaveform(path) {
  const canvas = $("player-wave");
  canvas.hidden = false;
  const traces = await (await api(`/api/waveform/${path.split("/").filter((_, i) => i % 2).join("/")}`)).json();
  // ECG in mV, as on the live traces.
  const channels = traces.groups.flatMap((g) => g.channels.map((c) => (c.unit === "uV"
    ? { ...c, unit: "mV", values: c.values.map((v) => v / 1000), hz: g.sampling_hz }
    : { ...c, hz: g.sampling_hz })));
  const shown = channels.slice(0, 6);
  const g = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
  g.fillStyle = "#0b0f12"; g.fillRect(0, 0, w, h);
  const band = h / Math.max(shown.length, 1);
  shown.forEach((c, i) => {
    let lo = Infinity, hi = -Infinity;
    for (const v of c.values) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    const span = Math.max(hi - lo, 1e-6);
    const y = (v) => band * (i + 1) - 4 - (v - lo) / span * (band - 14);
    g.strokeStyle = COLORS[i % COLORS.length]; g.lineWidth = 1;
    g.beginPath();
    c.values.forEach((v, k) => {
      const x = k / Math.max(c.values.length - 1, 1) * w;
      if (k) g.lineTo(x, y(v)); else g.moveTo(x, y(v));
    });
    g.stroke();
    g.fillStyle = "#e6edf3"; g.font = "11px sans-serif";
    g.fillText(`${c.label} [${c.unit}] ${lo.toFixed(2)}..${hi.toFixed(2)}`, 4, band * i + 12);
  });
  const seconds = channels.length ? channels[0].values.length / channels[0].hz : 0;
  $("player-info").textContent = `${traces.description}: ${channels.length} channel(s), ` +
    `${seconds.toFixed(1)} s, from WADO-RS ${path}`;
  canvas.dataset.drawn = String(shown.length);
}

/* ---- start ---------------------------------------------------------------------------- */

let lastTools = 0, lastWaves = 0;
function frame(now) {
  // Traces at about 30 Hz (a 3 px step at 25 mm/s), tools at 10 Hz: the main thread stays
  // free for the video.
  if (now - lastWaves > 30) { lastWaves = now; drawWaves(); }
  if (now - lastTools > 100) { lastTools = now; drawTools(); }
  requestAnimationFrame(frame);
}

async function start() {
  const config = await (await fetch("/api/config")).json();
  if (config.token_required && !token) {
    token = window.prompt("Access token of the OR view") || "";
    sessionStorage.setItem("or_view_token", token);
  }
  $("btn-snapshot").onclick = () => control("SNAPSHOT");
  $("btn-start").onclick = () => control("START");
  $("btn-stop").onclick = () => control("STOP");
  if (videoWorker) videoWorker.postMessage({ type: "connect", url: WS_URL, token });
  connect();
  setInterval(tick, 1000);
  setInterval(refreshSeries, 2000);
  setInterval(refreshInstances, 3000);
  requestAnimationFrame(frame);
}

start();
