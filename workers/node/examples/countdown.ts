/**
 * The `demo.countdown` example worker (handler in handlers.ts):
 * `node dist/examples/countdown.js [--amqp-url URL] [--queue demo.countdown=QUEUE] [--prefetch N]`.
 */
import { main } from './cli.js';
import { countdown } from './handlers.js';

await main('taskgate-node-countdown', { 'demo.countdown': countdown });
