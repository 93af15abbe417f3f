// Feature views: every view with its entity, TTL and features, and a
// lookup of one or several ids (each value with its status and event
// time), now or as of a past time.

import { api } from './api.js';
import { h, clear, card, table, badge, fmtNum, fmtTime, parseIds, setHashParams } from './dom.js';

// fmtValue shows a feature value as its type reads.
export function fmtValue(v, type) {
  if (v == null) return '—';
  if (Array.isArray(v)) return v.length ? v.join(', ') : '(empty)';
  if (type === 'timestamp_ms' && typeof v === 'number') return fmtTime(v);
  return fmtNum(v);
}

// toLocalInput turns Unix ms into the value of a datetime-local input read
// as UTC; fromInput does the reverse (NaN when empty or invalid).
const toInput = ms => new Date(ms).toISOString().slice(0, 19);
const fromInput = s => (s ? Date.parse(s + 'Z') : NaN);

export function mount(main, params) {
  const ctl = new AbortController();
  const viewSel = h('select', { id: 'fv-view', name: 'view' });
  const ids = h('textarea', { id: 'fv-ids', name: 'ids', rows: 2, placeholder: 'ids: one or several, separated by commas, spaces or lines', spellcheck: 'false' });
  const feats = h('input', { id: 'fv-features', name: 'features', placeholder: 'all features (or a list: view_count, cart_count)', spellcheck: 'false' });
  const asOf = h('input', { id: 'fv-asof', name: 'as_of', type: 'datetime-local', step: 1 });
  const result = h('div', { id: 'fv-result' });
  const viewsBox = h('div', { id: 'fv-views' }, h('p', { class: 'muted' }, 'Loading…'));
  let views = [];

  const form = h('form', { class: 'lookup', id: 'fv-form' },
    h('label', null, 'View', viewSel),
    h('label', { class: 'grow' }, 'Ids', ids),
    h('label', { class: 'grow' }, 'Features', feats),
    h('label', null, 'As of (UTC)', asOf,
      h('span', { class: 'row small' },
        h('button', { type: 'button', class: 'link', id: 'fv-asof-now', onclick: () => { asOf.value = ''; } }, 'now'),
        h('button', { type: 'button', class: 'link', id: 'fv-asof-newest', onclick: newest }, 'newest event'))),
    h('button', { type: 'submit', id: 'fv-submit' }, 'Look up'));
  form.addEventListener('submit', ev => { ev.preventDefault(); lookup(); });
  clear(main,
    h('div', { class: 'page-head' }, h('h1', null, 'Feature views')),
    card('Look up', form, result),
    viewsBox);

  async function newest() {
    try {
      const st = await api('/v1/stats', { signal: ctl.signal });
      if (Number(st.max_event_ts) > 0) asOf.value = toInput(Number(st.max_event_ts));
    } catch (e) {
      if (e.name !== 'AbortError' && !e.auth) window.recsysBanner(e.message);
    }
  }

  async function lookup() {
    const view = viewSel.value;
    const list = parseIds(ids.value);
    const fl = parseIds(feats.value);
    const t = fromInput(asOf.value);
    if (!list.length) { clear(result, h('p', { class: 'error' }, 'Enter at least one id.')); return; }
    if (list.length > 1000) { clear(result, h('p', { class: 'error' }, list.length + ' ids: at most 1000.')); return; }
    if (asOf.value && Number.isNaN(t)) { clear(result, h('p', { class: 'error' }, 'The as-of time is not a valid time.')); return; }
    setHashParams('features', { view, ids: list.join(','), features: fl.join(','), as_of: Number.isNaN(t) ? '' : t });
    clear(result, h('p', { class: 'muted' }, 'Loading…'));
    const body = { view, ids: list, features: fl };
    if (!Number.isNaN(t)) body.as_of = t;
    let resp;
    try {
      resp = await api('/v1/features:get', { method: 'POST', body, signal: ctl.signal });
    } catch (e) {
      if (e.name === 'AbortError' || e.auth) return;
      clear(result, h('p', { class: 'error', id: 'fv-error' }, e.message));
      return;
    }
    const v = views.find(x => x.name === view);
    const types = new Map((v ? v.features : []).map(f => [f.name, f.type]));
    const ents = resp.entities || [];
    clear(result,
      h('p', { class: 'muted' }, Number.isNaN(t) ? 'Read now.' : 'Read as of ' + fmtTime(t) + '.', ' ',
        ents.map(ent => [h('code', null, ent.id), ' ', summary(ent), ' '])),
      ents.length === 1 ? single(ents[0], types) : matrix(ents, types));
  }

  function summary(ent) {
    const counts = {};
    for (const f of ent.features) counts[f.status] = (counts[f.status] || 0) + 1;
    return Object.entries(counts).map(([s, n]) => badge(`${n} ${s}`, s));
  }

  const valueTitle = f => (Array.isArray(f.value) ? f.value.join(', ') : String(f.value ?? ''));

  // single: one id, one row per feature.
  function single(ent, types) {
    return h('div', { class: 'entity', dataset: { id: ent.id } }, table(['feature', 'value', 'status', 'event time'],
      ent.features.map(f => h('tr', { dataset: { feature: f.name } },
        h('td', null, f.name),
        h('td', { class: 'value', dataset: { id: ent.id, feature: f.name }, title: valueTitle(f) }, fmtValue(f.value, types.get(f.name))),
        h('td', { class: 'status', dataset: { id: ent.id, feature: f.name } }, badge(f.status)),
        h('td', { class: 'time', dataset: { id: ent.id, feature: f.name } }, fmtTime(f.event_time))))));
  }

  // matrix: several ids side by side, a row per feature; each cell has the
  // value, its status and event time.
  function matrix(ents, types) {
    const byName = ents.map(e => new Map(e.features.map(f => [f.name, f])));
    const names = ents.length ? ents[0].features.map(f => f.name) : [];
    return table(['feature', ...ents.map(e => h('code', null, e.id))],
      names.map(n => h('tr', { dataset: { feature: n } }, h('td', null, n), ents.map((e, i) => {
        const f = byName[i].get(n) || { value: null, status: 'not_found' };
        return h('td', { class: 'cell', dataset: { id: e.id, feature: n } },
          h('div', { class: 'value', title: valueTitle(f) }, fmtValue(f.value, types.get(n))),
          h('div', { class: 'small' }, h('span', { class: 'status' }, badge(f.status)), ' ', h('span', { class: 'time muted' }, fmtTime(f.event_time))));
      }))), { class: 'matrix' });
  }

  (async () => {
    try {
      const resp = await api('/v1/feature-views', { signal: ctl.signal });
      views = resp.views || [];
    } catch (e) {
      if (e.name !== 'AbortError' && !e.auth) clear(viewsBox, h('p', { class: 'error' }, e.message));
      return;
    }
    clear(viewSel, views.map(v => h('option', { value: v.name }, v.name)));
    clear(viewsBox, views.map(v => h('section', { class: 'card view', dataset: { view: v.name } },
      h('h2', null, v.name),
      h('p', { class: 'muted' }, 'entity ', h('b', null, v.entity), ' · id ', h('code', null, v.id_column), ' · TTL ', h('b', null, v.ttl || '—'),
        ' · ', String(v.features.length), ' features'),
      table(['feature', 'type', 'aggregation', 'window', 'as of', 'description'],
        v.features.map(f => [h('code', null, f.name), f.type, f.aggregation, f.window || 'lifetime', f.versioned ? 'yes' : 'no', f.description || ''])))));
    if (params.get('view') && views.some(v => v.name === params.get('view'))) viewSel.value = params.get('view');
    if (params.get('features')) feats.value = params.get('features').split(',').join(', ');
    const a = Number(params.get('as_of'));
    if (a > 0) asOf.value = toInput(a);
    main.dataset.ready = '1';
    if (params.get('ids')) {
      ids.value = params.get('ids').split(',').join(', ');
      await lookup();
    }
  })();
  return () => ctl.abort();
}
