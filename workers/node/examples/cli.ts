/**
 * The command line shared by the example workers (countdown.js, echo.js, all.js):
 *
 * ```sh
 * node dist/examples/countdown.js [--amqp-url URL] [--queue TYPE=QUEUE]... [--prefetch N]
 * bun dist/examples/countdown.js …        # the same under Bun
 * ```
 *
 * `--amqp-url` defaults to `TASKGATE_AMQP_URL`, then the local RabbitMQ; `--queue` consumes a
 * request type from another queue than `taskgate.<type>` (tests use unique names). Logs go to
 * stderr (`TASKGATE_LOG` sets the level, `TASKGATE_LOG_FORMAT=json` the format); the line
 * `worker ready` appears once it consumes. SIGTERM or SIGINT stops it gracefully.
 */

import { parseArgs } from 'node:util';

import { createWorker, DEFAULT_PREFETCH, WorkerError, type Handler } from '../src/index.js';

export interface Settings {
  amqpUrl: string | undefined;
  prefetch: number;
  queues: Record<string, string>;
  connectionName: string | undefined;
}

/** Parses the command line of a worker serving `types`; throws an Error that says what is wrong. */
export function parseCommandLine(args: string[], types: string[]): Settings {
  const { values } = parseArgs({
    args,
    options: {
      'amqp-url': { type: 'string' },
      queue: { type: 'string', multiple: true },
      prefetch: { type: 'string' },
      'connection-name': { type: 'string' },
    },
    strict: true,
    allowPositionals: false,
  });
  const queues: Record<string, string> = {};
  for (const entry of values.queue ?? []) {
    const at = entry.indexOf('=');
    const type = entry.slice(0, Math.max(at, 0));
    const queue = entry.slice(at + 1);
    if (at < 0 || !queue) throw new Error(`expected --queue TYPE=QUEUE, got \`${entry}\``);
    if (!types.includes(type)) throw new Error(`unknown request type \`${type}\` (known: ${types.join(', ')})`);
    queues[type] = queue;
  }
  let prefetch = DEFAULT_PREFETCH;
  if (values.prefetch !== undefined) {
    prefetch = Number(values.prefetch);
    if (!/^\d+$/.test(values.prefetch) || prefetch < 1 || prefetch > 65535) {
      throw new Error(`--prefetch must be an integer from 1 to 65535, got \`${values.prefetch}\``);
    }
  }
  return {
    amqpUrl: values['amqp-url'] ?? process.env.TASKGATE_AMQP_URL,
    prefetch,
    queues,
    connectionName: values['connection-name'],
  };
}

/** Runs a worker with `handlers` (request type → handler) configured from the command line. */
export async function main(name: string, handlers: Record<string, Handler>): Promise<void> {
  let settings: Settings;
  try {
    settings = parseCommandLine(process.argv.slice(2), Object.keys(handlers));
  } catch (error) {
    process.stderr.write(`${name}: ${(error as Error).message}\n`);
    process.exit(2);
  }
  const worker = createWorker({
    url: settings.amqpUrl,
    prefetch: settings.prefetch,
    queues: settings.queues,
    connectionName: settings.connectionName ?? name,
  });
  for (const [type, handler] of Object.entries(handlers)) worker.handle(type, handler);
  try {
    await worker.run();
  } catch (error) {
    process.stderr.write(`${name}: ${error instanceof WorkerError ? error.message : String(error)}\n`);
    process.exit(1);
  }
  // Handlers the worker gave up on may still hold timers: the worker is done, so is the process.
  process.exit(0);
}
