// Canvas heatmaps with DOM axis labels, exact values on hover, and PNG/SVG export.

const VIRIDIS = [[68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142], [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37]];
const DIVERGING = [[33, 102, 172], [103, 169, 207], [209, 229, 240], [247, 247, 247], [253, 219, 199], [239, 138, 98], [178, 24, 43]];

function lerpStops(stops, t) {
  if (!Number.isFinite(t)) return [20, 20, 24];
  t = Math.min(1, Math.max(0, t)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(t));
  const f = t - i;
  return stops[i].map((c, k) => Math.round(c + (stops[i + 1][k] - c) * f));
}

export function color(value, vmin, vmax, diverging = false) {
  return lerpStops(diverging ? DIVERGING : VIRIDIS, (value - vmin) / (vmax - vmin || 1));
}

export function finiteRange(data) {
  let lo = Infinity, hi = -Infinity;
  for (const v of data) { if (Number.isFinite(v)) { if (v < lo) lo = v; if (v > hi) hi = v; } }
  return lo === Infinity ? [0, 1] : [lo, hi];
}

const tooltip = () => document.getElementById("tooltip");

// data: Float32Array (rows × cols, row-major). Returns the host element.
export function heatmap(host, data, rows, cols, opts = {}) {
  const { xLabels = null, yLabels = null, title = "", cell = null, diverging = false, maxPx = 560, onClick = null, format = (v) => v.toFixed(6) } = opts;
  let [vmin, vmax] = opts.range || finiteRange(data);
  if (diverging) { const m = Math.max(Math.abs(vmin), Math.abs(vmax)); vmin = -m; vmax = m; }
  const size = cell || Math.max(1, Math.min(48, Math.floor(maxPx / Math.max(rows, cols))));
  const wrap = document.createElement("div");
  wrap.className = "heatmap";
  const t = document.createElement("div"); t.className = "title"; t.textContent = title; wrap.appendChild(t);
  const canvas = document.createElement("canvas");
  canvas.width = cols * size; canvas.height = rows * size;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(cols, rows);
  for (let i = 0; i < rows * cols; i++) {
    const [r, g, b] = color(data[i], vmin, vmax, diverging);
    img.data.set([r, g, b, 255], i * 4);
  }
  const off = new OffscreenCanvas(cols, rows);
  off.getContext("2d").putImageData(img, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(off, 0, 0, cols * size, rows * size);
  canvas.dataset.rows = rows; canvas.dataset.cols = cols; canvas.dataset.cell = size;
  const ylabels = document.createElement("div"); ylabels.className = "ylabels";
  const xlabels = document.createElement("div"); xlabels.className = "xlabels";
  if (yLabels) for (const [i, s] of yLabels.entries()) {
    const el = document.createElement("div"); el.className = "ylabel"; el.style.height = `${size}px`; el.style.lineHeight = `${size}px`;
    el.style.fontSize = `${Math.min(11, Math.max(6, size - 2))}px`; el.textContent = s; el.dataset.index = i; ylabels.appendChild(el);
  }
  if (xLabels) for (const [i, s] of xLabels.entries()) {
    const el = document.createElement("div"); el.className = "xlabel"; el.style.width = `${size}px`;
    el.style.fontSize = `${Math.min(11, Math.max(6, size - 2))}px`; el.textContent = s; el.dataset.index = i; xlabels.appendChild(el);
  }
  const legend = document.createElement("canvas");
  legend.className = "legend"; legend.width = 10; legend.height = Math.min(rows * size, 200);
  const lctx = legend.getContext("2d");
  for (let y = 0; y < legend.height; y++) {
    const [r, g, b] = color(vmax - (y / legend.height) * (vmax - vmin), vmin, vmax, diverging);
    lctx.fillStyle = `rgb(${r},${g},${b})`; lctx.fillRect(0, y, 10, 1);
  }
  legend.title = `${vmin.toPrecision(3)} … ${vmax.toPrecision(3)}`;
  wrap.append(ylabels, canvas, legend, document.createElement("div"), xlabels);
  canvas.addEventListener("mousemove", (e) => {
    const rect = canvas.getBoundingClientRect();
    const c = Math.floor((e.clientX - rect.left) / size), r = Math.floor((e.clientY - rect.top) / size);
    if (r < 0 || c < 0 || r >= rows || c >= cols) return;
    const v = data[r * cols + c];
    const tip = tooltip();
    tip.hidden = false;
    tip.dataset.row = r; tip.dataset.col = c; tip.dataset.value = String(v);
    const ql = yLabels ? JSON.stringify(yLabels[r]) : r, kl = xLabels ? JSON.stringify(xLabels[c]) : c;
    tip.textContent = `${ql} → ${kl}: ${Number.isFinite(v) ? format(v) : String(v)}`;
    tip.style.left = `${e.clientX + 12}px`; tip.style.top = `${e.clientY + 12}px`;
  });
  canvas.addEventListener("mouseleave", () => { tooltip().hidden = true; });
  if (onClick) canvas.addEventListener("click", (e) => {
    const rect = canvas.getBoundingClientRect();
    onClick(Math.floor((e.clientY - rect.top) / size), Math.floor((e.clientX - rect.left) / size));
  });
  wrap.exportSVG = () => toSVG(data, rows, cols, vmin, vmax, diverging, xLabels, yLabels, title);
  wrap.canvas = canvas;
  if (host) host.appendChild(wrap);
  return wrap;
}

export function highlight(wrap, index) {
  for (const el of wrap.querySelectorAll(".xlabel, .ylabel")) el.classList.toggle("hl", Number(el.dataset.index) === index);
  const canvas = wrap.canvas;
  const old = wrap.querySelector(".hl-overlay");
  if (old) old.remove();
  if (index == null) return;
  const size = Number(canvas.dataset.cell);
  const overlay = document.createElement("canvas");
  overlay.className = "hl-overlay";
  overlay.width = canvas.width; overlay.height = canvas.height;
  Object.assign(overlay.style, { position: "absolute", pointerEvents: "none" });
  const ctx = overlay.getContext("2d");
  ctx.strokeStyle = "#f5b942"; ctx.lineWidth = 2;
  ctx.strokeRect(0, index * size, canvas.width, size);
  ctx.strokeRect(index * size, 0, size, canvas.height);
  canvas.parentElement.style.position = "relative";
  overlay.style.left = `${canvas.offsetLeft}px`; overlay.style.top = `${canvas.offsetTop}px`;
  canvas.parentElement.appendChild(overlay);
}

function esc(s) { return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c])); }

export function toSVG(data, rows, cols, vmin, vmax, diverging, xLabels, yLabels, title) {
  const s = 14, left = yLabels ? 90 : 10, top = 20, bottom = xLabels ? 90 : 10;
  const parts = [`<svg xmlns="http://www.w3.org/2000/svg" width="${left + cols * s + 10}" height="${top + rows * s + bottom}">`,
    `<text x="${left}" y="14">${esc(title)}</text>`];
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) {
    const [R, G, B] = color(data[r * cols + c], vmin, vmax, diverging);
    parts.push(`<rect x="${left + c * s}" y="${top + r * s}" width="${s}" height="${s}" fill="rgb(${R},${G},${B})"><title>${data[r * cols + c]}</title></rect>`);
  }
  if (yLabels) yLabels.forEach((l, r) => parts.push(`<text x="${left - 4}" y="${top + r * s + 10}" text-anchor="end">${esc(l)}</text>`));
  if (xLabels) xLabels.forEach((l, c) => parts.push(`<text transform="translate(${left + c * s + 10},${top + rows * s + 4}) rotate(90)">${esc(l)}</text>`));
  parts.push("</svg>");
  return parts.join("");
}

// A simple SVG bar chart (profiler, RoPE frequencies, histograms).
export function bars(host, series, { width = 900, height = 220, labels = null, title = "", logScale = false } = {}) {
  const n = series[0].values.length;
  const total = (i) => series.reduce((a, s) => a + s.values[i], 0);
  let max = 0; for (let i = 0; i < n; i++) max = Math.max(max, total(i));
  const scale = (v) => (logScale ? Math.log10(1 + v) / Math.log10(1 + max) : v / (max || 1)) * (height - 40);
  const bw = (width - 50) / n;
  const parts = [`<svg class="bars" width="${width}" height="${height}"><text x="40" y="12">${esc(title)}</text>`];
  for (let i = 0; i < n; i++) {
    let y = height - 20;
    for (const s of series) {
      const h = scale(s.values[i]);
      y -= h;
      parts.push(`<rect class="${s.cls || ""}" x="${40 + i * bw}" y="${y}" width="${Math.max(1, bw - 1)}" height="${h}" fill="${s.color || ""}"><title>${esc(labels ? labels[i] : i)} ${esc(s.name)}: ${s.values[i].toFixed(3)}</title></rect>`);
    }
    if (labels && (n <= 40 || i % Math.ceil(n / 30) === 0)) parts.push(`<text x="${40 + i * bw}" y="${height - 6}">${esc(labels[i])}</text>`);
  }
  parts.push(`<text x="2" y="${height - 20}">0</text><text x="2" y="30">${max.toPrecision(3)}</text></svg>`);
  const div = document.createElement("div");
  div.innerHTML = parts.join("");
  host.appendChild(div);
  return div;
}
