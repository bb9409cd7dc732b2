/**
 * Tokens that expire (protocol §3.9): `auth` may be a callback — sync or async — that the client
 * calls before every (re)connect for a fresh token; when the host closes a connection because its
 * token expired (`token_expired`, then a server-side disconnect) the client reconnects by itself,
 * and requests of a session are resumed there. Any other server-side disconnect still ends the
 * client, as in v1; a callback that fails ends it with an error that says so.
 */

import { createClient, type ClientOptions, type TaskgateClient } from '../src/index.js';
import { fakeSocketFactory, type FakeSocket } from './fake-socket.js';
import { flushFake, rejection, track } from './helpers.js';

const URL = 'http://host.test';

const clients: TaskgateClient[] = [];
afterEach(() => {
  for (const client of clients.splice(0)) client.close();
});

function make(options: ClientOptions): { client: TaskgateClient; socket: FakeSocket } {
  const io = fakeSocketFactory();
  const client = createClient({ url: URL, io, ...options });
  clients.push(client);
  return { client, socket: io.last() };
}

/** What socket.io-client sees when the host disconnects the socket for an expired token. */
function tokenExpires(socket: FakeSocket): void {
  socket.hostEmits('token_expired', { message: "the connection's token expired: reconnect with a fresh one" });
  socket.drop('io server disconnect', false);
}

describe('auth as a callback', () => {
  test('a sync callback is asked before every (re)connect; a string is the token', () => {
    let n = 0;
    const { socket } = make({ auth: () => `token-${++n}`, session: false });
    socket.serverAccepts();
    socket.drop();
    socket.serverAccepts();
    expect(socket.handshakes).toEqual([{ token: 'token-1' }, { token: 'token-2' }]);
  });

  test('an async callback: the handshake waits for it; its fields go along with the session field', async () => {
    let n = 0;
    const { client, socket } = make({
      auth: async () => {
        await Promise.resolve();
        return { token: `token-${++n}`, tenant: 't1' };
      },
      session: { storage: 'memory' },
    });
    socket.serverAccepts();
    expect(socket.connected).toBe(false); // still waiting for the token
    await flushFake();
    expect(socket.connected).toBe(true);
    expect(client.connectionState).toBe('connected');
    expect(socket.handshakes).toEqual([{ token: 'token-1', tenant: 't1', session: true }]);
  });

  test('a callback that fails ends the client: waiting requests fail UNAVAILABLE, naming the failure', async () => {
    const { client, socket } = make({
      auth: async () => {
        throw new Error('the identity provider is down');
      },
      session: false,
    });
    const pending = client.request('demo.echo', { text: 'x' });
    socket.serverAccepts();
    const error = await rejection(pending);
    expect(error.code).toBe('UNAVAILABLE');
    expect(error.message).toContain('the identity provider is down');
    expect(error.details).toEqual({ reason: 'auth-callback-failed' });
    expect(client.connectionState).toBe('disconnected');
    expect(socket.connected).toBe(false);
    expect(socket.disconnectCalls).toBe(1);
  });
});

describe('a connection closed because its token expired', () => {
  test('reconnects by itself with a fresh token from the callback, and resumes the requests of its session', async () => {
    let n = 0;
    const { client, socket } = make({ auth: () => ({ token: `token-${++n}` }), session: { storage: 'memory' } });
    socket.serverAccepts();
    socket.session('tok-1');
    const states: string[] = [];
    client.subscribe((state) => states.push(state));
    const result = track(client.request('demo.countdown', { from: 3 }));
    const { id } = socket.lastRequest();
    socket.ack(id);
    socket.chunk(id, 0, 3);

    tokenExpires(socket);
    expect(socket.connectCalls).toBe(2); // the client asked for a new connection
    expect(client.connectionState).toBe('reconnecting');
    socket.serverAccepts();
    socket.session('tok-1');
    expect(socket.handshakes).toEqual([
      { token: 'token-1', session: true },
      { token: 'token-2', session: 'tok-1' },
    ]);
    expect(socket.attaches()).toEqual([{ id, afterSeq: 0 }]);
    socket.ackAttach(id, { ok: true, firstSeq: 1 });
    socket.result(id, 'done');
    await flushFake();
    expect(result.value()).toBe('done');
    expect(states).toEqual(['reconnecting', 'connected']);
  });

  test('without a session, requests in flight fail UNAVAILABLE saying why, and the client reconnects', async () => {
    const { client, socket } = make({ auth: () => 'token', session: false });
    socket.serverAccepts();
    const pending = client.request('demo.echo', { text: 'x' });
    tokenExpires(socket);
    const error = await rejection(pending);
    expect(error.code).toBe('UNAVAILABLE');
    expect(error.details).toEqual({ reason: 'token_expired' });
    expect(socket.connectCalls).toBe(2);
    socket.serverAccepts();
    expect(client.connectionState).toBe('connected');
    expect(socket.handshakes).toHaveLength(2);
  });

  test('a server-side disconnect without token_expired still ends the client (v1)', async () => {
    const { client, socket } = make({ auth: () => 'token', session: false });
    socket.serverAccepts();
    socket.drop('io server disconnect', false);
    expect(socket.connectCalls).toBe(1);
    expect(client.connectionState).toBe('disconnected');
    const error = await rejection(client.request('demo.echo', { text: 'x' }));
    expect(error.code).toBe('UNAVAILABLE');
  });

  test('token_expired is forgotten on the next connection: a later plain server disconnect ends the client', () => {
    const { client, socket } = make({ auth: () => 'token', session: false });
    socket.serverAccepts();
    tokenExpires(socket);
    socket.serverAccepts();
    socket.drop('io server disconnect', false);
    expect(socket.connectCalls).toBe(2);
    expect(client.connectionState).toBe('disconnected');
  });
});
