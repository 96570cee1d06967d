//! What crosses the broker: a task's stream entry, a host's result, and reading the replies of
//! the stream commands.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Value;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::task::{Call, Stream, TaskId, TaskOptions, TaskReport, TaskResult};

/// A task as its entry's `spec` field carries it.
#[derive(Serialize, Deserialize)]
pub(super) struct Spec {
    pub call: Call,
    pub options: TaskOptions,
}

/// A finished task as a host writes it back to the run's submitter.
#[derive(Serialize, Deserialize)]
pub(super) struct Finished {
    pub task: TaskId,
    pub host: String,
    pub result: TaskResult,
    pub worker: Option<u32>,
    /// When it started, in milliseconds since the Unix epoch.
    pub started_ms: Option<u64>,
    pub duration: Duration,
    pub peak_memory: Option<u64>,
    pub fuel_used: Option<u64>,
    pub attempts: u32,
    /// What the task wrote, in order.
    pub output: Vec<Chunk>,
}

/// A piece of a task's output.
#[derive(Serialize, Deserialize)]
pub(super) struct Chunk {
    pub stream: Stream,
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

impl Finished {
    /// The finished task of `report`, run on `host` after `prior` hosts died running it.
    pub fn from_report(task: TaskId, host: &str, report: TaskReport, prior: u32, output: Vec<Chunk>) -> Self {
        Finished {
            task,
            host: host.to_owned(),
            result: report.result,
            worker: report.worker,
            started_ms: report
                .started
                .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
                .map(|since| since.as_millis() as u64),
            duration: report.duration,
            peak_memory: report.peak_memory,
            fuel_used: report.fuel_used,
            attempts: report.attempts + prior,
            output,
        }
    }

    /// A task that did not run on `host`, for `result`.
    pub fn unrun(task: TaskId, host: &str, result: TaskResult, attempts: u32) -> Self {
        Finished {
            task,
            host: host.to_owned(),
            result,
            worker: None,
            started_ms: None,
            duration: Duration::ZERO,
            peak_memory: None,
            fuel_used: None,
            attempts,
            output: Vec::new(),
        }
    }

    /// The report of the submitter's task `call`.
    pub fn into_report(self, call: Call) -> (TaskReport, Vec<Chunk>) {
        let report = TaskReport {
            id: self.task,
            call,
            result: self.result,
            worker: self.worker,
            started: self.started_ms.map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
            duration: self.duration,
            peak_memory: self.peak_memory,
            fuel_used: self.fuel_used,
            attempts: self.attempts,
            host: (!self.host.is_empty()).then_some(self.host),
        };
        (report, self.output)
    }
}

/// A stream entry: its id and fields.
pub(super) struct Entry {
    pub id: String,
    pub fields: HashMap<String, Vec<u8>>,
}

impl Entry {
    pub fn text(&self, field: &str) -> Option<&str> {
        self.fields
            .get(field)
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
    }
}

/// The entries of an `XREADGROUP` reply (nil when it timed out).
pub(super) fn read_entries(reply: Value) -> Vec<Entry> {
    let mut entries = Vec::new();
    for stream in array(reply) {
        let mut parts = array(stream).into_iter();
        let _key = parts.next();
        if let Some(list) = parts.next() {
            entries.extend(array(list).into_iter().filter_map(entry));
        }
    }
    entries
}

/// The next cursor and the entries of an `XAUTOCLAIM` reply.
pub(super) fn claimed_entries(reply: Value) -> (String, Vec<Entry>) {
    let mut parts = array(reply).into_iter();
    let cursor = parts.next().and_then(text).unwrap_or_else(|| "0-0".into());
    let entries = parts
        .next()
        .map(|list| array(list).into_iter().filter_map(entry).collect())
        .unwrap_or_default();
    (cursor, entries)
}

fn entry(value: Value) -> Option<Entry> {
    let mut parts = array(value).into_iter();
    let id = parts.next().and_then(text)?;
    let mut fields = HashMap::new();
    let mut flat = array(parts.next()?).into_iter();
    while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
        if let (Some(name), Some(value)) = (text(name), bytes(value)) {
            fields.insert(name, value);
        }
    }
    Some(Entry { id, fields })
}

pub(super) fn array(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

pub(super) fn bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.into_bytes()),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

pub(super) fn text(value: Value) -> Option<String> {
    bytes(value).and_then(|bytes| String::from_utf8(bytes).ok())
}

pub(super) fn int(value: Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(n),
        other => text(other)?.parse().ok(),
    }
}

/// A component's content address: the SHA-256 of its bytes, in hex.
pub(super) fn digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Milliseconds since the Unix epoch.
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::TaskError;

    #[test]
    fn a_finished_task_round_trips() {
        let finished = Finished::unrun(7, "h-1", Err(TaskError::HostDied { attempts: 3 }), 3);
        let bytes = postcard::to_allocvec(&finished).unwrap();
        let back: Finished = postcard::from_bytes(&bytes).unwrap();
        let (report, output) = back.into_report(Call::new("f", []));
        assert_eq!(report.id, 7);
        assert_eq!(report.host.as_deref(), Some("h-1"));
        assert_eq!(report.result, Err(TaskError::HostDied { attempts: 3 }));
        assert!(output.is_empty());
    }

    #[test]
    fn stream_replies_are_read() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let one = Value::Array(vec![
            bulk("1-0"),
            Value::Array(vec![bulk("run"), bulk("r"), bulk("task"), bulk("4")]),
        ]);
        let reply = Value::Array(vec![Value::Array(vec![bulk("k"), Value::Array(vec![one])])]);
        let entries = read_entries(reply);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].id, "1-0");
        assert_eq!(entries[0].text("task"), Some("4"));
        assert!(read_entries(Value::Nil).is_empty());
        assert_eq!(digest(b"").len(), 64);
    }
}
