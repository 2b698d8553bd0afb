// kkoma's page: the microphone streamed to the server's live engine (notes scroll on a piano roll as they come
// back), a recorded take transcribed by the files model, and audio files dropped here transcribed to MIDI.
// Every request carries the access token the server printed (it is in this page's URL).
"use strict";

const TOKEN = document.body.dataset.token;
const LOW = 21, HIGH = 108;            // piano keys drawn (A0..C8)
const LIVE_WINDOW_S = 10;              // seconds of the live roll on screen
const $ = (id) => document.getElementById(id);

// State the page shows; also read by the browser test (tests/test_serve.py).
const kkoma = window.kkoma = {
  live: { notes: [], events: 0, latencies: [], captured: 0, rate: 0, recording: false, ended: false, error: null },
  take: null,                          // {id, notes, seconds} once the files model has the recorded take
  file: null,                          // {name, notes, seconds} once a dropped file is transcribed
  drawn: 0,                            // notes drawn in the last frame of the live roll
};

function setStatus(text, error = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", error);
}

function withToken(path) {
  return path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(TOKEN);
}

// ---- piano roll --------------------------------------------------------------------------------------------------
function velocityColour(v) {
  // soft = blue, loud = red
  const hue = 230 - 230 * Math.min(1, Math.max(0, (v - 1) / 126));
  return `hsl(${hue.toFixed(0)}, 80%, ${55 + 10 * (1 - v / 127)}%)`;
}

const BLACK = new Set([1, 3, 6, 8, 10]);

function drawRoll(canvas, notes, t0, t1, now = null, playhead = null) {
  const g = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, K = 36;        // K: keyboard width [px]
  const keyH = H / (HIGH - LOW + 1);
  const x = (t) => K + (t - t0) / (t1 - t0) * (W - K);
  const y = (p) => H - (p - LOW + 1) * keyH;
  g.fillStyle = "#0d0f12";
  g.fillRect(0, 0, W, H);
  for (let p = LOW; p <= HIGH; p++) {                        // lanes and keyboard
    const black = BLACK.has(p % 12);
    g.fillStyle = black ? "#111318" : "#161920";
    g.fillRect(K, y(p), W - K, keyH);
    g.fillStyle = black ? "#222" : "#ddd";
    g.fillRect(0, y(p), K - 2, keyH - (black ? 0 : 0.5));
    if (p % 12 === 0) {                                      // C: octave line and label
      g.fillStyle = "#2a2f3a";
      g.fillRect(K, y(p) + keyH - 1, W - K, 1);
      g.fillStyle = "#555";
      g.font = `${Math.max(8, keyH * 1.6)}px sans-serif`;
      g.fillText(`C${p / 12 - 1}`, 2, y(p) + keyH - 1);
    }
  }
  g.strokeStyle = "#262a33";                                 // a line every second
  for (let s = Math.ceil(t0); s <= t1; s++) {
    g.beginPath(); g.moveTo(x(s), 0); g.lineTo(x(s), H); g.stroke();
  }
  let drawn = 0;
  for (const n of notes) {
    const end = n.off === null ? (now ?? n.on) : n.off;
    if (end < t0 || n.on > t1 || n.pitch < LOW || n.pitch > HIGH) continue;
    const x0 = Math.max(K, x(n.on)), x1 = Math.max(x0 + 2, x(end));
    g.fillStyle = velocityColour(n.vel);
    g.fillRect(x0, y(n.pitch) + 0.5, x1 - x0, Math.max(1, keyH - 1));
    drawn++;
  }
  if (playhead !== null) {
    g.fillStyle = "#f0b429";
    g.fillRect(x(playhead), 0, 2, H);
  }
  return drawn;
}

function fromRows(rows) {   // [[pitch, onset, offset, velocity], ...] -> note objects
  return rows.map(([pitch, on, off, vel]) => ({ pitch, on, off, vel }));
}

// ---- live --------------------------------------------------------------------------------------------------------
let ctx = null, ws = null, stream = null, node = null, source = null, wakeLock = null;

function median(a) {
  if (!a.length) return null;
  const s = [...a].sort((p, q) => p - q);
  return s[Math.floor(s.length / 2)];
}

function onLiveMessage(msg) {
  const L = kkoma.live;
  if (msg.type === "note") {
    L.events++;
    if (msg.kind === "on") {
      L.notes.push({ pitch: msg.pitch, on: msg.t, off: null, vel: msg.velocity });
      // Measured latency: where the page's capture clock is when the note arrives, minus the note's time on it.
      L.latencies.push(L.captured / L.rate - msg.t);
      if (L.latencies.length > 50) L.latencies.shift();
      $("count").textContent = L.notes.length;
      const m = median(L.latencies);
      $("latency").textContent = `${(1000 * m).toFixed(0)} ms`;
    } else {
      for (let i = L.notes.length - 1; i >= 0; i--) {
        const n = L.notes[i];
        if (n.pitch === msg.pitch && n.off === null) { n.off = Math.max(msg.t, n.on); break; }
      }
    }
  } else if (msg.type === "status") {
    $("level").textContent = msg.level_db === null ? "-" : `${msg.level_db.toFixed(0)} dB`;
    if (msg.error) fail(msg.error);
  } else if (msg.type === "recording") {
    setStatus("recording");
  } else if (msg.type === "take_busy") {
    setStatus("the files model is transcribing the take...");
  } else if (msg.type === "take") {
    kkoma.take = msg;
    showTake(msg);
  } else if (msg.type === "ended") {
    L.ended = true;
    if (msg.error) fail(msg.error); else setStatus(`stopped: ${L.notes.length} notes`);
    if (ws) ws.close();
  } else if (msg.type === "error") {
    fail(msg.message);
  }
}

function fail(message) {
  kkoma.live.error = message;
  setStatus(message, true);
}

function showTake(take) {
  const link = (kind, label) => `<a href="${withToken(`/api/take/${take.id}.${kind}`)}" download>${label}</a>`;
  showResult($("take"), $("take-roll"), take.notes, take.seconds,
             `take: ${take.notes.length} notes in ${take.seconds.toFixed(1)} s (files model)`,
             link("mid", "MIDI") + link("csv", "CSV") + link("wav", "audio"));
  setStatus(`take ready: ${take.notes.length} notes`);
}

async function startLive() {
  $("start").disabled = true;
  const L = kkoma.live;
  Object.assign(L, { notes: [], events: 0, latencies: [], captured: 0, ended: false, error: null });
  try {
    if (!navigator.mediaDevices || !window.AudioWorkletNode)
      throw new Error("this browser opens the microphone only on https:// pages (start kkoma serve with --https)");
    // The engine is made ready before the microphone opens, so the stream starts with the first sample captured.
    ctx = new AudioContext({ latencyHint: "interactive" });
    await ctx.audioWorklet.addModule(withToken("/static/worklet.js"));
    L.rate = ctx.sampleRate;
    const proto = location.protocol === "https:" ? "wss://" : "ws://";
    ws = new WebSocket(proto + location.host + withToken("/ws/live"));
    ws.binaryType = "arraybuffer";
    await new Promise((ok, bad) => {
      ws.onopen = ok;
      ws.onerror = () => bad(new Error("the server refused the socket"));
    });
    ws.send(JSON.stringify({ type: "start", rate: ctx.sampleRate }));
    setStatus("starting the live engine...");
    await new Promise((ok, bad) => {
      ws.onmessage = (e) => {
        const msg = JSON.parse(e.data);
        if (msg.type === "ready") ok(msg); else if (msg.type === "error") bad(new Error(msg.message));
      };
      ws.onclose = () => bad(new Error("the server closed the socket"));
    });
    ws.onmessage = (e) => onLiveMessage(JSON.parse(e.data));
    ws.onclose = () => { if (!L.ended && !L.error) fail("the connection to the server was lost"); stopAudio(); };
    if (L.recording) ws.send(JSON.stringify({ type: "record", on: true }));   // armed before the start
    setStatus("opening the microphone...");
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
    source = ctx.createMediaStreamSource(stream);
    node = new AudioWorkletNode(ctx, "kkoma-capture");
    node.port.onmessage = (e) => {
      if (!ws || ws.readyState !== WebSocket.OPEN) return;
      L.captured += e.data.length;
      ws.send(e.data.buffer);
    };
    source.connect(node);
    node.connect(ctx.destination);   // silent: keeps the node pulled on every browser
    $("stop").disabled = false;
    try { wakeLock = await navigator.wakeLock.request("screen"); } catch (e) { wakeLock = null; }  // phone: stay on
    setStatus(`listening (${ctx.sampleRate} Hz)${L.recording ? ", recording" : ""}`);
    requestAnimationFrame(drawLive);
  } catch (err) {
    fail(err.message || String(err));
    stopAudio();
    if (ws) ws.close();
  }
}

// Record before Start arms it: the take then holds the whole stream.
function toggleRecord() {
  const L = kkoma.live;
  L.recording = !L.recording;
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "record", on: L.recording }));
  $("record").classList.toggle("on", L.recording);
  $("record").textContent = L.recording ? "Stop recording" : "Record";
  if (L.recording) { kkoma.take = null; $("take").hidden = $("take-roll").hidden = true; }
}

function stopAudio() {
  if (source) source.disconnect();
  if (node) { node.port.onmessage = null; node.disconnect(); }
  if (stream) stream.getTracks().forEach((t) => t.stop());
  if (ctx) ctx.close();
  if (wakeLock) wakeLock.release().catch(() => {});
  source = node = stream = ctx = wakeLock = null;
  kkoma.live.recording = false;
  $("stop").disabled = true;
  $("start").disabled = false;
  $("record").classList.remove("on");
  $("record").textContent = "Record";
}

function stopLive() {
  const L = kkoma.live;
  stopAudio();
  L.recording = false;
  if (ws && ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify({ type: "end" }));   // the server flushes the last notes, then says "ended"
    setStatus("finishing...");
  }
}

function drawLive() {
  const L = kkoma.live;
  const now = L.rate ? L.captured / L.rate : 0;
  kkoma.drawn = drawRoll($("live-roll"), L.notes, now - LIVE_WINDOW_S, now, now);
  $("clock").textContent = `${now.toFixed(1)} s`;
  if (ctx) requestAnimationFrame(drawLive);
}

// ---- files -------------------------------------------------------------------------------------------------------
let playback = null;

// A finished transcription (a take or a file): its summary, download links and a Play button in `el`, its notes on
// the piano roll `canvas`.
function showResult(el, canvas, rows, seconds, summary, links) {
  const notes = fromRows(rows);
  const end = Math.max(seconds, ...notes.map((n) => n.off), 1);
  canvas.hidden = false;
  drawRoll(canvas, notes, 0, end);
  el.innerHTML = `<span>${summary}</span>${links}<button>Play</button>`;
  el.hidden = false;
  const button = el.querySelector("button");
  button.onclick = () => togglePlay(notes, end, canvas, button);
}

function showFile(result) {
  kkoma.file = result;
  const stem = result.name.replace(/\.[^.]*$/, "") || "kkoma";
  const midi = Uint8Array.from(atob(result.midi), (c) => c.charCodeAt(0));
  const midiUrl = URL.createObjectURL(new Blob([midi], { type: "audio/midi" }));
  const csvUrl = URL.createObjectURL(new Blob([result.csv], { type: "text/csv" }));
  showResult($("file-result"), $("file-roll"), result.notes, result.seconds,
             `${escapeHtml(result.name)}: ${result.notes.length} notes in ${result.seconds.toFixed(1)} s`,
             `<a href="${midiUrl}" download="${escapeHtml(stem)}.mid">MIDI</a>`
             + `<a href="${csvUrl}" download="${escapeHtml(stem)}.csv">CSV</a>`);
}

function escapeHtml(s) {
  return s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;", "'": "&#39;" })[c]);
}

// Playback with a small synthesised piano tone (two detuned partials, fast attack, exponential decay), scheduled a
// second ahead at a time so long pieces cost nothing up front.
function togglePlay(notes, end, canvas, button) {
  if (playback) {
    const same = playback.button === button;
    playback.stop();
    if (same) return;
  }
  const ac = new AudioContext();
  const out = ac.createGain();
  out.gain.value = 0.25;
  out.connect(ac.destination);
  const t0 = ac.currentTime + 0.1;
  let next = 0;
  const sorted = [...notes].sort((a, b) => a.on - b.on);
  const tick = () => {
    const horizon = ac.currentTime - t0 + 1.0;
    while (next < sorted.length && sorted[next].on < horizon) {
      const n = sorted[next++];
      const f = 440 * Math.pow(2, (n.pitch - 69) / 12);
      const start = t0 + n.on, stop = t0 + Math.max(n.off, n.on + 0.05) + 0.25;
      const env = ac.createGain();
      const peak = 0.05 + 0.35 * (n.vel / 127);
      env.gain.setValueAtTime(0, start);
      env.gain.linearRampToValueAtTime(peak, start + 0.005);
      env.gain.exponentialRampToValueAtTime(peak * 0.3, start + 0.6);
      env.gain.exponentialRampToValueAtTime(0.0001, stop);
      env.connect(out);
      for (const [mult, type] of [[1, "triangle"], [2.002, "sine"]]) {
        const o = ac.createOscillator();
        o.type = type;
        o.frequency.value = f * mult;
        o.connect(env);
        o.start(start);
        o.stop(stop);
      }
    }
    const pos = ac.currentTime - t0;
    drawRoll(canvas, notes, 0, end, null, Math.max(0, pos));
    if (pos > end + 0.5) playback.stop();
  };
  const timer = setInterval(tick, 50);
  playback = {
    button,
    stop() {
      clearInterval(timer);
      ac.close();
      playback = null;
      button.textContent = "Play";
      drawRoll(canvas, notes, 0, end);
    },
  };
  button.textContent = "Stop";
  tick();
}

function upload(file) {
  const bar = $("progress");
  bar.hidden = false;
  bar.value = 0;
  $("file-result").hidden = true;
  setStatus(`sending ${file.name}...`);
  const form = new FormData();
  form.append("file", file);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", withToken("/api/transcribe?format=ndjson"));
  xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = 0.2 * e.loaded / e.total; };
  let seen = 0;
  const lines = () => {     // the answer is one JSON object a line: progress, then the result
    const text = xhr.responseText;
    const out = [];
    let nl;
    while ((nl = text.indexOf("\n", seen)) >= 0) { out.push(JSON.parse(text.slice(seen, nl))); seen = nl + 1; }
    return out;
  };
  const handle = () => {
    for (const msg of lines()) {
      if (msg.error) { fail(msg.error); bar.hidden = true; }
      else if (msg.notes) {
        bar.value = 1;
        showFile(msg);
        setStatus(`${msg.name}: ${msg.notes.length} notes`);
        bar.hidden = true;
      } else if ("progress" in msg) {
        bar.value = 0.2 + 0.8 * msg.progress;
        setStatus(`transcribing ${file.name}: ${msg.seconds.toFixed(0)} of ${msg.total.toFixed(0)} s`);
      }
    }
  };
  xhr.onprogress = handle;
  xhr.onload = () => {
    if (xhr.status !== 200) {
      fail(xhr.responseText.trim() || `the server answered ${xhr.status}`);
      bar.hidden = true;
      return;
    }
    handle();
  };
  xhr.onerror = () => { fail("the upload failed (is the server still running?)"); bar.hidden = true; };
  xhr.send(form);
}

// ---- wiring ------------------------------------------------------------------------------------------------------
$("start").onclick = startLive;
$("record").onclick = toggleRecord;
$("stop").onclick = stopLive;
$("file").onchange = (e) => { if (e.target.files.length) upload(e.target.files[0]); e.target.value = ""; };
const drop = $("drop");
drop.ondragover = (e) => { e.preventDefault(); drop.classList.add("over"); };
drop.ondragleave = () => drop.classList.remove("over");
drop.ondrop = (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) upload(e.dataTransfer.files[0]);
};
drawRoll($("live-roll"), [], -LIVE_WINDOW_S, 0);
