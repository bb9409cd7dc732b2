/**
 * The `echo` example worker (handler in handlers.ts):
 * `node dist/examples/echo.js [--amqp-url URL] [--queue echo=QUEUE] [--prefetch N]`.
 */
import { main } from './cli.js';
import { echo } from './handlers.js';

await main('taskgate-node-echo', { echo });
