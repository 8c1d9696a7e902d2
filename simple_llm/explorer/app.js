// simple_llm explorer: the page over the JSON API of simple_llm/explore.py. Plain JavaScript and SVG.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const state = { info: null, analysis: null, position: 0, layer: 0, head: 0, controller: null, inflight: null, lastPrompt: null };

async function api(path, body, signal) {
  const options = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal };
  const response = await fetch(path, options);
  const value = await response.json();
  if (!response.ok) throw new Error(value.error || response.statusText);
  return value;
}

function weightsOf(packed, n) {  // a head's weights as sent with encoding "u8": n x n bytes, round(255 w)
  const bytes = Uint8Array.from(atob(packed), (c) => c.charCodeAt(0));
  return Array.from({ length: n }, (_, q) => Array.from(bytes.subarray(q * n, (q + 1) * n), (b) => b / 255));
}

function svg(tag, attrs, parent) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (parent) parent.appendChild(el);
  return el;
}

function shown(text) {  // a token as a reader should see it: whitespace made visible
  return text.replace(/ /g, "\u2423").replace(/\n/g, "\u21b5");
}

function debounce(fn, ms) {
  let timer = null;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

// prompt -> analysis -----------------------------------------------------------------------------

async function analyze() {
  // Only what the page draws is asked for: one layer, one head at full size (u8), thumbnails of the
  // others, the candidates and lens of the selected position. A newer request aborts the one before,
  // and the server stops reading a prompt nobody waits for.
  const prompt = $("prompt").value;
  if (!prompt) { $("tokens").replaceChildren(); return; }
  if (state.inflight) state.inflight.abort();
  const controller = new AbortController();
  state.inflight = controller;
  const temperature = Math.max(0.05, Number($("temperature").value) || 1);
  const samePrompt = state.analysis && state.lastPrompt === prompt;
  const body = { prompt, top_k: Math.min(state.info.vocab_size, 20), temperature, layers: [state.layer], heads: [state.head],
                 positions: [samePrompt ? state.position : -1], encoding: "u8", thumbnails: 40 };  // -1: the last token
  try {
    const result = await api("/api/analyze", body, controller.signal);
    state.analysis = result;
    state.lastPrompt = prompt;
    state.position = samePrompt ? state.position : result.tokens.length - 1;
    $("status").textContent = result.cropped ? `The prompt is longer than the context: its last ${state.info.n_ctx} tokens are shown.` : "";
    drawAll();
  } catch (error) {
    if (error.name !== "AbortError") $("status").textContent = error.message;
  } finally {
    if (state.inflight === controller) state.inflight = null;
  }
}

function drawAll() {
  drawTokens();
  drawCandidates();
  drawAttention();
  drawLens();
}

function drawTokens() {
  const { tokens, positions } = state.analysis;
  const chips = tokens.map((t, i) => {
    const chip = document.createElement("span");
    chip.className = "token" + (i === state.position ? " selected" : "");
    chip.dataset.id = t.id;
    chip.dataset.position = i;
    chip.textContent = shown(t.text);
    const p = i > 0 ? positions[i - 1].prob_of_next : null;  // how likely the model found this token
    chip.title = `id ${t.id}` + (p === null ? "" : `, probability ${p.toFixed(4)}`);
    const surprise = p === null ? 0 : 1 - p;
    chip.style.background = `rgba(224, 83, 28, ${(0.8 * surprise).toFixed(3)})`;
    chip.addEventListener("click", () => { state.position = i; drawTokens(); analyze(); });
    return chip;
  });
  $("tokens").replaceChildren(...chips);
  $("position").textContent = `${state.position} (${shown(tokens[state.position].text)})`;
}

function drawCandidates() {
  const top = state.analysis.positions[state.position].top;
  if (!top) return;  // the answer for another position: the one for this one is on its way
  const k = Number($("top-k").value) || 0;
  const p = Number($("top-p").value) || 1;
  let total = 0;
  const rows = top.map((c, rank) => {
    const before = total;
    total += c.prob;
    const filtered = (k > 0 && rank >= k) || (p < 1 && before >= p);
    const row = document.createElement("div");
    row.className = "candidate" + (filtered ? " filtered" : "");
    row.dataset.id = c.id;
    row.dataset.prob = c.prob;
    const label = document.createElement("span");
    label.textContent = shown(c.text);
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${(100 * c.prob).toFixed(2)}%`;
    const value = document.createElement("span");
    value.textContent = c.prob.toFixed(3) + (filtered ? " (out)" : "");
    row.append(label, bar, value);
    return row;
  });
  $("candidates").replaceChildren(...rows);
  $("candidates").dataset.position = state.position;  // whose candidates these are
}

function picture(target, weights, size) {  // weights (rows of numbers in [0, 1]) as one image: any T
  const n = weights.length;
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = n;
  const context = canvas.getContext("2d");
  const image = context.createImageData(n, n);
  weights.forEach((row, q) => row.forEach((w, k) => {
    const at = 4 * (q * n + k), masked = k > q;
    image.data.set(masked ? [238, 238, 238, 255] : [Math.round(255 - 200 * w), Math.round(255 - 150 * w), 255, 255], at);
  }));
  context.putImageData(image, 0, 0);
  svg("image", { href: canvas.toDataURL(), width: size, height: size, preserveAspectRatio: "none", style: "image-rendering: pixelated" }, target);
}

function heatmap(target, weights, labels) {  // the selected head: a cell per weight while they stay readable
  const T = weights.length;
  target.replaceChildren();
  if (T > 64) {  // a long prompt: one image, and the weight under the pointer
    target.setAttribute("viewBox", "0 0 512 512");
    picture(target, weights, 512);
    target.onmousemove = (event) => {
      const box = target.getBoundingClientRect();
      const q = Math.floor((event.clientY - box.top) / box.height * T), k = Math.floor((event.clientX - box.left) / box.width * T);
      if (q >= 0 && q < T && k >= 0 && k < T) $("weight").textContent = `query ${q} ${shown(labels[q])} → key ${k} ${shown(labels[k])}: ${k > q ? "masked (future)" : weights[q][k].toFixed(4)}`;
    };
    return;
  }
  target.onmousemove = null;
  const cell = Math.max(8, Math.min(28, Math.floor(440 / T))), margin = 70, size = margin + cell * T;
  target.setAttribute("viewBox", `0 0 ${size + 4} ${size + 4}`);
  const defs = svg("defs", {}, target);
  const hatch = svg("pattern", { id: "future", width: 6, height: 6, patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" }, defs);
  svg("rect", { width: 6, height: 6, fill: "#eee" }, hatch);
  svg("line", { x1: 0, y1: 0, x2: 0, y2: 6, stroke: "#bbb", "stroke-width": 3 }, hatch);
  for (let q = 0; q < T; q++) {
    for (let k = 0; k < T; k++) {
      const w = weights[q][k];
      const masked = k > q;
      const fill = masked ? "url(#future)" : `rgb(${Math.round(255 - 200 * w)}, ${Math.round(255 - 150 * w)}, 255)`;
      const rect = svg("rect", { x: margin + k * cell, y: margin + q * cell, width: cell, height: cell, fill, class: masked ? "masked" : "weight" }, target);
      rect.dataset.weight = w;
      const note = masked ? "masked (future)" : w.toFixed(4);
      svg("title", {}, rect).textContent = `query ${q} ${shown(labels[q])} → key ${k} ${shown(labels[k])}: ${note}`;
      rect.addEventListener("mouseenter", () => { $("weight").textContent = `query ${q} → key ${k}: ${note}`; });
    }
  }
  labels.forEach((label, i) => {
    svg("text", { x: margin - 4, y: margin + i * cell + cell * 0.7, "text-anchor": "end" }, target).textContent = shown(label).slice(0, 8);
    svg("text", { x: margin + i * cell + cell * 0.7, y: margin - 4, transform: `rotate(-90 ${margin + i * cell + cell * 0.7} ${margin - 4})` }, target).textContent = shown(label).slice(0, 8);
  });
}

function drawAttention() {
  const { attention, thumbnails, tokens } = state.analysis;
  const layer = attention[state.layer], thumbs = thumbnails[state.layer];
  if (!layer || !layer[state.head]) return;  // the answer to an older choice: a new one is on its way
  const labels = tokens.map((t) => t.text);
  heatmap($("attention"), weightsOf(layer[state.head], labels.length), labels);
  const n = Math.round(Math.sqrt(atob(thumbs[0]).length));
  const small = thumbs.map((packed, h) => {
    const el = svg("svg", { class: h === state.head ? "selected" : "", viewBox: "0 0 80 80" });
    svg("title", {}, el).textContent = `head ${h}`;
    picture(el, weightsOf(packed, n), 80);
    el.addEventListener("click", () => { $("head").value = h; state.head = h; analyze(); });
    return el;
  });
  $("heads").replaceChildren(...small);
}

function drawLens() {
  const { logit_lens: lens, token_texts: texts } = state.analysis;
  const head = document.createElement("tr");
  for (const name of ["after", "top predictions (probability)"]) {
    const th = document.createElement("th");
    th.textContent = name;
    head.appendChild(th);
  }
  const rows = lens.map((layer, l) => {
    const tr = document.createElement("tr");
    const name = document.createElement("td");
    name.textContent = l === 0 ? "embedding" : `block ${l - 1}`;
    const top = document.createElement("td");
    top.textContent = (layer[state.position] || []).map((c) => `${shown(texts[c.id])} ${c.prob.toFixed(2)}`).join("   ");
    tr.append(name, top);
    return tr;
  });
  $("lens").replaceChildren(head, ...rows);
}

// generation, streamed ---------------------------------------------------------------------------

async function generate() {
  const controller = new AbortController();
  state.controller = controller;
  $("generate").disabled = true;
  $("stop").disabled = false;
  $("generated").replaceChildren();
  const t = Number($("temperature").value) || 0;
  const body = {
    prompt: $("prompt").value,
    max_new_tokens: Number($("max-new-tokens").value) || 20,
    temperature: t < 0.05 ? 0 : t,
    top_k: Number($("top-k").value) || null,
    top_p: Number($("top-p").value) < 1 ? Number($("top-p").value) : null,
    seed: Math.floor(Math.random() * 1e9),
  };
  try {
    const response = await fetch("/api/generate/stream", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal: controller.signal });
    if (!response.ok) throw new Error((await response.json()).error);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let pending = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      pending += decoder.decode(value, { stream: true });
      const lines = pending.split("\n");
      pending = lines.pop();
      for (const line of lines.filter(Boolean)) {
        const token = JSON.parse(line);
        const span = document.createElement("span");
        span.className = "gen-token";
        span.dataset.id = token.id;
        span.textContent = token.text;
        $("generated").appendChild(span);
        $("prompt").value += token.text;
      }
    }
  } catch (error) {
    if (error.name !== "AbortError") $("status").textContent = error.message;
  } finally {
    $("generate").disabled = false;
    $("stop").disabled = true;
    state.controller = null;
    analyze();
  }
}

// the training log -------------------------------------------------------------------------------

function ticks(lo, hi, count) {  // round values (1, 2 or 5 times a power of ten) spanning [lo, hi]
  const raw = Math.max(hi - lo, 1e-9) / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
  const values = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) values.push(Number(v.toPrecision(12)));
  return values;
}

async function drawLog() {
  const rows = await api("/api/log");
  if (!rows.length) return;
  $("training-view").hidden = false;
  const chart = $("loss-chart");
  chart.replaceChildren();
  const width = 800, height = 260, left = 60, right = 20, top = 24, bottom = 44;
  chart.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const steps = rows.map((r) => r.step), losses = rows.flatMap((r) => [r.train_loss, r.val_loss]).filter((v) => v !== null);
  const s0 = Math.min(...steps), s1 = Math.max(s0 + 1, Math.max(...steps));
  const lo = Math.min(...losses), hi = Math.max(lo + 1e-6, Math.max(...losses));
  const x = (s) => left + (width - left - right) * (s - s0) / (s1 - s0);
  const y = (v) => height - bottom - (height - top - bottom) * (v - lo) / (hi - lo);
  // axes, with round tick values and their grid lines
  svg("line", { x1: left, y1: height - bottom, x2: width - right, y2: height - bottom, class: "axis" }, chart);
  svg("line", { x1: left, y1: top, x2: left, y2: height - bottom, class: "axis" }, chart);
  for (const v of ticks(s0, s1, 8)) {
    svg("line", { x1: x(v), y1: top, x2: x(v), y2: height - bottom, class: "grid" }, chart);
    svg("text", { x: x(v), y: height - bottom + 16, "text-anchor": "middle", class: "tick-x" }, chart).textContent = String(v);
  }
  for (const v of ticks(lo, hi, 5)) {
    svg("line", { x1: left, y1: y(v), x2: width - right, y2: y(v), class: "grid" }, chart);
    svg("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end", class: "tick-y" }, chart).textContent = String(v);
  }
  svg("text", { x: (left + width - right) / 2, y: height - 6, "text-anchor": "middle", class: "axis-title" }, chart).textContent = "step";
  svg("text", { x: 14, y: (top + height - bottom) / 2, "text-anchor": "middle", transform: `rotate(-90 14 ${(top + height - bottom) / 2})`, class: "axis-title" }, chart).textContent = "loss (nats)";
  const series = [["train_loss", "#4a78c2", (r) => r.val_loss === null, "training (one batch)"], ["train_loss", "#1b3f85", (r) => r.val_loss !== null, "training (estimate)"], ["val_loss", "#e0531c", (r) => r.val_loss !== null, "validation"]];
  let legend = left + 10;
  for (const [key, colour, keep, name] of series) {
    const points = rows.filter(keep).map((r) => `${x(r.step).toFixed(1)},${y(r[key]).toFixed(1)}`);
    if (!points.length) continue;
    svg("polyline", { points: points.join(" "), fill: "none", stroke: colour, "stroke-width": 2, class: "series" }, chart);
    svg("text", { x: legend, y: 16, fill: colour }, chart).textContent = name;
    legend += 8 * name.length + 24;
  }
}

// start ------------------------------------------------------------------------------------------

async function start() {
  state.info = await api("/api/model");
  const i = state.info;
  $("model-info").textContent = `${i.n_layer} layers, ${i.n_head} heads, ${i.n_embd} channels, ${i.vocab_size} tokens (${i.tokenizer}), context ${i.n_ctx}`;
  const options = (n, name) => Array.from({ length: n }, (_, k) => { const o = document.createElement("option"); o.value = k; o.textContent = `${name} ${k}`; return o; });
  $("layer").replaceChildren(...options(i.n_layer, "layer"));
  $("head").replaceChildren(...options(i.n_head, "head"));
  $("layer").addEventListener("change", () => { state.layer = Number($("layer").value); analyze(); });
  $("head").addEventListener("change", () => { state.head = Number($("head").value); analyze(); });
  $("prompt").addEventListener("input", debounce(analyze, 250));
  $("temperature").addEventListener("input", debounce(analyze, 150));
  $("top-k").addEventListener("input", () => state.analysis && drawCandidates());
  $("top-p").addEventListener("input", () => state.analysis && drawCandidates());
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  drawLog();
  setInterval(drawLog, 5000);
  if (!$("prompt").value) $("prompt").value = i.example;  // every panel shows something from the start
  analyze();
}

start();
