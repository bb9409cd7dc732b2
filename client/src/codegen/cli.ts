#!/usr/bin/env node
// The `taskgate-codegen` bin; the command itself is in run.ts (tests call it in-process).
import { main } from './run.js';

process.exitCode = await main(process.argv.slice(2));
