/**
 * Logging: a small interface the SDK writes through (pass your own to `createWorker` to send
 * lines to pino, winston …) and a default that writes one line per event to stderr.
 *
 * Lines about a request carry its `correlation_id` and, when the host sent one, its W3C
 * `traceparent`, so a request can be followed from the host's log into the worker's.
 */

export type Level = 'debug' | 'info' | 'warn' | 'error';
export type Fields = Record<string, unknown>;

export interface Logger {
  debug(message: string, fields?: Fields): void;
  info(message: string, fields?: Fields): void;
  warn(message: string, fields?: Fields): void;
  error(message: string, fields?: Fields): void;
  /** A logger that adds `fields` to every line. */
  child(fields: Fields): Logger;
}

const RANK: Record<Level, number> = { debug: 0, info: 1, warn: 2, error: 3 };

/**
 * The level from a `TASKGATE_LOG`-style value: its first bare level (`debug`, `info`, `warn`,
 * `error`, `trace` counts as debug), so the filters the Rust parts take (`info,lapin=warn`)
 * work here too. Default `info`.
 */
export function levelFrom(value: string | undefined): Level {
  for (const part of (value ?? '').split(',')) {
    const word = part.trim().toLowerCase();
    if (word === 'trace') return 'debug';
    if (word in RANK) return word as Level;
  }
  return 'info';
}

function formatValue(value: unknown): string {
  if (typeof value === 'string') return /^[^\s"=]+$/.test(value) ? value : JSON.stringify(value);
  if (value instanceof Error) return JSON.stringify(value.stack ?? value.message);
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

export interface ConsoleLoggerOptions {
  level?: Level;
  /** `text` (default): `2026-01-01T00:00:00.000Z  INFO message key=value`; `json`: one object per line. */
  format?: 'text' | 'json';
  /** Where lines go (default: stderr). */
  write?: (line: string) => void;
}

/** The default logger: level from `TASKGATE_LOG`, format from `TASKGATE_LOG_FORMAT`. */
export function consoleLogger(options: ConsoleLoggerOptions = {}, fields: Fields = {}): Logger {
  const level = options.level ?? levelFrom(process.env.TASKGATE_LOG);
  const format = options.format ?? (process.env.TASKGATE_LOG_FORMAT === 'json' ? 'json' : 'text');
  const write = options.write ?? ((line: string) => process.stderr.write(`${line}\n`));
  const emit = (at: Level, message: string, extra: Fields | undefined) => {
    if (RANK[at] < RANK[level]) return;
    const all = { ...fields, ...extra };
    const time = new Date().toISOString();
    if (format === 'json') {
      const record: Fields = { time, level: at, message };
      for (const [k, v] of Object.entries(all)) record[k] = v instanceof Error ? (v.stack ?? v.message) : v;
      try {
        write(JSON.stringify(record));
      } catch {
        write(JSON.stringify({ time, level: at, message }));
      }
      return;
    }
    const pairs = Object.entries(all)
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => `${k}=${formatValue(v)}`);
    write([time, at.toUpperCase().padStart(5), message, ...pairs].join(' '));
  };
  return {
    debug: (m, f) => emit('debug', m, f),
    info: (m, f) => emit('info', m, f),
    warn: (m, f) => emit('warn', m, f),
    error: (m, f) => emit('error', m, f),
    child: (more) => consoleLogger({ level, format, write }, { ...fields, ...more }),
  };
}

/** One logged line, as `memoryLogger` keeps it. */
export interface LogRecord {
  level: Level;
  message: string;
  fields: Fields;
}

/** A logger that keeps its lines in `records` (for tests). */
export function memoryLogger(records: LogRecord[] = [], fields: Fields = {}): Logger & { records: LogRecord[] } {
  const emit = (level: Level, message: string, extra?: Fields) => records.push({ level, message, fields: { ...fields, ...extra } });
  return {
    records,
    debug: (m, f) => emit('debug', m, f),
    info: (m, f) => emit('info', m, f),
    warn: (m, f) => emit('warn', m, f),
    error: (m, f) => emit('error', m, f),
    child: (more) => memoryLogger(records, { ...fields, ...more }),
  };
}
