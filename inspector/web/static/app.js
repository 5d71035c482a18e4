// The tviz web visualizer: wires the panels to the web server's API.
import { getJSON, postJSON, postTensors, postStream } from "./api.js";
import { heatmap, highlight, bars } from "./heatmap.js";

const $ = (id) => document.getElementById(id);
const state = {
  model: null, input: null, tokens: [], layer: 0, head: 0, selected: null,
  attention: null, mainMap: null, steps: null, stepIndex: 0, lastDump: null,
};

// -- helpers ------------------------------------------------------------------------------
function showError(err) {
  const box = $("error");
  box.hidden = false;
  box.textContent = `${err.code || "ERROR"}: ${err.message}`;
  $("status").textContent = "";
}
function clearError() { $("error").hidden = true; }

async function guarded(label, fn) {
  clearError();
  $("status").textContent = `${label}…`;
  const t0 = performance.now();
  try {
    await fn();
    $("status").textContent = `${label} · ${(performance.now() - t0).toFixed(0)} ms`;
  } catch (err) { showError(err); }
}

function currentInput() {
  return state.input || { prompt: $("prompt").value };
}

function tokenLabels() { return state.tokens.map((t) => t.text); }

function renderTokens() {
  const host = $("tokens");
  host.replaceChildren(...state.tokens.map((t, i) => {
    const el = document.createElement("span");
    el.className = "token" + (state.selected === i ? " selected" : "");
    el.textContent = t.text;
    el.title = `#${i} id ${t.id}`;
    el.dataset.index = i;
    el.addEventListener("click", () => selectToken(state.selected === i ? null : i));
    return el;
  }));
}

function selectToken(i) {
  state.selected = i;
  renderTokens();
  if (state.mainMap) highlight(state.mainMap, i);
}

function slice2d(t, head) {
  // (H, R, S) -> head's (R, S) view
  const [, R, S] = t.shape;
  return t.data.subarray(head * R * S, (head + 1) * R * S);
}

// -- panels -------------------------------------------------------------------------------
let attentionSeq = 0;
async function runAttention() {
  const input = currentInput();
  const seq = ++attentionSeq;
  const res = await postTensors("/api/inspect", { ...input, layers: [state.layer], taps: ["attn.pattern", "attn.scores", "attn.masked_scores"] });
  if (seq !== attentionSeq) return; // a newer request (another layer or head) superseded this one
  state.tokens = res.header.tokens;
  state.attention = res;
  state.lastDump = res;
  renderTokens();
  const p = res.tensors[`layers.${state.layer}.attn.pattern`];
  const host = $("attention-map");
  host.replaceChildren();
  const labels = tokenLabels();
  state.mainMap = heatmap(host, slice2d(p, state.head), p.shape[1], p.shape[2], {
    xLabels: labels, yLabels: labels, title: `layer ${state.layer} · head ${state.head} · softmax(QKᵀ/√d)`, range: [0, 1],
    onClick: (r) => selectToken(r),
  });
  if (state.selected != null && state.selected < labels.length) highlight(state.mainMap, state.selected);
  renderHeads(p);
  renderQK(res);
}

function renderHeads(p) {
  const host = $("head-grid");
  host.replaceChildren();
  const H = state.model.num_heads, K = state.model.num_kv_heads, g = H / K;
  for (let kv = 0; kv < K; kv++) {
    const group = document.createElement("div");
    group.className = "kv-group";
    group.dataset.kvHead = kv;
    const cap = document.createElement("span"); cap.className = "caption"; cap.textContent = `KV head ${kv}`;
    group.appendChild(cap);
    for (let h = kv * g; h < (kv + 1) * g; h++) {
      const cell = document.createElement("div");
      cell.className = "head-cell";
      cell.dataset.head = h;
      heatmap(cell, slice2d(p, h), p.shape[1], p.shape[2], { title: `head ${h}`, maxPx: 150, range: [0, 1] });
      cell.addEventListener("click", () => { $("head").value = h; state.head = h; switchTab("attention"); guarded("inspect", runAttention); });
      group.appendChild(cell);
    }
    host.appendChild(group);
  }
}

function renderQK(res) {
  const host = $("qk-maps");
  host.replaceChildren();
  const labels = tokenLabels();
  const names = [["attn.scores", "scaled scores QKᵀ/√d"], ["attn.masked_scores", "causal mask (−∞ above the diagonal)"], ["attn.pattern", "softmax"]];
  for (const [tap, title] of names) {
    const t = res.tensors[`layers.${state.layer}.${tap}`];
    heatmap(host, slice2d(t, state.head), t.shape[1], t.shape[2], { xLabels: labels, yLabels: labels, title: `${title} · L${state.layer} H${state.head}`, maxPx: 380 });
  }
}

async function runOverview() {
  const input = currentInput();
  const T = state.tokens.length || 1;
  const rows = [];
  const step = Math.max(1, Math.floor(T / 16));
  for (let r = T - 1; r >= 0 && rows.length < 16; r -= step) rows.push(r);
  const res = await postTensors("/api/inspect", { ...input, taps: ["attn.pattern"], query_rows: rows.sort((a, b) => a - b) });
  const L = state.model.num_layers, H = state.model.num_heads;
  const ent = new Float32Array(L * H);
  for (let l = 0; l < L; l++) {
    const t = res.tensors[`layers.${l}.attn.pattern`];
    const [, R, S] = t.shape;
    for (let h = 0; h < H; h++) {
      let sum = 0;
      for (let r = 0; r < R; r++) {
        let e = 0;
        for (let s = 0; s < S; s++) { const p = t.data[(h * R + r) * S + s]; if (p > 0) e -= p * Math.log(p); }
        sum += e;
      }
      ent[l * H + h] = sum / R;
    }
  }
  const host = $("overview-map");
  host.replaceChildren();
  heatmap(host, ent, L, H, {
    title: "entropy (layer × head)", cell: 18, yLabels: [...Array(L).keys()].map((l) => `L${l}`), xLabels: [...Array(H).keys()].map((h) => `H${h}`),
    format: (v) => `${v.toFixed(4)} nats`,
    onClick: (l, h) => { state.layer = l; state.head = h; $("layer").value = l; $("head").value = h; switchTab("attention"); guarded("inspect", runAttention); },
  });
}

async function runPE() {
  const length = Number($("pe-length").value), d = Number($("pe-d").value);
  const res = await postTensors("/api/pe", { length, d_model: d });
  const host = $("pe-maps");
  host.replaceChildren();
  const t = res.tensors;
  heatmap(host, t.sinusoidal.data, t.sinusoidal.shape[0], t.sinusoidal.shape[1], { title: `sinusoidal PE (${length} × ${d})`, maxPx: 420, diverging: true });
  heatmap(host, t.sinusoidal_similarity.data, length, length, { title: "sinusoidal: cosine similarity of positions", maxPx: 320 });
  heatmap(host, t.rope_similarity.data, length, length, { title: `RoPE (θ=${res.header.rope_theta}): mean cos((i−j)·f)`, maxPx: 320, diverging: true });
  heatmap(host, t.rope_cos.data, length, t.rope_cos.shape[1], { title: `RoPE cos table (${length} × ${res.header.head_dim})`, maxPx: 320, diverging: true });
  const freqs = Array.from(t.rope_inv_freq.data);
  const div = document.createElement("div");
  host.appendChild(div);
  bars(div, [{ name: "inverse frequency", values: freqs, color: "#5aa9e6" }], { width: 520, labels: freqs.map((_, i) => i), title: "RoPE frequencies θ^(−2i/d) per dimension pair (log scale)", logScale: true });
}

async function loadSteps() {
  const input = currentInput();
  const res = await postJSON("/api/steps", input);
  state.steps = res.states;
  state.tokens = res.tokens;
  renderTokens();
  const sel = $("step-layer");
  sel.replaceChildren(...[...Array(state.model.num_layers).keys()].map((l) => new Option(`layer ${l}`, l)));
  await showStep(0);
}

async function showStep(i) {
  if (!state.steps) return;
  i = Math.max(0, Math.min(state.steps.length - 1, i));
  state.stepIndex = i;
  const s = state.steps[i];
  $("step-name").textContent = s.name;
  $("step-desc").textContent = s.description;
  $("step-pos").textContent = `${i + 1} / ${state.steps.length} · shape [${s.shape.join(", ")}]`;
  const sum = s.summary;
  $("step-summary").innerHTML = `<tr><td>min ${sum.min.toPrecision(4)}</td><td>max ${sum.max.toPrecision(4)}</td><td>mean ${sum.mean.toPrecision(4)}</td><td>std ${sum.std.toPrecision(4)}</td><td>‖·‖ ${sum.norm.toPrecision(4)}</td></tr>`;
  const host = $("step-view");
  host.replaceChildren();
  const T = state.tokens.length;
  if (s.name === "logits") {
    bars(host, [{ name: "p", values: s.next_tokens.map((n) => n.p), color: "#f5b942" }], { width: 600, labels: s.next_tokens.map((n) => JSON.stringify(n.text)), title: "next-token probabilities (last position)" });
    return;
  }
  const headed = s.shape.length === 3;
  const body = { ...currentInput(), taps: [s.name] };
  if (headed && s.name.includes("attn.")) body.heads = s.shape[0] === state.model.num_heads ? [state.head] : [];
  const res = await postTensors("/api/inspect", body);
  const t = res.tensors[s.name];
  const labels = tokenLabels();
  if (headed) {
    const [H, R, C] = t.shape;
    const square = C === T;
    heatmap(host, t.data.subarray(0, R * C), R, C, { title: `${s.name}${H > 1 ? " · head 0 of " + H : " · head " + state.head}`, yLabels: labels, xLabels: square ? labels : null, maxPx: 640 });
  } else {
    const [R, C] = t.shape;
    heatmap(host, t.data, R, C, { title: s.name, yLabels: labels, maxPx: 900, diverging: true });
  }
}

async function runProfile() {
  const res = await postJSON("/api/profile", { ...currentInput(), repeats: 3 });
  const host = $("profile-view");
  host.replaceChildren();
  const p = document.createElement("p");
  p.textContent = `${res.num_tokens} tokens · forward ${res.total_ms.toFixed(1)} ms (median of ${res.repeats}) · embed ${res.embed_ms.toFixed(2)} ms · final norm + LM head ${res.head_ms.toFixed(2)} ms · ${res.threads} threads`;
  host.appendChild(p);
  bars(host, [
    { name: "attention ms", values: res.layers.map((l) => l.attention_ms), cls: "attn" },
    { name: "MLP ms", values: res.layers.map((l) => l.mlp_ms), cls: "mlp" },
  ], { labels: res.layers.map((l) => `L${l.layer}`), title: "per-layer latency: attention (blue) and MLP (amber), ms" });
}

const conversation = [];
async function runGenerate() {
  const text = $("gen-input").value;
  conversation.push({ role: "user", content: text });
  const log = $("gen-log");
  const u = document.createElement("div"); u.className = "user"; u.textContent = `user: ${text}`;
  const a = document.createElement("div"); a.className = "assistant"; a.textContent = "assistant: ";
  log.append(u, a);
  let first = null, tokens = 0, last = null, served = "", reply = "";
  const t0 = performance.now();
  await postStream("/api/generate", { messages: conversation, max_tokens: 128, no_cache: $("gen-nocache").checked }, (line) => {
    if (line.error) throw Object.assign(new Error(line.message), { code: line.error });
    if (line.served_by !== undefined) { served = line.served_by; return; }
    if (line.token_ids.length && first === null) first = performance.now() - t0;
    tokens += line.token_ids.length;
    reply += line.text;
    a.textContent = `assistant: ${reply}`;
    last = line;
  });
  conversation.push({ role: "assistant", content: reply });
  const elapsed = performance.now() - t0;
  const rate = tokens > 1 && first !== null ? (tokens - 1) / ((elapsed - first) / 1000) : 0;
  const hit = last && last.usage && last.usage.response_cache_hit;
  $("gen-stats").textContent = `TTFT ${first?.toFixed(0)} ms · ${tokens} tokens · ${rate.toFixed(1)} tokens/s · ${hit ? "cache hit" : "generated by " + served} · prefix-cached ${last?.usage?.cached_tokens ?? 0} tokens`;
  $("gen-inspect").disabled = false;
}

async function runCompare() {
  const a = { prompt: $("prompt").value }, b = { prompt: $("compare-b").value };
  const body = { layers: [state.layer], heads: [state.head], taps: ["attn.pattern"] };
  const [ra, rb] = await Promise.all([postTensors("/api/inspect", { ...a, ...body }), postTensors("/api/inspect", { ...b, ...body })]);
  const name = `layers.${state.layer}.attn.pattern`;
  const ta = ra.tensors[name], tb = rb.tensors[name];
  const n = Math.min(ta.shape[1], tb.shape[1]);
  const diff = new Float32Array(n * n);
  for (let r = 0; r < n; r++) for (let c = 0; c < n; c++) diff[r * n + c] = tb.data[r * tb.shape[2] + c] - ta.data[r * ta.shape[2] + c];
  const host = $("compare-maps");
  host.replaceChildren();
  const la = ra.header.tokens.map((t) => t.text), lb = rb.header.tokens.map((t) => t.text);
  heatmap(host, ta.data, ta.shape[1], ta.shape[2], { title: "A (prompt above)", xLabels: la, yLabels: la, range: [0, 1], maxPx: 320 });
  heatmap(host, tb.data, tb.shape[1], tb.shape[2], { title: "B", xLabels: lb, yLabels: lb, range: [0, 1], maxPx: 320 });
  heatmap(host, diff, n, n, { title: `B − A (first ${n} positions) · L${state.layer} H${state.head}`, xLabels: lb.slice(0, n).map((t, i) => (t === la[i] ? t : `${la[i]}→${t}`)), yLabels: lb.slice(0, n), diverging: true, maxPx: 320 });
}

// -- export -------------------------------------------------------------------------------
function download(name, blob) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob); a.download = name; a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}
function exportPNG() { state.mainMap?.canvas.toBlob((b) => download(`tviz-L${state.layer}-H${state.head}.png`, b)); }
function exportSVG() { if (state.mainMap) download(`tviz-L${state.layer}-H${state.head}.svg`, new Blob([state.mainMap.exportSVG()], { type: "image/svg+xml" })); }
function exportJSON() {
  if (!state.lastDump) return;
  const d = state.lastDump;
  const out = { tokens: d.header.tokens, layers: d.header.layers, heads: d.header.heads, digest: d.header.digest, tensors: {} };
  for (const [k, t] of Object.entries(d.tensors)) out.tensors[k] = { shape: t.shape, data: Array.from(t.data, (v) => (Number.isFinite(v) ? v : null)) };
  download("tviz-dump.json", new Blob([JSON.stringify(out)], { type: "application/json" }));
}

// -- wiring -------------------------------------------------------------------------------
function switchTab(name) {
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const s of document.querySelectorAll(".tab")) s.classList.toggle("active", s.id === `tab-${name}`);
  if (name === "overview" && state.model) guarded("overview", runOverview);
  if (name === "steps" && state.model && !state.steps) guarded("step-through", loadSteps);
  if (name === "pe" && state.model && !$("pe-maps").children.length) guarded("positional encodings", runPE);
}

async function init() {
  try {
    state.model = await getJSON("/api/model");
  } catch (err) { showError(err); return; }
  const m = state.model;
  $("model-info").textContent = `${m.name} · ${m.num_layers} layers · ${m.num_heads} heads (${m.num_kv_heads} KV) · d_model ${m.d_model} · weights ${m.digest.slice(0, 12)}…`;
  $("layer").replaceChildren(...[...Array(m.num_layers).keys()].map((l) => new Option(l, l)));
  $("head").replaceChildren(...[...Array(m.num_heads).keys()].map((h) => new Option(`${h} (kv ${Math.floor(h / (m.num_heads / m.num_kv_heads))})`, h)));
  $("layer").addEventListener("change", () => { state.layer = Number($("layer").value); guarded("inspect", runAttention); });
  $("head").addEventListener("change", () => { state.head = Number($("head").value); guarded("inspect", runAttention); });
  $("prompt").addEventListener("input", () => { state.input = null; state.steps = null; });
  $("run").addEventListener("click", () => { state.steps = null; guarded("inspect", runAttention); });
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => switchTab(b.dataset.tab));
  $("export-png").addEventListener("click", exportPNG);
  $("export-svg").addEventListener("click", exportSVG);
  $("export-json").addEventListener("click", exportJSON);
  $("pe-run").addEventListener("click", () => guarded("positional encodings", runPE));
  $("step-first").addEventListener("click", () => guarded("step", () => showStep(0)));
  $("step-prev").addEventListener("click", () => guarded("step", () => showStep(state.stepIndex - 1)));
  $("step-next").addEventListener("click", () => guarded("step", () => showStep(state.stepIndex + 1)));
  $("step-last").addEventListener("click", () => guarded("step", () => showStep(state.steps.length - 1)));
  $("step-layer").addEventListener("change", () => guarded("step", () => showStep(state.steps.findIndex((s) => s.layer === Number($("step-layer").value)))));
  $("profile-run").addEventListener("click", () => guarded("profile", runProfile));
  $("gen-send").addEventListener("click", () => guarded("generate", runGenerate));
  $("gen-inspect").addEventListener("click", () => {
    state.input = { messages: conversation.slice() };
    $("prompt").value = conversation.map((c) => `${c.role}: ${c.content}`).join("\n");
    state.steps = null;
    switchTab("attention");
    guarded("inspect", runAttention);
  });
  $("compare-run").addEventListener("click", () => guarded("compare", runCompare));
  document.addEventListener("keydown", (e) => {
    if (!$("tab-steps").classList.contains("active") || e.target.tagName === "TEXTAREA") return;
    if (e.key === "ArrowRight") guarded("step", () => showStep(state.stepIndex + 1));
    if (e.key === "ArrowLeft") guarded("step", () => showStep(state.stepIndex - 1));
  });
  await guarded("inspect", runAttention);
}

init();
