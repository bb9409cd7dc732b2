#!/usr/bin/env node
/**
 * Both Node example workers in one process, `echo` and `demo.countdown`:
 * `node dist/examples/all.js [--amqp-url URL] [--queue TYPE=QUEUE]... [--prefetch N]`.
 */
import { main } from './cli.js';
import { countdown, echo } from './handlers.js';

await main('taskgate-node-example-workers', { echo, 'demo.countdown': countdown });
