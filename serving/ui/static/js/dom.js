// Small DOM and formatting helpers. Text goes in as text nodes only (never
// innerHTML), so ids and reasons from the API cannot inject markup.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'value' || k === 'checked' || k === 'disabled' || k === 'selected' || k === 'hidden') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const c of [children].flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

export function clear(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

// table builds a table with a header row and body rows (arrays of cells).
export function table(head, rows, attrs = {}) {
  return h('div', { class: 'table-wrap' },
    h('table', attrs,
      h('thead', null, h('tr', null, head.map(c => h('th', null, c)))),
      h('tbody', null, rows.map(r => (r instanceof Node ? r : h('tr', null, r.map(c => (c instanceof Node && c.tagName === 'TD' ? c : h('td', null, c)))))))));
}

export function card(title, ...children) {
  return h('section', { class: 'card' }, title ? h('h2', null, title) : null, ...children);
}

// Numbers as people read them.
const intFmt = new Intl.NumberFormat('en-US');
export function fmtInt(v) {
  if (v == null || v === '') return '—';
  const n = Number(v);
  return Number.isFinite(n) ? intFmt.format(n) : String(v);
}

// fmtNum shows a number with up to 6 significant digits (integers whole).
export function fmtNum(v) {
  if (v == null) return '—';
  if (typeof v !== 'number') return String(v);
  if (!Number.isFinite(v)) return String(v);
  if (Number.isInteger(v)) return String(v);
  return String(Number(v.toPrecision(6)));
}

export function fmtRate(v) {
  if (v == null || !Number.isFinite(v)) return '—';
  if (v >= 100) return intFmt.format(Math.round(v));
  return v.toFixed(1);
}

export function fmtSeconds(s) {
  if (s == null || !Number.isFinite(s)) return '—';
  if (s < 0.001) return (s * 1e6).toFixed(0) + ' µs';
  if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 2 : 1) + ' ms';
  if (s < 120) return s.toFixed(2) + ' s';
  if (s < 7200) return (s / 60).toFixed(1) + ' min';
  return (s / 3600).toFixed(1) + ' h';
}

export function fmtBytes(b) {
  if (b == null || !Number.isFinite(b)) return '—';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return (i ? b.toFixed(1) : String(b)) + ' ' + u[i];
}

// fmtTime shows a time (RFC 3339 string, Date or Unix ms) in UTC to the
// second: 2017-12-03 10:00:00Z.
export function fmtTime(t) {
  if (t == null || t === '' || t === 0 || t === '0') return '—';
  const d = t instanceof Date ? t : new Date(typeof t === 'string' && /^\d+$/.test(t) ? Number(t) : t);
  if (Number.isNaN(d.getTime())) return String(t);
  return d.toISOString().slice(0, 19).replace('T', ' ') + 'Z';
}

// parseIds splits a list of ids typed by a person: commas, spaces or lines.
export function parseIds(text) {
  return [...new Set(String(text).split(/[\s,]+/).filter(Boolean))];
}

export function badge(text, kind) {
  return h('span', { class: 'badge badge-' + (kind || text) }, text);
}

// Query parameters of the hash route (#/page?a=1&b=2).
export function hashParams() {
  const q = location.hash.split('?')[1] || '';
  return new URLSearchParams(q);
}

export function setHashParams(page, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== '' && v != null && v !== false) q.set(k, v === true ? '1' : v);
  const s = q.toString();
  const want = '#/' + page + (s ? '?' + s : '');
  if (location.hash !== want) history.replaceState(null, '', want);
}
