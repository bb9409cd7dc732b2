//! Inside a plugin: forwards the plugin's `tracing` events to the host's log callback.
//!
//! A plugin library has its own copy of `tracing` (and of every static), so events a
//! plugin emits reach no subscriber of the host's. `install` sets, in the plugin's copy, a
//! minimal subscriber that formats each event (message and fields) and hands it to the
//! host through the `extern "C"` callback. Spans are not forwarded: plugins are small
//! synchronous functions.

use std::fmt::{self, Write as _};
use std::sync::OnceLock;

use abi_stable::std_types::RStr;
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

use crate::ffi::{level, LogFn};

static HOST_LOG: OnceLock<LogFn> = OnceLock::new();

/// Installs the forwarding subscriber (once per plugin library) and a panic hook that logs
/// panics through the host instead of printing them to stderr.
pub(crate) fn install(log: LogFn) {
    if HOST_LOG.set(log).is_ok() {
        let forwarder = Forwarder {
            max_level: level_filter(log.max_level),
        };
        let _ = tracing::dispatcher::set_global_default(tracing::Dispatch::new(forwarder));
        std::panic::set_hook(Box::new(|info| {
            forward(level::ERROR, "taskgate_plugin::panic", &info.to_string());
        }));
    }
}

fn forward(level: u8, target: &str, message: &str) {
    if let Some(log) = HOST_LOG.get() {
        (log.log)(level, RStr::from_str(target), RStr::from_str(message));
    }
}

/// The plugin's subscriber. Events above the host's level are disabled at their callsite,
/// so they cost a plugin next to nothing.
struct Forwarder {
    max_level: LevelFilter,
}

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            if !self.0.is_empty() {
                self.0.push(' ');
            }
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            self.record_debug(field, &value);
        }
    }
}

fn level_filter(code: u8) -> LevelFilter {
    match code {
        level::OFF => LevelFilter::OFF,
        level::ERROR => LevelFilter::ERROR,
        level::WARN => LevelFilter::WARN,
        level::INFO => LevelFilter::INFO,
        level::DEBUG => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

fn level_code(level: &Level) -> u8 {
    match *level {
        Level::ERROR => level::ERROR,
        Level::WARN => level::WARN,
        Level::INFO => level::INFO,
        Level::DEBUG => level::DEBUG,
        _ => level::TRACE,
    }
}

impl Subscriber for Forwarder {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.max_level >= *metadata.level()
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.max_level)
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        let metadata = event.metadata();
        forward(level_code(metadata.level()), metadata.target(), &fields.0);
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}
