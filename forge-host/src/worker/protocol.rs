//! The worker's wire format (docs/worker.md): newline-delimited JSON. A request is `{"id": <any>,
//! "method": "<name>", "params": {...}}`; a reply is `{"id", "result"}` or `{"id", "error": {"class",
//! "message"}}`, where `class` is the exit status the CLI would give (2: bad input or refused, 1:
//! failure); an event is `{"id", "job", "event", ...}`. Nothing a client sends may take the server
//! down: every malformed line gets an error reply, and the connection stays open.
use serde_json::{json, Map, Value};

/// The longest request line read, in bytes; a longer one is answered with an error and skipped.
pub const MAX_LINE: usize = 1 << 20;

/// A parsed request.
pub struct Request {
    pub id: Value,
    pub method: String,
    pub params: Map<String, Value>,
}

/// A request that cannot be served: its id (when one could be read) and why.
pub struct Refusal {
    pub id: Value,
    pub class: i32,
    pub message: String,
}

impl Refusal {
    /// Bad input (class 2) for the request `id`.
    pub fn bad(id: &Value, message: impl Into<String>) -> Self {
        Refusal { id: id.clone(), class: 2, message: message.into() }
    }

    pub fn to_json(&self) -> Value {
        json!({"id": self.id, "error": {"class": self.class, "message": self.message}})
    }
}

/// Parses one request line.
pub fn parse(line: &str) -> Result<Request, Refusal> {
    let value: Value = serde_json::from_str(line)
        .map_err(|e| Refusal::bad(&Value::Null, format!("not a JSON request: {e}")))?;
    let Value::Object(mut object) = value else {
        return Err(Refusal::bad(
            &Value::Null,
            "a request is a JSON object {\"id\", \"method\", \"params\"}",
        ));
    };
    let id = object.remove("id").unwrap_or(Value::Null);
    let method = match object.remove("method") {
        Some(Value::String(m)) => m,
        Some(_) => return Err(Refusal::bad(&id, "`method` must be a string")),
        None => return Err(Refusal::bad(&id, "the request has no `method`")),
    };
    let params = match object.remove("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p,
        Some(_) => return Err(Refusal::bad(&id, "`params` must be an object")),
    };
    Ok(Request { id, method, params })
}

/// A successful reply to `id`.
pub fn reply(id: &Value, result: Value) -> Value {
    json!({"id": id, "result": result})
}

/// An event of `job` for the request `id`: `fields` with `id`, `job` and `event` set.
pub fn event(id: &Value, job: &str, event: &str, fields: &Value) -> Value {
    let mut object = fields.as_object().cloned().unwrap_or_default();
    object.insert("id".into(), id.clone());
    object.insert("job".into(), job.into());
    object.insert("event".into(), event.into());
    Value::Object(object)
}

impl Request {
    /// The string parameter `name`, or a refusal naming it.
    pub fn string(&self, name: &str) -> Result<String, Refusal> {
        match self.params.get(name) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(other) => {
                Err(Refusal::bad(&self.id, format!("params.{name} must be a non-empty string, not {other}")))
            }
            None => Err(Refusal::bad(&self.id, format!("params.{name} is missing"))),
        }
    }

    /// The boolean parameter `name` (false when absent).
    pub fn flag(&self, name: &str) -> Result<bool, Refusal> {
        match self.params.get(name) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => {
                Err(Refusal::bad(&self.id, format!("params.{name} must be true or false, not {other}")))
            }
        }
    }
}
