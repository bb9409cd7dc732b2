/**
 * The taskgate-codegen command (bin: cli.ts): `taskgate schemas` JSON in, a module typing every request type out —
 * for the client (TypeScript, the default), for Node SDK workers (`--target node-worker`) or for Python SDK workers
 * (`--target python`).
 *
 *   taskgate schemas --config plugins.toml | taskgate-codegen --output src/taskgate-types.ts
 *   taskgate-codegen --input schemas.json --output src/taskgate-types.ts --check
 *   taskgate-codegen --target python --input schemas.json --output worker_types.py
 *
 * `--check` writes nothing and exits 1 when the file is not what would be generated (for CI).
 */

import { readFile, writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';

import { generateNodeWorkerTypes, generateTypes, SchemasError } from './generate.js';
import { generatePythonTypes } from './python.js';

const USAGE = `usage: taskgate-codegen [--target client|node-worker|python] [--input FILE] [--output FILE] [--check] [--strict] [--module NAME]

Reads the JSON printed by \`taskgate schemas --config plugins.toml\` (from FILE, or standard
input) and writes a module that types every request type (to FILE, or standard output):

  client          a TypeScript module augmenting @taskgate/client's request map (the default)
  node-worker     TypeScript types for @taskgate/worker handlers: worker.typed<TaskgateRequestTypes>()
  python          a Python module of TypedDicts and TaskgateWorker for taskgate_worker handlers (mypy)

  --target NAME   what to generate (default: client)
  --input FILE    the schemas JSON (default: standard input)
  --output FILE   where to write the module (default: standard output)
  --check         write nothing; exit 1 if --output is not up to date
  --strict        close the request map: a request type that is not in it (a typo)
                  does not compile, explicit generics included (client only)
  --module NAME   the module to augment (client only; default: @taskgate/client)
  --help          this text`;

const TARGETS = ['client', 'node-worker', 'python'] as const;
type Target = (typeof TARGETS)[number];

/** Where the command reads and writes (the process's streams by default; tests pass their own). */
export interface CommandIo {
  stdout(text: string): void;
  stderr(text: string): void;
  stdin(): Promise<string>;
}

const processIo: CommandIo = {
  stdout: (text) => void process.stdout.write(text),
  stderr: (text) => void process.stderr.write(text),
  stdin: readStdin,
};

/** Runs the command; resolves with its exit code. */
export async function main(argv: string[], io: CommandIo = processIo): Promise<number> {
  let args;
  try {
    args = parseArgs({
      args: argv,
      options: {
        input: { type: 'string' },
        output: { type: 'string' },
        check: { type: 'boolean', default: false },
        module: { type: 'string' },
        strict: { type: 'boolean', default: false },
        target: { type: 'string', default: 'client' },
        help: { type: 'boolean', default: false },
      },
      strict: true,
      allowPositionals: false,
    }).values;
  } catch (error) {
    io.stderr(`taskgate-codegen: ${(error as Error).message}\n${USAGE}\n`);
    return 2;
  }
  if (args.help) {
    io.stdout(`${USAGE}\n`);
    return 0;
  }
  const target = args.target as Target;
  if (!TARGETS.includes(target)) {
    io.stderr(`taskgate-codegen: unknown --target ${JSON.stringify(args.target)} (one of ${TARGETS.join(', ')})\n`);
    return 2;
  }
  if ((args.module || args.strict) && target !== 'client') {
    io.stderr('taskgate-codegen: --module and --strict are for --target client only\n');
    return 2;
  }
  if (args.check && !args.output) {
    io.stderr('taskgate-codegen: --check needs --output FILE\n');
    return 2;
  }

  const from = args.input ?? 'standard input';
  let text: string;
  try {
    text = args.input ? await readFile(args.input, 'utf8') : await io.stdin();
  } catch (error) {
    io.stderr(`taskgate-codegen: cannot read ${from}: ${(error as Error).message}\n`);
    return 1;
  }
  let document: unknown;
  try {
    document = JSON.parse(text);
  } catch (error) {
    io.stderr(`taskgate-codegen: ${from} is not JSON: ${(error as Error).message}\n`);
    return 1;
  }

  let generated: string;
  try {
    generated =
      target === 'python'
        ? generatePythonTypes(document)
        : target === 'node-worker'
          ? await generateNodeWorkerTypes(document)
          : await generateTypes(document, { ...(args.module ? { moduleName: args.module } : {}), strict: args.strict });
  } catch (error) {
    const what = error instanceof SchemasError ? `${from} is not \`taskgate schemas\` output: ` : '';
    io.stderr(`taskgate-codegen: ${what}${(error as Error).message}\n`);
    return 1;
  }

  if (args.check) {
    const current = await readFile(args.output!, 'utf8').catch(() => undefined);
    if (current === generated) return 0;
    io.stderr(
      `taskgate-codegen: ${args.output} is ${current === undefined ? 'missing' : 'out of date'}; ` +
        `regenerate it with \`taskgate schemas --config plugins.toml | taskgate-codegen${target === 'client' ? '' : ` --target ${target}`}${args.strict ? ' --strict' : ''} --output FILE\`\n`,
    );
    return 1;
  }
  if (args.output) {
    await writeFile(args.output, generated);
    io.stderr(`taskgate-codegen: wrote ${args.output}\n`);
  } else {
    io.stdout(generated);
  }
  return 0;
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

