// The operator console's page: no framework, no build step. Every string from the host
// (plugin names, ids, error messages) goes into the page through textContent, never as
// markup, so none can run as script; the Content-Security-Policy forbids inline script too.
'use strict';

const TOKEN_KEY = 'taskgate.console.token';
const $ = (id) => document.getElementById(id);

function token() { return sessionStorage.getItem(TOKEN_KEY) || ''; }
function headers() {
  const t = token();
  return t ? { Authorization: 'Bearer ' + t } : {};
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function fill(table, head, rows) {
  table.replaceChildren();
  const tr = el('tr');
  head.forEach((h) => tr.appendChild(el('th', h)));
  table.appendChild(tr);
  rows.forEach((row) => table.appendChild(row));
  if (rows.length === 0) {
    const empty = el('tr');
    const td = el('td', 'none yet', 'muted');
    td.colSpan = head.length;
    empty.appendChild(td);
    table.appendChild(empty);
  }
}

function row(cells, className) {
  const tr = el('tr', undefined, className);
  cells.forEach((c) => tr.appendChild(c instanceof Node ? c : el('td', c)));
  return tr;
}

function num(value, digits) {
  return el('td', typeof value === 'number' ? value.toFixed(digits) : '–', 'num');
}

function spark(series) {
  const td = el('td');
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('class', 'spark');
  svg.setAttribute('viewBox', '0 0 120 24');
  svg.setAttribute('preserveAspectRatio', 'none');
  const values = series.map((p) => p.requestsPerSecond);
  const max = Math.max(1, ...values);
  const step = values.length > 1 ? 120 / (values.length - 1) : 0;
  const line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
  line.setAttribute('points', values.map((v, i) => (i * step).toFixed(1) + ',' + (23 - (v / max) * 22).toFixed(1)).join(' '));
  svg.appendChild(line);
  td.appendChild(svg);
  return td;
}

function uptime(s) {
  if (s < 120) return s + ' s';
  if (s < 7200) return Math.round(s / 60) + ' min';
  return Math.round(s / 3600) + ' h';
}

function render(o) {
  const hosts = o.hosts.length ? o.hosts : [Object.assign({ gone: false }, o.host)];
  const versions = {};
  hosts.filter((h) => !h.gone).forEach((h) => h.plugins.forEach((p) => {
    (versions[p.name] = versions[p.name] || new Set()).add(p.version + ' ' + p.hash);
  }));
  fill($('hosts'), ['Host', 'Version', 'Listen', 'Uptime', 'Sockets', 'In flight', 'Broker', 'State', 'Plugins'],
    hosts.map((h) => {
      const state = h.gone ? 'gone' : h.shuttingDown ? 'shutting down' : h.draining ? 'draining' : 'up';
      const plugins = h.plugins.map((p) => p.name + ' ' + p.version + ' (' + p.hash.slice(0, 8) + ')'
        + (versions[p.name] && versions[p.name].size > 1 ? ' ≠' : '')).join(', ');
      return row([
        el('td', h.id.slice(0, 8) + (h.id === o.host.id ? ' (this)' : '')),
        h.version, h.listen, uptime(h.uptimeSeconds),
        num(h.sockets, 0), num(h.inFlight, 0),
        el('td', h.brokerConnected ? 'connected' : 'disconnected', h.brokerConnected ? 'ok' : 'bad'),
        el('td', state, state === 'up' ? 'ok' : 'bad'),
        plugins || '–',
      ], h.gone ? 'gone' : (h.brokerConnected ? '' : 'alarm'));
    }));
  const stats = {};
  o.requestTypes.forEach((s) => { stats[s.name] = s; });
  const queues = {};
  o.queues.forEach((q) => { queues[q.queue] = q; });
  fill($('types'), ['Request type', 'Plugin', 'Queue', 'Req/s', 'Last 15 min', 'p50 ms', 'p99 ms', 'Errors (15 min)'],
    o.host.requestTypes.map((t) => {
      const s = stats[t.name] || { series: [], errors: {} };
      const errors = Object.entries(s.errors).map(([code, n]) => code + ' ' + n).join(', ');
      return row([t.name, t.plugin, t.queue, num(s.requestsPerSecond, 1), spark(s.series),
        num(s.p50Ms, 1), num(s.p99Ms, 1), el('td', errors || '–', errors ? 'bad' : 'muted')]);
    }));
  fill($('queues'), ['Queue', 'Ready', 'Workers', 'State'],
    o.queues.map((q) => {
      const state = q.error ? 'error: ' + q.error : q.consumers === 0 ? 'no workers' : q.growing ? 'falling behind' : 'ok';
      return row([q.queue, num(q.ready, 0), num(q.consumers, 0), el('td', state)], q.alarm ? 'alarm' : '');
    }));
  $('live').textContent = 'live · ' + new Date().toLocaleTimeString();
}

function askForToken(reason) {
  $('login').hidden = false;
  $('login-reason').textContent = reason;
  $('live').textContent = 'not signed in';
}

async function follow() {
  let response;
  try {
    response = await fetch('/console/api/events', { headers: headers(), cache: 'no-store' });
  } catch (e) {
    $('live').textContent = 'disconnected, retrying…';
    setTimeout(follow, 2000);
    return;
  }
  if (response.status === 401 || response.status === 403) {
    const body = await response.json().catch(() => ({}));
    askForToken(body.error || 'refused');
    return;
  }
  $('login').hidden = true;
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read().catch(() => ({ done: true }));
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = frame.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n');
      if (frame.includes('event: overview') && data) {
        try { render(JSON.parse(data)); } catch (e) { $('log').textContent = 'bad update: ' + e; }
      }
    }
  }
  $('live').textContent = 'disconnected, retrying…';
  setTimeout(follow, 2000);
}

async function act(path, body) {
  const init = { method: 'POST', headers: headers() };
  if (body) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch('/console/api/' + path, init);
  const json = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(json.error || response.statusText);
  return json;
}

function button(id, path) {
  $(id).addEventListener('click', () => {
    act(path).then(() => { $('log').textContent = path + ': done'; })
      .catch((e) => { $('log').textContent = path + ' failed: ' + e.message; });
  });
}

document.addEventListener('DOMContentLoaded', () => {
  button('rescan', 'rescan');
  button('drain', 'drain');
  button('undrain', 'undrain');
  $('forget').addEventListener('click', () => { sessionStorage.removeItem(TOKEN_KEY); location.reload(); });
  $('login').addEventListener('submit', (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('token').value.trim());
    follow();
  });
  $('cancel').addEventListener('submit', (event) => {
    event.preventDefault();
    act('cancel', { correlationId: $('correlation').value.trim() })
      .then((r) => { $('cancel-result').textContent = r.heldHere ? 'ended CANCELLED here; workers told' : 'workers told (not held by this host)'; })
      .catch((e) => { $('cancel-result').textContent = e.message; });
  });
  follow();
});
