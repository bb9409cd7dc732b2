/**
 * Reading a host's `GET /metrics` (Prometheus text exposition format) in tests.
 */

import assert from 'node:assert/strict';

import type { Host } from './harness.js';

/** The value of `name{labels…}` (summed over the series whose labels include `labels`). */
export function metric(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  let total: number | undefined;
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line.trim() === '') continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$/);
    if (!m || m[1] !== name) continue;
    const seriesLabels = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((l) => [l[1], l[2]]));
    if (Object.entries(labels).every(([k, v]) => seriesLabels[k] === v)) total = (total ?? 0) + Number(m[3]);
  }
  return total;
}

/** `GET /metrics`, checked to be the Prometheus text format. */
export async function scrape(host: Host): Promise<string> {
  const res = await fetch(`${host.url}/metrics`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  return res.text();
}
