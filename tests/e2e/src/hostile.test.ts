/**
 * Hostile input against the real host, all at once, while a well-behaved client keeps
 * working ("bad input never crashes anything and never loses data"; docs/protocol.md
 * §3.1 and §3.9):
 *
 * - raw WebSocket clients (the `ws` package, frame by frame): garbage frames, invalid
 *   UTF-8 and random binary frames, JSON nested 100,000 levels deep, Socket.IO packets out
 *   of order (events before CONNECT, CONNECT twice, acks nobody asked for, binary events
 *   without their attachments, engine.io upgrade/close packets mid-session), messages over
 *   the transport limit, and floods of malformed `request` events;
 * - long-polling requests with unknown sessions, garbage, invalid UTF-8 and oversized bodies;
 * - a socket.io-client sending malformed envelopes, duplicate ids and cancel spam;
 * - over AMQP, thousands of replies on the host's reply queue with garbage bodies and
 *   forged (unknown, malformed, missing) correlation ids, and a worker answering the
 *   hostile requests with garbage.
 *
 * Meanwhile a well-behaved client sends wordcount requests to the real Rust workers and
 * must get every result right, without losing its connection. The counts of everything
 * sent and of every outcome are printed.
 */

import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';

import {
  type Client,
  connect,
  connectPolling,
  e2e,
  FakeWorker,
  type Host,
  type Received,
  request,
  sleep,
  startHost,
  startWorkers,
  type TestContext,
  TYPES,
  uniqueId,
  waitUntil,
} from './harness.js';
import { RawSocket } from './raw.js';

/** Everything sent and seen, by kind; printed at the end. */
class Tally {
  private counts = new Map<string, number>();
  add(key: string, n = 1): void {
    this.counts.set(key, (this.counts.get(key) ?? 0) + n);
  }
  get(key: string): number {
    return this.counts.get(key) ?? 0;
  }
  sum(prefix: string): number {
    let total = 0;
    for (const [k, v] of this.counts) if (k.startsWith(prefix)) total += v;
    return total;
  }
  print(title: string): void {
    const lines = [...this.counts.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => `  ${k}: ${v}`);
    console.log(`${title}\n${lines.join('\n')}`);
  }
}

const DEEP = 100_000;
const deepArrays = (n = DEEP) => `${'['.repeat(n)}${']'.repeat(n)}`;
const deepObjects = (n = DEEP) => `${'{"a":'.repeat(n)}1${'}'.repeat(n)}`;
const pick = <T>(items: readonly T[]): T => items[Math.floor(Math.random() * items.length)];
const randomText = (max: number) => randomBytes(1 + Math.floor(Math.random() * max)).toString('latin1');

interface Frame {
  data: string | Buffer;
  binary?: boolean;
}
const text = (data: string): Frame => ({ data });

/** Invalid UTF-8 byte sequences, sent as text frames. */
const INVALID_UTF8 = [
  Buffer.from([0xff, 0xfe, 0xfd]),
  Buffer.from([0x34, 0x32, 0xc3, 0x28]),
  Buffer.from('42["request",{"id":"'),
  Buffer.concat([Buffer.from('42["request",{"id":"x","requestType":"'), Buffer.from([0xed, 0xa0, 0x80]), Buffer.from('"}]')]),
  Buffer.from([0xf8, 0x88, 0x80, 0x80, 0x80]),
  Buffer.from([0xc0, 0xaf]),
];

/** Frames for one hostile connection of each kind. */
const ATTACKS: Record<string, () => { connect: boolean; frames: Frame[] }> = {
  garbage: () => ({
    connect: Math.random() < 0.5,
    frames: Array.from({ length: 20 }, () =>
      text(
        pick([
          () => randomText(200),
          () => `4${randomText(100)}`,
          () => `42${randomText(100)}`,
          () => `42[${randomText(50)}`,
          () => `9${randomText(10)}`,
          () => '42["request",',
          () => '42[]',
          () => '42{}',
          () => '42["request"]garbage',
          () => '4299999999999999999999["request",{}]',
          () => '4-1["request",{}]',
          () => '',
        ])(),
      ),
    ),
  }),
  'non-utf8': () => ({
    connect: true,
    frames: [
      ...INVALID_UTF8.map((data) => ({ data, binary: false })),
      ...Array.from({ length: 6 }, () => ({ data: randomBytes(1 + Math.floor(Math.random() * 300)), binary: true })),
    ].sort(() => Math.random() - 0.5),
  }),
  deep: () => ({
    connect: true,
    frames: [
      text(
        pick([
          `421["request",{"id":"deep-a","requestType":"echo","payload":${deepArrays()}}]`,
          `421["request",{"id":"deep-o","requestType":"text.wordcount","payload":${deepObjects()}}]`,
          `421["request",{"id":${deepArrays()},"requestType":"echo"}]`,
          `42[${'['.repeat(DEEP)}`,
          `421["request",${'['.repeat(DEEP)}`,
          `42["cancel",{"id":${deepObjects()}}]`,
          `421[${deepArrays()},{"id":"x","requestType":"echo"}]`,
        ]),
      ),
    ],
  }),
  'out-of-order': () => ({
    connect: false,
    frames: pick([
      // Events before CONNECT, then CONNECT, then a second CONNECT.
      ['421["request",{"id":"early","requestType":"echo","payload":1}]', '42["cancel",{"id":"early"}]', '40', '40', '40{"token":"x"}'],
      // CONNECT, acks nobody asked for, a DISCONNECT, then events.
      ['40', '4399[{"ok":true}]', '430[]', '43[', '41', '422["request",{"id":"after","requestType":"echo","payload":2}]'],
      // Binary events whose attachments never come, or claim millions of them.
      ['40', '451-["request",{"_placeholder":true,"num":0}]', '4599999999-3["request",{"_placeholder":true,"num":7}]', '461-0[{"_placeholder":true,"num":0}]'],
      // Engine.io packets in the wrong place: upgrade, noop, pong without ping, ping, close.
      ['5', '6', '3', '2', '40', '5', '1', '421["request",{"id":"closed","requestType":"echo","payload":3}]'],
      // Other namespaces, a client-sent connect_error, a huge auth.
      ['40/admin,', '40/admin,{"token":"x"}', '44{"message":"hi"}', `40${JSON.stringify({ token: 't'.repeat(100_000) })}`, '41/admin,'],
    ]).map(text),
  }),
  junk: () => junkRequests(150),
  // More `request` events than the default burst (500): the rest are RATE_LIMITED.
  flood: () => junkRequests(700),
  oversized: () => ({
    connect: true,
    frames: [
      text(`421["request",{"id":"big","requestType":"echo","payload":"${'p'.repeat(2 << 20)}"}]`),
      text(`422["request",{"id":"huge","requestType":"echo","payload":"${'q'.repeat(9 << 20)}"}]`),
    ],
  }),
};

/** `count` well-framed `request` events with malformed or odd envelopes, each with an ack id. */
function junkRequests(count: number): { connect: boolean; frames: Frame[] } {
  return {
    connect: true,
    frames: Array.from({ length: count }, (_, i) => {
      const id = pick([`j-${i}`, '', 'x'.repeat(129), i, null, { a: 1 }, ['id'], true]);
      const requestType = pick(['echo', 'text.wordcount', 'demo.countdown', 'nope', '', 5, null, 'ECHO']);
      const payload = pick([{}, { text: 5 }, { from: -1 }, 'x'.repeat(2000), [1, 2, 3], null, { text: 'ok words' }]);
      return text(`42${i}["request",${JSON.stringify({ id, requestType, payload })}]`);
    }),
  };
}

/** How many connections of each kind. */
const PLAN: Record<keyof typeof ATTACKS, number> = {
  garbage: 80,
  'non-utf8': 60,
  deep: 28,
  'out-of-order': 60,
  junk: 30,
  flood: 3,
  oversized: 3,
};

async function rawAttack(host: Host, kind: string, tally: Tally): Promise<void> {
  const { connect: sendConnect, frames } = ATTACKS[kind]();
  let socket: RawSocket;
  try {
    socket = await RawSocket.open(host.url);
  } catch {
    tally.add('raw WebSocket: upgrade failed');
    return;
  }
  tally.add('raw WebSocket: connections');
  if (sendConnect) {
    // Events sent before the host's CONNECT answer are out of order (the host closes the
    // connection): the "out-of-order" kind does that on purpose, the others wait.
    socket.send('40');
    await socket.waitFor((t) => t.startsWith('40'), 10_000, 'CONNECT').catch(() => tally.add('raw WebSocket: no CONNECT answer'));
  }
  for (const frame of frames) {
    socket.send(frame.data, frame.binary ?? false);
    tally.add(`raw WebSocket frames sent: ${kind}`);
  }
  // Requests are answered (wait for every ack); other frames get the connection closed.
  const requests = frames.filter((f) => typeof f.data === 'string' && /^42\d+\["request"/.test(f.data)).length;
  const expectAcks = kind === 'junk' || kind === 'flood';
  if (expectAcks) {
    await waitUntil(() => socket.texts.filter((t) => t.startsWith('43')).length >= requests || socket.closeInfo, 20_000, `${requests} acks`).catch(
      () => undefined,
    );
  }
  const closed = await socket.waitClosed(expectAcks ? 0 : 400);
  tally.add(closed ? 'raw WebSocket: connection closed by the host' : 'raw WebSocket: connection left open (closed by us)');
  for (const t of socket.texts) {
    const m = t.match(/^43\d+\[(.*)\]$/s);
    if (!m) continue;
    try {
      const ack = JSON.parse(m[1]) as { ok: boolean; error?: { code: string } };
      tally.add(`raw WebSocket acks: ${ack.ok ? 'ok' : ack.error?.code}`);
    } catch {
      tally.add('raw WebSocket acks: unparseable');
    }
  }
  socket.terminate();
}

/** Runs `tasks` with at most `parallel` at a time. */
async function pool(tasks: Array<() => Promise<void>>, parallel: number): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: parallel }, async () => {
      while (next < tasks.length) await tasks[next++]();
    }),
  );
}

async function pollingAttack(host: Host, tally: Tally): Promise<void> {
  const base = `${host.url}/socket.io/?EIO=4&transport=polling`;
  const status = async (what: string, url: string, init?: RequestInit) => {
    try {
      const res = await fetch(url, init);
      await res.arrayBuffer();
      tally.add(`long-polling HTTP ${res.status}`);
    } catch {
      tally.add('long-polling: request failed');
    }
    tally.add(`long-polling requests sent: ${what}`);
  };
  // A real session to post garbage into.
  const open = await (await fetch(base)).text();
  const sid = JSON.parse(open.slice(1)).sid as string;
  const session = `${base}&sid=${sid}`;
  await fetch(session, { method: 'POST', body: '40' }).then((r) => r.arrayBuffer());
  const tasks: Array<() => Promise<void>> = [];
  for (let i = 0; i < 40; i++) {
    tasks.push(() => status('unknown session', `${base}&sid=${randomUUID()}`));
    tasks.push(() => status('garbage to an unknown session', `${base}&sid=${randomBytes(8).toString('hex')}`, { method: 'POST', body: randomText(200) }));
    tasks.push(() => status('bad query', `${host.url}/socket.io/?EIO=${pick(['3', '999', '', 'x'])}&transport=${pick(['polling', 'carrier-pigeon', ''])}`));
  }
  // Into the real session, one at a time (a session takes one POST at a time).
  for (let i = 0; i < 30; i++) {
    tasks.push(() =>
      status('invalid UTF-8 / garbage into a session', session, {
        method: 'POST',
        body: pick([INVALID_UTF8[i % INVALID_UTF8.length], Buffer.from(randomText(300), 'latin1'), Buffer.from(`42["request",${'['.repeat(DEEP)}`)]),
        headers: { 'content-type': 'text/plain;charset=UTF-8' },
      }),
    );
  }
  tasks.push(() => status('oversized body', `${base}&sid=${randomUUID()}`, { method: 'POST', body: 'o'.repeat(9 << 20) }));
  await pool(tasks.slice(0, -31), 8);
  for (const t of tasks.slice(-31)) await t();
}

async function socketIoClientAttack(ctx: TestContext, host: Host, tally: Tally): Promise<void> {
  const transport = pick(['websocket', 'polling'] as const);
  const client = await (transport === 'websocket' ? connect : connectPolling)(ctx, host.url, { name: `hostile-sio-${transport}` });
  const sends: Array<Promise<unknown>> = [];
  for (let i = 0; i < 120; i++) {
    const envelope = pick([
      () => ({ id: 'dup', requestType: TYPES.echo, payload: i }),
      () => ({ id: uniqueId(), requestType: pick([TYPES.echo, 'nope', 42]), payload: { n: i } }),
      () => ({ id: { nested: true }, requestType: TYPES.echo }),
      () => [1, 2, 3],
      () => 'just a string',
    ])();
    sends.push(
      client.emitRequest([envelope], 15_000).then(
        (ack) => tally.add(`socket.io-client acks: ${ack.ok ? 'ok' : ack.error.code}`),
        () => tally.add('socket.io-client: no ack (connection dropped)'),
      ),
    );
    client.cancel(pick(['dup', uniqueId(), 5, null]));
    client.socket.emit(pick(['response', 'unknown-event', 'ack', 'Request']), { junk: i });
    tally.add('socket.io-client events sent', 3);
  }
  await Promise.all(sends);
  client.close();
}

/** Answers hostile echo requests with garbage replies (a broken worker) and counts them. */
function garbageWorker(worker: FakeWorker, tally: Tally, stop: () => boolean): Promise<void> {
  return (async () => {
    while (!stop()) {
      const r: Received | undefined = await worker.next(200).catch(() => undefined);
      if (!r) continue;
      const replies: Array<[string | null, Buffer, Record<string, unknown>?]> = [
        ['chunk', Buffer.from([0xff, 0xfe])],
        ['chunk', Buffer.from(deepArrays(5000))],
        ['bogus', Buffer.from('{}')],
        [null, Buffer.from('{}')],
        ['chunk', Buffer.from('"fine"'), { 'x-seq': 'not-a-number' }],
        pick([
          ['result', Buffer.from(deepArrays())],
          ['result', randomBytes(64)],
          ['error', Buffer.from('{"code":5}')],
          ['error', Buffer.from('')],
          ['result', Buffer.from('{"truncated":')],
        ] as Array<[string, Buffer]>),
      ];
      for (const [type, body, headers] of replies) {
        await worker.reply(r, body, { type, headers }).catch(() => undefined);
        tally.add('AMQP garbage replies to hostile requests');
      }
      worker.ack(r);
    }
  })();
}

/** Replies nobody asked for, straight onto the host's reply queue. */
async function forgedReplies(worker: FakeWorker, replyTo: string, finished: string[], tally: Tally): Promise<void> {
  for (let i = 0; i < 3000; i++) {
    const correlationId = pick([
      () => randomUUID(),
      () => pick(finished),
      () => randomText(40),
      () => '',
      () => null,
      () => `${randomUUID()}x`,
    ])();
    const type = pick(['chunk', 'result', 'error', 'bogus', null]);
    const body = pick([
      () => randomBytes(Math.floor(Math.random() * 500)),
      () => Buffer.from(deepArrays(i % 50 === 0 ? DEEP : 100)),
      () => Buffer.from('{"message":"forged"}'),
      () => Buffer.from([0xc3, 0x28]),
      () => Buffer.alloc(0),
    ])();
    const props: Record<string, unknown> = { contentType: pick(['application/json', 'text/garbage']) };
    if (correlationId !== null) props.correlationId = correlationId;
    if (type !== null) props.type = type;
    if (Math.random() < 0.3) props.headers = { 'x-seq': pick([-1, 1e18, 'x', 3.5, null]) };
    worker.channel.publish('', replyTo, body, props);
    if (i % 200 === 199) await worker.channel.waitForConfirms();
    tally.add(`AMQP forged replies: ${correlationId === null ? 'no correlation id' : finished.includes(correlationId) ? 'replayed (finished request)' : 'unknown or malformed correlation id'}`);
  }
  await worker.channel.waitForConfirms();
}

/** The well-behaved client: wordcount requests, each result checked. */
async function wellBehaved(client: Client, tally: Tally, stop: () => boolean): Promise<void> {
  const words = ['alpha', 'beta', 'γάμμα', '日本', 'emoji🙂', 'x'];
  const latencies: number[] = [];
  await Promise.all(
    [0, 1].map(async () => {
      while (!stop()) {
        const n = 1 + Math.floor(Math.random() * 40);
        const lines = 1 + Math.floor(Math.random() * 3);
        const parts = Array.from({ length: n }, () => pick(words));
        const textBody = parts.map((w, i) => (i > 0 && i % Math.ceil(n / lines) === 0 ? `\n${w}` : i > 0 ? ` ${w}` : w)).join('');
        const expected = { words: n, lines: textBody.split('\n').length, chars: [...textBody].length };
        const id = uniqueId('good');
        const started = Date.now();
        const outcome = await request(client, { id, requestType: TYPES.wordcount, payload: { text: textBody } }, { timeout: 30_000, ackTimeout: 30_000 });
        latencies.push(Date.now() - started);
        if (!outcome.ack.ok) {
          tally.add(`well-behaved: refused ${outcome.ack.error.code}`);
        } else if (JSON.stringify(outcome.final) === JSON.stringify({ id, type: 'result', data: expected })) {
          tally.add('well-behaved: correct results');
        } else {
          tally.add('well-behaved: WRONG results');
          console.log(`wrong result for ${JSON.stringify(textBody)}: ${JSON.stringify(outcome.final)} (expected ${JSON.stringify(expected)})`);
        }
        // A well-behaved client stays under the default request rate (100/s).
        await sleep(25);
      }
    }),
  );
  latencies.sort((a, b) => a - b);
  const p = (q: number) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))];
  console.log(`well-behaved latency: p50 ${p(0.5)} ms, p99 ${p(0.99)} ms, max ${latencies[latencies.length - 1]} ms`);
}

function rssKiB(host: Host): number {
  const status = readFileSync(`/proc/${host.proc.child.pid}/status`, 'utf8');
  return Number(status.match(/VmRSS:\s+(\d+)/)?.[1] ?? 0);
}

e2e('hostile traffic over raw WebSockets, long-polling, socket.io-client and AMQP breaks nothing: a well-behaved client gets every result right', async (ctx) => {
  const host = await startHost(ctx);
  await startWorkers(ctx, { [TYPES.wordcount]: host.queues[TYPES.wordcount] }, { only: [TYPES.wordcount] });
  const echoWorker = await FakeWorker.start(ctx, host.queues[TYPES.echo], { prefetch: 200 });
  const tally = new Tally();
  const rssBefore = rssKiB(host);

  // Learn the host's reply queue and some finished correlation ids (for replays).
  const canary = await connect(ctx, host.url, { name: 'canary' });
  const finished: string[] = [];
  for (let i = 0; i < 5; i++) {
    const pending = request(canary, { id: uniqueId(), requestType: TYPES.echo, payload: i });
    const r = await echoWorker.next();
    await echoWorker.result(r, i);
    echoWorker.ack(r);
    await pending;
    finished.push(r.correlationId);
  }
  const replyTo = echoWorker.received[0].replyTo;

  const good = await connect(ctx, host.url, { name: 'well-behaved' });
  let attacking = true;
  const goodDone = wellBehaved(good, tally, () => !attacking);
  const garbageDone = garbageWorker(echoWorker, tally, () => !attacking);

  const started = Date.now();
  const rawTasks = Object.entries(PLAN).flatMap(([kind, n]) => Array.from({ length: n }, () => () => rawAttack(host, kind, tally)));
  rawTasks.sort(() => Math.random() - 0.5);
  await Promise.all([
    pool(rawTasks, 6),
    pollingAttack(host, tally),
    (async () => {
      for (let i = 0; i < 4; i++) await socketIoClientAttack(ctx, host, tally);
    })(),
    forgedReplies(echoWorker, replyTo, finished, tally),
  ]);
  const attackMs = Date.now() - started;
  // The well-behaved client keeps going a little after the attack.
  await sleep(1000);
  attacking = false;
  await goodDone;
  await garbageDone;

  const rssAfter = rssKiB(host);
  tally.print(`hostile traffic for ${attackMs} ms (host RSS ${Math.round(rssBefore / 1024)} MiB before, ${Math.round(rssAfter / 1024)} MiB after):`);
  console.log(
    `totals: ${tally.sum('raw WebSocket frames sent')} raw WebSocket frames on ${tally.get('raw WebSocket: connections')} connections, ` +
      `${tally.sum('long-polling requests sent')} long-polling requests, ${tally.get('socket.io-client events sent')} socket.io-client events, ` +
      `${tally.sum('AMQP forged replies')} forged and ${tally.get('AMQP garbage replies to hostile requests')} garbage AMQP replies; ` +
      `well-behaved: ${tally.get('well-behaved: correct results')} correct, ${tally.get('well-behaved: WRONG results')} wrong, ${tally.sum('well-behaved: refused')} refused`,
  );

  const warnings = host.logs().filter((l) => /\b(WARN|ERROR)\b/.test(l));
  const kinds = new Map<string, number>();
  for (const w of warnings) {
    const message = w.replace(/^\S+\s+(WARN|ERROR)\s+\S+\s+/, '$1 ').replace(/[0-9a-f-]{36}|\d+/g, '#').slice(0, 100);
    kinds.set(message, (kinds.get(message) ?? 0) + 1);
  }
  console.log(`host log: ${host.logs().length} lines, ${warnings.length} WARN/ERROR:\n${[...kinds].map(([m, n]) => `  ${n} × ${m}`).join('\n')}`);
  assert.ok(!host.logs().some((l) => /panicked/.test(l)), 'nothing panicked');

  // Thousands of hostile messages were really sent…
  assert.ok(tally.sum('raw WebSocket frames sent') >= 5000, 'thousands of raw frames');
  assert.ok(tally.sum('AMQP forged replies') >= 3000);
  assert.ok(tally.get('raw WebSocket: connection closed by the host') > 0, 'the host closes connections that send unreadable messages');
  assert.ok(tally.sum('raw WebSocket acks: ') > 1000, 'malformed requests are answered');
  // …and the well-behaved client got every result right, on the connection it started with.
  assert.ok(tally.get('well-behaved: correct results') >= 50, 'the well-behaved client kept working');
  assert.equal(tally.get('well-behaved: WRONG results'), 0);
  assert.equal(tally.sum('well-behaved: refused'), 0);
  assert.equal(good.lostReason, undefined, 'the well-behaved client was never disconnected');
  assert.ok(host.proc.alive, 'the host is alive');
  // Every hostile connection's requests were cleaned up.
  await waitUntil(
    async () => ((await host.readyz()).body as { inFlight: number }).inFlight === 0,
    20_000,
    'no request left in flight',
  );
  assert.ok(rssAfter < 1024 * 1024, `host RSS ${rssAfter} KiB stays under 1 GiB`);
}, { timeout: 240_000 });
