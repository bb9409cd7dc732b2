/**
 * taskgate-codegen: `taskgate schemas` JSON → a TypeScript module augmenting TaskgateRequestMap.
 * (That the output compiles and types calls is checked by `npm run typecheck` on test/types.)
 */

import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';

import { generateTypes, parseSchemasDocument, SchemasError, typeBaseName } from '../src/codegen/generate.js';
import { main } from '../src/codegen/run.js';

const FIXTURES = path.join(__dirname, 'fixtures');
const SAMPLE = path.join(FIXTURES, 'schemas.sample.json');
const TYPES = path.join(__dirname, 'types', 'taskgate-types.ts');
const STRICT_TYPES = path.join(__dirname, 'types-strict', 'taskgate-types.ts');

async function sample(): Promise<unknown> {
  return JSON.parse(await readFile(SAMPLE, 'utf8'));
}

describe('generateTypes', () => {
  test('test/types/taskgate-types.ts is the output for the sample (regenerate it with the CLI if this fails)', async () => {
    expect(await generateTypes(await sample())).toBe(await readFile(TYPES, 'utf8'));
  });

  test('test/types-strict/taskgate-types.ts is the --strict output for the sample', async () => {
    expect(await generateTypes(await sample(), { strict: true })).toBe(await readFile(STRICT_TYPES, 'utf8'));
  });

  test('strict mode closes the map through TaskgateTypeOptions; without it nothing is declared', async () => {
    const strict = await generateTypes(await sample(), { strict: true });
    expect(strict).toMatch(/interface TaskgateTypeOptions \{\s+strict: true;\s+\}/);
    expect(strict).toContain('taskgate-codegen --strict --output');
    expect(await generateTypes(await sample())).not.toContain('TaskgateTypeOptions');
  });

  test('one entry per request type with payload, result and chunk, and the augmentation', async () => {
    const out = await generateTypes(await sample());
    expect(out).toContain(`import type {} from '@taskgate/client';`);
    expect(out).toMatch(/'text\.wordcount': \{\s+payload: TextWordcountPayload;\s+result: TextWordcountResult;\s+chunk: never;/);
    expect(out).toMatch(/'demo\.countdown': \{\s+payload: DemoCountdownPayload;\s+result: DemoCountdownResult;\s+chunk: DemoCountdownChunk;/);
    expect(out).toMatch(/echo: \{\s+payload: unknown;\s+result: unknown;\s+chunk: unknown;/);
    expect(out).toMatch(/export interface TextWordcountPayload \{[^}]*text: string;/);
    expect(out).toMatch(/export interface DemoCountdownPayload \{\s+from: number;\s+intervalMs\?: number;/);
    expect(out).toContain(`declare module '@taskgate/client' {\n  interface TaskgateRequestMap extends TaskgateRequestTypes {}\n}`);
    expect(out).toContain('Counts the words, lines and characters of a text.');
    expect(out).toContain('Plugin `countdown` 0.1.0; streams chunks.');
  });

  test('the module to augment can be named', async () => {
    const out = await generateTypes(await sample(), { moduleName: 'my-client' });
    expect(out).toContain(`declare module 'my-client' {`);
    expect(out).not.toContain('@taskgate/client');
  });

  test('$defs and $ref inside a part resolve; equal titles of different types get distinct names; recursion works', async () => {
    const out = await generateTypes({
      protocol: 1,
      requestTypes: {
        'a.one': {
          streams: false,
          payload: {
            $schema: 'https://json-schema.org/draft/2020-12/schema',
            title: 'Req',
            type: 'object',
            properties: { items: { type: 'array', items: { $ref: '#/$defs/Item' } } },
            required: ['items'],
            $defs: { Item: { type: 'object', properties: { n: { type: 'integer' } }, required: ['n'] } },
          },
          result: {
            title: 'Req',
            type: 'object',
            properties: { item: { $ref: '#/$defs/Item' } },
            required: ['item'],
            $defs: { Item: { type: 'object', properties: { s: { type: 'string' } }, required: ['s'] } },
          },
          chunk: null,
        },
        'b/two': {
          streams: true,
          payload: { title: 'Tree', type: 'object', properties: { kids: { type: 'array', items: { $ref: '#' } } }, required: ['kids'] },
          result: false,
          chunk: { type: 'string', enum: ['x', 'y'] },
        },
      },
    });
    expect(out).toMatch(/export interface AOnePayload \{\s+items: Item\[\];/);
    expect(out).toMatch(/export interface AOneResult \{\s+item: Item1;/);
    expect(out).toMatch(/export interface Item \{\s+n: number;/);
    expect(out).toMatch(/export interface Item1 \{\s+s: string;/);
    expect(out).toMatch(/export interface BTwoPayload \{\s+kids: BTwoPayload\[\];/);
    expect(out).toContain(`export type BTwoChunk = 'x' | 'y';`);
    expect(out).toMatch(/'b\/two': \{\s+payload: BTwoPayload;\s+result: never;\s+chunk: BTwoChunk;/);
  });

  test('a streaming type without a chunk schema has unknown chunks; a non-streaming one never', async () => {
    const part = { type: 'object', properties: {} };
    const out = await generateTypes({
      protocol: 1,
      requestTypes: {
        s: { streams: true, payload: part, result: null, chunk: null },
        n: { streams: false, payload: {}, result: null, chunk: null },
      },
    });
    expect(out).toMatch(/s: \{\s+payload: SPayload;\s+result: unknown;\s+chunk: unknown;/);
    expect(out).toMatch(/n: \{\s+payload: unknown;\s+result: unknown;\s+chunk: never;/);
  });

  test('no request types still makes a valid module', async () => {
    const out = await generateTypes({ protocol: 1, requestTypes: {} });
    expect(out).toContain('export interface TaskgateRequestTypes {}');
  });

  test('a $ref to another file is not fetched', async () => {
    await expect(
      generateTypes({
        protocol: 1,
        requestTypes: { x: { streams: false, payload: { $ref: 'file:///etc/passwd' }, result: null, chunk: null } },
      }),
    ).rejects.toThrow();
  });
});

describe('parseSchemasDocument', () => {
  test.each([
    [null, /JSON object/],
    [[], /JSON object/],
    [{ requestTypes: {} }, /unsupported protocol undefined/],
    [{ protocol: 2, requestTypes: {} }, /unsupported protocol 2/],
    [{ protocol: 1 }, /requestTypes/],
    [{ protocol: 1, requestTypes: { x: 5 } }, /requestTypes\["x"\] must be an object/],
    [{ protocol: 1, requestTypes: { '': { streams: false, payload: true, result: null, chunk: null } } }, /empty/],
    [{ protocol: 1, requestTypes: { x: { payload: true, result: null, chunk: null } } }, /streams must be a boolean/],
    [{ protocol: 1, requestTypes: { x: { streams: false, payload: null, result: null, chunk: null } } }, /payload must be a JSON Schema/],
    [{ protocol: 1, requestTypes: { x: { streams: false, payload: true, result: 'no', chunk: null } } }, /result must be/],
    [{ protocol: 1, requestTypes: { x: { streams: false, payload: true, result: null, chunk: [] } } }, /chunk must be/],
  ])('refuses %j', (input, message) => {
    expect(() => parseSchemasDocument(input)).toThrow(SchemasError);
    expect(() => parseSchemasDocument(input)).toThrow(message);
  });
});

test.each([
  ['text.wordcount', 'TextWordcount'],
  ['demo.countdown', 'DemoCountdown'],
  ['echo', 'Echo'],
  ['image-resize/v2', 'ImageResizeV2'],
  ['3d.render', 'T3dRender'],
  ['...', 'RequestType'],
])('typeBaseName(%j) = %j', (name, expected) => {
  expect(typeBaseName(name)).toBe(expected);
});

describe('the taskgate-codegen command', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'taskgate-codegen-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  function io(stdin = '') {
    const out: string[] = [];
    const err: string[] = [];
    return {
      io: { stdout: (t: string) => void out.push(t), stderr: (t: string) => void err.push(t), stdin: async () => stdin },
      out: () => out.join(''),
      err: () => err.join(''),
    };
  }

  test('--input FILE --output FILE writes the module; --check then passes', async () => {
    const output = path.join(dir, 'types.ts');
    const a = io();
    expect(await main(['--input', SAMPLE, '--output', output], a.io)).toBe(0);
    expect(await readFile(output, 'utf8')).toBe(await readFile(TYPES, 'utf8'));
    expect(a.err()).toContain(`wrote ${output}`);
    const b = io();
    expect(await main(['--input', SAMPLE, '--output', output, '--check'], b.io)).toBe(0);
  });

  test('--strict writes the strict module (and --check compares against it)', async () => {
    const output = path.join(dir, 'strict.ts');
    expect(await main(['--input', SAMPLE, '--output', output, '--strict'], io().io)).toBe(0);
    expect(await readFile(output, 'utf8')).toBe(await readFile(STRICT_TYPES, 'utf8'));
    expect(await main(['--input', SAMPLE, '--output', output, '--strict', '--check'], io().io)).toBe(0);
    expect(await main(['--input', SAMPLE, '--output', output, '--check'], io().io)).toBe(1);
    await writeFile(output, '// stale\n');
    const stale = io();
    expect(await main(['--input', SAMPLE, '--output', output, '--strict', '--check'], stale.io)).toBe(1);
    expect(stale.err()).toContain('taskgate-codegen --strict --output FILE');
  });

  test('--check fails on a stale or missing file and writes nothing', async () => {
    const output = path.join(dir, 'types.ts');
    await writeFile(output, '// stale\n');
    const a = io();
    expect(await main(['--input', SAMPLE, '--output', output, '--check'], a.io)).toBe(1);
    expect(a.err()).toContain('out of date');
    expect(await readFile(output, 'utf8')).toBe('// stale\n');
    const b = io();
    expect(await main(['--input', SAMPLE, '--output', path.join(dir, 'none.ts'), '--check'], b.io)).toBe(1);
    expect(b.err()).toContain('missing');
  });

  test('reads standard input and writes standard output by default', async () => {
    const a = io(await readFile(SAMPLE, 'utf8'));
    expect(await main([], a.io)).toBe(0);
    expect(a.out()).toBe(await readFile(TYPES, 'utf8'));
  });

  test('bad input: not JSON, not schemas output, unreadable file → exit 1 with the reason', async () => {
    const notJson = io('taskgate: error');
    expect(await main([], notJson.io)).toBe(1);
    expect(notJson.err()).toContain('standard input is not JSON');
    const wrong = io('{"protocol": 9, "requestTypes": {}}');
    expect(await main([], wrong.io)).toBe(1);
    expect(wrong.err()).toContain('unsupported protocol 9');
    const missing = io();
    expect(await main(['--input', path.join(dir, 'nope.json')], missing.io)).toBe(1);
    expect(missing.err()).toContain('cannot read');
  });

  test('usage errors exit 2; --help exits 0', async () => {
    const unknown = io();
    expect(await main(['--bogus'], unknown.io)).toBe(2);
    expect(unknown.err()).toContain('usage:');
    const check = io();
    expect(await main(['--check'], check.io)).toBe(2);
    const help = io();
    expect(await main(['--help'], help.io)).toBe(0);
    expect(help.out()).toContain('taskgate-codegen');
  });
});
