/**
 * Turns the host's `taskgate schemas` JSON into a TypeScript module that augments
 * `TaskgateRequestMap`, so request types, payloads, results and chunks are checked by tsc.
 *
 * The schemas of every request type go into ONE synthetic schema, compiled in one call of
 * json-schema-to-typescript: it then names every type once, making names unique itself when
 * two plugins use the same title (e.g. two `Request` structs). Each part gets a title made
 * from its request type (`text.wordcount` → `TextWordcountPayload`), and the `$ref`s inside
 * a part are rewritten to point into the synthetic schema, where the part now lives.
 */

import { compile, type JSONSchema } from 'json-schema-to-typescript';

/** What `taskgate schemas` prints. */
export interface SchemasDocument {
  protocol: number;
  requestTypes: Record<string, RequestTypeSchemas>;
}

export interface RequestTypeSchemas {
  plugin?: string;
  pluginVersion?: string;
  streams: boolean;
  description?: string | null;
  /** JSON Schema of the payload (`true` = any JSON). */
  payload: SchemaValue;
  /** JSON Schema of the result, or `null` when the plugin declares none (→ `unknown`). */
  result: SchemaValue | null;
  /** JSON Schema of a chunk, or `null` (→ `unknown` if the type streams, `never` if not). */
  chunk: SchemaValue | null;
}

export type SchemaValue = boolean | Record<string, unknown>;

export interface GenerateOptions {
  /** The module to augment (default `@taskgate/client`). */
  moduleName?: string;
  /**
   * Close the request map (`TaskgateTypeOptions { strict: true }`): request types that are not
   * in it no longer compile, explicit generics included.
   */
  strict?: boolean;
}

export const SUPPORTED_PROTOCOL = 1;
const ROOT_NAME = 'TaskgateRequestTypes';

export class SchemasError extends Error {
  override readonly name = 'SchemasError';
}

/** Checks the shape of `taskgate schemas` output; throws `SchemasError` saying what is wrong. */
export function parseSchemasDocument(input: unknown): SchemasDocument {
  if (!isObject(input)) throw new SchemasError('expected a JSON object with `protocol` and `requestTypes`');
  if (input.protocol !== SUPPORTED_PROTOCOL) {
    throw new SchemasError(
      `unsupported protocol ${JSON.stringify(input.protocol)}: this taskgate-codegen understands protocol ${SUPPORTED_PROTOCOL}`,
    );
  }
  if (!isObject(input.requestTypes)) throw new SchemasError('`requestTypes` must be an object');
  const requestTypes: Record<string, RequestTypeSchemas> = {};
  for (const [name, value] of Object.entries(input.requestTypes)) {
    const where = `requestTypes[${JSON.stringify(name)}]`;
    if (name.length === 0) throw new SchemasError('a request type name is empty');
    if (!isObject(value)) throw new SchemasError(`${where} must be an object`);
    if (typeof value.streams !== 'boolean') throw new SchemasError(`${where}.streams must be a boolean`);
    for (const part of ['payload', 'result', 'chunk'] as const) {
      const schema = value[part];
      const allowed = typeof schema === 'boolean' || isObject(schema) || (part !== 'payload' && schema === null);
      if (!allowed) {
        throw new SchemasError(`${where}.${part} must be a JSON Schema (object or boolean)${part === 'payload' ? '' : ' or null'}`);
      }
    }
    requestTypes[name] = value as unknown as RequestTypeSchemas;
  }
  return { protocol: SUPPORTED_PROTOCOL, requestTypes };
}

/** `text.wordcount` → `TextWordcount`; names that would not be identifiers get a prefix. */
export function typeBaseName(requestType: string): string {
  const words = requestType.split(/[^A-Za-z0-9]+/).filter(Boolean);
  const name = words.map((w) => w[0]!.toUpperCase() + w.slice(1)).join('');
  if (name === '') return 'RequestType';
  return /^[0-9]/.test(name) ? `T${name}` : name;
}

/** The TypeScript module text for `document` (the output of `taskgate schemas`). */
export async function generateTypes(document: unknown, options: GenerateOptions = {}): Promise<string> {
  const doc = parseSchemasDocument(document);
  const moduleName = options.moduleName ?? '@taskgate/client';
  const names = Object.keys(doc.requestTypes).sort();

  const properties: Record<string, JSONSchema> = {};
  for (const name of names) {
    const spec = doc.requestTypes[name]!;
    const base = typeBaseName(name);
    const at = (part: string) => `/properties/${escapePointer(name)}/properties/${part}`;
    const entry: JSONSchema = {
      type: 'object',
      additionalProperties: false,
      required: ['payload', 'result', 'chunk'],
      properties: {
        payload: part(spec.payload, `${base}Payload`, at('payload'), 'unknown'),
        result: part(spec.result, `${base}Result`, at('result'), 'unknown'),
        chunk: part(spec.chunk, `${base}Chunk`, at('chunk'), spec.streams ? 'unknown' : 'never'),
      },
    };
    const about = [spec.description, pluginNote(spec)].filter(Boolean).join('\n\n');
    if (about) entry.description = about;
    properties[name] = entry;
  }
  const root: JSONSchema = {
    title: ROOT_NAME,
    description: 'Every request type the host serves: its payload, result and chunk types.',
    type: 'object',
    additionalProperties: false,
    required: names,
    properties,
  };

  const body = await compile(root, ROOT_NAME, {
    bannerComment: '',
    additionalProperties: false,
    strictIndexSignatures: true,
    unreachableDefinitions: false,
    format: true,
    style: { singleQuote: true, printWidth: 110 },
    // Only this document: never fetch or read a `$ref` from elsewhere.
    $refOptions: { resolve: { external: false } } as never,
  });

  return [
    '/* eslint-disable */',
    '/**',
    ` * Request types of a taskgate host, generated by taskgate-codegen from \`taskgate schemas\``,
    ` * (protocol ${doc.protocol}). Do not edit: regenerate with`,
    ` *   taskgate schemas --config plugins.toml | taskgate-codegen${options.strict ? ' --strict' : ''} --output <this file>`,
    ' */',
    '',
    `import type {} from '${moduleName}';`,
    '',
    body.trim(),
    '',
    `declare module '${moduleName}' {`,
    `  interface TaskgateRequestMap extends ${ROOT_NAME} {}`,
    ...(options.strict ? ['  /** Strict mode: only the request types above compile. */', '  interface TaskgateTypeOptions {', '    strict: true;', '  }'] : []),
    '}',
    '',
  ].join('\n');
}

/** One part's schema, titled for naming and with its `$ref`s pointing at its new place. */
function part(schema: SchemaValue | null, title: string, pointer: string, absent: 'unknown' | 'never'): JSONSchema {
  if (schema === null) return { tsType: absent };
  if (schema === true || (isObject(schema) && Object.keys(schema).length === 0)) return { tsType: 'unknown' };
  if (schema === false) return { tsType: 'never' };
  const copy = rewriteRefs(schema, pointer) as Record<string, unknown>;
  delete copy.$schema;
  delete copy.$id;
  return { ...copy, title } as JSONSchema;
}

/** A deep copy of `value` whose local `$ref`s (`#/…`) are prefixed with `pointer`. */
function rewriteRefs(value: unknown, pointer: string): unknown {
  if (Array.isArray(value)) return value.map((v) => rewriteRefs(v, pointer));
  if (!isObject(value)) return value;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) {
    if (k === '$ref' && typeof v === 'string' && v.startsWith('#')) {
      out[k] = `#${pointer}${v.slice(1)}`;
    } else {
      out[k] = rewriteRefs(v, pointer);
    }
  }
  return out;
}

function pluginNote(spec: RequestTypeSchemas): string | undefined {
  if (!spec.plugin) return undefined;
  const version = spec.pluginVersion ? ` ${spec.pluginVersion}` : '';
  return `Plugin \`${spec.plugin}\`${version}${spec.streams ? '; streams chunks' : ''}.`;
}

function escapePointer(token: string): string {
  return token.replace(/~/g, '~0').replace(/\//g, '~1');
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
