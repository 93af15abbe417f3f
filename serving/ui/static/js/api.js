// The console's only data source: the REST API of the server that serves
// it, called with the bearer token kept in this tab's sessionStorage.

const TOKEN_KEY = 'recsys.token';
// A server without a token file takes calls without one; the choice is
// remembered for the tab, like a token.
const OPEN_KEY = 'recsys.open';

export const auth = {
  get token() { return sessionStorage.getItem(TOKEN_KEY) || ''; },
  get open() { return sessionStorage.getItem(OPEN_KEY) === '1'; },
  get chosen() { return this.token !== '' || this.open; },
  useToken(t) { sessionStorage.setItem(TOKEN_KEY, t); sessionStorage.removeItem(OPEN_KEY); },
  useOpen() { sessionStorage.removeItem(TOKEN_KEY); sessionStorage.setItem(OPEN_KEY, '1'); },
  clear() { sessionStorage.removeItem(TOKEN_KEY); sessionStorage.removeItem(OPEN_KEY); },
};

export class ApiError extends Error {
  constructor(status, code, message, path) {
    super(message);
    this.status = status; // HTTP status; 0 when the server did not answer
    this.code = code;     // gRPC code of the JSON error body, when there is one
    this.path = path;
  }
  get auth() { return this.status === 401 || this.status === 403; }
}

// Called with an ApiError on a 401 or 403 unless the call allows it.
let onAuthError = () => {};
export function setAuthErrorHandler(f) { onAuthError = f; }

function headers(extra) {
  const h = { ...extra };
  const t = auth.token;
  if (t) h.Authorization = 'Bearer ' + t;
  return h;
}

// api calls a JSON route. opts: method, body (an object, sent as JSON),
// signal, allow (HTTP statuses the caller handles itself: no login screen),
// token (use this token instead of the stored one).
export async function api(path, opts = {}) {
  const init = { method: opts.method || 'GET', cache: 'no-store', signal: opts.signal, headers: headers() };
  if (opts.token !== undefined) {
    if (opts.token) init.headers.Authorization = 'Bearer ' + opts.token;
    else delete init.headers.Authorization;
  }
  if (opts.body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(opts.body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 14, 'the server does not answer (' + e.message + ')', path);
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!res.ok) {
    const msg = (data && typeof data.message === 'string' && data.message) || text.slice(0, 300) || res.statusText;
    const err = new ApiError(res.status, data && data.code, msg, path);
    if (err.auth && !(opts.allow || []).includes(res.status)) onAuthError(err);
    throw err;
  }
  return data;
}

// metrics fetches /metrics (open) and parses the Prometheus text format
// into a map from metric name to [{labels, value}]; null when the server
// has no metrics.
export async function metrics(signal) {
  let res;
  try {
    res = await fetch('/metrics', { cache: 'no-store', signal, headers: headers() });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    return null;
  }
  if (!res.ok) return null;
  return parseProm(await res.text());
}

const lineRe = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)/;
const labelRe = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

export function parseProm(text) {
  const out = new Map();
  for (const line of text.split('\n')) {
    if (!line || line[0] === '#') continue;
    const m = lineRe.exec(line);
    if (!m) continue;
    const labels = {};
    if (m[2]) for (const l of m[2].matchAll(labelRe)) labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
    const v = m[3] === '+Inf' ? Infinity : m[3] === '-Inf' ? -Infinity : Number(m[3]);
    if (!out.has(m[1])) out.set(m[1], []);
    out.get(m[1]).push({ labels, value: v });
  }
  return out;
}

// sample returns the value of metric name whose labels include want (the
// sum of all such samples), or null when there is none.
export function sample(prom, name, want = {}) {
  const rows = prom && prom.get(name);
  if (!rows) return null;
  let sum = null;
  for (const r of rows) {
    if (Object.entries(want).every(([k, v]) => r.labels[k] === v)) sum = (sum || 0) + r.value;
  }
  return sum;
}

// buckets returns the cumulative buckets [[le, count], ...] of histogram
// name, sorted by le, or null.
export function buckets(prom, name) {
  const rows = prom && prom.get(name + '_bucket');
  if (!rows) return null;
  return rows.map(r => [r.labels.le === '+Inf' ? Infinity : Number(r.labels.le), r.value]).sort((a, b) => a[0] - b[0]);
}

// quantile estimates quantile q of the observations between two snapshots
// of a histogram's buckets (prev may be null: since the start), as
// Prometheus' histogram_quantile does; null without observations.
export function quantile(q, cur, prev) {
  if (!cur) return null;
  const d = cur.map(([le, c], i) => [le, c - (prev && prev[i] && prev[i][0] === le ? prev[i][1] : 0)]);
  const total = d.length ? d[d.length - 1][1] : 0;
  if (!(total > 0)) return null;
  const rank = q * total;
  let lowerLe = 0, lowerCount = 0;
  for (const [le, c] of d) {
    if (c >= rank) {
      if (le === Infinity) return lowerLe;
      if (c === lowerCount) return le;
      return lowerLe + (le - lowerLe) * (rank - lowerCount) / (c - lowerCount);
    }
    lowerLe = le; lowerCount = c;
  }
  return lowerLe;
}

// path escapes one id as a URL path segment ('/' as %2F).
export const seg = id => encodeURIComponent(id);
