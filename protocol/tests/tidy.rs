//! Tidy (as rust-analyzer's `xtask/src/tidy.rs`): every hand-written copy of the protocol's
//! names — the TypeScript client, the Node and Python worker SDKs, the e2e harness and the
//! tables of docs/protocol.md — has the names `taskgate-protocol` declares, spelled the same.
//! A code, event, reply type or header added to the crate fails this test until each copy
//! has it; the message says which file misses which name.
//!
//! The copies are read as text: each check finds one declaration (a constant, an array, a
//! table) and compares the strings in it. A copy that moved or changed shape fails too, with
//! a message saying what was not found where.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use taskgate_protocol::{amqp, events, ErrorCode, ReplyKind};

const DOC: &str = "docs/protocol.md";
const CLIENT_ERRORS: &str = "client/src/errors.ts";
const CLIENT_SOCKET: &str = "client/src/socket.ts";
const CLIENT_SRC: &str = "client/src";
const NODE_SDK: &str = "workers/node/src/protocol.ts";
const PYTHON_SDK: &str = "workers/python/src/taskgate_worker/protocol.py";
const E2E_HARNESS: &str = "tests/e2e/src/harness.ts";

/// The codes a worker SDK sends by itself (a handler may use any code). The Node and Python
/// SDKs name exactly these, and docs/protocol.md §3.4 says so; the Rust SDK uses
/// [`ErrorCode`] itself.
const WORKER_CODES: [ErrorCode; 3] = [
    ErrorCode::WorkerError,
    ErrorCode::InvalidPayload,
    ErrorCode::Cancelled,
];

/// The line of docs/protocol.md §3.4 that names [`WORKER_CODES`].
const DOC_WORKER_CODES_LINE: &str = "error codes a worker sends by itself";

#[test]
fn error_codes_match_everywhere() {
    let all: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    let worker: Vec<&str> = WORKER_CODES.iter().map(|c| c.as_str()).collect();
    let mut tidy = Tidy::default();

    tidy.doc_table("the error code table (§1)", "| code |", &all);
    let doc = tidy.read(DOC);
    let line = doc.lines().find(|l| l.contains(DOC_WORKER_CODES_LINE));
    let named = line.map(|l| {
        let names = backticked(l).into_iter().filter(|s| is_code(s));
        names.map(str::to_owned).collect()
    });
    tidy.same(
        DOC,
        &format!("the line about the \"{DOC_WORKER_CODES_LINE}\" (§3.4)"),
        &worker,
        named,
    );

    tidy.literals(CLIENT_ERRORS, "export const ERROR_CODES = [", "]", &all);
    for file in files_under(CLIENT_SRC, "ts") {
        let text = tidy.read(&file);
        for code in text
            .split("new TaskgateError('")
            .skip(1)
            .filter_map(|s| s.split('\'').next())
        {
            if !all.contains(&code) {
                tidy.problem(
                    &file,
                    format!("throws {code}, which is not a protocol error code"),
                );
            }
        }
    }

    tidy.literals(NODE_SDK, "export const ErrorCodes = {", "}", &worker);

    let python = tidy.read(PYTHON_SDK);
    let codes = constants(&python)
        .into_iter()
        .filter(|(name, value)| name == value)
        .map(|(_, v)| v);
    tidy.same(
        PYTHON_SDK,
        "the error code constants",
        &worker,
        Some(codes.collect()),
    );
    tidy.finish();
}

#[test]
fn event_names_match_everywhere() {
    let all: Vec<&str> = events::ALL.iter().map(|(_, name)| *name).collect();
    let mut tidy = Tidy::default();
    tidy.doc_table("the event table (§1)", "| event |", &all);
    tidy.literals(CLIENT_SOCKET, "export const EVENTS = {", "}", &all);
    let session: Vec<&str> = events::SESSION_EVENTS
        .iter()
        .map(|(_, name)| *name)
        .collect();
    tidy.doc_table(
        "the session event table (§4)",
        "| session event |",
        &session,
    );
    tidy.literals(
        CLIENT_SOCKET,
        "export const SESSION_EVENTS = {",
        "}",
        &session,
    );
    tidy.finish();
}

#[test]
fn reply_types_match_everywhere() {
    let all: Vec<&str> = ReplyKind::ALL.iter().map(|k| k.as_str()).collect();
    let mut tidy = Tidy::default();
    tidy.doc_table("the reply table (§2.3)", "| `type` | body |", &all);

    let client = tidy.read(CLIENT_SOCKET);
    let kinds = section(&client, "export type ResponseMessage =", ";\n").map(|s| {
        s.split("type: '")
            .skip(1)
            .filter_map(|s| s.split('\'').next())
            .map(str::to_owned)
            .collect()
    });
    tidy.same(CLIENT_SOCKET, "ResponseMessage", &all, kinds);

    tidy.literals(NODE_SDK, "export type ReplyKind =", ";", &all);

    let python = tidy.read(PYTHON_SDK);
    let kinds = constants(&python)
        .into_iter()
        .filter(|(name, value)| *name == value.to_uppercase() && name != value)
        .map(|(_, value)| value);
    tidy.same(
        PYTHON_SDK,
        "the reply type constants",
        &all,
        Some(kinds.collect()),
    );
    tidy.finish();
}

#[test]
fn amqp_names_match_everywhere() {
    let mut names: Vec<(&str, &str)> = amqp::HEADERS.to_vec();
    names.push(("CANCEL_EXCHANGE", amqp::CANCEL_EXCHANGE));
    names.push(("CONTENT_TYPE_JSON", amqp::CONTENT_TYPE_JSON));
    let mut tidy = Tidy::default();

    // The SDKs declare every name, under the crate's constant names.
    for file in [NODE_SDK, PYTHON_SDK] {
        let text = tidy.read(file);
        tidy.constants(file, &constants(&text), &names, true);
    }
    // The e2e harness declares the ones it needs; those must agree.
    let harness = tidy.read(E2E_HARNESS);
    tidy.constants(E2E_HARNESS, &constants(&harness), &names, false);

    let doc = tidy.read(DOC);
    for (_, header) in amqp::HEADERS {
        if !doc.contains(&format!("header `{header}`")) {
            tidy.problem(DOC, format!("misses header `{header}`"));
        }
    }
    for name in [
        amqp::CANCEL_EXCHANGE,
        amqp::CONTENT_TYPE_JSON,
        amqp::TASKS_EXCHANGE,
        amqp::CLAIM_TYPE,
        amqp::HANDOFF_TYPE,
        amqp::HOSTS_EXCHANGE,
    ] {
        if !doc.contains(&format!("`{name}`")) {
            tidy.problem(DOC, format!("misses `{name}`"));
        }
    }
    tidy.finish();
}

#[test]
fn the_no_consumers_refusal_is_documented_as_the_host_sends_it() {
    let mut tidy = Tidy::default();
    let doc = tidy.read(DOC);
    let details = format!(
        "`details: {{ \"reason\": \"{}\", \"requestType\": \"T\", \"queue\": \"Q\" }}`",
        taskgate_protocol::REASON_NO_CONSUMERS
    );
    if !doc.contains(&details) {
        tidy.problem(DOC, format!("§3.1 misses the refusal's {details}"));
    }
    tidy.finish();
}

/// The problems found, reported all at once.
#[derive(Default)]
struct Tidy {
    problems: Vec<String>,
}

impl Tidy {
    fn problem(&mut self, file: &str, problem: String) {
        self.problems.push(format!("{file}: {problem}"));
    }

    /// The text of `file` (a path from the repository root); empty, and a problem, if it
    /// cannot be read.
    fn read(&mut self, file: &str) -> String {
        std::fs::read_to_string(root().join(file)).unwrap_or_else(|e| {
            self.problem(file, format!("cannot be read: {e}"));
            String::new()
        })
    }

    /// `found` (`None`: the declaration was not found) holds exactly `expected`.
    fn same(&mut self, file: &str, what: &str, expected: &[&str], found: Option<Vec<String>>) {
        let Some(found) = found else {
            return self.problem(file, format!("{what} not found"));
        };
        let found: BTreeSet<&str> = found.iter().map(String::as_str).collect();
        for name in expected.iter().filter(|n| !found.contains(*n)) {
            self.problem(file, format!("{what} misses {name}"));
        }
        for name in found.iter().filter(|n| !expected.contains(n)) {
            self.problem(
                file,
                format!("{what} has {name}, which taskgate-protocol does not"),
            );
        }
    }

    /// The first column of docs/protocol.md's table whose header row starts with `header`
    /// holds exactly `expected`.
    fn doc_table(&mut self, what: &str, header: &str, expected: &[&str]) {
        let doc = self.read(DOC);
        self.same(DOC, what, expected, doc_table(&doc, header));
    }

    /// The string literals of `file` between `start` and the next `end` are exactly
    /// `expected`.
    fn literals(&mut self, file: &str, start: &str, end: &str, expected: &[&str]) {
        let text = self.read(file);
        let found = section(&text, start, end).map(quoted);
        self.same(file, &format!("`{start} … {end}`"), expected, found);
    }

    /// Every constant of `found` named like one of `names` has its value; with `all`,
    /// every one of `names` is declared.
    fn constants(
        &mut self,
        file: &str,
        found: &[(String, String)],
        names: &[(&str, &str)],
        all: bool,
    ) {
        for (name, value) in names {
            match found.iter().find(|(n, _)| n == name) {
                Some((_, v)) if v != value => self.problem(
                    file,
                    format!("{name} is {v:?}, taskgate-protocol says {value:?}"),
                ),
                None if all => self.problem(file, format!("misses {name} = {value:?}")),
                _ => {}
            }
        }
    }

    fn finish(self) {
        assert!(
            self.problems.is_empty(),
            "copies of the protocol's names disagree with taskgate-protocol:\n{}",
            self.problems.join("\n")
        );
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `.{ext}` files under `dir`, as paths from the repository root.
fn files_under(dir: &str, ext: &str) -> Vec<String> {
    let mut files = Vec::new();
    let mut dirs = vec![root().join(dir)];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == ext) {
                let relative = path.strip_prefix(root()).unwrap_or(&path);
                files.push(relative.display().to_string());
            }
        }
    }
    files
}

/// The text between `start` and the next `end` after it.
fn section<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let rest = &text[text.find(start)? + start.len()..];
    Some(&rest[..rest.find(end)?])
}

/// Every string literal in `text`, quoted with `'` or `"`.
fn quoted(text: &str) -> Vec<String> {
    let mut strings = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find(['\'', '"']) {
        let quote = &rest[open..=open];
        let after = &rest[open + 1..];
        let Some(close) = after.find(quote) else {
            break;
        };
        strings.push(after[..close].to_owned());
        rest = &after[close + 1..];
    }
    strings
}

/// The `` `names` `` of a line.
fn backticked(line: &str) -> Vec<&str> {
    line.split('`').skip(1).step_by(2).collect()
}

fn is_code(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
}

/// The constants of a TypeScript or Python file whose value is one string literal:
/// `export const NAME = 'value';`, `NAME: Final = "value"`, and the `KEY: 'value'` entries
/// of an object literal.
fn constants(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim().trim_start_matches("export const ");
            let (name, value) = line.split_once([':', '='])?;
            let value = value
                .trim()
                .trim_start_matches("Final")
                .trim()
                .trim_start_matches('=');
            let value = value.trim().trim_end_matches([',', ';']);
            let [literal] = quoted(value).try_into().ok()?;
            let whole = value.len() == literal.len() + 2;
            let name = name.trim();
            let is_name =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            (whole && is_name).then(|| (name.to_owned(), literal))
        })
        .collect()
}

/// The first column of the table whose header row starts with `header`: the cells that are
/// one `` `name` `` each (other rows, such as "ack of `request`", are left out).
fn doc_table(doc: &str, header: &str) -> Option<Vec<String>> {
    let mut lines = doc.lines().skip_while(|l| !l.starts_with(header));
    lines.next()?;
    let cells = lines
        .skip(1)
        .take_while(|l| l.starts_with('|'))
        .filter_map(|row| row.split('|').nth(1))
        .map(str::trim)
        .filter_map(|cell| cell.strip_prefix('`')?.strip_suffix('`'))
        .filter(|name| !name.contains('`'))
        .map(str::to_owned);
    Some(cells.collect())
}
