// Hot items: the top items of the last hour, the last day and by decayed
// popularity, overall or in one category, refreshed every 2 s with each
// item's move since the previous refresh.

import { api } from './api.js';
import { h, clear, card, table, fmtNum, fmtTime, setHashParams } from './dom.js';

const POLL_MS = 2000;
const COLUMNS = [
  { key: '1h', title: 'Last hour', window: '1h' },
  { key: '24h', title: 'Last 24 hours', window: '24h' },
  { key: 'decayed', title: 'Decayed popularity', window: '' },
];

export function mount(main, params) {
  const ctl = new AbortController();
  const category = h('input', { id: 'hot-category', placeholder: 'all categories', spellcheck: 'false', value: params.get('category') || '' });
  const by = h('select', { id: 'hot-by' }, ['weighted', 'view', 'cart', 'fav', 'purchase'].map(b => h('option', { value: b }, b)));
  by.value = params.get('by') || 'weighted';
  const k = h('input', { id: 'hot-k', type: 'number', min: 1, max: 100, value: params.get('k') || '20' });
  const paused = h('input', { id: 'hot-pause', type: 'checkbox' });
  const status = h('span', { class: 'muted', id: 'hot-updated' });
  const form = h('form', { class: 'lookup', id: 'hot-form' },
    h('label', null, 'Category', category),
    h('label', null, 'Windows ranked by', by),
    h('label', null, 'k', k),
    h('label', { class: 'check' }, paused, ' pause'),
    h('button', { type: 'submit' }, 'Apply'));
  const boxes = Object.fromEntries(COLUMNS.map(c => [c.key, h('div', { dataset: { window: c.key } }, h('p', { class: 'muted' }, 'Loading…'))]));
  clear(main,
    h('div', { class: 'page-head' }, h('h1', null, 'Hot items'), status),
    card(null, form),
    h('div', { class: 'hot-cols' }, COLUMNS.map(c => card(c.title, boxes[c.key]))));
  const prevRank = {};
  const cats = new Map(); // item -> category, as read
  const submit = () => {
    for (const c of COLUMNS) { delete prevRank[c.key]; delete prevRank[c.key + ':shown']; }
    setHashParams('hot', { category: category.value.trim(), by: by.value === 'weighted' ? '' : by.value, k: k.value === '20' ? '' : k.value });
    poll(true);
  };
  form.addEventListener('submit', ev => { ev.preventDefault(); submit(); });
  by.addEventListener('change', submit);

  let busy = false;
  async function poll(force) {
    if (busy || document.hidden || (paused.checked && !force)) return;
    busy = true;
    try {
      const kv = Math.min(100, Math.max(1, Number(k.value) || 20));
      const cat = category.value.trim();
      const q = c => {
        const p = new URLSearchParams({ k: String(kv) });
        if (cat) p.set('category', cat);
        if (c.window) { p.set('window', c.window); p.set('by', by.value); }
        return '/v1/items/popular?' + p;
      };
      const [stats, ...lists] = await Promise.all([api('/v1/stats', { signal: ctl.signal }), ...COLUMNS.map(c => api(q(c), { signal: ctl.signal }))]);
      // The lists first (with the categories known from earlier reads),
      // then the categories of new items in one read.
      COLUMNS.forEach((c, i) => render(c, lists[i].items || [], false));
      main.dataset.ready = '1';
      const ids = [...new Set(lists.flatMap(l => (l.items || []).map(x => x.item_id)))].filter(id => !cats.has(id));
      if (ids.length) {
        const f = await api('/v1/features:get', { method: 'POST', body: { view: 'item_features', ids, features: ['category_id'] }, signal: ctl.signal });
        for (const e of f.entities || []) cats.set(e.id, e.features[0] && e.features[0].value);
        if (cats.size > 10000) cats.clear();
        COLUMNS.forEach((c, i) => render(c, lists[i].items || [], true));
      }
      status.textContent = `updated ${new Date().toLocaleTimeString()} · event time ${fmtTime(Number(stats.max_event_ts))}${cat ? ' · category ' + cat : ''}`;
      window.recsysBanner(null);
    } catch (e) {
      if (e.name !== 'AbortError' && !e.auth) window.recsysBanner('Hot items: ' + e.message);
    } finally {
      busy = false;
    }
  }

  // render shows a column; again (same items, now with categories) keeps
  // the moves of the first rendering.
  function render(c, items, again) {
    if (!again) { prevRank[c.key + ':shown'] = prevRank[c.key]; prevRank[c.key] = new Map(items.map((x, i) => [x.item_id, i])); }
    const before = prevRank[c.key + ':shown'];
    const move = (id, i) => {
      if (!before) return '';
      if (!before.has(id)) return h('span', { class: 'move new' }, 'new');
      const d = before.get(id) - i;
      return d > 0 ? h('span', { class: 'move up' }, '▲' + d) : d < 0 ? h('span', { class: 'move down' }, '▼' + -d) : '';
    };
    const catCell = id => {
      const cv = cats.get(id);
      return cv ? h('button', { type: 'button', class: 'link cat', onclick: () => { category.value = cv; submit(); } }, cv) : '—';
    };
    clear(boxes[c.key], items.length
      ? table(['#', 'item', 'category', 'score', ''], items.map((x, i) => [String(i + 1),
        h('a', { href: `#/features?view=item_features&ids=${encodeURIComponent(x.item_id)}`, class: 'item' }, x.item_id),
        catCell(x.item_id), fmtNum(x.score), move(x.item_id, i)]), { class: 'hot' })
      : h('p', { class: 'muted' }, 'No items in this window.'));
  }

  poll(true);
  const timer = setInterval(() => poll(false), POLL_MS);
  return () => { clearInterval(timer); ctl.abort(); };
}
