/**
 * taskgate-codegen for workers: `--target node-worker` (TypeScript types for @taskgate/worker handlers) and
 * `--target python` (TypedDicts and `TaskgateWorker` for taskgate_worker). The generated samples live next to the
 * SDKs' type tests, which prove that tsc and mypy refuse wrong uses (workers/node/test/types,
 * workers/python/tests/unit/test_typed_handlers.py); these tests keep those samples up to date.
 */

import { readFile } from 'node:fs/promises';
import path from 'node:path';

import { generateNodeWorkerTypes } from '../src/codegen/generate.js';
import { generatePythonTypes } from '../src/codegen/python.js';
import { main } from '../src/codegen/run.js';

const SAMPLE = path.join(__dirname, 'fixtures', 'schemas.sample.json');
const WORKERS = path.join(__dirname, '..', '..', 'workers');
const NODE_TYPES = path.join(WORKERS, 'node', 'test', 'types', 'taskgate-worker-types.ts');
const PYTHON_TYPES = path.join(WORKERS, 'python', 'tests', 'typing', 'taskgate_types.py');

async function sample(): Promise<unknown> {
  return JSON.parse(await readFile(SAMPLE, 'utf8'));
}

function io() {
  const out: string[] = [];
  const err: string[] = [];
  return {
    io: { stdout: (t: string) => void out.push(t), stderr: (t: string) => void err.push(t), stdin: async () => '' },
    out: () => out.join(''),
    err: () => err.join(''),
  };
}

describe('--target node-worker', () => {
  test('workers/node/test/types/taskgate-worker-types.ts is the output for the sample (regenerate it if this fails)', async () => {
    expect(await generateNodeWorkerTypes(await sample())).toBe(await readFile(NODE_TYPES, 'utf8'));
  });

  test('exports the map and every part, and augments nothing', async () => {
    const out = await generateNodeWorkerTypes(await sample());
    expect(out).toMatch(/export interface TaskgateRequestTypes \{/);
    expect(out).toMatch(/export interface TextWordcountPayload \{[^}]*text: string;/);
    expect(out).not.toContain('declare module');
    expect(out).not.toContain('import');
  });
});

describe('--target python', () => {
  test('workers/python/tests/typing/taskgate_types.py is the output for the sample (regenerate it if this fails)', async () => {
    expect(generatePythonTypes(await sample())).toBe(await readFile(PYTHON_TYPES, 'utf8'));
  });

  test('TypedDicts per part, NotRequired for optional fields, a handler type and an overload per request type', async () => {
    const out = generatePythonTypes(await sample());
    expect(out).toContain('class TextWordcountPayload(TypedDict):\n    """Text to count."""\n    text: str\n');
    expect(out).toContain('DemoCountdownPayload = TypedDict("DemoCountdownPayload", {"from": "int", "intervalMs": "NotRequired[int]"})');
    expect(out).toContain('TextWordcountHandler = TypedHandler[TextWordcountPayload, TextWordcountResult, NoReturn]');
    expect(out).toContain('DemoCountdownHandler = TypedHandler[DemoCountdownPayload, DemoCountdownResult, DemoCountdownChunk]');
    expect(out).toContain('EchoHandler = TypedHandler[EchoPayload, Any, Any]');
    expect(out).toContain('def handler(self, request_type: Literal["text.wordcount"], *');
  });

  test('refs into $defs and definitions, enums, nullable fields, arrays, maps and recursion', () => {
    const out = generatePythonTypes({
      protocol: 1,
      requestTypes: {
        'a.one': {
          streams: true,
          payload: {
            title: 'Req',
            type: 'object',
            properties: {
              items: { type: 'array', items: { $ref: '#/$defs/Item' } },
              mode: { type: 'string', enum: ['fast', 'slow'] },
              note: { type: ['string', 'null'] },
              counts: { type: 'object', additionalProperties: { type: 'integer' } },
              parent: { anyOf: [{ $ref: '#' }, { type: 'null' }] },
            },
            required: ['items', 'mode'],
            $defs: { Item: { type: 'object', properties: { n: { type: 'number' } }, required: ['n'] } },
          },
          result: { definitions: { Kind: { type: 'string', const: 'done' } }, $ref: '#/definitions/Kind' },
          chunk: { oneOf: [{ type: 'integer' }, { type: 'string' }] },
        },
      },
    });
    expect(out).toContain('class Item(TypedDict):\n    n: float\n');
    expect(out).toContain('    items: list[Item]\n');
    expect(out).toContain('    mode: Literal["fast", "slow"]\n');
    expect(out).toContain('    note: NotRequired[Union[str, None]]\n');
    expect(out).toContain('    counts: NotRequired[dict[str, int]]\n');
    expect(out).toContain('    parent: NotRequired[Union[AOnePayload, None]]\n');
    expect(out).toContain('Kind = Literal["done"]\n');
    expect(out).toContain('AOneResult = Kind\n');
    expect(out).toContain('AOneChunk = Union[int, str]\n');
    // One request type: no overloads (Python needs two).
    expect(out).not.toContain('@overload');
    expect(out).toContain('def handler(self, request_type: Literal["a.one"], *');
  });
});

describe('the command', () => {
  test('--target chooses what is generated; an unknown one is a usage error', async () => {
    const python = io();
    expect(await main(['--target', 'python', '--input', SAMPLE], python.io)).toBe(0);
    expect(python.out()).toBe(await readFile(PYTHON_TYPES, 'utf8'));
    const node = io();
    expect(await main(['--target', 'node-worker', '--input', SAMPLE], node.io)).toBe(0);
    expect(node.out()).toBe(await readFile(NODE_TYPES, 'utf8'));
    const unknown = io();
    expect(await main(['--target', 'rust'], unknown.io)).toBe(2);
    expect(unknown.err()).toContain('unknown --target "rust" (one of client, node-worker, python)');
    const moduleForPython = io();
    expect(await main(['--target', 'python', '--module', 'x'], moduleForPython.io)).toBe(2);
  });
});
