/**
 * Detached tasks in a task store the hosts share (issue 14 phase 2; docs/protocol.md §4.3): two hosts
 * with one Redis key prefix and one cluster secret. A detached streaming task starts on host A, A is
 * SIGKILLed mid-task while the client is away, the worker goes on replying to the shared task-reply
 * queue, and the client comes back through host B: `tasks` lists the task with its progress, `attach`
 * gets every chunk once, in order, then the result; the worker got the request once. Another owner
 * learns nothing on B, and past `result_ttl` the task is gone there too. Any host's operator console
 * lists the store's tasks and cancels them: the client attached on the other host gets CANCELLED.
 */

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { promisify } from 'node:util';

import { io, type Socket } from 'socket.io-client';

import { CancelListener, e2e, FakeWorker, sleep, startHost, TYPES, uniqueId, waitUntil, type TestContext } from './harness.js';

const REDIS_URL = 'redis://127.0.0.1:6379/';
const SECRET_ENV = 'TASKGATE_E2E_RESUME_SECRET';

interface SessionEvent {
  token: string;
}

interface TaskInfo {
  id: string;
  state: string;
  lastSeq?: number;
  lastChunk?: unknown;
}

/** A socket.io-client connection that opts into a session (or presents a token). */
class Client {
  readonly socket: Socket;
  readonly sessions: SessionEvent[] = [];
  readonly responses = new Map<string, Array<{ type: string; seq?: number; data?: unknown; error?: { code: string } }>>();

  constructor(ctx: TestContext, url: string, first: true | string = true) {
    this.socket = io(url, {
      transports: ['websocket'],
      upgrade: false,
      forceNew: true,
      reconnection: false,
      timeout: 5000,
      auth: { session: first },
    });
    this.socket.on('session', (s: SessionEvent) => this.sessions.push(s));
    this.socket.on('response', (r: { id: string; type: string; seq?: number }) => {
      const list = this.responses.get(r.id) ?? [];
      list.push(r);
      this.responses.set(r.id, list);
    });
    ctx.onCleanup(async () => {
      this.socket.disconnect();
    });
  }

  async session(): Promise<SessionEvent> {
    return waitUntil(() => this.sessions[0], 10_000, 'the session event');
  }

  seqs(id: string): number[] {
    return (this.responses.get(id) ?? []).filter((r) => r.type === 'chunk').map((r) => r.seq ?? -1);
  }

  final(id: string) {
    return (this.responses.get(id) ?? []).find((r) => r.type !== 'chunk');
  }

  emit(event: string, body?: unknown): Promise<any> {
    const socket = this.socket.timeout(5000);
    return body === undefined ? socket.emitWithAck(event) : socket.emitWithAck(event, body);
  }

  async tasks(): Promise<TaskInfo[]> {
    const ack = await this.emit('tasks');
    assert.equal(ack.ok, true, JSON.stringify(ack));
    return ack.tasks;
  }
}

/** Two hosts sharing a store under a prefix of this test's own, and its task-reply queue. */
async function cluster(ctx: TestContext, resume: Record<string, unknown> = {}, more: Record<string, unknown> = {}) {
  const prefix = `taskgate-e2e-${randomUUID()}:`;
  const taskReplies = `taskgate.task-replies.${prefix.slice(0, -1)}`;
  ctx.queues.add(taskReplies);
  ctx.onCleanup(async () => {
    // The keys expire by themselves; a test leaves none behind all the same.
    await promisify(execFile)('bash', ['-c', `redis-cli --scan --pattern '${prefix}*' | xargs -r redis-cli del`]).catch(() => {});
  });
  const sections = { resume: { window: '20s', store: REDIS_URL, store_prefix: prefix, secret_env: SECRET_ENV, ...resume }, ...more };
  const env = { [SECRET_ENV]: `e2e-cluster-secret-${randomUUID()}` };
  const a = await startHost(ctx, { name: 'hostA', sections, env });
  const b = await startHost(ctx, { name: 'hostB', sections, env });
  const worker = await FakeWorker.start(ctx, a.queues[TYPES.countdown]);
  return { a, b, worker, taskReplies };
}

e2e('shared store: a detached task outlives the SIGKILL of its host — another host lists it, attaches, and sees it finish; the worker ran once', async (ctx) => {
  const { a, b, worker, taskReplies } = await cluster(ctx, { result_ttl: '3s' });
  const page = new Client(ctx, a.url);
  const { token } = await page.session();

  const id = uniqueId('survivor');
  const envelope = { id, requestType: TYPES.countdown, payload: { from: 3, intervalMs: 10 }, detach: true };
  assert.deepEqual(await page.emit('request', envelope), { ok: true });
  const job = await worker.next();
  assert.equal(job.replyTo, taskReplies, 'a detached task replies to the shared queue');
  for (let seq = 0; seq < 10; seq++) await worker.chunk(job, { n: seq }, seq);
  await waitUntil(() => page.seqs(id).length >= 10 || undefined, 10_000, '10 chunks through host A');

  // The client goes away, then its host dies without a word; the worker goes on.
  page.socket.disconnect();
  a.proc.stopRequested = true; // the harness must not count this death as a crash
  a.proc.child.kill('SIGKILL');
  await a.proc.exited;
  for (let seq = 10; seq < 20; seq++) await worker.chunk(job, { n: seq }, seq);

  // Back through host B, with the session token host A issued (the cluster secret signs both).
  const back = new Client(ctx, b.url, token);
  await back.session();
  const listed = await waitUntil(
    async () => {
      const tasks = await back.tasks();
      return tasks.length === 1 && tasks[0].lastSeq === 19 ? tasks : undefined;
    },
    15_000,
    'host B to list the task with the chunks sent after host A died',
  );
  assert.equal(listed[0].id, id);
  assert.equal(listed[0].state, 'running');
  assert.deepEqual(listed[0].lastChunk, { n: 19 });

  const ack = await back.emit('attach', { id });
  assert.deepEqual(ack, { ok: true, state: 'running', firstSeq: 0 });
  for (let seq = 20; seq < 30; seq++) await worker.chunk(job, { n: seq }, seq);
  await worker.result(job, { done: true });
  worker.ack(job);
  await waitUntil(() => back.final(id), 10_000, 'the result through host B');
  assert.deepEqual(back.seqs(id), Array.from({ length: 30 }, (_, i) => i), 'every chunk once, in order');
  assert.deepEqual(back.final(id), { id, type: 'result', data: { done: true } });
  await worker.expectNothing(300);

  // An idempotent resend through B attaches to the ended task: nothing runs again.
  const again = new Client(ctx, b.url, token);
  await again.session();
  assert.deepEqual(await again.emit('request', envelope), { ok: true });
  await waitUntil(() => again.final(id), 10_000, 'the kept result on a resend');
  assert.deepEqual(again.seqs(id).length, 30);
  await worker.expectNothing(300);

  // Another owner learns nothing on B.
  const stranger = new Client(ctx, b.url);
  await stranger.session();
  assert.deepEqual(await stranger.tasks(), []);
  const refused = await stranger.emit('attach', { id });
  assert.equal(refused.ok, false);
  assert.equal(refused.error.code, 'TASK_NOT_FOUND');

  // Past result_ttl the task is gone on B as well.
  await sleep(3500);
  const gone = await back.emit('attach', { id });
  assert.equal(gone.ok, false);
  assert.equal(gone.error.code, 'TASK_NOT_FOUND');
  assert.deepEqual(await back.tasks(), []);
});

e2e('shared store: cancel from another host stops the worker and ends the task CANCELLED', async (ctx) => {
  const { a, b, worker } = await cluster(ctx);
  const cancels = await CancelListener.start(ctx);
  const page = new Client(ctx, a.url);
  const { token } = await page.session();
  const id = uniqueId('cancel');
  assert.deepEqual(
    await page.emit('request', { id, requestType: TYPES.countdown, payload: { from: 3, intervalMs: 10 }, detach: true }),
    { ok: true },
  );
  const job = await worker.next();
  page.socket.disconnect();

  const back = new Client(ctx, b.url, token);
  await back.session();
  assert.equal((await back.emit('attach', { id })).ok, true);
  back.socket.emit('cancel', { id });
  await waitUntil(() => back.final(id), 10_000, 'the CANCELLED error');
  assert.equal(back.final(id)?.error?.code, 'CANCELLED');
  const [task] = await back.tasks();
  assert.equal(task.state, 'cancelled');
  await waitUntil(() => cancels.find(job.correlationId!), 5000, 'the cancellation to the workers');
  // A late result from the worker does not change the outcome.
  await worker.result(job, { late: true });
  worker.ack(job);
  await sleep(300);
  assert.equal((await back.tasks())[0].state, 'cancelled');
});

e2e('shared store: a detached task its workers crash on ends failed with the deliveryLimit error in the store — tasks and attach after a reload show it', async (ctx) => {
  const { a, b, worker } = await cluster(ctx);
  const page = new Client(ctx, a.url);
  const { token } = await page.session();
  const id = uniqueId('poison');
  assert.deepEqual(
    await page.emit('request', { id, requestType: TYPES.countdown, payload: { from: 3, intervalMs: 10 }, detach: true }),
    { ok: true },
  );
  // Three workers in turn die with it (the default delivery limit): RabbitMQ dead-letters it,
  // and the error goes to the task's reply queue like any worker reply (§3.11, §4.4).
  let doomed = worker;
  for (let delivery = 1; delivery <= 3; delivery++) {
    if (delivery > 1) doomed = await FakeWorker.start(ctx, a.queues[TYPES.countdown]);
    await doomed.next(10_000);
    await doomed.close();
  }
  await waitUntil(() => page.final(id), 10_000, 'the final error on the connection that sent it');
  const told = page.final(id) as { error?: { code: string; details?: { reason?: string } } };
  assert.equal(told.error?.code, 'WORKER_ERROR');
  assert.equal(told.error?.details?.reason, 'deliveryLimit');

  // The page reloads, and comes back through the other host: the store has the outcome.
  page.socket.disconnect();
  const back = new Client(ctx, b.url, token);
  await back.session();
  const [task] = await back.tasks();
  assert.equal(task.id, id);
  assert.equal(task.state, 'failed');
  const ack = await back.emit('attach', { id });
  assert.equal(ack.ok, true, JSON.stringify(ack));
  assert.equal(ack.state, 'failed');
  await waitUntil(() => back.final(id), 10_000, 'the kept error on attach');
  const kept = back.final(id) as { error?: { code: string; details?: Record<string, unknown> } };
  assert.equal(kept.error?.code, 'WORKER_ERROR');
  assert.equal(kept.error?.details?.reason, 'deliveryLimit');
  assert.equal(kept.error?.details?.deliveries, 3);
});

interface ConsoleTask {
  correlationId: string;
  clientId: string;
  owner: string;
  state: string;
  where: string;
}

async function consoleTasks(url: string, q: string): Promise<{ tasks: ConsoleTask[]; sharedStore: string; storeError?: string }> {
  const res = await fetch(`${url}/console/api/tasks?q=${encodeURIComponent(q)}`);
  assert.equal(res.status, 200);
  return (await res.json()) as { tasks: ConsoleTask[]; sharedStore: string };
}

e2e('shared store: another host\'s console lists a detached task and cancels it — the client attached on the first host gets CANCELLED, and tasks shows it cancelled', async (ctx) => {
  const { a, b, worker } = await cluster(ctx, {}, { console: { enabled: true } });
  const cancels = await CancelListener.start(ctx);
  const page = new Client(ctx, a.url);
  await page.session();
  const id = uniqueId('console');
  assert.deepEqual(
    await page.emit('request', { id, requestType: TYPES.countdown, payload: { from: 3, intervalMs: 10 }, detach: true }),
    { ok: true },
  );
  const job = await worker.next();
  await worker.chunk(job, { n: 0 }, 0);
  await waitUntil(() => page.seqs(id).length >= 1 || undefined, 10_000, 'a chunk through host A');

  // Host B holds nothing of it; its console finds it in the store.
  const listing = await consoleTasks(b.url, id);
  assert.equal(listing.sharedStore, 'read', JSON.stringify(listing));
  assert.equal(listing.tasks.length, 1, JSON.stringify(listing));
  const [row] = listing.tasks;
  assert.equal(row!.clientId, id);
  assert.equal(row!.correlationId, job.correlationId);
  assert.equal(row!.where, 'store');
  assert.equal(row!.state, 'running');
  assert.match(row!.owner, /^owner [0-9a-f]{8}$/, 'the owner as a hash: no session id');

  const res = await fetch(`${b.url}/console/api/cancel`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ correlationId: job.correlationId }),
  });
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), { correlationId: job.correlationId, heldHere: false, foundInStore: true, cancelledInStore: true });
  await waitUntil(() => page.final(id), 10_000, 'the CANCELLED error on host A');
  assert.equal(page.final(id)?.error?.code, 'CANCELLED');
  await cancels.waitFor(job.correlationId!);
  const [task] = await page.tasks();
  assert.equal(task!.state, 'cancelled');
  assert.equal((await consoleTasks(a.url, id)).tasks[0]!.state, 'CANCELLED', "host A's console sees it too");
  assert.ok(
    b.logs().some((line) => line.includes('cancelled by an operator') && line.includes('anonymous@127.0.0.1')),
    'the cancel is logged with its operator',
  );
  // A late result from the worker does not change the outcome.
  await worker.result(job, { late: true });
  worker.ack(job);
  await sleep(300);
  assert.equal((await page.tasks())[0]!.state, 'cancelled');
});
