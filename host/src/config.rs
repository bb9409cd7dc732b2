//! Settings, in two layers: [`FileConfig`] mirrors plugins.toml exactly (unknown keys are
//! errors that name them); [`Settings`] is what the host runs with, after command-line
//! flags and `TASKGATE_*` environment variables (parsed by clap in `cli`) are applied
//! over the file, and the file over the defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::broker::amqp_url::redact_url;
use crate::limits::Limits;
use crate::resume::ResumeSettings;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_PLUGINS_DIR: &str = "plugins";
/// Packets buffered per socket before a client counts as not reading (socketioxide's
/// default is 128, too small for fast streams).
pub const DEFAULT_SOCKET_BUFFER: usize = 1024;
/// Largest Socket.IO message accepted (long-polling body and WebSocket frame).
pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 8 * 1024 * 1024;
/// Plugin libraries a host maps at most over its life: libraries cannot be unloaded, so
/// every distinct file version hot reload loads stays mapped (see ARCHITECTURE.md).
pub const DEFAULT_MAX_PLUGIN_LIBRARIES: usize = 64;
/// How long shutdown waits for requests in flight before ending them `UNAVAILABLE`.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How long chunks wait for company on a WebSocket connection unless `[host] chunk_linger`
/// says otherwise: far below what a person notices, and long enough that the writes of
/// many busy connections fall on the same timer tick (docs/performance.md).
pub const DEFAULT_CHUNK_LINGER: Duration = Duration::from_millis(2);
/// The longest `chunk_linger` the host accepts.
pub const MAX_CHUNK_LINGER: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid listen address `{0}`: expected HOST:PORT, e.g. 127.0.0.1:8080")]
    Listen(String),
    #[error("{0}")]
    Invalid(String),
}

/// Where a TOML error is and what it is, without the offending line: toml's own message
/// quotes it, and in plugins.toml that line may be `amqp_url` with its password. The
/// message proper (e.g. "unknown field `x`, expected one of …") names keys, not values,
/// except for type errors, which are cut at the quoted value.
fn describe_toml_error(text: &str, error: &toml::de::Error) -> String {
    let what = error.message().trim_end().replace('\n', " ");
    // serde's "invalid type: string \"…\", expected …" and "invalid value: …" quote the value.
    let quotes_value = what.starts_with("invalid type:") || what.starts_with("invalid value:");
    let what = match what.split_once(['`', '"']) {
        Some((before, _)) if quotes_value => format!("{before}(value not shown)"),
        _ => what,
    };
    match error.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("TOML parse error at line {line}, column {column}: {what}")
        }
        None => format!("TOML parse error: {what}"),
    }
}

/// plugins.toml, as written by the operator.
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub host: HostSection,
    /// One table per plugin, keyed by the name the plugin declares.
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginSection>,
    /// How clients authenticate (see `auth`).
    #[serde(default)]
    pub auth: AuthSection,
    /// Limits per connection and per host (see `limits`).
    #[serde(default)]
    pub limits: LimitsSection,
    /// Requests that outlive their connection (see `resume`).
    #[serde(default)]
    pub resume: ResumeSection,
    /// The operator console (see `console`); off unless enabled.
    #[serde(default)]
    pub console: ConsoleSection,
}

/// `[console]`: the operator console at `/console` and its API under `/console/api/`.
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSection {
    /// Off unless `true`.
    pub enabled: Option<bool>,
    /// The role an identity needs to use the console (default `admin`).
    pub role: Option<String>,
    /// How many failed requests the console keeps and shows (default 100, at most 500).
    pub recent_failures: Option<usize>,
    /// RabbitMQ's management API (`http://user:password@host:15672`), read for the queues'
    /// unacknowledged messages. Default: the AMQP URL's host on port 15672 with its
    /// credentials; `""`: not read.
    pub management_url: Option<String>,
}

/// The default of `[console] role`.
pub const DEFAULT_CONSOLE_ROLE: &str = "admin";

/// `[console]` resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSettings {
    pub enabled: bool,
    pub role: String,
    pub recent_failures: usize,
    /// `None`: derived from the AMQP URL; `Some("")`: not read.
    pub management_url: Option<String>,
}

impl ConsoleSettings {
    /// Where the management API is read, if anywhere (`Err`: a URL that cannot be used).
    pub fn management(
        &self,
        amqp_url: &str,
    ) -> Option<Result<crate::console::management::Management, String>> {
        match self.management_url.as_deref() {
            Some("") => None,
            url => Some(crate::console::management::Management::from_urls(
                url, amqp_url,
            )),
        }
    }
}

impl ConsoleSection {
    fn resolve(self) -> Result<ConsoleSettings, ConfigError> {
        let role = self.role.unwrap_or_else(|| DEFAULT_CONSOLE_ROLE.to_owned());
        if role.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "[console] role is empty: name the role an identity needs (default \"admin\")"
                    .to_owned(),
            ));
        }
        let recent_failures = self
            .recent_failures
            .unwrap_or(crate::console::failures::DEFAULT_KEPT);
        if recent_failures > crate::console::failures::MAX_KEPT {
            return Err(ConfigError::Invalid(format!(
                "[console] recent_failures = {recent_failures} is more than {}: every heartbeat carries them",
                crate::console::failures::MAX_KEPT
            )));
        }
        Ok(ConsoleSettings {
            enabled: self.enabled.unwrap_or(false),
            role,
            recent_failures,
            management_url: self.management_url,
        })
    }
}

impl ResumeSection {
    fn resolve(self, base: &Path) -> Result<(ResumeSettings, ResumeSection), ConfigError> {
        let window = match &self.window {
            None => crate::resume::DEFAULT_WINDOW,
            Some(text) => duration_setting(
                "[resume] window",
                text,
                Some((
                    crate::resume::MAX_WINDOW,
                    "at most 1h: parked requests hold memory and workers",
                )),
                "\"60s\", or \"0s\" to turn sessions off",
            )?,
        };
        let request_bytes = self
            .request_bytes
            .unwrap_or(crate::resume::DEFAULT_REQUEST_BYTES);
        let request_bytes = usize::try_from(request_bytes).unwrap_or(usize::MAX);
        let result_ttl = match &self.result_ttl {
            None => crate::resume::DEFAULT_RESULT_TTL,
            Some(text) => duration_setting(
                "[resume] result_ttl",
                text,
                Some((
                    crate::resume::MAX_RESULT_TTL,
                    "at most 7 days: kept outcomes hold memory",
                )),
                "\"1h\" or \"30m\"",
            )?,
        };
        let max_tasks = self.max_tasks.unwrap_or(crate::resume::DEFAULT_MAX_TASKS);
        let max_parked_per_owner = self
            .max_parked_per_owner
            .unwrap_or(crate::resume::DEFAULT_MAX_PARKED_PER_OWNER);
        let max_kept_bytes = self
            .max_kept_bytes
            .unwrap_or(crate::resume::DEFAULT_MAX_KEPT_BYTES);
        let max_kept_bytes = usize::try_from(max_kept_bytes).unwrap_or(usize::MAX);
        let store = match &self.store {
            None => crate::tasks::StoreChoice::Memory,
            Some(text) => crate::tasks::StoreChoice::parse(text, self.store_prefix.as_deref())
                .map_err(ConfigError::Invalid)?,
        };
        let section = ResumeSection {
            secret_file: self.secret_file.map(|f| base.join(f)),
            ..self
        };
        Ok((
            ResumeSettings {
                window,
                request_bytes,
                max_kept_bytes,
                result_ttl,
                max_tasks,
                max_parked_per_owner,
                store,
            },
            section,
        ))
    }
}

/// `[resume]`: how long a dropped connection's requests wait for their client (protocol §4).
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResumeSection {
    /// e.g. "60s"; "0s" turns sessions off.
    pub window: Option<String>,
    /// Chunks kept per request for a client that comes back.
    pub request_bytes: Option<u64>,
    /// Chunks kept in all, every request's together (see `resume::KeptBytes`).
    pub max_kept_bytes: Option<u64>,
    /// How long a finished detached task's outcome is kept, e.g. "1h".
    pub result_ttl: Option<String>,
    /// Detached tasks one owner may have, running or kept.
    pub max_tasks: Option<usize>,
    /// Requests one owner may have parked after its connections dropped (0: no bound).
    pub max_parked_per_owner: Option<usize>,
    /// The cluster secret that signs session tokens (every host of a cluster the same), from
    /// a file or an environment variable; without one, sessions resume on the same host only.
    pub secret_file: Option<PathBuf>,
    pub secret_env: Option<String>,
    /// Where detached tasks live: "memory" (the default: this host only) or a Redis URL
    /// that every host of a cluster shares, e.g. "redis://127.0.0.1:6379/".
    pub store: Option<String>,
    /// The prefix of the shared store's keys (default "taskgate:"): clusters sharing one
    /// Redis tell their tasks apart by it.
    pub store_prefix: Option<String>,
}

/// How clients authenticate at the Socket.IO handshake.
#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Everyone is let in, anonymously (development only; the host warns at start).
    #[default]
    None,
    /// Tokens listed by the operator, each mapped to an identity.
    Static,
    /// Signed JSON Web Tokens from an identity provider.
    Jwt,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::None => "none",
            AuthMode::Static => "static",
            AuthMode::Jwt => "jwt",
        }
    }
}

/// `[auth]` of plugins.toml. Holds where secrets are, never secrets themselves.
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    #[serde(default)]
    pub mode: AuthMode,
    /// static: a TOML file of `[[tokens]]` (token or token_sha256, subject, roles).
    pub tokens_file: Option<PathBuf>,
    /// static: the name of an environment variable holding the same TOML.
    pub tokens_env: Option<String>,
    /// jwt: the one algorithm tokens must be signed with, e.g. "RS256", "ES256", "HS256".
    pub algorithm: Option<String>,
    /// jwt, HS*: a file holding the shared secret.
    pub secret_file: Option<PathBuf>,
    /// jwt, HS*: the name of an environment variable holding the shared secret.
    pub secret_env: Option<String>,
    /// jwt, RS*/PS*/ES*/EdDSA: the identity provider's public key, PEM.
    pub public_key_file: Option<PathBuf>,
    /// jwt: the required `iss` claim.
    pub issuer: Option<String>,
    /// jwt: the required `aud` claim (one of the token's audiences).
    pub audience: Option<String>,
    /// jwt: clock skew tolerated for `exp` and `nbf`, seconds.
    pub leeway_secs: Option<u64>,
    /// jwt: the claim holding the roles, a dotted path (e.g. "realm_access.roles").
    pub roles_claim: Option<String>,
}

/// `[limits]` of plugins.toml; every key is optional.
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub max_payload_bytes: Option<u64>,
    pub max_in_flight: Option<usize>,
    pub requests_per_second: Option<u32>,
    pub request_burst: Option<u32>,
    pub max_connections: Option<usize>,
    pub client_backlog_bytes: Option<usize>,
    pub client_stall_ms: Option<u64>,
    pub max_reply_bytes: Option<u64>,
    pub max_pending_connections: Option<usize>,
    pub handshake_timeout_ms: Option<u64>,
}

impl LimitsSection {
    fn resolve(&self) -> Result<Limits, ConfigError> {
        let defaults = Limits::default();
        let limits = Limits {
            max_payload_bytes: self
                .max_payload_bytes
                .map_or(defaults.max_payload_bytes, |b| {
                    usize::try_from(b).unwrap_or(usize::MAX)
                }),
            max_in_flight: self.max_in_flight.unwrap_or(defaults.max_in_flight),
            requests_per_second: self
                .requests_per_second
                .unwrap_or(defaults.requests_per_second),
            request_burst: self.request_burst.unwrap_or(defaults.request_burst),
            max_connections: self.max_connections.unwrap_or(defaults.max_connections),
            client_backlog_bytes: self
                .client_backlog_bytes
                .unwrap_or(defaults.client_backlog_bytes),
            client_stall: self
                .client_stall_ms
                .map_or(defaults.client_stall, Duration::from_millis),
            max_reply_bytes: self.max_reply_bytes.map_or(defaults.max_reply_bytes, |b| {
                usize::try_from(b).unwrap_or(usize::MAX)
            }),
            max_pending_connections: self
                .max_pending_connections
                .unwrap_or(defaults.max_pending_connections),
            handshake_timeout: self
                .handshake_timeout_ms
                .map_or(defaults.handshake_timeout, Duration::from_millis),
        };
        if limits.handshake_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "[limits] handshake_timeout_ms must be at least 1".to_owned(),
            ));
        }
        if limits.max_payload_bytes == 0 || limits.max_reply_bytes == 0 {
            return Err(ConfigError::Invalid(
                "[limits] max_payload_bytes and max_reply_bytes must be at least 1".to_owned(),
            ));
        }
        if limits.client_stall.is_zero() || limits.client_backlog_bytes == 0 {
            return Err(ConfigError::Invalid(
                "[limits] client_backlog_bytes and client_stall_ms must be at least 1".to_owned(),
            ));
        }
        Ok(limits)
    }
}

#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HostSection {
    pub listen: Option<String>,
    pub amqp_url: Option<String>,
    pub plugins_dir: Option<PathBuf>,
    /// A directory of static files served at `/` (e.g. a built demo page).
    pub static_dir: Option<PathBuf>,
    pub socket_buffer: Option<usize>,
    pub max_message_bytes: Option<u64>,
    pub max_plugin_libraries: Option<usize>,
    /// Refuse plugin files writable by group or others, or owned by neither the host's
    /// user nor root (default true).
    pub check_plugin_files: Option<bool>,
    /// Browser origins allowed to open Socket.IO connections besides the host's own
    /// (e.g. "https://app.example.com"); "*" allows any.
    pub allowed_origins: Option<Vec<String>>,
    /// Host names the host answers to besides IP addresses and localhost (DNS rebinding
    /// protection): "app.example.com", ".example.com" (and its subdomains), "*" for any.
    pub allowed_hosts: Option<Vec<String>>,
    /// A bearer token `/readyz` and `/metrics` require, from an environment variable or a
    /// file (operations endpoints off the public route).
    pub operations_token_env: Option<String>,
    pub operations_token_file: Option<PathBuf>,
    /// How long shutdown waits for requests in flight, e.g. "30s", "1m 30s", "500ms".
    pub shutdown_grace: Option<String>,
    /// How long streamed chunks may wait to share a write with later frames, e.g. "2ms";
    /// "0s" writes every chunk at once.
    pub chunk_linger: Option<String>,
    /// The dead-letter queue (and exchange) of requests delivered too often without an
    /// answer; hosts that share request queues must name the same one.
    pub dead_letter_queue: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PluginSection {
    #[serde(default)]
    pub enabled: bool,
    /// Overrides for every request type of the plugin.
    pub queue: Option<String>,
    pub timeout_ms: Option<u64>,
    pub max_payload_bytes: Option<u64>,
    pub queue_arguments: Option<Map<String, Value>>,
    /// Roles a client must all have (replaces what the plugin declares; `[]`: none).
    pub required_roles: Option<Vec<String>>,
    /// How long the plugin's validation of one payload may take before the request is
    /// refused `TIMEOUT`.
    pub validation_budget_ms: Option<u64>,
    /// Deliveries without an answer before a request is dead-lettered (replaces what the
    /// plugin declares; default 3).
    pub delivery_limit: Option<u32>,
    /// The retry policy workers get (replaces what the plugin declares), e.g.
    /// `{ attempts = 3, backoff = "exponential", delay_ms = 1000 }`.
    pub retry: Option<taskgate_plugin_api::RetryPolicy>,
    /// What a request does while no worker consumes its type's queue: `"fail"` (default,
    /// `UNAVAILABLE` at once) or `"queue"` (waits in the queue for a worker).
    pub when_no_workers: Option<crate::serving::WhenNoWorkers>,
    /// Overrides for one request type, keyed by its name.
    #[serde(default)]
    pub request_types: BTreeMap<String, TypeOverrides>,
}

#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TypeOverrides {
    pub queue: Option<String>,
    pub timeout_ms: Option<u64>,
    pub max_payload_bytes: Option<u64>,
    pub queue_arguments: Option<Map<String, Value>>,
    pub required_roles: Option<Vec<String>>,
    pub validation_budget_ms: Option<u64>,
    pub delivery_limit: Option<u32>,
    pub retry: Option<taskgate_plugin_api::RetryPolicy>,
    pub when_no_workers: Option<crate::serving::WhenNoWorkers>,
}

impl FileConfig {
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: describe_toml_error(text, &e),
        })
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }
}

/// Values given on the command line or in the environment; they win over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub amqp_url: Option<String>,
    pub plugins_dir: Option<PathBuf>,
    pub static_dir: Option<PathBuf>,
    pub shutdown_grace: Option<Duration>,
}

/// What the host runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub amqp_url: String,
    pub plugins_dir: PathBuf,
    pub static_dir: Option<PathBuf>,
    pub socket_buffer: usize,
    /// The largest Socket.IO message, on both transports: at least the payload ceiling
    /// of `limits` plus room for the envelope.
    pub max_message_bytes: u64,
    /// `[host] max_message_bytes` was set: it is kept as it is, not fitted to the types
    /// ([`Settings::fit_message_limit`]).
    pub max_message_bytes_set: bool,
    pub max_plugin_libraries: usize,
    /// `[host] check_plugin_files`: refuse plugin files others may write or own.
    pub check_plugin_files: bool,
    /// The program that inspects a new plugin file in a child process before the host loads
    /// it: the taskgate binary itself (set by `main`). `None`: no inspection (tests, and
    /// programs that embed the host).
    pub plugin_inspector: Option<PathBuf>,
    /// `[auth]`, with its file paths resolved.
    pub auth: AuthSection,
    pub limits: Limits,
    /// `[host] allowed_origins` (empty: the host's own origin only).
    pub allowed_origins: Vec<String>,
    /// `[host] allowed_hosts` (empty: IP addresses and localhost only).
    pub allowed_hosts: Vec<String>,
    /// `[host] operations_token_env` / `_file` (the file relative to plugins.toml).
    pub operations_token_env: Option<String>,
    pub operations_token_file: Option<PathBuf>,
    /// How long shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
    /// How long chunks may wait for company on a WebSocket connection (zero: not at all).
    pub chunk_linger: Duration,
    /// `[host] dead_letter_queue` (default `taskgate.dead-letters`).
    pub dead_letter_queue: String,
    /// `[resume]`: the window and buffer (the secret stays in `resume_section` until the
    /// server reads it, like `[auth]`'s).
    pub resume: ResumeSettings,
    /// `[resume]` as written, with `secret_file` resolved against the file's directory.
    pub resume_section: ResumeSection,
    /// `[console]`: whether the operator console is served, and to which role.
    pub console: ConsoleSettings,
    /// The plugin tables of plugins.toml.
    pub plugins: BTreeMap<String, PluginSection>,
    /// Where the configuration came from, for log lines; `None` when defaults only.
    pub config_path: Option<PathBuf>,
    /// The flags and variables applied over the file: hot reload applies them again over a
    /// changed file.
    pub overrides: Overrides,
}

impl Settings {
    /// Applies `overrides` over `file` over the defaults. Relative paths in the file are
    /// relative to the file's directory; relative paths on the command line to the
    /// working directory.
    pub fn resolve(
        file: FileConfig,
        config_path: Option<&Path>,
        overrides: Overrides,
    ) -> Result<Settings, ConfigError> {
        let base = config_path
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let given = overrides.clone();
        let listen_text = overrides
            .listen
            .or(file.host.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = listen_text
            .parse::<SocketAddr>()
            .map_err(|_| ConfigError::Listen(listen_text.clone()))?;
        let plugins_dir = match overrides.plugins_dir {
            Some(dir) => dir,
            None => base.join(
                file.host
                    .plugins_dir
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_PLUGINS_DIR)),
            ),
        };
        let static_dir = overrides
            .static_dir
            .or_else(|| file.host.static_dir.map(|dir| base.join(dir)));
        let amqp_url = overrides
            .amqp_url
            .or(file.host.amqp_url)
            .unwrap_or_else(|| DEFAULT_AMQP_URL.to_owned());
        if !(amqp_url.starts_with("amqp://") || amqp_url.starts_with("amqps://")) {
            return Err(ConfigError::Invalid(format!(
                "AMQP URL must start with amqp:// or amqps:// (got `{}`)",
                redact_url(&amqp_url)
            )));
        }
        let limits = file.limits.resolve()?;
        let configured_message_bytes = usize::try_from(
            file.host
                .max_message_bytes
                .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES),
        )
        .unwrap_or(usize::MAX);
        let max_message_bytes = limits.transport_message_limit(configured_message_bytes) as u64;
        let mut auth = file.auth;
        for path in [
            &mut auth.tokens_file,
            &mut auth.secret_file,
            &mut auth.public_key_file,
        ]
        .into_iter()
        .flatten()
        {
            *path = base.join(&*path);
        }
        let shutdown_grace = match (overrides.shutdown_grace, &file.host.shutdown_grace) {
            (Some(grace), _) => grace,
            (None, Some(text)) => {
                duration_setting("[host] shutdown_grace", text, None, "\"30s\" or \"1m 30s\"")?
            }
            (None, None) => DEFAULT_SHUTDOWN_GRACE,
        };
        let chunk_linger = match &file.host.chunk_linger {
            None => DEFAULT_CHUNK_LINGER,
            Some(text) => duration_setting(
                "[host] chunk_linger",
                text,
                Some((MAX_CHUNK_LINGER, "at most 1s: chunks are meant to stream")),
                "\"2ms\", or \"0s\" for none",
            )?,
        };
        let dead_letter_queue = file
            .host
            .dead_letter_queue
            .unwrap_or_else(|| taskgate_protocol::amqp::DEAD_LETTER_QUEUE.to_owned());
        let inbox_bytes =
            dead_letter_queue.len() + taskgate_protocol::amqp::DEAD_LETTER_INBOX_SUFFIX.len();
        if dead_letter_queue.is_empty()
            || inbox_bytes > 255
            || dead_letter_queue.starts_with("amq.")
        {
            return Err(ConfigError::Invalid(format!(
                "[host] dead_letter_queue must be 1 to {} bytes long and not start with `amq.`",
                255 - taskgate_protocol::amqp::DEAD_LETTER_INBOX_SUFFIX.len()
            )));
        }
        let (resume, resume_section) = file.resume.resolve(&base)?;
        let console = file.console.resolve()?;
        Ok(Settings {
            listen,
            amqp_url,
            plugins_dir,
            static_dir,
            socket_buffer: file
                .host
                .socket_buffer
                .unwrap_or(DEFAULT_SOCKET_BUFFER)
                .max(16),
            max_message_bytes,
            max_message_bytes_set: file.host.max_message_bytes.is_some(),
            max_plugin_libraries: file
                .host
                .max_plugin_libraries
                .unwrap_or(DEFAULT_MAX_PLUGIN_LIBRARIES)
                .max(1),
            check_plugin_files: file.host.check_plugin_files.unwrap_or(true),
            plugin_inspector: None,
            auth,
            limits,
            allowed_origins: file.host.allowed_origins.unwrap_or_default(),
            allowed_hosts: file.host.allowed_hosts.unwrap_or_default(),
            operations_token_env: file.host.operations_token_env,
            operations_token_file: file.host.operations_token_file.map(|f| base.join(f)),
            shutdown_grace,
            chunk_linger,
            dead_letter_queue,
            resume,
            resume_section,
            console,
            plugins: file.plugins,
            config_path: config_path.map(Path::to_path_buf),
            overrides: given,
        })
    }

    /// Overrides that apply to `request_type` of `plugin`: its own table first, then the
    /// plugin's table.
    pub fn overrides_for(&self, plugin: &str, request_type: &str) -> TypeOverrides {
        let Some(section) = self.plugins.get(plugin) else {
            return TypeOverrides::default();
        };
        let specific = section
            .request_types
            .get(request_type)
            .cloned()
            .unwrap_or_default();
        TypeOverrides {
            queue: specific.queue.or_else(|| section.queue.clone()),
            timeout_ms: specific.timeout_ms.or(section.timeout_ms),
            max_payload_bytes: specific.max_payload_bytes.or(section.max_payload_bytes),
            queue_arguments: specific
                .queue_arguments
                .or_else(|| section.queue_arguments.clone()),
            required_roles: specific
                .required_roles
                .or_else(|| section.required_roles.clone()),
            validation_budget_ms: specific
                .validation_budget_ms
                .or(section.validation_budget_ms),
            delivery_limit: specific.delivery_limit.or(section.delivery_limit),
            retry: specific.retry.or_else(|| section.retry.clone()),
            when_no_workers: specific.when_no_workers.or(section.when_no_workers),
        }
    }

    /// Without `[host] max_message_bytes`, the transports take no bigger messages than the
    /// largest payload an enabled type accepts, plus the envelope (issue 20 #10): messages
    /// over it are cut off unread. `largest_payload`: of the types served at start (`None`:
    /// none, the ceiling stays). Hot reload cannot raise it (a restart does).
    pub fn fit_message_limit(&mut self, largest_payload: Option<usize>) {
        if self.max_message_bytes_set {
            return;
        }
        if let Some(largest) = largest_payload {
            let fitted = largest.saturating_add(crate::limits::ENVELOPE_ALLOWANCE) as u64;
            self.max_message_bytes = self.max_message_bytes.min(fitted);
        }
    }

    pub fn is_enabled(&self, plugin: &str) -> bool {
        self.plugins.get(plugin).is_some_and(|p| p.enabled)
    }
}

/// A duration written for people ("30s", "1m 30s", "2ms"), optionally capped; an error names
/// the key (e.g. "[host] shutdown_grace") and shows how to write it.
fn duration_setting(
    key: &str,
    text: &str,
    cap: Option<(Duration, &str)>,
    example: &str,
) -> Result<Duration, ConfigError> {
    let parsed = humantime::parse_duration(text).map_err(|e| e.to_string());
    let checked = parsed.and_then(|duration| match cap {
        Some((max, why)) if duration > max => Err(why.to_owned()),
        _ => Ok(duration),
    });
    checked.map_err(|e| {
        ConfigError::Invalid(format!("{key} = \"{text}\": {e} (write e.g. {example})"))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(text: &str) -> Result<FileConfig, ConfigError> {
        FileConfig::parse(text, Path::new("plugins.toml"))
    }

    #[test]
    fn defaults_apply_when_the_file_is_empty() {
        let s = Settings::resolve(parse("").unwrap(), None, Overrides::default()).unwrap();
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(s.amqp_url, DEFAULT_AMQP_URL);
        assert_eq!(s.plugins_dir, PathBuf::from(DEFAULT_PLUGINS_DIR));
        assert_eq!(s.socket_buffer, DEFAULT_SOCKET_BUFFER);
        assert!(s.plugins.is_empty());
    }

    #[test]
    fn the_console_is_off_by_default_for_the_admin_role_and_an_empty_role_is_refused() {
        let resolve = |text: &str| Settings::resolve(parse(text)?, None, Overrides::default());
        let s = resolve("").unwrap();
        assert_eq!(
            s.console,
            ConsoleSettings {
                enabled: false,
                role: "admin".into(),
                recent_failures: 100,
                management_url: None,
            }
        );
        let s = resolve("[console]\nrecent_failures = 20\nmanagement_url = \"\"\n").unwrap();
        assert_eq!(s.console.recent_failures, 20);
        assert!(s.console.management("amqp://localhost").is_none());
        let too_many = resolve("[console]\nrecent_failures = 501\n").unwrap_err();
        assert!(
            too_many.to_string().contains("recent_failures"),
            "{too_many}"
        );
        let s = resolve("[console]\nenabled = true\nrole = \"ops\"\n").unwrap();
        assert!(s.console.enabled);
        assert_eq!(s.console.role, "ops");
        let empty = resolve("[console]\nenabled = true\nrole = \" \"\n").unwrap_err();
        assert!(empty.to_string().contains("[console] role"), "{empty}");
        let unknown = parse("[console]\nport = 1\n").unwrap_err();
        assert!(unknown.to_string().contains("port"), "{unknown}");
    }

    #[test]
    fn the_file_overrides_defaults_and_flags_override_the_file() {
        let file = parse(
            r#"
            [host]
            listen = "0.0.0.0:9000"
            amqp_url = "amqp://a:b@broker:5672/%2f"
            plugins_dir = "build/plugins"
            "#,
        )
        .unwrap();
        let s = Settings::resolve(
            file.clone(),
            Some(Path::new("/etc/taskgate/plugins.toml")),
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(s.plugins_dir, PathBuf::from("/etc/taskgate/build/plugins"));
        let s = Settings::resolve(
            file,
            Some(Path::new("/etc/taskgate/plugins.toml")),
            Overrides {
                listen: Some("127.0.0.1:0".into()),
                amqp_url: Some("amqp://x@y/z".into()),
                plugins_dir: Some("p".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(s.listen.port(), 0);
        assert_eq!(s.amqp_url, "amqp://x@y/z");
        assert_eq!(s.plugins_dir, PathBuf::from("p"));
    }

    #[test]
    fn the_shutdown_grace_comes_from_the_flag_the_file_or_the_default() {
        let grace = |file: &str, flag: Option<Duration>| {
            Settings::resolve(
                parse(file).unwrap(),
                None,
                Overrides {
                    shutdown_grace: flag,
                    ..Overrides::default()
                },
            )
            .map(|s| s.shutdown_grace)
        };
        assert_eq!(grace("", None).unwrap(), DEFAULT_SHUTDOWN_GRACE);
        let file = "[host]\nshutdown_grace = \"1m 30s\"\n";
        assert_eq!(grace(file, None).unwrap(), Duration::from_secs(90));
        assert_eq!(
            grace(file, Some(Duration::from_millis(5))).unwrap(),
            Duration::from_millis(5)
        );
        let err = grace("[host]\nshutdown_grace = \"soon\"\n", None).unwrap_err();
        assert!(err.to_string().contains("shutdown_grace"), "{err}");
    }

    #[test]
    fn chunks_linger_as_the_file_says_within_a_second() {
        let linger = |file: &str| {
            Settings::resolve(parse(file).unwrap(), None, Overrides::default())
                .map(|s| s.chunk_linger)
        };
        assert_eq!(linger("").unwrap(), DEFAULT_CHUNK_LINGER);
        assert_eq!(
            linger("[host]\nchunk_linger = \"5ms\"\n").unwrap(),
            Duration::from_millis(5)
        );
        assert_eq!(
            linger("[host]\nchunk_linger = \"0s\"\n").unwrap(),
            Duration::ZERO
        );
        for bad in ["\"later\"", "\"2s\""] {
            let err = linger(&format!("[host]\nchunk_linger = {bad}\n")).unwrap_err();
            assert!(err.to_string().contains("chunk_linger"), "{err}");
        }
    }

    #[test]
    fn unknown_keys_are_errors_that_name_them() {
        let err = parse("[host]\nlisten = \"127.0.0.1:1\"\nlisten_port = 5\n").unwrap_err();
        assert!(err.to_string().contains("listen_port"), "{err}");
        let err = parse("[plugins.echo]\nenabled = true\ntimeout = 5\n").unwrap_err();
        assert!(err.to_string().contains("timeout"), "{err}");
        let err = parse("[server]\n").unwrap_err();
        assert!(err.to_string().contains("server"), "{err}");
    }

    #[test]
    fn a_bad_listen_address_is_a_clear_error() {
        let file = parse("[host]\nlisten = \"localhost\"\n").unwrap();
        let err = Settings::resolve(file, None, Overrides::default()).unwrap_err();
        assert!(
            err.to_string()
                .contains("invalid listen address `localhost`"),
            "{err}"
        );
    }

    #[test]
    fn a_non_amqp_url_is_refused_without_showing_the_password() {
        let err = Settings::resolve(
            FileConfig::default(),
            None,
            Overrides {
                amqp_url: Some("http://u:secret@h".into()),
                ..Overrides::default()
            },
        )
        .unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn per_type_overrides_win_over_plugin_overrides() {
        let file = parse(
            r#"
            [plugins.text]
            enabled = true
            timeout_ms = 1000
            [plugins.text.request_types."text.wordcount"]
            queue = "q.wc"
            "#,
        )
        .unwrap();
        let s = Settings::resolve(file, None, Overrides::default()).unwrap();
        assert!(s.is_enabled("text"));
        assert!(!s.is_enabled("other"));
        let o = s.overrides_for("text", "text.wordcount");
        assert_eq!(o.queue.as_deref(), Some("q.wc"));
        assert_eq!(o.timeout_ms, Some(1000));
        assert_eq!(s.overrides_for("text", "text.other").queue, None);
    }

    #[test]
    fn when_no_workers_is_per_type_over_per_plugin_and_refuses_other_words() {
        let file = parse(
            r#"
            [plugins.math]
            enabled = true
            when_no_workers = "queue"
            [plugins.math.request_types."math.now"]
            when_no_workers = "fail"
            "#,
        )
        .unwrap();
        let s = Settings::resolve(file, None, Overrides::default()).unwrap();
        use crate::serving::WhenNoWorkers;
        let when = |t: &str| s.overrides_for("math", t).when_no_workers;
        assert_eq!(when("math.primes"), Some(WhenNoWorkers::Queue));
        assert_eq!(when("math.now"), Some(WhenNoWorkers::Fail));
        assert_eq!(s.overrides_for("other", "x").when_no_workers, None);
        assert!(parse("[plugins.math]\nwhen_no_workers = \"wait\"\n").is_err());
    }

    #[test]
    fn delivery_limits_override_per_type_over_per_plugin() {
        let file = parse(
            r#"
            [plugins.text]
            enabled = true
            delivery_limit = 5
            [plugins.text.request_types."text.wordcount"]
            delivery_limit = 2
            "#,
        )
        .unwrap();
        let s = Settings::resolve(file, None, Overrides::default()).unwrap();
        assert_eq!(
            s.overrides_for("text", "text.wordcount").delivery_limit,
            Some(2)
        );
        assert_eq!(
            s.overrides_for("text", "text.other").delivery_limit,
            Some(5)
        );
        assert_eq!(s.overrides_for("other", "x").delivery_limit, None);
    }

    #[test]
    fn a_retry_policy_is_written_in_snake_case() {
        let file = parse(
            r#"
            [plugins.text]
            enabled = true
            retry = { attempts = 3, backoff = "exponential", delay_ms = 200, max_delay_ms = 1000, retry_on = ["UPSTREAM"] }
            "#,
        )
        .unwrap();
        let s = Settings::resolve(file, None, Overrides::default()).unwrap();
        let retry = s.overrides_for("text", "t").retry.unwrap();
        assert_eq!(
            (retry.attempts, retry.delay_ms, retry.max_delay_ms),
            (3, 200, Some(1000))
        );
        assert_eq!(retry.retry_on, vec!["UPSTREAM".to_owned()]);
        assert!(
            parse("[plugins.text]\nretry = { attempts = 3 }\n").is_err(),
            "delay_ms is required"
        );
    }

    #[test]
    fn the_dead_letter_queue_has_a_default_and_a_checked_name() {
        let s = Settings::resolve(parse("").unwrap(), None, Overrides::default()).unwrap();
        assert_eq!(s.dead_letter_queue, "taskgate.dead-letters");
        let s = Settings::resolve(
            parse("[host]\ndead_letter_queue = \"my.dl\"\n").unwrap(),
            None,
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.dead_letter_queue, "my.dl");
        for bad in ["", "amq.dl"] {
            let text = format!("[host]\ndead_letter_queue = \"{bad}\"\n");
            let err =
                Settings::resolve(parse(&text).unwrap(), None, Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("dead_letter_queue"), "{err}");
        }
    }

    #[test]
    fn resume_has_defaults_bounds_and_paths_relative_to_the_file() {
        let s = Settings::resolve(parse("").unwrap(), None, Overrides::default()).unwrap();
        assert_eq!(s.resume, ResumeSettings::default());
        assert!(s.resume.enabled());
        let file = parse(
            "[resume]\nwindow = \"5s\"\nrequest_bytes = 1000\nmax_kept_bytes = 50000\nsecret_file = \"resume.key\"\n",
        )
        .unwrap();
        let s = Settings::resolve(
            file,
            Some(Path::new("/etc/tg/plugins.toml")),
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.resume.window, Duration::from_secs(5));
        assert_eq!(s.resume.request_bytes, 1000);
        assert_eq!(s.resume.max_kept_bytes, 50_000);
        assert_eq!(
            s.resume_section.secret_file,
            Some(PathBuf::from("/etc/tg/resume.key"))
        );
        let off = parse("[resume]\nwindow = \"0s\"\n").unwrap();
        let s = Settings::resolve(off, None, Overrides::default()).unwrap();
        assert!(!s.resume.enabled());
        for bad in ["\"2h\"", "\"soon\""] {
            let file = parse(&format!("[resume]\nwindow = {bad}\n")).unwrap();
            let err = Settings::resolve(file, None, Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("[resume] window"), "{err}");
        }
        assert!(
            parse("[resume]\nwindows = \"5s\"\n").is_err(),
            "unknown keys are errors"
        );
    }

    #[test]
    fn the_task_store_is_memory_or_a_redis_url_never_logged_with_its_password() {
        let resolve =
            |text: &str| Settings::resolve(parse(text).unwrap(), None, Overrides::default());
        assert_eq!(
            resolve("").unwrap().resume.store,
            crate::tasks::StoreChoice::Memory
        );
        let memory = resolve("[resume]\nstore = \"memory\"\n").unwrap();
        assert_eq!(memory.resume.store, crate::tasks::StoreChoice::Memory);
        let s = resolve("[resume]\nstore = \"redis://:pw-s3cr3t@10.0.0.5:6379/\"\n").unwrap();
        assert_eq!(
            s.resume.store,
            crate::tasks::StoreChoice::Redis {
                url: "redis://:pw-s3cr3t@10.0.0.5:6379/".into(),
                prefix: "taskgate:".into()
            }
        );
        let shown = format!("{:?} {}", s.resume, s.resume.store.describe());
        assert!(
            !shown.contains("pw-s3cr3t") && shown.contains("10.0.0.5"),
            "{shown}"
        );
        let own = resolve("[resume]\nstore = \"redis://h/\"\nstore_prefix = \"tg-a:\"\n").unwrap();
        assert!(
            matches!(own.resume.store, crate::tasks::StoreChoice::Redis { ref prefix, .. } if prefix == "tg-a:")
        );
        let err = resolve("[resume]\nstore = \"postgres://u:pw-s3cr3t@h/\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[resume] store") && !err.contains("pw-s3cr3t"),
            "{err}"
        );
        let err = resolve("[resume]\nstore = \"redis://h/\"\nstore_prefix = \"\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("store_prefix"), "{err}");
    }

    #[test]
    fn a_syntax_error_is_located_but_never_quoted() {
        // The offending line may be amqp_url with its password (issue 20 #6).
        let text =
            "[host]\nlisten = \"127.0.0.1:8080\"\namqp_url = \"amqp://u:s3cr3t-pw@h/%2f\" oops\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(!err.contains("s3cr3t"), "{err}");
        assert!(err.contains("TOML parse error at line 3, column"), "{err}");
        assert!(err.starts_with("plugins.toml: "), "{err}");
        // The same for a value of the wrong type, whose message would quote the value.
        let err = parse("[host]\nlisten = 5\n").unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        let err = parse("[host]\nlisten = \"x\"\namqp_url = 5\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 3") && err.contains("invalid type"),
            "{err}"
        );
    }

    #[test]
    fn auth_and_limits_have_safe_defaults() {
        let s = Settings::resolve(parse("").unwrap(), None, Overrides::default()).unwrap();
        assert_eq!(s.auth.mode, AuthMode::None);
        assert_eq!(s.limits, Limits::default());
        assert!(s.allowed_origins.is_empty());
        assert!(s.allowed_hosts.is_empty());
        // Both transports: the payload ceiling and room for the envelope.
        assert_eq!(
            s.max_message_bytes,
            (crate::limits::DEFAULT_MAX_PAYLOAD_BYTES + crate::limits::ENVELOPE_ALLOWANCE) as u64
        );
    }

    #[test]
    fn auth_limits_and_origins_are_read_and_auth_paths_are_relative_to_the_file() {
        let file = parse(
            r#"
            [host]
            allowed_origins = ["https://app.example.com"]
            allowed_hosts = ["taskgate.example.com", ".example.org"]
            max_message_bytes = 1000
            [auth]
            mode = "static"
            tokens_file = "tokens.toml"
            [limits]
            max_payload_bytes = 2000000
            max_in_flight = 5
            requests_per_second = 0
            request_burst = 7
            max_connections = 3
            client_backlog_bytes = 4096
            client_stall_ms = 1500
            max_reply_bytes = 65536
            max_pending_connections = 9
            handshake_timeout_ms = 2500
            "#,
        )
        .unwrap();
        let s = Settings::resolve(
            file,
            Some(Path::new("/etc/taskgate/plugins.toml")),
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.auth.mode, AuthMode::Static);
        assert_eq!(
            s.auth.tokens_file,
            Some(PathBuf::from("/etc/taskgate/tokens.toml"))
        );
        assert_eq!(s.allowed_origins, vec!["https://app.example.com"]);
        assert_eq!(
            s.allowed_hosts,
            vec!["taskgate.example.com", ".example.org"]
        );
        assert_eq!(s.limits.max_payload_bytes, 2_000_000);
        assert_eq!(s.limits.max_in_flight, 5);
        assert_eq!(s.limits.requests_per_second, 0);
        assert_eq!(s.limits.request_burst, 7);
        assert_eq!(s.limits.max_connections, 3);
        assert_eq!(s.limits.client_backlog_bytes, 4096);
        assert_eq!(s.limits.client_stall, Duration::from_millis(1500));
        assert_eq!(s.limits.max_reply_bytes, 65_536);
        assert_eq!(s.limits.max_pending_connections, 9);
        assert_eq!(s.limits.handshake_timeout, Duration::from_millis(2500));
        // The transport limit grows to fit the payload ceiling and its envelope.
        assert_eq!(
            s.max_message_bytes,
            2_000_000 + crate::limits::ENVELOPE_ALLOWANCE as u64
        );
    }

    #[test]
    fn the_message_limit_fits_the_largest_type_unless_it_is_set() {
        let mut s = Settings::resolve(parse("").unwrap(), None, Overrides::default()).unwrap();
        let ceiling = s.max_message_bytes;
        s.fit_message_limit(None);
        assert_eq!(s.max_message_bytes, ceiling, "no type: the ceiling");
        s.fit_message_limit(Some(1 << 20));
        assert_eq!(s.max_message_bytes, (1 << 20) + 64 * 1024);
        let mut set = Settings::resolve(
            parse("[host]\nmax_message_bytes = 9000000\n").unwrap(),
            None,
            Overrides::default(),
        )
        .unwrap();
        set.fit_message_limit(Some(1024));
        assert_eq!(
            set.max_message_bytes, 9_000_000,
            "set by the operator: kept"
        );
    }

    #[test]
    fn unknown_auth_and_limits_keys_and_modes_are_errors() {
        let err = parse(
            "[auth]
mode = \"oauth\"
",
        )
        .unwrap_err();
        assert!(err.to_string().contains("oauth"), "{err}");
        let err = parse(
            "[auth]
token = \"x\"
",
        )
        .unwrap_err();
        assert!(err.to_string().contains("token"), "{err}");
        let err = parse(
            "[limits]
max_rps = 1
",
        )
        .unwrap_err();
        assert!(err.to_string().contains("max_rps"), "{err}");
        for key in ["max_payload_bytes", "max_reply_bytes"] {
            let zero = parse(&format!("[limits]\n{key} = 0\n")).unwrap();
            assert!(Settings::resolve(zero, None, Overrides::default()).is_err());
        }
    }

    #[test]
    fn required_roles_override_per_type_over_per_plugin() {
        let file = parse(
            r#"
            [plugins.p]
            enabled = true
            required_roles = ["staff"]
            [plugins.p.request_types."p.open"]
            required_roles = []
            "#,
        )
        .unwrap();
        let s = Settings::resolve(file, None, Overrides::default()).unwrap();
        assert_eq!(
            s.overrides_for("p", "p.other").required_roles,
            Some(vec!["staff".to_owned()])
        );
        assert_eq!(s.overrides_for("p", "p.open").required_roles, Some(vec![]));
        assert_eq!(s.overrides_for("q", "q.x").required_roles, None);
    }
}
