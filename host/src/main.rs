//! The `taskgate` binary: parse flags, set up logging, bind, run. Everything else is in
//! the library so tests can run the host in-process.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use taskgate_host::broker::amqp::{consumers_now, dead_letters};
use taskgate_host::cli::{Cli, Command, DeadLettersCommand, LogFormat, NewCommand};
use taskgate_host::dead_letters::DeadLetterNames;
use taskgate_host::{plugins, runtime, scaffold, schemas, server};
use tracing::{info, warn};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// jemalloc keeps freed pages for reuse; glibc's malloc gave a large request's heap back to the
/// kernel after each request and faulted it in again for the next — a third of the host's CPU per
/// 1 MB request (docs/performance.md, "The host's allocator: jemalloc"). Plugins keep their own
/// allocator: abi_stable frees what crosses the boundary through the side that allocated it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Human-readable lines by default; with `--log-format json` one JSON object per line
/// whose event fields (`correlation_id`, `traceparent` …) are top-level keys.
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("TASKGATE_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,amqprs=warn,socketioxide=warn,engineioxide=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Whatever TASKGATE_LOG says, the Socket.IO/WebSocket stack never logs client data
    // (handshake tokens, payloads) at debug or trace level.
    let no_client_data = filter_fn(taskgate_host::auth::loggable);
    match format {
        // One event, one line: client-chosen text cannot forge log lines.
        LogFormat::Text => builder
            .with_writer(taskgate_host::log_lines::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .finish()
            .with(no_client_data)
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .finish()
            .with(no_client_data)
            .init(),
    }
}

/// SIGTERM or SIGINT.
async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Loads every file of the plugins directory once, each from a private copy as the host
/// does (for the subcommands that report on them).
fn scan_plugins(settings: &taskgate_host::config::Settings) -> Option<Vec<plugins::PluginFile>> {
    match plugins::PrivateCopyLoader::in_temp_dir(usize::MAX) {
        Ok(loader) => {
            let mut loader = loader.with_inspector(settings.plugin_inspector.clone());
            Some(plugins::scan(&settings.plugins_dir, &mut loader, settings))
        }
        Err(e) => {
            eprintln!("taskgate: cannot create a private directory for plugin copies: {e}");
            None
        }
    }
}

/// `taskgate dead-letters …`: what it prints.
async fn dead_letters_command(
    url: &str,
    names: &DeadLetterNames,
    command: DeadLettersCommand,
) -> Result<String, dead_letters::DeadLetterError> {
    Ok(match command {
        DeadLettersCommand::List => {
            let letters = dead_letters::list(url, names).await?;
            let mut out = format!("{} dead letters in `{}`\n", letters.len(), names.queue);
            for letter in &letters {
                out.push_str(&letter.summary());
                out.push('\n');
            }
            out
        }
        DeadLettersCommand::Show { id } => dead_letters::list(url, names)
            .await?
            .into_iter()
            .find(|letter| letter.id == id)
            .map(|letter| letter.details())
            .ok_or(dead_letters::DeadLetterError::NotFound(
                id,
                names.queue.clone(),
            ))?,
        DeadLettersCommand::Requeue { id } => {
            let queue = dead_letters::requeue(url, names, &id).await?;
            format!("sent dead letter {id} back to `{queue}`: a worker runs it again (its original client gets the outcome if it still waits; otherwise the host logs the reply as one for a request it does not know)\n")
        }
        DeadLettersCommand::Purge => {
            let purged = dead_letters::purge(url, names).await?;
            format!("deleted {purged} dead letters from `{}`\n", names.queue)
        }
    })
}

/// `taskgate status`: 0 all request types have workers, 1 some have none, 2 unreadable.
async fn status(url: &str, token: Option<&str>, json: bool) -> ExitCode {
    let overview = match taskgate_host::status::fetch(url, token).await {
        Ok(overview) => overview,
        Err(e) => {
            eprintln!("taskgate status: {e}");
            return ExitCode::from(2);
        }
    };
    if json {
        println!("{overview:#}");
    } else {
        print!("{}", taskgate_host::status::render(&overview));
    }
    let idle = taskgate_host::status::without_workers(&overview);
    if idle.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "taskgate status: no workers consume the queue of {}",
            idle.join(", ")
        );
        ExitCode::from(1)
    }
}

/// `taskgate new …`: 0 written, 2 refused (nothing written).
fn new(command: &NewCommand) -> ExitCode {
    let NewCommand::Plugin {
        name,
        dir,
        api_git,
        api_path,
    } = command;
    let api = match (api_git, api_path) {
        (Some(url), _) => Some(scaffold::ApiSource::Git(url.clone())),
        (None, Some(path)) => Some(scaffold::ApiSource::Path(
            path.canonicalize().unwrap_or_else(|_| path.clone()),
        )),
        (None, None) => None,
    };
    let request = scaffold::NewPlugin {
        name: name.clone(),
        dir: dir.clone(),
        api,
    };
    match scaffold::new_plugin(&request) {
        Ok(written) => {
            print!("{}", scaffold::next_steps(&written, name));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("taskgate new plugin: {e}");
            ExitCode::from(2)
        }
    }
}

/// The first signal starts the graceful shutdown; a second one stops at once.
async fn shutdown_signal() {
    signal().await;
    info!("signal received: shutting down gracefully (send it again to stop at once)");
    tokio::spawn(async {
        signal().await;
        warn!("second signal: stopping at once");
        std::process::exit(130);
    });
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::InspectPlugin { copy, source }) = &cli.command {
        // The child process of a plugin inspection: no runtime, no log, one line of JSON.
        return match serde_json::to_string(&plugins::inspect_here(copy, source)) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(_) => ExitCode::FAILURE,
        };
    }
    if let Some(Command::New(command)) = &cli.command {
        // Writes files from templates: no runtime, no settings, no plugins.
        return new(command);
    }
    let plan = runtime::plan(cli.worker_threads, runtime::available_cores());
    match runtime::build(&plan) {
        Ok(runtime) => runtime.block_on(async_main(cli, plan)),
        Err(e) => {
            eprintln!("taskgate: cannot start the async runtime ({plan}): {e}");
            ExitCode::FAILURE
        }
    }
}

async fn async_main(cli: Cli, plan: runtime::Plan) -> ExitCode {
    init_logging(cli.log_format);
    if let Some(Command::Status { url, token, json }) = &cli.command {
        // A client of a running host: it needs no plugins.toml.
        return status(url, token.as_deref(), *json).await;
    }
    let settings = match cli.settings() {
        // New plugin files are inspected by this same binary, in a child process.
        Ok(settings) => taskgate_host::config::Settings {
            plugin_inspector: std::env::current_exe().ok(),
            ..settings
        },
        Err(e) => {
            eprintln!("taskgate: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.clone().unwrap_or(Command::Run) {
        Command::Plugins => {
            let Some(files) = scan_plugins(&settings) else {
                return ExitCode::FAILURE;
            };
            print!("{}", plugins::report(&files, &settings));
            // Which types have workers now: a request to one without waits for nobody.
            let types = plugins::enabled_queues(&files, &settings);
            let queues: Vec<String> = types.iter().map(|t| t.queue.clone()).collect();
            let looks = consumers_now(&settings.amqp_url, &queues).await;
            print!("{}", plugins::workers_report(&types, looks));
            ExitCode::SUCCESS
        }
        Command::Schemas => {
            let Some(files) = scan_plugins(&settings) else {
                return ExitCode::FAILURE;
            };
            match serde_json::to_string_pretty(&schemas::from_files(&files, &settings)) {
                Ok(json) => {
                    println!("{json}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("taskgate: cannot print the schemas: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::DeadLetters(command) => {
            let names = DeadLetterNames::new(&settings.dead_letter_queue);
            match dead_letters_command(&settings.amqp_url, &names, command).await {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("taskgate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        // (`inspect-plugin` and `new` returned in `main`, `status` above, already.)
        Command::Run | Command::InspectPlugin { .. } | Command::Status { .. } | Command::New(_) => {
            info!(threads = plan.threads, "runtime: {plan}");
            taskgate_host::open_files::raise_for(&settings.limits);
            let listener = match server::bind(settings.listen).await {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("taskgate: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match server::run(settings, listener, shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("taskgate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
