// Recommendations explorer: a user's history beside the recommendations
// (scores and reasons) with the API's filters; an item's features and
// similar items; similar users.

import { api, seg } from './api.js';
import { h, clear, card, table, badge, fmtInt, fmtNum, fmtTime, setHashParams } from './dom.js';
import { fmtValue } from './features.js';

const RECENT_KEY = 'recsys.recentUsers';
const ITEM_FEATURES = ['category_id', 'view_count', 'cart_count', 'fav_count', 'purchase_count', 'view_count_24h', 'purchase_count_24h',
  'cart_rate_24h', 'purchase_rate_7d', 'trend_score', 'distinct_users_24h', 'last_event_ts'];
const USER_FEATURES = ['view_count', 'cart_count', 'fav_count', 'purchase_count', 'view_count_24h', 'distinct_items_24h', 'top_categories', 'last_event_ts'];

function recentUsers() {
  try { return JSON.parse(sessionStorage.getItem(RECENT_KEY) || '[]').filter(x => typeof x === 'string'); } catch { return []; }
}
function remember(user) {
  const list = [user, ...recentUsers().filter(u => u !== user)].slice(0, 20);
  sessionStorage.setItem(RECENT_KEY, JSON.stringify(list));
}

export function mount(main, params) {
  let ctl = new AbortController();
  let itemCtl = new AbortController();
  const user = h('input', { id: 'rx-user', name: 'user', list: 'rx-users', placeholder: 'user id, e.g. 1000641', spellcheck: 'false', required: true });
  const users = h('datalist', { id: 'rx-users' });
  const k = h('input', { id: 'rx-k', name: 'k', type: 'number', min: 1, max: 1000, value: params.get('k') || '10' });
  const category = h('input', { id: 'rx-category', name: 'category', placeholder: 'any', spellcheck: 'false', value: params.get('category') || '' });
  const excludeSeen = h('input', { id: 'rx-exclude-seen', type: 'checkbox', checked: params.get('exclude_seen') === '1' });
  const excludePurchased = h('input', { id: 'rx-exclude-purchased', type: 'checkbox', checked: params.get('keep_purchased') !== '1' });
  const form = h('form', { class: 'lookup', id: 'rx-form' },
    h('label', { class: 'grow' }, 'User', user, users),
    h('label', null, 'k', k),
    h('label', null, 'Category', category),
    h('label', { class: 'check' }, excludeSeen, ' exclude seen'),
    h('label', { class: 'check' }, excludePurchased, ' exclude purchased'),
    h('button', { type: 'submit', id: 'rx-submit' }, 'Recommend'));
  const summary = h('div', { id: 'rx-summary' });
  const historyBox = h('div', { id: 'rx-history' }, h('p', { class: 'muted' }, 'Pick or type a user.'));
  const recsBox = h('div', { id: 'rx-recs' });
  const itemBox = h('div', { id: 'rx-item' }, h('p', { class: 'muted' }, 'Click an item to see its features and similar items.'));
  const simUsersBox = h('div', { id: 'rx-similar-users' });
  clear(main,
    h('div', { class: 'page-head' }, h('h1', null, 'Recommendations explorer')),
    card(null, form, summary),
    h('div', { class: 'explorer' },
      card('History', historyBox),
      card('Recommendations', recsBox),
      h('div', { class: 'side' }, card('Item', itemBox), card('Similar users', simUsersBox))));
  const fillUsers = () => clear(users, recentUsers().map(u => h('option', { value: u })));
  fillUsers();
  form.addEventListener('submit', ev => { ev.preventDefault(); explore(); });
  for (const el of [excludeSeen, excludePurchased]) el.addEventListener('change', () => { if (user.value.trim()) explore(); });

  const itemButton = id => h('button', { type: 'button', class: 'link item', dataset: { item: id }, onclick: () => showItem(id) }, id);
  const catButton = c => (c ? h('button', { type: 'button', class: 'link cat', title: 'only this category', onclick: () => { category.value = c; explore(); } }, c) : '—');

  async function explore() {
    const u = user.value.trim();
    if (!u) return;
    const kv = Number(k.value || 10);
    if (!Number.isInteger(kv) || kv < 1 || kv > 1000) { clear(recsBox, h('p', { class: 'error' }, 'k is 1 to 1000.')); return; }
    ctl.abort();
    ctl = new AbortController();
    const signal = ctl.signal;
    setHashParams('recs', { user: u, k: kv === 10 ? '' : kv, category: category.value.trim(), exclude_seen: excludeSeen.checked, keep_purchased: !excludePurchased.checked });
    remember(u);
    fillUsers();
    for (const box of [historyBox, recsBox, simUsersBox]) clear(box, h('p', { class: 'muted' }, 'Loading…'));
    const q = new URLSearchParams({ k: String(kv) });
    if (category.value.trim()) q.set('category', category.value.trim());
    if (excludeSeen.checked) q.set('exclude_seen', 'true');
    if (!excludePurchased.checked) q.set('exclude_purchased', 'false');
    const started = performance.now();
    let hist, recs, sims, feats;
    try {
      [hist, recs, sims, feats] = await Promise.all([
        api(`/v1/users/${seg(u)}/history?limit=50`, { signal }),
        api(`/v1/users/${seg(u)}/recommendations?${q}`, { signal }),
        api(`/v1/users/${seg(u)}/similar?k=10`, { signal }),
        api(`/v1/users/${seg(u)}/features?${USER_FEATURES.map(f => 'features=' + f).join('&')}`, { signal }),
      ]);
    } catch (e) {
      if (e.name === 'AbortError' || e.auth) return;
      for (const box of [historyBox, recsBox, simUsersBox]) clear(box);
      clear(recsBox, h('p', { class: 'error', id: 'rx-error' }, e.message));
      return;
    }
    const ms = performance.now() - started;
    const fv = new Map(feats.features.map(f => [f.name, f]));
    const status = feats.features.length ? feats.features[0].status : 'not_found';
    clear(summary, h('p', { class: 'user-summary' },
      'User ', h('code', null, u), ' ', badge(status),
      ...['view_count', 'cart_count', 'fav_count', 'purchase_count'].map(n => fv.has(n) ? [' · ', n.replace('_count', 's'), ' ', h('b', null, fmtValue(fv.get(n).value))] : ''),
      fv.has('top_categories') && fv.get('top_categories').value ? [' · top categories ', fv.get('top_categories').value.map(c => [catButton(c), ' '])] : '',
      ' · ', h('a', { href: `#/features?view=user_features&ids=${encodeURIComponent(u)}` }, 'all features'),
      h('span', { class: 'muted small' }, ` · ${ms.toFixed(0)} ms`)));
    const histItems = hist.items || [];
    const seen = new Set(histItems.map(x => x.item_id));
    clear(historyBox, histItems.length
      ? table(['time', 'item', 'category', 'behavior', 'events'],
        histItems.map(x => [h('span', { title: fmtTime(x.event_time) }, fmtTime(x.event_time).slice(5, 16)), itemButton(x.item_id), catButton(x.category_id), badge(x.behavior), fmtInt(x.events)]), { class: 'history' })
      : h('p', { class: 'muted', id: 'rx-no-history' }, 'No history for this user (an unknown user gets popular items).'));
    const items = recs.items || [];
    clear(recsBox,
      h('p', { class: 'muted small' }, 'model version ', h('code', null, recs.model_version || '—'), ` · ${items.length} items`),
      items.length
        ? table(['#', 'item', 'score', 'reason'], items.map((x, i) => [String(i + 1), [itemButton(x.item_id), seen.has(x.item_id) ? h('span', { class: 'seen', title: 'in the history' }, ' ●') : ''], fmtNum(x.score), x.reason]), { class: 'recs' })
        : h('p', { class: 'muted' }, 'No items pass the filters.'));
    const su = sims.users || [];
    clear(simUsersBox, su.length
      ? table(['user', 'score'], su.map(x => [h('button', { type: 'button', class: 'link user', dataset: { user: x.user_id }, onclick: () => { user.value = x.user_id; explore(); } }, x.user_id), fmtNum(x.score)]), { class: 'similar-users' })
      : h('p', { class: 'muted' }, 'No similar users yet.'));
    main.dataset.ready = '1';
  }

  async function showItem(id) {
    itemCtl.abort();
    itemCtl = new AbortController();
    const signal = itemCtl.signal;
    clear(itemBox, h('p', { class: 'muted' }, 'Loading ', id, '…'));
    let feats, sims;
    try {
      [feats, sims] = await Promise.all([
        api(`/v1/items/${seg(id)}/features?${ITEM_FEATURES.map(f => 'features=' + f).join('&')}`, { signal }),
        api(`/v1/items/${seg(id)}/similar?k=10`, { signal }),
      ]);
    } catch (e) {
      if (e.name === 'AbortError' || e.auth) return;
      clear(itemBox, h('p', { class: 'error' }, e.message));
      return;
    }
    clear(itemBox,
      h('h3', { id: 'rx-item-id' }, h('code', null, id), ' ', h('a', { class: 'small', href: `#/features?view=item_features&ids=${encodeURIComponent(id)}` }, 'all features')),
      table(['feature', 'value', 'status'], feats.features.map(f => h('tr', { dataset: { feature: f.name } },
        h('td', null, f.name), h('td', null, fmtValue(f.value, f.name.endsWith('_ts') ? 'timestamp_ms' : '')), h('td', null, badge(f.status))))),
      h('h3', null, 'Similar items'),
      (sims.items || []).length
        ? table(['item', 'score', 'reason'], sims.items.map(x => [itemButton(x.item_id), fmtNum(x.score), x.reason]), { class: 'similar-items' })
        : h('p', { class: 'muted' }, 'None.'));
  }

  if (params.get('user')) {
    user.value = params.get('user');
    explore();
  } else {
    main.dataset.ready = '1';
    user.focus();
  }
  return () => { ctl.abort(); itemCtl.abort(); };
}
