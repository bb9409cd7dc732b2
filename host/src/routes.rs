//! The routing table: for each enabled request type, everything the host needs to serve it
//! (queue, limits, timeout, streaming flag) and how to validate its payload.
//!
//! A table is immutable once built; hot reload (`reload`) swaps a whole new table in, so a
//! request always sees one consistent version of its type.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::{Map, Value};
use taskgate_plugin_api::host::Validation;
use taskgate_plugin_api::Problem;

use crate::error::RequestError;

/// Something that can validate and normalise payloads of a request type. Implemented by
/// loaded plugins; tests provide small in-process implementations.
pub trait PayloadValidator: Send + Sync {
    fn validate(&self, request_type: &str, payload_json: &str) -> Validation;
}

impl PayloadValidator for taskgate_plugin_api::host::LoadedPlugin {
    fn validate(&self, request_type: &str, payload_json: &str) -> Validation {
        taskgate_plugin_api::host::LoadedPlugin::validate(self, request_type, payload_json)
    }
}

/// How the payload of a type is checked, decided once when the table is built.
enum Check {
    /// Any JSON is accepted and forwarded byte for byte.
    Anything,
    /// Only the declared JSON Schema (the plugin has no validation function).
    Schema(Box<jsonschema::Validator>),
    /// The declared JSON Schema, when it says anything, then the plugin's validation
    /// function, which may normalise. The schema goes first so that a rule written once as
    /// a schemars attribute (`range`, `length`, `pattern` …) is enforced, and refused in
    /// the schema's words rather than serde's; the plugin's `check` is for what a schema
    /// cannot say.
    Plugin {
        schema: Option<Box<jsonschema::Validator>>,
        validator: Arc<dyn PayloadValidator>,
    },
}

/// One request type as the host serves it: the plugin's declaration with the operator's
/// overrides from plugins.toml applied.
pub struct RequestTypeSpec {
    pub name: String,
    pub plugin: String,
    pub plugin_version: String,
    pub queue: String,
    pub queue_arguments: Map<String, Value>,
    /// Deliveries before its queue dead-letters a request (`None`: the queue does not
    /// count them); set by `plugins` with the queue arguments that enforce it.
    pub delivery_limit: Option<u32>,
    /// The retry policy workers get as header `x-retry` (JSON), if the plugin declares one.
    pub retry: Option<Arc<str>>,
    pub streams: bool,
    pub timeout: Duration,
    pub max_payload_bytes: usize,
    /// Roles a connection's identity must all have to call this type.
    pub required_roles: Vec<String>,
    /// How long the plugin's validation of one payload may take (`TIMEOUT` past it).
    pub validation_budget: Duration,
    /// What a request does while no worker consumes `queue` (`serving`).
    pub when_no_workers: crate::serving::WhenNoWorkers,
    /// The plugin's validation was seen to take a while: it runs off the I/O thread.
    validation_is_slow: AtomicBool,
    check: Check,
}

/// The default of `validation_budget_ms`.
pub const DEFAULT_VALIDATION_BUDGET: Duration = Duration::from_secs(1);
/// A validation on the I/O thread that takes longer than this has stalled every connection
/// that long: that type is validated off the thread from then on.
pub const SLOW_VALIDATION: Duration = Duration::from_millis(5);
/// Payloads larger than this are validated off the I/O thread whatever the type.
pub const OFF_THREAD_PAYLOAD_BYTES: usize = 64 * 1024;

impl fmt::Debug for RequestTypeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestTypeSpec")
            .field("name", &self.name)
            .field("plugin", &self.plugin)
            .field("queue", &self.queue)
            .field("streams", &self.streams)
            .field("timeout", &self.timeout)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("required_roles", &self.required_roles)
            .finish_non_exhaustive()
    }
}

/// The payload to publish after validation.
#[derive(Debug)]
pub enum Checked {
    /// Publish the client's bytes unchanged (no copy, no re-serialisation).
    Unchanged,
    /// Publish this normalised JSON instead.
    Normalised(String),
}

/// What a plugin-independent builder needs to describe a request type.
#[derive(Debug, Clone)]
pub struct SpecParts {
    pub name: String,
    pub plugin: String,
    pub plugin_version: String,
    pub queue: String,
    pub queue_arguments: Map<String, Value>,
    pub streams: bool,
    pub timeout: Duration,
    pub max_payload_bytes: usize,
    pub required_roles: Vec<String>,
    pub payload_schema: Value,
}

impl RequestTypeSpec {
    /// Builds a spec. A non-trivial `payload_schema` is compiled here, once per table, and
    /// enforced by the host; `validator` is the plugin's validation function, if it declared
    /// one, called for payloads the schema accepts.
    pub fn new(
        parts: SpecParts,
        validator: Option<Arc<dyn PayloadValidator>>,
    ) -> Result<Self, String> {
        let schema = if is_trivial_schema(&parts.payload_schema) {
            None
        } else {
            Some(Box::new(
                jsonschema::validator_for(&parts.payload_schema)
                    .map_err(|e| format!("payload schema of `{}` is invalid: {e}", parts.name))?,
            ))
        };
        let check = match (validator, schema) {
            (Some(validator), schema) => Check::Plugin { schema, validator },
            (None, Some(schema)) => Check::Schema(schema),
            (None, None) => Check::Anything,
        };
        Ok(RequestTypeSpec {
            name: parts.name,
            plugin: parts.plugin,
            plugin_version: parts.plugin_version,
            queue: parts.queue,
            queue_arguments: parts.queue_arguments,
            delivery_limit: None,
            retry: None,
            streams: parts.streams,
            timeout: parts.timeout,
            max_payload_bytes: parts.max_payload_bytes,
            required_roles: parts.required_roles,
            validation_budget: DEFAULT_VALIDATION_BUDGET,
            when_no_workers: crate::serving::WhenNoWorkers::default(),
            validation_is_slow: AtomicBool::new(false),
            check,
        })
    }

    /// The budget of the plugin's validation of one payload (at least 1 ms).
    pub fn with_validation_budget(mut self, budget: Duration) -> Self {
        self.validation_budget = budget.max(Duration::from_millis(1));
        self
    }

    /// Whether this payload's validation should run off the I/O thread: the plugin's
    /// validation of a large payload, or of a type seen slow before. (Schemas and
    /// "anything" are the host's own, fast, code.)
    pub fn validates_off_thread(&self, payload_bytes: usize) -> bool {
        matches!(self.check, Check::Plugin { .. })
            && (payload_bytes > OFF_THREAD_PAYLOAD_BYTES
                || self.validation_is_slow.load(Ordering::Relaxed))
    }

    /// [`RequestTypeSpec::check`] on the I/O thread, timed: past [`SLOW_VALIDATION`] the type
    /// is validated off the thread from then on, past its budget the request is refused.
    pub fn check_inline(&self, payload: &RawValue) -> Result<Checked, RequestError> {
        let started = std::time::Instant::now();
        let checked = self.check(payload);
        let took = started.elapsed();
        if took > SLOW_VALIDATION
            && matches!(self.check, Check::Plugin { .. })
            && !self.validation_is_slow.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(request_type = %self.name, took_ms = took.as_millis() as u64, "the plugin's validation is slow: this type is validated off the I/O thread from now on");
        }
        if took > self.validation_budget {
            return Err(self.over_budget());
        }
        checked
    }

    /// The refusal of a payload whose validation took longer than the budget.
    pub fn over_budget(&self) -> RequestError {
        RequestError::ValidationTimeout {
            request_type: self.name.clone(),
            budget_ms: u64::try_from(self.validation_budget.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Checks a payload against this type's size limit only.
    pub fn check_size(&self, payload: &RawValue) -> Result<(), RequestError> {
        let size = payload.get().len();
        if size > self.max_payload_bytes {
            return Err(RequestError::PayloadTooLarge {
                request_type: self.name.clone(),
                size,
                limit: self.max_payload_bytes,
            });
        }
        Ok(())
    }

    /// Checks a payload against this type's size limit and validation.
    pub fn check(&self, payload: &RawValue) -> Result<Checked, RequestError> {
        self.check_size(payload)?;
        let json = payload.get();
        match &self.check {
            Check::Anything => Ok(Checked::Unchanged),
            Check::Schema(schema) => {
                self.check_schema(schema, json)?;
                Ok(Checked::Unchanged)
            }
            Check::Plugin { schema, validator } => {
                if let Some(schema) = schema {
                    self.check_schema(schema, json)?;
                }
                self.check_plugin(validator.as_ref(), json)
            }
        }
    }

    /// The declared schema's verdict: its problems, each at its JSON pointer, in the schema's
    /// words ("1 is less than the minimum of 2").
    fn check_schema(&self, schema: &jsonschema::Validator, json: &str) -> Result<(), RequestError> {
        let value: Value = serde_json::from_str(json)
            .map_err(|e| RequestError::BadRequest(format!("payload is not JSON: {e}")))?;
        // The common case: valid, and `is_valid` stops at nothing and builds no errors.
        if schema.is_valid(&value) {
            return Ok(());
        }
        let problems: Vec<Problem> = schema
            .iter_errors(&value)
            .take(MAX_PROBLEMS)
            .map(|e| schema_problem(&e))
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(self.invalid(problems))
        }
    }

    fn check_plugin(
        &self,
        validator: &dyn PayloadValidator,
        json: &str,
    ) -> Result<Checked, RequestError> {
        match validator.validate(&self.name, json) {
            Validation::Valid(normalised) => Ok(Checked::Normalised(normalised)),
            Validation::Invalid(mut problems) => {
                problems.truncate(MAX_PROBLEMS);
                Err(self.invalid(problems))
            }
            Validation::Failed(reason) => {
                tracing::error!(request_type = %self.name, plugin = %self.plugin, %reason, "plugin validation failed");
                Err(RequestError::Internal(format!(
                    "plugin `{}` failed while validating the payload",
                    self.plugin
                )))
            }
        }
    }

    fn invalid(&self, problems: Vec<Problem>) -> RequestError {
        RequestError::InvalidPayload {
            request_type: self.name.clone(),
            problems,
        }
    }
}

/// One schema error as a problem. jsonschema points at the object that lacks a required
/// property; the problem points at the property itself, as the plugin's own problems do
/// (and as a form shows the error next to its field). A message that would quote a long
/// value is said without it: a refusal does not echo kilobytes of the client's payload.
fn schema_problem(error: &jsonschema::ValidationError<'_>) -> Problem {
    let pointer = error.instance_path.to_string();
    if let jsonschema::error::ValidationErrorKind::Required { property } = &error.kind {
        if let Some(name) = property.as_str() {
            let escaped = name.replace('~', "~0").replace('/', "~1");
            return Problem::new(format!("{pointer}/{escaped}"), "is required");
        }
    }
    let mut message = error.to_string();
    if message.chars().count() > MAX_PROBLEM_CHARS {
        message = error.masked().to_string();
    }
    if message.chars().count() > MAX_PROBLEM_CHARS {
        message = message.chars().take(MAX_PROBLEM_CHARS).collect::<String>() + "…";
    }
    Problem::new(pointer, message)
}

/// The longest problem message the host writes from a schema error.
const MAX_PROBLEM_CHARS: usize = 200;

/// A client gets at most this many problems back: enough to fix a payload, bounded for
/// hostile ones.
const MAX_PROBLEMS: usize = 20;

fn is_trivial_schema(schema: &Value) -> bool {
    match schema {
        Value::Bool(true) => true,
        Value::Object(map) => map
            .keys()
            .all(|k| matches!(k.as_str(), "$schema" | "title" | "description" | "$id")),
        _ => false,
    }
}

/// A plugin version that serves request types of a table: what operators see in the log,
/// `/readyz` and metrics, to know which build answers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServedPlugin {
    pub name: String,
    pub version: String,
    /// The first 16 hex digits of the SHA-256 of the library file it was loaded from.
    pub hash: String,
    pub file: PathBuf,
    pub request_types: Vec<String>,
}

/// A plugin file (or plugins.toml) that was refused at the last rescan that read it, and
/// still is: what the operator console shows next to the plugins.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadError {
    pub file: String,
    pub reason: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// Request type name → spec. Built once per configuration, then shared read-only.
#[derive(Debug, Default)]
pub struct RoutingTable {
    types: HashMap<String, Arc<RequestTypeSpec>>,
    plugins: Vec<ServedPlugin>,
    load_errors: Vec<LoadError>,
}

impl RoutingTable {
    pub fn new(specs: impl IntoIterator<Item = RequestTypeSpec>) -> Self {
        RoutingTable {
            types: specs
                .into_iter()
                .map(|s| (s.name.clone(), Arc::new(s)))
                .collect(),
            plugins: Vec::new(),
            load_errors: Vec::new(),
        }
    }

    /// Records the refusals that stand as this table is made.
    pub fn with_load_errors(mut self, load_errors: Vec<LoadError>) -> Self {
        self.load_errors = load_errors;
        self
    }

    /// The plugin files refused (and plugins.toml, if it is) as this table was made.
    pub fn load_errors(&self) -> &[LoadError] {
        &self.load_errors
    }

    /// Records which plugin versions serve this table's types.
    pub fn with_plugins(mut self, plugins: Vec<ServedPlugin>) -> Self {
        self.plugins = plugins;
        self
    }

    /// The plugin versions serving this table, by name.
    pub fn plugins(&self) -> &[ServedPlugin] {
        &self.plugins
    }

    pub fn get(&self, request_type: &str) -> Option<&Arc<RequestTypeSpec>> {
        self.types.get(request_type)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<RequestTypeSpec>> {
        self.types.values()
    }

    pub fn len(&self) -> usize {
        self.types.len()
    }

    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Specs for unit tests, without any plugin file.
    use super::*;

    pub fn parts(name: &str) -> SpecParts {
        SpecParts {
            name: name.to_owned(),
            plugin: "test".to_owned(),
            plugin_version: "0.0.0".to_owned(),
            queue: format!("taskgate.{name}"),
            queue_arguments: Map::new(),
            streams: false,
            timeout: Duration::from_secs(30),
            max_payload_bytes: 1024,
            required_roles: Vec::new(),
            payload_schema: Value::Bool(true),
        }
    }

    /// A validator from a closure.
    pub struct FnValidator<F>(pub F);
    impl<F: Fn(&str) -> Validation + Send + Sync> PayloadValidator for FnValidator<F> {
        fn validate(&self, _request_type: &str, payload_json: &str) -> Validation {
            (self.0)(payload_json)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use serde_json::json;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn a_slow_validation_is_refused_past_its_budget_and_moves_its_type_off_the_io_thread() {
        let validator: Arc<dyn PayloadValidator> = Arc::new(FnValidator(|_: &str| {
            std::thread::sleep(Duration::from_millis(30));
            Validation::Valid("{}".into())
        }));
        let spec = RequestTypeSpec::new(parts("slow"), Some(validator))
            .unwrap()
            .with_validation_budget(Duration::from_millis(10));
        assert!(
            !spec.validates_off_thread(10),
            "until seen slow, small payloads stay inline"
        );
        assert!(spec.validates_off_thread(OFF_THREAD_PAYLOAD_BYTES + 1));
        let error = spec.check_inline(&raw("{}")).unwrap_err();
        assert_eq!(error.code(), taskgate_protocol::ErrorCode::Timeout);
        assert!(error.to_string().contains("budget of 10 ms"), "{error}");
        assert!(
            spec.validates_off_thread(10),
            "seen slow: off the thread from now on"
        );
        // The host's own checks never leave the thread.
        let schema_free = RequestTypeSpec::new(parts("echo"), None).unwrap();
        assert!(!schema_free.validates_off_thread(OFF_THREAD_PAYLOAD_BYTES + 1));
    }

    #[test]
    fn any_json_passes_through_unchanged() {
        let spec = RequestTypeSpec::new(parts("echo"), None).unwrap();
        assert!(matches!(
            spec.check(&raw(r#"{"a": 1}"#)),
            Ok(Checked::Unchanged)
        ));
    }

    #[test]
    fn oversized_payload_is_refused_before_validation() {
        let mut p = parts("echo");
        p.max_payload_bytes = 8;
        let validator: Arc<dyn PayloadValidator> = Arc::new(FnValidator(|_: &str| -> Validation {
            panic!("must not be called")
        }));
        let spec = RequestTypeSpec::new(p, Some(validator)).unwrap();
        let err = spec.check(&raw(r#""0123456789""#)).unwrap_err();
        assert_eq!(err.code().as_str(), "PAYLOAD_TOO_LARGE");
        assert_eq!(err.to_body().details, Some(json!({"size": 12, "limit": 8})));
    }

    #[test]
    fn schema_only_types_are_checked_by_the_host_with_pointers() {
        let mut p = parts("num");
        p.payload_schema = json!({
            "type": "object",
            "properties": { "n": { "type": "integer", "minimum": 1 } },
            "required": ["n"]
        });
        let spec = RequestTypeSpec::new(p, None).unwrap();
        assert!(matches!(
            spec.check(&raw(r#"{"n": 3}"#)),
            Ok(Checked::Unchanged)
        ));
        match spec.check(&raw(r#"{"n": 0}"#)) {
            Err(RequestError::InvalidPayload { problems, .. }) => {
                assert_eq!(problems.len(), 1);
                assert_eq!(problems[0].pointer, "/n");
            }
            other => panic!("expected INVALID_PAYLOAD, got {other:?}"),
        }
    }

    /// A request type declared by a real (in-process) plugin: the limit is written once, as
    /// a schemars attribute, and the plugin's `check` says nothing about it.
    mod primes {
        use serde::{Deserialize, Serialize};
        use taskgate_plugin_api::{JsonSchema, Plugin, Problem, RequestType};

        #[derive(Deserialize, Serialize, JsonSchema)]
        #[schemars(crate = "taskgate_plugin_api::schemars")]
        pub struct Primes {
            #[schemars(range(min = 2, max = 10_000_000))]
            pub limit: u64,
        }

        pub fn plugin() -> Plugin {
            Plugin::new("primes", "1.0.0").request_type(
                RequestType::typed::<Primes>("math.primes").check(|p: &Primes| {
                    if p.limit == 13 {
                        vec![Problem::new("/limit", "is unlucky")]
                    } else {
                        Vec::new()
                    }
                }),
            )
        }
    }

    fn primes_spec() -> RequestTypeSpec {
        let plugin = Arc::new(primes::plugin());
        let manifest = plugin.manifest();
        let mut p = parts("math.primes");
        p.payload_schema = manifest.request_types[0].payload_schema.clone();
        let validator: Arc<dyn PayloadValidator> = Arc::new(FnValidator(move |json: &str| {
            match plugin.validate("math.primes", json) {
                Ok(normalised) => Validation::Valid(normalised),
                Err(problems) => Validation::Invalid(problems),
            }
        }));
        RequestTypeSpec::new(p, Some(validator)).unwrap()
    }

    fn problems_of(spec: &RequestTypeSpec, payload: &str) -> Vec<Problem> {
        match spec.check(&raw(payload)) {
            Err(RequestError::InvalidPayload { problems, .. }) => problems,
            other => panic!("expected INVALID_PAYLOAD for {payload}, got {other:?}"),
        }
    }

    #[test]
    fn a_plugins_schema_is_enforced_before_its_check_in_the_schemas_words() {
        let spec = primes_spec();
        assert_eq!(
            problems_of(&spec, r#"{"limit": 1}"#),
            vec![Problem::new("/limit", "1 is less than the minimum of 2")]
        );
        assert_eq!(
            problems_of(&spec, r#"{"limit": -5}"#),
            vec![Problem::new("/limit", "-5 is less than the minimum of 2")],
            "not serde's \"invalid value: integer `-5`, expected u64\""
        );
        assert_eq!(
            problems_of(&spec, r#"{"limit": 10000001}"#)[0].message,
            "10000001 is greater than the maximum of 10000000"
        );
        assert_eq!(
            problems_of(&spec, r#"{"limit": "ten"}"#),
            vec![Problem::new("/limit", r#""ten" is not of type "integer""#)]
        );
        assert_eq!(
            problems_of(&spec, "{}"),
            vec![Problem::new("/limit", "is required")],
            "a missing property is pointed at, as the plugin's own problems are"
        );
        // What the schema cannot say is still the plugin's, and valid payloads are normalised.
        assert_eq!(
            problems_of(&spec, r#"{"limit": 13}"#),
            vec![Problem::new("/limit", "is unlucky")]
        );
        assert!(matches!(
            spec.check(&raw(r#"{ "limit": 7, "extra": true }"#)),
            Ok(Checked::Normalised(s)) if s == r#"{"limit":7}"#
        ));
    }

    #[test]
    fn a_payload_the_schema_refuses_never_reaches_the_plugin() {
        let validator: Arc<dyn PayloadValidator> = Arc::new(FnValidator(|_: &str| -> Validation {
            panic!("must not be called")
        }));
        let mut p = parts("n");
        p.payload_schema = json!({
            "type": "object",
            "properties": { "n": { "type": "integer", "minimum": 1 } },
            "required": ["n"]
        });
        let spec = RequestTypeSpec::new(p, Some(validator)).unwrap();
        assert_eq!(problems_of(&spec, r#"{"n": 0}"#)[0].pointer, "/n");
        assert_eq!(problems_of(&spec, "[]")[0].pointer, "");
    }

    #[test]
    fn schema_refusals_do_not_echo_long_values() {
        let mut p = parts("n");
        p.max_payload_bytes = 1 << 20;
        p.payload_schema =
            json!({ "type": "object", "properties": { "n": { "type": "integer" } } });
        let spec = RequestTypeSpec::new(p, None).unwrap();
        let long = "x".repeat(10_000);
        let problems = problems_of(&spec, &format!(r#"{{"n": "{long}"}}"#));
        assert_eq!(problems[0].pointer, "/n");
        assert!(
            problems[0].message.len() <= 4 * MAX_PROBLEM_CHARS,
            "{}",
            problems[0].message
        );
        assert!(
            problems[0].message.contains("integer"),
            "{}",
            problems[0].message
        );
    }

    #[test]
    fn an_invalid_schema_is_refused_when_the_table_is_built() {
        let mut p = parts("bad");
        p.payload_schema = json!({ "type": "no-such-type" });
        let validator: Arc<dyn PayloadValidator> =
            Arc::new(FnValidator(|_: &str| Validation::Valid("{}".into())));
        let error = RequestTypeSpec::new(p, Some(validator)).unwrap_err();
        assert!(
            error.contains("payload schema of `bad` is invalid"),
            "{error}"
        );
    }

    /// What the schema costs a plugin's request type on the I/O thread (docs/performance.md):
    /// `cargo test -p taskgate-host --release --lib routes::tests::schema_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a test"]
    fn schema_cost() {
        use taskgate_plugin_api::JsonSchema;
        #[derive(serde::Deserialize, serde::Serialize, JsonSchema)]
        #[schemars(crate = "taskgate_plugin_api::schemars")]
        #[serde(deny_unknown_fields)]
        struct WordCount {
            #[schemars(length(max = 1_048_576))]
            text: String,
        }
        let plugin = Arc::new(
            taskgate_plugin_api::Plugin::new("wc", "1")
                .request_type(taskgate_plugin_api::RequestType::typed::<WordCount>("wc")),
        );
        let schema = plugin.manifest().request_types[0].payload_schema.clone();
        let spec = |payload_schema: Value| {
            let plugin = plugin.clone();
            let validator: Arc<dyn PayloadValidator> = Arc::new(FnValidator(move |json: &str| {
                match plugin.validate("wc", json) {
                    Ok(normalised) => Validation::Valid(normalised),
                    Err(problems) => Validation::Invalid(problems),
                }
            }));
            let mut p = parts("wc");
            p.max_payload_bytes = 1 << 20;
            p.payload_schema = payload_schema;
            RequestTypeSpec::new(p, Some(validator)).unwrap()
        };
        let with_schema = spec(schema);
        let without_schema = spec(Value::Bool(true));
        // The bench's 100 B case: a text of about 90 bytes.
        let payload = raw(&format!(r#"{{"text":"{}"}}"#, "lorem ipsum ".repeat(7)));
        let rounds = 200_000u32;
        for (name, spec) in [
            ("plugin only", &without_schema),
            ("schema + plugin", &with_schema),
        ] {
            let started = std::time::Instant::now();
            for _ in 0..rounds {
                assert!(spec.check(&payload).is_ok());
            }
            let each = started.elapsed() / rounds;
            println!("{name}: {each:?} per {} B payload", payload.get().len());
        }
    }

    #[test]
    fn plugin_validation_normalises_or_reports_problems() {
        let validator: Arc<dyn PayloadValidator> = Arc::new(FnValidator(|p: &str| {
            if p.contains("bad") {
                Validation::Invalid(vec![Problem {
                    pointer: "/x".into(),
                    message: "bad".into(),
                }])
            } else {
                Validation::Valid(r#"{"x":1}"#.into())
            }
        }));
        let spec = RequestTypeSpec::new(parts("t"), Some(validator)).unwrap();
        assert!(
            matches!(spec.check(&raw(r#"{ "x" : 1 }"#)), Ok(Checked::Normalised(s)) if s == r#"{"x":1}"#)
        );
        assert_eq!(
            spec.check(&raw(r#""bad""#)).unwrap_err().code().as_str(),
            "INVALID_PAYLOAD"
        );
    }

    #[test]
    fn a_failing_plugin_becomes_internal_without_details_of_the_fault() {
        let validator: Arc<dyn PayloadValidator> = Arc::new(FnValidator(|_: &str| {
            Validation::Failed("plugin panicked: secret".into())
        }));
        let spec = RequestTypeSpec::new(parts("t"), Some(validator)).unwrap();
        let body = spec.check(&raw("1")).unwrap_err().to_body();
        assert_eq!(body.code, "INTERNAL");
        assert!(!body.message.contains("secret"));
    }
}
