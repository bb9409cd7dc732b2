/** What the amqplib side reads from messages and broker errors (no broker needed). */

import { describe, expect, test } from '@jest/globals';
import type { ConsumeMessage } from 'amqplib';

import { consumerTimeout, headerInteger, isRefusal, toDelivery } from '../../src/amqp.js';
import { consoleLogger, levelFrom } from '../../src/log.js';

describe('broker errors', () => {
  test("RabbitMQ's consumer timeout is recognised, with its timeout", () => {
    const error = new Error(
      'Channel closed by server: 406 (PRECONDITION-FAILED) with message "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. Timeout value used: 1800000 ms. This timeout value can be configured, see consumers doc guide to learn more"',
    );
    expect(consumerTimeout(error)).toEqual({ message: error.message, timeoutMs: 1_800_000 });
    expect(consumerTimeout(new Error('Channel closed by server: 406 (PRECONDITION-FAILED) with message "PRECONDITION_FAILED - inequivalent arg"'))).toBeUndefined();
    expect(consumerTimeout(new Error('Connection closed: 320 (CONNECTION-FORCED)'))).toBeUndefined();
  });

  test('refused credentials and virtual hosts are final; other failures are not', () => {
    expect(isRefusal(new Error('Handshake terminated by server: 403 (ACCESS-REFUSED) with message "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN."'))).toBe(true);
    expect(isRefusal(Object.assign(new Error('x'), { code: 530 }))).toBe(true);
    expect(isRefusal(new Error('connect ECONNREFUSED 127.0.0.1:5672'))).toBe(false);
    expect(isRefusal(Object.assign(new Error('x'), { code: 'ECONNRESET' }))).toBe(false);
  });
});

describe('messages', () => {
  test('deadline headers of any integer type are read', () => {
    expect(headerInteger(5)).toBe(5);
    expect(headerInteger(6n)).toBe(6);
    expect(headerInteger(' 7 ')).toBe(7);
    expect(headerInteger(true)).toBeUndefined();
    expect(headerInteger('soon')).toBeUndefined();
    expect(headerInteger(undefined)).toBeUndefined();
  });

  test('a delivery carries the properties and headers of protocol §2.2 and the traceparent', () => {
    const message = {
      content: Buffer.from('{"a":1}'),
      fields: { redelivered: true, deliveryTag: 1, consumerTag: 't', exchange: '', routingKey: 'q' },
      properties: {
        correlationId: 'c',
        replyTo: 'taskgate.reply.h',
        type: 'echo',
        headers: {
          'x-deadline-ms': 1234,
          'x-stream': true,
          traceparent: Buffer.from('00-t-s-01'),
          'x-identity': Buffer.from('{"subject":"ada","roles":["admin","ops"]}'),
        },
      },
    } as unknown as ConsumeMessage;
    expect(toDelivery(message)).toEqual({
      correlationId: 'c',
      replyTo: 'taskgate.reply.h',
      requestType: 'echo',
      deadlineMs: 1234,
      streams: true,
      redelivered: true,
      traceparent: '00-t-s-01',
      identity: { subject: 'ada', roles: ['admin', 'ops'] },
      body: message.content,
      attempt: 1,
    });
    // §3.12: the attempt and the retry policy.
    const retried = {
      ...message,
      properties: { ...message.properties, headers: { 'x-attempt': 3, 'x-retry': '{"attempts":5,"delayMs":10}' } },
    } as unknown as ConsumeMessage;
    expect(toDelivery(retried)).toMatchObject({ attempt: 3, retry: { attempts: 5, delayMs: 10, backoff: 'fixed' } });
    const bare = { ...message, properties: { headers: undefined } } as unknown as ConsumeMessage;
    expect(toDelivery(bare)).toMatchObject({ correlationId: undefined, replyTo: undefined, streams: false, deadlineMs: undefined });
    expect(toDelivery(bare).identity).toBeUndefined();
  });

  test('an x-identity header that is not {subject, roles} JSON gives no identity', () => {
    for (const raw of ['not json', '{"subject":5,"roles":[]}', '{"subject":"a","roles":"admin"}', '{"subject":"a","roles":[1]}', '[]']) {
      const message = {
        content: Buffer.from('{}'),
        fields: { redelivered: false, deliveryTag: 1, consumerTag: 't', exchange: '', routingKey: 'q' },
        properties: { headers: { 'x-identity': raw } },
      } as unknown as ConsumeMessage;
      expect(toDelivery(message).identity).toBeUndefined();
    }
  });
});

describe('the default logger', () => {
  test('reads the level like the Rust parts read TASKGATE_LOG', () => {
    expect(levelFrom('info,lapin=warn')).toBe('info');
    expect(levelFrom('lapin=warn,debug')).toBe('debug');
    expect(levelFrom('trace')).toBe('debug');
    expect(levelFrom(undefined)).toBe('info');
  });

  test('writes one text line per event, with fields, and leaves out lines below its level', () => {
    const lines: string[] = [];
    const log = consoleLogger({ level: 'info', format: 'text', write: (l) => lines.push(l) }).child({ correlation_id: 'c-1' });
    log.debug('hidden');
    log.info('request cancelled', { traceparent: '00-a-b-01', note: 'two words' });
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^\d{4}-\d\d-\d\dT.*Z  INFO request cancelled correlation_id=c-1 traceparent=00-a-b-01 note="two words"$/);
  });

  test('json format writes one object per line', () => {
    const lines: string[] = [];
    consoleLogger({ level: 'debug', format: 'json', write: (l) => lines.push(l) }).warn('w', { n: 1 });
    expect(JSON.parse(lines[0]!)).toMatchObject({ level: 'warn', message: 'w', n: 1 });
  });
});
