// The console's shell: sign-in, the hash router (#/overview, #/features,
// #/recs, #/hot) and the banner for errors. Each page module exports
// mount(main, params) and returns a function that stops it.

import { api, auth, setAuthErrorHandler } from './api.js';
import { clear } from './dom.js';
import * as overview from './overview.js';
import * as features from './features.js';
import * as recs from './recs.js';
import * as hot from './hot.js';

const pages = { overview, features, recs, hot };
const main = document.getElementById('main');
const banner = document.getElementById('banner');
const login = document.getElementById('login');
const loginForm = document.getElementById('login-form');
const loginToken = document.getElementById('login-token');
const loginError = document.getElementById('login-error');
const signout = document.getElementById('signout');
const authState = document.getElementById('auth-state');

let stop = null;
let current = '';
// data-ready-ms: when the page showed its first data, in ms since the
// navigation started (a full load) or since the route changed.
let routeStart = 0;
new MutationObserver(() => {
  if (main.dataset.ready && !main.dataset.readyMs) main.dataset.readyMs = String(Math.round(performance.now() - routeStart));
}).observe(main, { attributes: true, attributeFilter: ['data-ready'] });

// showBanner reports an error that is not about the token (null hides it).
export function showBanner(msg) {
  banner.hidden = !msg;
  banner.textContent = msg || '';
}
window.recsysBanner = showBanner;

function showLogin(msg) {
  if (stop) { stop(); stop = null; }
  current = '';
  clear(main);
  delete main.dataset.page;
  delete main.dataset.ready;
  login.hidden = false;
  loginError.textContent = msg || '';
  signout.hidden = true;
  authState.textContent = '';
  loginToken.value = '';
  loginToken.focus();
}

setAuthErrorHandler(err => {
  auth.clear();
  const why = err.status === 403
    ? 'This token may not do that (' + err.message + '). Sign in with a token of a wider scope.'
    : 'The server refused the token (' + err.message + ').';
  showLogin(why);
});

async function signIn(token) {
  loginError.textContent = 'Checking…';
  try {
    await api('/v1/stats', { token, allow: [401, 403] });
  } catch (e) {
    loginError.textContent = e.auth
      ? (token ? 'Wrong token: ' : 'This server needs a token: ') + e.message
      : 'Cannot reach the server: ' + e.message;
    return;
  }
  if (token) auth.useToken(token); else auth.useOpen();
  login.hidden = true;
  loginError.textContent = '';
  route();
}

loginForm.addEventListener('submit', ev => {
  ev.preventDefault();
  const t = loginToken.value.trim();
  if (!t) { loginError.textContent = 'Enter a token, or choose “No token” for an open server.'; return; }
  signIn(t);
});
document.getElementById('login-open').addEventListener('click', () => signIn(''));
signout.addEventListener('click', () => { auth.clear(); showLogin('Signed out.'); });

function parseHash() {
  const [path, q] = (location.hash || '').replace(/^#\/?/, '').split('?');
  const name = pages[path] ? path : 'overview';
  return { name, params: new URLSearchParams(q || '') };
}

function route() {
  if (!auth.chosen) { showLogin(''); return; }
  const { name, params } = parseHash();
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.page === name);
  signout.hidden = false;
  authState.textContent = auth.token ? 'signed in' : 'open server';
  if (stop) stop();
  showBanner(null);
  current = name;
  clear(main);
  main.dataset.page = name;
  delete main.dataset.ready;
  delete main.dataset.readyMs;
  try {
    stop = pages[name].mount(main, params);
  } catch (e) {
    showBanner('The page failed: ' + e.message);
    stop = null;
  }
}

window.addEventListener('hashchange', () => { routeStart = performance.now(); route(); });
window.addEventListener('unhandledrejection', ev => {
  const e = ev.reason;
  if (e && e.name === 'AbortError') { ev.preventDefault(); return; }
  showBanner('Error: ' + (e && e.message ? e.message : String(e)));
  ev.preventDefault();
});
route();
