// Overview: the stream's progress, freshness and the models, polled every
// second. The series are kept for the tab (the last 5 minutes), so coming
// back to the page shows them again.

import { api, metrics, sample, buckets, quantile } from './api.js';
import { h, clear, card, table, fmtInt, fmtRate, fmtSeconds, fmtBytes, fmtTime, fmtNum } from './dom.js';
import { lineChart } from './chart.js';

const POLL_MS = 1000;
const KEEP = 300; // samples: 5 minutes at 1 s
const WINDOW_S = 60; // freshness percentiles of the tiles: the last minute
const DEAD_EVERY = 5; // ticks between dead-letter reads

const names = ['t', 'inRate', 'appliedRate', 'lag', 'p50', 'p99', 'maxTs', 'wm', 'auc', 'pauc', 'll', 'pll'];
const S = Object.fromEntries(names.map(n => [n, []]));
let last = null; // {t, stats}
let hist = [];   // [{t, buckets}] of the freshness histogram, the last WINDOW_S seconds
let dead = null; // {byCode: Map, sampled, total} or {forbidden: true}
let tick = 0;

function push(row) {
  for (const n of names) {
    S[n].push(row[n] ?? null);
    if (S[n].length > KEEP) S[n].shift();
  }
}

// utcClock shows an event time (Unix s) as UTC, with the year when it is not this one's.
const utcClock = v => {
  const s = new Date(v * 1000).toISOString();
  return (s.slice(0, 4) === String(new Date().getUTCFullYear()) ? s.slice(5, 19) : s.slice(0, 16)).replace('T', ' ');
};

export function mount(main) {
  const ctl = new AbortController();
  const tiles = {};
  const tile = (key, label, sub, wide) => {
    const value = h('span', { class: 'tile-value', dataset: { stat: key } }, '—');
    const subEl = h('span', { class: 'tile-sub', dataset: { statSub: key } }, sub || '');
    tiles[key] = { value, sub: subEl };
    return h('div', { class: wide ? 'tile wide' : 'tile' }, h('span', { class: 'tile-label' }, label), value, subEl);
  };
  const grid = h('div', { class: 'tiles' },
    tile('in_rate', 'Events in /s', 'records appended to the log'),
    tile('applied_rate', 'Applied /s', 'events applied to the store'),
    tile('lag', 'Lag', 'records not yet applied'),
    tile('fresh_p50', 'Freshness p50', 'ack → readable, last minute'),
    tile('fresh_p99', 'Freshness p99', 'ack → readable, last minute'),
    tile('watermark', 'Watermark (UTC)', '', true),
    tile('events_applied', 'Events applied', ''),
    tile('users', 'Users', 'with features'),
    tile('items', 'Items', 'with features'),
    tile('disk', 'Store on disk', ''),
    tile('dead_letters', 'Dead letters', 'kept'),
  );
  const charts = h('div', { class: 'charts' });
  const modelsBox = h('div', null, h('p', { class: 'muted' }, 'Loading…'));
  const deadBox = h('div', null, h('p', { class: 'muted' }, 'Loading…'));
  const rejectBox = h('div');
  clear(main,
    h('div', { class: 'page-head' }, h('h1', null, 'Overview'), h('span', { class: 'muted', id: 'ov-updated' }, '')),
    grid,
    charts,
    card('Models', modelsBox),
    h('div', { class: 'cols' },
      card('Dead letters by reason', deadBox),
      card('Rejected at ingest since start, by code', rejectBox)));

  const rate = v => fmtRate(v);
  const cs = [
    lineChart(charts, { title: 'Events /s', series: [{ label: 'in' }, { label: 'applied' }], fmt: rate }),
    lineChart(charts, { title: 'Lag (records)', series: [{ label: 'lag' }], fmt: v => fmtInt(Math.round(v)) }),
    lineChart(charts, { title: 'Freshness (ack → readable)', series: [{ label: 'p50' }, { label: 'p99' }], fmt: fmtSeconds }),
    lineChart(charts, { title: 'Event time (UTC)', series: [{ label: 'newest event' }, { label: 'watermark' }], fmt: utcClock, ySize: 112 }),
    lineChart(charts, { title: 'Ranker rolling AUC', series: [{ label: 'training' }, { label: 'published' }], fmt: v => v.toFixed(4) }),
    lineChart(charts, { title: 'Ranker rolling log loss', series: [{ label: 'training' }, { label: 'published' }], fmt: v => v.toFixed(4) }),
  ];
  const draw = () => {
    const t = S.t;
    cs[0].set([t, S.inRate, S.appliedRate]);
    cs[1].set([t, S.lag]);
    cs[2].set([t, S.p50, S.p99]);
    cs[3].set([t, S.maxTs, S.wm]);
    cs[4].set([t, S.auc, S.pauc]);
    cs[5].set([t, S.ll, S.pll]);
  };
  if (S.t.length) draw();

  let busy = false;
  const poll = async () => {
    if (busy || document.hidden) return;
    busy = true;
    try {
      await once(ctl.signal, tiles, modelsBox, deadBox, rejectBox, () => {
        draw();
        document.getElementById('ov-updated').textContent = 'updated ' + new Date().toLocaleTimeString();
        main.dataset.ready = '1';
        window.recsysBanner(null);
      });
    } catch (e) {
      if (e.name !== 'AbortError' && !e.auth) window.recsysBanner('Overview: ' + e.message);
    } finally {
      busy = false;
    }
  };
  poll();
  const timer = setInterval(poll, POLL_MS);
  return () => { clearInterval(timer); ctl.abort(); cs.forEach(c => c.destroy()); };
}

// once polls and renders; shown is called once the tiles, charts and
// models are (the dead letters, read every few ticks, come after).
async function once(signal, tiles, modelsBox, deadBox, rejectBox, shown) {
  const readDead = tick++ % DEAD_EVERY === 0 && !(dead && dead.forbidden);
  const deadP = readDead ? api('/v1/dead-letters?limit=1000', { signal, allow: [403] }).then(dl => ({ dl }), err => ({ err })) : null;
  const [stats, prom, models] = await Promise.all([
    api('/v1/stats', { signal }),
    metrics(signal),
    api('/v1/models', { signal }),
  ]);
  const now = Date.now() / 1000;
  const st = Object.fromEntries(Object.entries(stats).map(([k, v]) => [k, Number(v)]));
  const row = { t: now, lag: Math.max(0, st.log_end_offset - st.applied_offset) };
  if (last && now > last.t) {
    const dt = now - last.t;
    row.inRate = Math.max(0, (st.log_end_offset - last.stats.log_end_offset) / dt);
    row.appliedRate = Math.max(0, (st.events_applied - last.stats.events_applied) / dt);
  }
  if (st.max_event_ts > 0) { row.maxTs = st.max_event_ts / 1000; row.wm = st.watermark / 1000; }

  // Freshness: the embedded log's histogram, or Kafka's in Kafka mode.
  let fb = buckets(prom, 'recsys_updater_freshness_seconds');
  const kb = buckets(prom, 'recsys_kafka_freshness_seconds');
  if (kb && kb.length && kb[kb.length - 1][1] > 0) fb = kb;
  const prevTick = hist.length ? hist[hist.length - 1].b : null;
  if (fb) {
    if (prevTick) { row.p50 = quantile(0.5, fb, prevTick); row.p99 = quantile(0.99, fb, prevTick); }
    hist.push({ t: now, b: fb });
    while (hist.length && hist[0].t < now - WINDOW_S) hist.shift();
  }
  const ranker = (models.models || []).find(m => m.name === 'ranker');
  if (ranker) { row.auc = ranker.rolling_auc; row.pauc = ranker.published_auc; row.ll = ranker.rolling_log_loss; row.pll = ranker.published_log_loss; }
  push(row);
  last = { t: now, stats: st };

  const set = (k, v, sub) => { tiles[k].value.textContent = v; if (sub !== undefined) tiles[k].sub.textContent = sub; };
  set('in_rate', fmtRate(row.inRate));
  set('applied_rate', fmtRate(row.appliedRate));
  set('lag', fmtInt(row.lag), 'records not yet applied (log end ' + fmtInt(st.log_end_offset) + ')');
  if (fb) {
    const base = hist.length > 1 ? hist[0].b : null;
    const p50 = quantile(0.5, fb, base), p99 = quantile(0.99, fb, base);
    const since = base ? 'ack → readable, last minute' : 'ack → readable, since start';
    set('fresh_p50', p50 == null ? 'no ingest' : fmtSeconds(p50), since);
    set('fresh_p99', p99 == null ? 'no ingest' : fmtSeconds(p99), since);
  } else {
    set('fresh_p50', '—', 'no metrics'); set('fresh_p99', '—', 'no metrics');
  }
  set('watermark', fmtTime(st.watermark), 'newest event ' + fmtTime(st.max_event_ts));
  set('events_applied', fmtInt(st.events_applied), fmtInt(st.duplicates_skipped) + ' duplicates skipped');
  set('users', fmtInt(st.users));
  set('items', fmtInt(st.items));
  const disk = sample(prom, 'recsys_store_disk_bytes');
  set('disk', fmtBytes(disk), disk == null ? 'no metrics' : 'Pebble, state');
  set('dead_letters', fmtInt(st.dead_letters));

  clear(modelsBox,
    h('p', { class: 'muted' }, 'Recommendations report version ', h('code', null, models.model_version || '—')),
    table(['model', 'version', 'examples', 'AUC', 'log loss', 'published AUC', 'published log loss', 'last update', ''],
      (models.models || []).map(m => [m.name, fmtInt(m.version), fmtInt(m.examples), fmtNum(m.rolling_auc), fmtNum(m.rolling_log_loss),
        fmtNum(m.published_auc), fmtNum(m.published_log_loss), fmtTime(m.last_update), m.frozen ? 'frozen' : '']),
      { class: 'models' }));

  const rej = prom && prom.get('recsys_ingest_events_total');
  const kdead = prom && prom.get('recsys_kafka_dead_letters_total');
  const rrows = [];
  for (const r of rej || []) if (r.labels.result !== 'accepted' && r.value > 0) rrows.push([r.labels.code || r.labels.result, r.labels.result, fmtInt(r.value)]);
  for (const r of kdead || []) if (r.value > 0) rrows.push([r.labels.reason, 'kafka dead letter', fmtInt(r.value)]);
  rrows.sort((a, b) => Number(b[2].replace(/,/g, '')) - Number(a[2].replace(/,/g, '')));
  clear(rejectBox, prom == null ? h('p', { class: 'muted' }, 'No /metrics on this server.')
    : rrows.length ? table(['code', 'result', 'events'], rrows, { class: 'rejections' }) : h('p', { class: 'muted' }, 'None.'));
  shown();

  if (deadP) {
    const { dl, err } = await deadP;
    if (err && err.status === 403) dead = { forbidden: true };
    else if (err) throw err;
    else {
      const byCode = new Map();
      for (const d of dl.dead_letters || []) byCode.set(d.code, (byCode.get(d.code) || 0) + 1);
      dead = { byCode, sampled: (dl.dead_letters || []).length, total: Number(dl.total || 0), newest: (dl.dead_letters || [])[0] };
    }
  }
  if (dead && dead.forbidden) {
    clear(deadBox, h('p', { class: 'muted' }, 'The dead letters need a token of scope admin; ' + fmtInt(st.dead_letters) + ' are kept.'));
  } else if (dead) {
    const rows = [...dead.byCode.entries()].sort((a, b) => b[1] - a[1]).map(([code, n]) => [code, fmtInt(n), (100 * n / dead.sampled).toFixed(1) + ' %']);
    clear(deadBox,
      h('p', { class: 'muted' }, dead.total === 0 ? 'None kept.' : `${fmtInt(dead.total)} kept; the newest ${fmtInt(dead.sampled)} by reason:`),
      rows.length ? table(['reason', 'dead letters', 'share'], rows, { class: 'dead' }) : null,
      dead.newest ? h('p', { class: 'muted small' }, 'Newest: ', dead.newest.reason || dead.newest.code, ' (received ', fmtTime(dead.newest.received_at), ')') : null);
  }
}
