// Talking to the tviz web server: JSON in, JSON or binary tensors out, errors as messages.

export class ApiError extends Error {
  constructor(code, message) { super(message); this.code = code; }
}

async function check(res) {
  if (res.ok) return res;
  let body = {};
  try { body = await res.json(); } catch { /* not JSON */ }
  throw new ApiError(body.error || `HTTP ${res.status}`, body.message || res.statusText);
}

export async function getJSON(path) {
  return (await check(await fetch(path))).json();
}

export async function postJSON(path, body) {
  const res = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  return (await check(res)).json();
}

// The binary container: "TVIZ", u32 header length, JSON header, float32 tensors.
export async function postTensors(path, body) {
  const res = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const buf = await (await check(res)).arrayBuffer();
  const magic = new TextDecoder().decode(new Uint8Array(buf, 0, 4));
  if (magic !== "TVIZ") throw new ApiError("BAD_RESPONSE", "not a tviz tensor container");
  const headerLen = new DataView(buf).getUint32(4, true);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 8, headerLen)));
  const base = 8 + headerLen;
  const tensors = {};
  for (const t of header.tensors) {
    tensors[t.name] = { name: t.name, layer: t.layer, shape: t.shape, data: new Float32Array(buf, base + t.offset, t.length) };
  }
  return { header, tensors };
}

// Newline-delimited JSON, handed over line by line as it streams.
export async function postStream(path, body, onLine) {
  const res = await check(await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) }));
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let pending = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    pending += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = pending.indexOf("\n")) >= 0) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      if (line.trim()) onLine(JSON.parse(line));
    }
  }
}
