//! The command line: flags, their `TASKGATE_*` environment variables, and subcommands.
//! Parsed by clap; turned into [`Settings`] together with plugins.toml.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{ConfigError, FileConfig, Overrides, Settings};
use crate::runtime::WorkerThreads;

/// taskgate: run backend work for React apps over Socket.IO and RabbitMQ.
///
/// Settings come from plugins.toml; each flag (or its TASKGATE_* environment variable)
/// overrides the file.
#[derive(Debug, Parser)]
#[command(name = "taskgate", version = version_line(), about, long_about = None)]
pub struct Cli {
    /// The operator's configuration file (host settings and one table per plugin).
    /// Default: ./plugins.toml when it exists, else built-in defaults.
    #[arg(long, short = 'c', env = "TASKGATE_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    /// Address to serve HTTP and Socket.IO on, HOST:PORT (port 0 picks a free one).
    #[arg(long, env = "TASKGATE_LISTEN", global = true)]
    pub listen: Option<String>,

    /// RabbitMQ URL, e.g. amqp://guest:guest@127.0.0.1:5672/%2f
    #[arg(long, env = "TASKGATE_AMQP_URL", hide_env_values = true, global = true)]
    pub amqp_url: Option<String>,

    /// Directory scanned for plugin libraries (.so).
    #[arg(long, env = "TASKGATE_PLUGINS_DIR", global = true)]
    pub plugins_dir: Option<PathBuf>,

    /// Directory of static files to serve at `/` (e.g. the demo page).
    #[arg(long, env = "TASKGATE_STATIC_DIR", global = true)]
    pub static_dir: Option<PathBuf>,

    /// Threads running the async runtime, i.e. how many cores one host can use. `auto` (the
    /// default): one per core available to the process (its CPU affinity and cgroup quota
    /// count) from 3 cores up, and 1 on one or two cores, where a second thread cost 19–55%
    /// more CPU per request and bought no throughput (docs/performance.md, "Every core").
    /// N: exactly N; 1 is tokio's current-thread runtime, where the sockets and the broker
    /// client's I/O never hand a message between threads. The host logs at start what it
    /// runs and why.
    #[arg(long, env = "TASKGATE_WORKER_THREADS", default_value_t = WorkerThreads::Auto, global = true)]
    pub worker_threads: WorkerThreads,

    /// Log format: human-readable text, or one JSON object per line.
    #[arg(long, env = "TASKGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// On SIGTERM/SIGINT, how long requests in flight may take to finish before they are
    /// ended with UNAVAILABLE, e.g. 30s, 2m, 500ms. Default 30s.
    #[arg(long, env = "TASKGATE_SHUTDOWN_GRACE", value_parser = humantime::parse_duration, global = true)]
    pub shutdown_grace: Option<Duration>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What `taskgate --version` prints after the name: the host's version and the plugin API
/// its plugins must be built against, which is not the host's (`taskgate_plugin_api::API_VERSION`).
pub fn version_line() -> &'static str {
    static LINE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LINE.get_or_init(|| {
        format!(
            "{} (plugin API {})",
            env!("CARGO_PKG_VERSION"),
            taskgate_plugin_api::API_VERSION
        )
    })
}

/// The plugin API versions this host loads plugins of, as a Cargo requirement says them:
/// for 0.x the same minor (`0.1.x`), from 1.0 the same major (`1.x`).
pub fn compatible_api_versions(version: &str) -> String {
    let mut parts = version.split('.');
    match (parts.next(), parts.next()) {
        (Some("0"), Some(minor)) => format!("0.{minor}.x"),
        (Some(major), Some(_)) => format!("{major}.x"),
        _ => version.to_owned(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Subcommand, PartialEq, Eq)]
pub enum Command {
    /// Run the host (the default).
    Run,
    /// List every plugin file found, whether it loads and why not, and its request types.
    Plugins,
    /// Print the JSON Schemas (payload, result, chunk) of every enabled request type as one
    /// JSON document, for the client package's TypeScript codegen (`taskgate-codegen`).
    Schemas,
    /// Show a running cluster from its operator console: hosts, request types, queues and
    /// workers. Exits 1 when a request type's queue has no consumers, 2 when the host cannot
    /// be read.
    Status {
        /// The host, e.g. http://127.0.0.1:8080 (its [console] must be enabled).
        #[arg(long)]
        url: String,
        /// A token of the host's [auth] with the console's role.
        #[arg(long, env = "TASKGATE_CONSOLE_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Print the overview as JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// (Internal) Loads one plugin file and prints what it declares as one line of JSON: the
    /// host runs this in a child process before it loads a new file itself.
    #[command(name = "inspect-plugin", hide = true)]
    InspectPlugin {
        /// The private copy to load.
        copy: PathBuf,
        /// The operator's file it was copied from (for messages).
        source: PathBuf,
    },
    /// Start something new from a template: `taskgate new plugin NAME`.
    #[command(subcommand)]
    New(NewCommand),
    /// Look at the requests workers never answered (delivered too often: poison messages)
    /// in the dead-letter queue, and send them back after a fix.
    #[command(name = "dead-letters", subcommand)]
    DeadLetters(DeadLettersCommand),
}

/// `taskgate new …`.
#[derive(Debug, Clone, Subcommand, PartialEq, Eq)]
pub enum NewCommand {
    /// Write a plugin crate (payload, chunk and result types, a check, unit tests, a README)
    /// that builds on its own against exactly this host's plugin API.
    Plugin {
        /// The plugin's name: lowercase letters, digits, `-` and `_`, starting with a letter.
        /// Its request type is `NAME.count`, its crate `taskgate-plugin-NAME`.
        name: String,
        /// Where to write the crate (must not exist). Default: ./NAME
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Depend on the plugin API of this taskgate git repository, at tag
        /// `plugin-api-v<API version>`. Default: the checkout this binary was built from.
        #[arg(long, conflicts_with = "api_path")]
        api_git: Option<String>,
        /// Depend on the plugin API in this directory (a checkout's `plugin-api`).
        #[arg(long)]
        api_path: Option<PathBuf>,
    },
}

/// `taskgate dead-letters …`, on the queue `[host] dead_letter_queue` names.
#[derive(Debug, Clone, Subcommand, PartialEq, Eq)]
pub enum DeadLettersCommand {
    /// One line per dead letter, oldest first: id, request type, queue, deliveries, size.
    List,
    /// One dead letter in full: headers and payload.
    Show {
        /// Its id (the request's correlation id, as `list` shows it).
        id: String,
    },
    /// Send a dead letter back to its request queue (with a fresh deadline), to run again.
    Requeue {
        /// Its id (the request's correlation id, as `list` shows it).
        id: String,
    },
    /// Delete every dead letter.
    Purge,
}

impl Cli {
    /// The configuration file to read, if any.
    pub fn config_path(&self) -> Option<PathBuf> {
        self.config.clone().or_else(|| {
            let default = Path::new("plugins.toml");
            default.exists().then(|| default.to_path_buf())
        })
    }

    /// Reads the configuration file and applies the flags over it.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let path = self.config_path();
        let file = match &path {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        Settings::resolve(
            file,
            path.as_deref(),
            Overrides {
                listen: self.listen.clone(),
                amqp_url: self.amqp_url.clone(),
                plugins_dir: self.plugins_dir.clone(),
                static_dir: self.static_dir.clone(),
                shutdown_grace: self.shutdown_grace,
            },
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn compatible_plugin_api_versions_follow_cargos_rules() {
        assert_eq!(compatible_api_versions("0.1.0"), "0.1.x");
        assert_eq!(compatible_api_versions("0.12.3"), "0.12.x");
        assert_eq!(compatible_api_versions("1.4.2"), "1.x");
        assert_eq!(compatible_api_versions("odd"), "odd");
    }

    #[test]
    fn the_version_names_the_plugin_api() {
        assert_eq!(
            version_line(),
            format!(
                "{} (plugin API {})",
                env!("CARGO_PKG_VERSION"),
                taskgate_plugin_api::API_VERSION
            )
        );
        let long = Cli::command().render_version();
        assert!(long.contains("plugin API"), "{long}");
    }

    #[test]
    fn worker_threads_default_to_auto_and_take_a_number() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["taskgate"], args].concat());
        assert_eq!(parse(&[]).unwrap().worker_threads, WorkerThreads::Auto);
        assert_eq!(
            parse(&["--worker-threads", "auto"]).unwrap().worker_threads,
            WorkerThreads::Auto
        );
        let two = std::num::NonZeroUsize::new(2).unwrap();
        assert_eq!(
            parse(&["--worker-threads", "2"]).unwrap().worker_threads,
            WorkerThreads::Fixed(two)
        );
        // Global: also after a subcommand.
        assert_eq!(
            parse(&["plugins", "--worker-threads", "2"])
                .unwrap()
                .worker_threads,
            WorkerThreads::Fixed(two)
        );
        for bad in ["0", "many", "2000"] {
            let err = parse(&["--worker-threads", bad]).unwrap_err().to_string();
            assert!(err.contains("auto"), "{bad}: {err}");
        }
    }
}
