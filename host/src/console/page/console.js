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

function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + ' s ago';
  if (s < 3600) return Math.round(s / 60) + ' min ago';
  return new Date(ms).toLocaleString();
}

function tile(label, value, bad) {
  const div = el('div', undefined, 'tile' + (bad ? ' bad' : ''));
  div.appendChild(el('b', value));
  div.appendChild(el('span', label));
  return div;
}

function smallButton(text, onClick, className) {
  const b = el('button', text, 'small' + (className ? ' ' + className : ''));
  b.type = 'button';
  b.addEventListener('click', onClick);
  return b;
}

function cell(node) {
  const td = el('td');
  td.appendChild(node);
  return td;
}

function render(o) {
  $('app').hidden = false;
  const hosts = o.hosts.length ? o.hosts : [Object.assign({ gone: false }, o.host)];
  const live = hosts.filter((h) => !h.gone);
  const mixed = new Set(o.mixedPlugins || []);
  fill($('hosts'), ['Host', 'Version', 'Listen', 'Uptime', 'Sockets', 'In flight', 'Broker', 'State', 'Plugins'],
    hosts.map((h) => {
      const state = h.gone ? 'gone' : h.shuttingDown ? 'shutting down' : h.draining ? 'draining' : 'up';
      const plugins = h.plugins.map((p) => p.name + ' ' + p.version + (mixed.has(p.name) ? ' ≠' : '')).join(', ');
      return row([
        el('td', h.id.slice(0, 8) + (h.id === o.host.id ? ' (this)' : ''), 'mono'),
        h.version, h.listen, uptime(h.uptimeSeconds),
        num(h.sockets, 0), num(h.inFlight, 0),
        el('td', h.brokerConnected ? 'connected' : 'disconnected', h.brokerConnected ? 'ok' : 'bad'),
        el('td', state, state === 'up' ? 'ok' : 'bad'),
        el('td', plugins || '–', 'wrap'),
      ], h.gone ? 'gone' : (h.brokerConnected ? '' : 'alarm'));
    }));

  // Request types: this host's table; in flight summed over the live hosts.
  const stats = {};
  o.requestTypes.forEach((s) => { stats[s.name] = s; });
  const inFlight = {};
  live.forEach((h) => (h.requestTypes || []).forEach((t) => { inFlight[t.name] = (inFlight[t.name] || 0) + (t.inFlight || 0); }));
  const queues = {};
  o.queues.forEach((q) => { queues[q.queue] = q; });
  const typesOf = {};
  o.host.requestTypes.forEach((t) => { (typesOf[t.queue] = typesOf[t.queue] || []).push(t.name); });
  fill($('types'), ['Request type', 'Plugin', 'Queue', 'Req/s', 'Last 15 min', 'p50 ms', 'p99 ms', 'In flight', 'Errors (15 min)'],
    o.host.requestTypes.map((t) => {
      const s = stats[t.name] || { series: [], errors: {} };
      const errors = Object.entries(s.errors).map(([code, n]) => code + ' ' + n).join(', ');
      return row([t.name, t.plugin, t.queue, num(s.requestsPerSecond, 1), spark(s.series),
        num(s.p50Ms, 1), num(s.p99Ms, 1), num(inFlight[t.name] || 0, 0), el('td', errors || '–', errors ? 'bad' : 'muted')]);
    }));

  const unackedKnown = o.management && o.management.reachable;
  fill($('queues'), ['Queue', 'Request types', 'Ready', 'Unacked', 'Workers', 'State'],
    o.queues.map((q) => {
      const state = q.error ? 'error: ' + q.error : q.consumers === 0 ? 'no workers' : q.growing ? 'falling behind'
        : q.saturated ? 'falling behind: every worker busy' : 'ok';
      return row([q.queue, (typesOf[q.queue] || []).join(', '), num(q.ready, 0),
        typeof q.unacked === 'number' ? num(q.unacked, 0) : el('td', '?', 'num muted'),
        num(q.consumers, 0), el('td', state, q.alarm ? '' : 'ok')], q.alarm ? 'alarm' : '');
    }));
  const m = $('management');
  if (unackedKnown) {
    m.textContent = 'Unacknowledged counts from RabbitMQ\'s management API at ' + o.management.url + '.';
    m.className = 'note';
  } else {
    m.textContent = 'Unacknowledged counts unavailable: RabbitMQ\'s management API '
      + (o.management && o.management.url ? 'at ' + o.management.url + ' ' : '')
      + 'cannot be read (' + ((o.management && o.management.error) || 'not configured')
      + '). Ready messages and workers come from passive declares.';
    m.className = 'note warn';
  }

  fill($('failures'), ['When', 'Host', 'Request type', 'Code', 'Message', 'Correlation id', 'Traceparent'],
    o.failures.map((f) => row([ago(f.atMs), el('td', f.host.slice(0, 8), 'mono'), f.requestType,
      el('td', f.code, 'bad'), el('td', f.message, 'wrap'), el('td', f.correlationId, 'mono'), el('td', f.traceparent, 'mono')])));
  $('failures-count').textContent = o.failures.length ? '(' + o.failures.length + ')' : '';

  const pluginRows = [];
  const errorRows = [];
  live.forEach((h) => {
    h.plugins.forEach((p) => {
      const flagged = mixed.has(p.name);
      pluginRows.push(row([el('td', h.id.slice(0, 8), 'mono'), p.name, p.version, el('td', p.hash.slice(0, 12), 'mono'),
        el('td', p.requestTypes.join(', '), 'wrap'),
        el('td', flagged ? 'versions differ between hosts' : 'serving', flagged ? 'bad' : 'ok')], flagged ? 'alarm' : ''));
    });
    (h.loadErrors || []).forEach((e) => {
      errorRows.push(row([el('td', h.id.slice(0, 8), 'mono'), el('td', e.file, 'wrap'), el('td', e.reason, 'wrap'), ago(e.atMs)], 'alarm'));
    });
  });
  fill($('plugins'), ['Host', 'Plugin', 'Version', 'SHA-256', 'Request types', 'State'], pluginRows);
  $('load-errors').hidden = errorRows.length === 0;
  if (errorRows.length) fill($('load-errors'), ['Host', 'Refused file', 'Last load error', 'When'], errorRows);

  const alarms = o.queues.filter((q) => q.alarm).length;
  const rps = o.requestTypes.reduce((sum, s) => sum + (s.requestsPerSecond || 0), 0);
  const gone = hosts.length - live.length;
  $('summary').replaceChildren(
    tile('hosts up', live.length + (gone ? ' / ' + hosts.length : ''), gone > 0),
    tile('requests/s (this host)', rps.toFixed(1), false),
    tile('queues in alarm', alarms, alarms > 0),
    tile('recent failures', o.failures.length, o.failures.length > 0),
    tile('plugin versions differ', mixed.size, mixed.size > 0),
    tile('load errors', errorRows.length, errorRows.length > 0),
  );
  $('live').textContent = 'live · ' + new Date().toLocaleTimeString();
  refreshTasks(false);
}

let tasksAt = 0;
async function refreshTasks(now) {
  if (!now && Date.now() - tasksAt < 3000) return;
  tasksAt = Date.now();
  const q = $('task-filter').value.trim();
  let listing;
  try {
    const response = await fetch('/console/api/tasks' + (q ? '?q=' + encodeURIComponent(q) : ''), { headers: headers(), cache: 'no-store' });
    if (!response.ok) return;
    listing = await response.json();
  } catch (e) {
    return;
  }
  $('tasks-note').textContent = listing.sharedStore === 'unreadable'
    ? 'the shared task store could not be read (' + listing.storeError + '): this host\'s tasks only'
    : '';
  fill($('tasks'), ['Started', 'Request type', 'Client id', 'Owner', 'State', 'Where', 'Correlation id', ''],
    listing.tasks.map((t) => {
      const running = t.state === 'running' || t.state === 'parked';
      const action = running
        ? cell(smallButton('Cancel', () => {
          act('cancel', { correlationId: t.correlationId })
            .then(() => { $('log').textContent = 'task ' + t.clientId + ' cancelled'; refreshTasks(true); })
            .catch((e) => { $('log').textContent = 'cancel failed: ' + e.message; });
        }, 'danger'))
        : el('td');
      return row([ago(t.startedAtMs), t.requestType, t.clientId, t.owner,
        el('td', t.state, running ? '' : (t.state === 'succeeded' ? 'ok' : 'bad')), t.where, el('td', t.correlationId, 'mono'), action]);
    }));
}

async function loadDeadLetters() {
  const result = $('dead-letters-result');
  let listing;
  try {
    const response = await fetch('/console/api/dead-letters', { headers: headers(), cache: 'no-store' });
    listing = await response.json();
    if (!response.ok) throw new Error(listing.error || response.statusText);
  } catch (e) {
    result.textContent = e.message;
    return;
  }
  result.textContent = listing.total + ' dead letter(s)' + (listing.total > listing.deadLetters.length ? ', the first ' + listing.deadLetters.length + ' shown' : '');
  const table = $('dead-letters');
  table.hidden = false;
  fill(table, ['Id', 'Request type', 'Queue', 'Reason', 'Deliveries', 'Dead-lettered', 'Payload', ''],
    listing.deadLetters.map((d) => row([el('td', d.id, 'mono'), d.requestType || '–', d.queue || '–', d.reason || '–',
      num(d.deliveries, 0), d.diedAt ? ago(d.diedAt * 1000) : '–', el('td', d.payload + (d.bytes > d.payload.length ? '…' : ''), 'wrap mono'),
      cell(smallButton('Requeue', () => {
        act('dead-letters/requeue', { id: d.id })
          .then((r) => { result.textContent = d.id + ' sent back to ' + r.queue; loadDeadLetters(); })
          .catch((e) => { result.textContent = 'requeue failed: ' + e.message; });
      }))])));
}

function askForToken(reason) {
  $('app').hidden = true;
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
  $('task-filter').addEventListener('input', () => refreshTasks(true));
  $('dead-letters-load').addEventListener('click', loadDeadLetters);
  $('dead-letters-purge').addEventListener('click', () => {
    if (!window.confirm('Delete every dead letter? This cannot be undone.')) return;
    act('dead-letters/purge')
      .then((r) => { $('dead-letters-result').textContent = r.purged + ' purged'; loadDeadLetters(); })
      .catch((e) => { $('dead-letters-result').textContent = 'purge failed: ' + e.message; });
  });
  $('cancel').addEventListener('submit', (event) => {
    event.preventDefault();
    act('cancel', { correlationId: $('correlation').value.trim() })
      .then((r) => { $('cancel-result').textContent = r.heldHere ? 'ended CANCELLED here; workers told' : 'workers told (not held by this host)'; })
      .catch((e) => { $('cancel-result').textContent = e.message; });
  });
  follow();
});
