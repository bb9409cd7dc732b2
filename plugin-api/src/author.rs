//! The plugin author's side: a builder for the declaration, and validation functions made
//! from serde types. Nothing here knows about FFI.

use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::defaults;
use crate::manifest::{PluginManifest, Problem, RequestTypeManifest, RetryPolicy};

/// Payload JSON in; normalised payload JSON or the problems found out.
type ValidateFn = Arc<dyn Fn(&str) -> Result<String, Vec<Problem>> + Send + Sync>;

/// A plugin: a name, a version and its request types.
pub struct Plugin {
    name: String,
    version: String,
    request_types: Vec<RequestType>,
}

impl Plugin {
    /// `name` is how operators enable it in plugins.toml (`[plugins.<name>]`).
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Plugin {
            name: name.into(),
            version: version.into(),
            request_types: Vec::new(),
        }
    }

    pub fn request_type(mut self, request_type: RequestType) -> Self {
        self.request_types.push(request_type);
        self
    }

    /// The declaration the host reads when it loads the plugin.
    pub fn manifest(&self) -> PluginManifest {
        PluginManifest {
            name: self.name.clone(),
            version: self.version.clone(),
            request_types: self
                .request_types
                .iter()
                .map(RequestType::manifest)
                .collect(),
        }
    }

    /// Validates a payload of `request_type` (what the host calls through the boundary).
    pub fn validate(&self, request_type: &str, payload_json: &str) -> Result<String, Vec<Problem>> {
        let Some(declared) = self.request_types.iter().find(|t| t.name == request_type) else {
            return Err(vec![Problem::new(
                "",
                format!("plugin `{}` does not serve `{request_type}`", self.name),
            )]);
        };
        match &declared.validate {
            Some(validate) => validate(payload_json),
            None => Ok(payload_json.to_owned()),
        }
    }
}

/// One request type and its declaration.
pub struct RequestType {
    name: String,
    queue: Option<String>,
    queue_arguments: Map<String, Value>,
    streams: bool,
    timeout: Duration,
    max_payload_bytes: u64,
    payload_schema: Value,
    result_schema: Option<Value>,
    chunk_schema: Option<Value>,
    description: Option<String>,
    required_roles: Vec<String>,
    delivery_limit: Option<u32>,
    retry: Option<RetryPolicy>,
    validate: Option<ValidateFn>,
}

fn schema_of<T: JsonSchema>() -> Value {
    serde_json::to_value(schemars::schema_for!(T)).unwrap_or(Value::Bool(true))
}

impl RequestType {
    fn bare(name: impl Into<String>, payload_schema: Value) -> Self {
        RequestType {
            name: name.into(),
            queue: None,
            queue_arguments: Map::new(),
            streams: false,
            timeout: Duration::from_millis(defaults::TIMEOUT_MS),
            max_payload_bytes: defaults::MAX_PAYLOAD_BYTES,
            payload_schema,
            result_schema: None,
            chunk_schema: None,
            description: None,
            required_roles: Vec::new(),
            delivery_limit: None,
            retry: None,
            validate: None,
        }
    }

    /// A request type that accepts any JSON payload. The host forwards it byte for byte and
    /// never calls the plugin for it.
    pub fn any(name: impl Into<String>) -> Self {
        Self::bare(name, Value::Bool(true))
    }

    /// A request type whose payload is a `T`: its schema comes from `T`'s `JsonSchema`, and
    /// a payload is valid when it deserializes into `T`. The payload workers receive is the
    /// `T` serialized again (normalised: unknown fields dropped unless `T` keeps them,
    /// defaults filled in).
    pub fn typed<T>(name: impl Into<String>) -> Self
    where
        T: DeserializeOwned + Serialize + JsonSchema + 'static,
    {
        Self::bare(name, Value::Bool(true)).check(|_: &T| Vec::new())
    }

    /// Rules a JSON Schema cannot say (relations between fields …), checked after the host
    /// checked the payload against `T`'s schema and after deserialization into `T`. Return
    /// no problems for a valid payload; `Problem::new("/field", "must be …")` for each
    /// thing wrong. Limits belong in `T`'s schemars attributes (`range`, `length` …): the
    /// host enforces them, in the schema's words.
    ///
    /// The payload is deserialized into the `T` this check takes, and the declared payload
    /// schema becomes `T`'s: validation and schema cannot describe different types.
    pub fn check<T, F>(mut self, check: F) -> Self
    where
        T: DeserializeOwned + Serialize + JsonSchema + 'static,
        F: Fn(&T) -> Vec<Problem> + Send + Sync + 'static,
    {
        self.payload_schema = schema_of::<T>();
        let shape = Shape::of(&self.payload_schema);
        self.validate = Some(Arc::new(move |json| {
            shape.check(json)?;
            parse_and_check::<T>(json, &check)
        }));
        self
    }

    /// The queue (default `taskgate.<name>`).
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// One argument the queue is declared with.
    pub fn queue_argument(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.queue_arguments.insert(key.into(), value.into());
        self
    }

    /// Declares the queue as a quorum queue (replicated, durable: for a RabbitMQ cluster).
    /// The host declares request queues as quorum queues anyway unless their arguments name
    /// another `x-queue-type`: only quorum queues count deliveries (`delivery_limit`).
    pub fn quorum(self) -> Self {
        self.queue_argument("x-queue-type", "quorum")
    }

    /// Workers stream chunks before the result.
    pub fn streams(mut self, streams: bool) -> Self {
        self.streams = streams;
        self
    }

    /// How long a client waits for the final reply (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Largest payload accepted, in bytes of JSON (default 1 MiB).
    pub fn max_payload_bytes(mut self, bytes: u64) -> Self {
        self.max_payload_bytes = bytes;
        self
    }

    /// The schema of the result, for documentation and typed clients.
    pub fn result_schema<R: JsonSchema>(mut self) -> Self {
        self.result_schema = Some(schema_of::<R>());
        self
    }

    /// The schema of each streamed chunk, for documentation and typed clients.
    pub fn chunk_schema<C: JsonSchema>(mut self) -> Self {
        self.chunk_schema = Some(schema_of::<C>());
        self
    }

    /// Roles a client must all have to call this type (the host answers others
    /// `FORBIDDEN`). A default: operators can change it in plugins.toml.
    pub fn required_roles(mut self, roles: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.required_roles = roles.into_iter().map(Into::into).collect();
        self
    }

    /// How many times a request may be delivered to workers without an answer (a worker
    /// that crashes on it, again and again) before the host dead-letters it and gives its
    /// client a final error. Default: 3. At least 1.
    pub fn delivery_limit(mut self, deliveries: u32) -> Self {
        self.delivery_limit = Some(deliveries);
        self
    }

    /// How workers retry a request whose handler fails with a retryable error: attempts,
    /// backoff, which codes (protocol §3.12). Workers get it with every request.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    fn manifest(&self) -> RequestTypeManifest {
        RequestTypeManifest {
            name: self.name.clone(),
            queue: self
                .queue
                .clone()
                .unwrap_or_else(|| format!("{}{}", defaults::QUEUE_PREFIX, self.name)),
            queue_arguments: self.queue_arguments.clone(),
            streams: self.streams,
            timeout_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
            max_payload_bytes: self.max_payload_bytes,
            payload_schema: self.payload_schema.clone(),
            result_schema: self.result_schema.clone(),
            chunk_schema: self.chunk_schema.clone(),
            validates: self.validate.is_some(),
            description: self.description.clone(),
            required_roles: self.required_roles.clone(),
            delivery_limit: self.delivery_limit,
            retry: self.retry.clone(),
        }
    }
}

/// serde's derived structs also accept arrays (`[5]` for `{"from": 5}`). A payload whose
/// schema says object must be one, as the schema promises clients and workers.
#[derive(Clone, Copy)]
enum Shape {
    Object,
    Anything,
}

impl Shape {
    fn of(schema: &Value) -> Shape {
        if schema.get("type").and_then(Value::as_str) == Some("object") {
            Shape::Object
        } else {
            Shape::Anything
        }
    }

    fn check(self, json: &str) -> Result<(), Vec<Problem>> {
        match self {
            Shape::Object if !json.trim_start().starts_with('{') => {
                Err(vec![Problem::new("", "must be a JSON object")])
            }
            _ => Ok(()),
        }
    }
}

fn parse_and_check<T>(
    json: &str,
    check: impl Fn(&T) -> Vec<Problem>,
) -> Result<String, Vec<Problem>>
where
    T: DeserializeOwned + Serialize,
{
    let deserializer = &mut serde_json::Deserializer::from_str(json);
    let value: T = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let pointer = json_pointer(e.path());
        let message = e.inner().to_string();
        vec![problem_at(pointer, message)]
    })?;
    let problems = check(&value);
    if !problems.is_empty() {
        return Err(problems);
    }
    serde_json::to_string(&value).map_err(|e| vec![Problem::new("", e.to_string())])
}

/// serde's "missing field `x` at line …" points at the object; point at the field instead,
/// and drop the position (it describes the host's copy, not what the client wrote).
fn problem_at(pointer: String, message: String) -> Problem {
    let message = match message.find(" at line ") {
        Some(cut) => message[..cut].to_owned(),
        None => message,
    };
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
    {
        return Problem::new(format!("{pointer}/{}", escape(field)), "is required");
    }
    Problem::new(pointer, message)
}

fn json_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut pointer = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => pointer.push_str(&format!("/{index}")),
            Segment::Map { key } => {
                pointer.push('/');
                pointer.push_str(&escape(key));
            }
            Segment::Enum { variant } => {
                pointer.push('/');
                pointer.push_str(&escape(variant));
            }
            Segment::Unknown => {}
        }
    }
    pointer
}

/// JSON Pointer escaping (RFC 6901).
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, Serialize, JsonSchema)]
    struct Inner {
        n: u32,
    }

    #[derive(Debug, Deserialize, Serialize, JsonSchema)]
    struct Payload {
        text: String,
        #[serde(default)]
        items: Vec<Inner>,
    }

    fn plugin() -> Plugin {
        Plugin::new("p", "1.0.0")
            .request_type(
                RequestType::any("echo")
                    .streams(true)
                    .required_roles(["ops"]),
            )
            .request_type(
                RequestType::typed::<Payload>("typed")
                    .queue("q.typed")
                    .quorum()
                    .delivery_limit(5)
                    .timeout(Duration::from_secs(5))
                    .max_payload_bytes(10)
                    .check(|p: &Payload| {
                        if p.text.is_empty() {
                            vec![Problem::new("/text", "must not be empty")]
                        } else {
                            Vec::new()
                        }
                    }),
            )
    }

    #[test]
    fn the_manifest_carries_every_declared_field_and_the_defaults() {
        let m = plugin().manifest();
        assert_eq!(m.name, "p");
        let echo = &m.request_types[0];
        assert_eq!(echo.queue, "taskgate.echo");
        assert!(echo.streams);
        assert!(!echo.validates);
        assert_eq!(echo.timeout_ms, 30_000);
        assert_eq!(echo.payload_schema, Value::Bool(true));
        assert_eq!(echo.required_roles, vec!["ops".to_owned()]);
        assert_eq!(echo.delivery_limit, None, "the host's default");
        let typed = &m.request_types[1];
        assert_eq!(typed.delivery_limit, Some(5));
        assert_eq!(typed.queue, "q.typed");
        assert_eq!(typed.queue_arguments["x-queue-type"], "quorum");
        assert_eq!(typed.timeout_ms, 5000);
        assert_eq!(typed.max_payload_bytes, 10);
        assert!(typed.validates);
        assert!(typed.required_roles.is_empty());
        assert_eq!(
            typed.payload_schema["required"],
            serde_json::json!(["text"])
        );
        assert!(m.check().is_ok());
    }

    #[test]
    fn typed_validation_normalises() {
        let out = plugin()
            .validate("typed", r#"{ "text": "hi", "extra": 1 }"#)
            .unwrap();
        assert_eq!(out, r#"{"text":"hi","items":[]}"#);
    }

    #[test]
    fn problems_point_into_the_payload() {
        let p = plugin();
        assert_eq!(
            p.validate("typed", r#"{"text": 5}"#).unwrap_err()[0].pointer,
            "/text"
        );
        assert_eq!(
            p.validate("typed", r#"{"text": "a", "items": [{"n": 1}, {"n": "x"}]}"#)
                .unwrap_err()[0]
                .pointer,
            "/items/1/n"
        );
        let missing = p.validate("typed", "{}").unwrap_err();
        assert_eq!(missing[0], Problem::new("/text", "is required"));
        assert_eq!(
            p.validate("typed", r#"{"text": ""}"#).unwrap_err(),
            vec![Problem::new("/text", "must not be empty")]
        );
        assert!(!p.validate("typed", "[1]").unwrap_err()[0]
            .message
            .contains("line"));
    }

    #[test]
    fn any_passes_payloads_through_and_unknown_types_are_problems() {
        let p = plugin();
        assert_eq!(p.validate("echo", "[1, 2]").unwrap(), "[1, 2]");
        assert!(p.validate("nope", "1").is_err());
    }

    #[test]
    fn the_checked_type_is_the_declared_schema() {
        #[derive(Deserialize, Serialize, JsonSchema)]
        struct Other {
            n: u8,
        }
        let t = RequestType::typed::<Payload>("t").check(|_: &Other| Vec::new());
        let m = t.manifest();
        assert_eq!(m.payload_schema["required"], serde_json::json!(["n"]));
        let p = Plugin::new("p", "1").request_type(t);
        assert_eq!(p.validate("t", r#"{"n": 1}"#).unwrap(), r#"{"n":1}"#);
        let any_checked = RequestType::any("a")
            .check(|_: &Other| Vec::new())
            .manifest();
        assert!(any_checked.validates);
        assert_eq!(
            any_checked.payload_schema["required"],
            serde_json::json!(["n"])
        );
    }

    #[test]
    fn payloads_that_are_not_json_or_not_objects_are_problems_at_the_root() {
        let p = plugin();
        for payload in ["", "{", "[]", "[\"a\"]", "null", "\"text\""] {
            let problems = p.validate("typed", payload).unwrap_err();
            assert_eq!(problems[0].pointer, "", "{payload}");
        }
        assert_eq!(
            p.validate("typed", r#"["a", []]"#).unwrap_err(),
            vec![Problem::new("", "must be a JSON object")]
        );
    }

    #[test]
    fn pointer_tokens_are_escaped() {
        assert_eq!(escape("a/b~c"), "a~1b~0c");
    }
}
