//! How `poolhost run` prints each task's report on stdout: a line of text (`f(1) -> 2`, or the
//! error with its backtrace) or, with `--output json`, one JSON object, whose fields are part of
//! the command line's interface.

use std::io::{self, Write};
use std::time::UNIX_EPOCH;

use poolhost::{Target, TaskError, TaskId, TaskReport};
use serde::Serialize;

use super::OutputFormat;

/// Writes what `print_report` gathered to stdout, and empties it.
pub fn write_out(results: &mut Vec<u8>) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(results)?;
    results.clear();
    out.flush()
}

/// Writes the line (or lines, for a backtrace) of one task's result to `out`.
pub fn print_report(out: &mut impl Write, report: &TaskReport, output: OutputFormat) -> io::Result<()> {
    match output {
        OutputFormat::Text => {
            match &report.result {
                // A command's own output is its result, as with `wasmtime run`.
                Ok(_) if report.call.target == Target::Main => {}
                Ok(None) => writeln!(out, "{} -> ok", report.call)?,
                Ok(Some(value)) => writeln!(out, "{} -> {value}", report.call)?,
                Err(error) => {
                    // The failure on the call's line; the stderr tail it carries indented
                    // below, then the backtrace.
                    let message = error.to_string();
                    let mut lines = message.lines();
                    let headline = lines.next().unwrap_or_default();
                    writeln!(out, "{} -> error: {headline}", report.call)?;
                    for line in lines {
                        writeln!(out, "    | {line}")?;
                    }
                    if let TaskError::Trap { backtrace, .. } = error {
                        for frame in backtrace {
                            writeln!(out, "    at {frame}")?;
                        }
                    }
                }
            }
        }
        OutputFormat::Json => writeln!(out, "{}", json_report(report))?,
    }
    Ok(())
}

/// One task as a JSON object, fields in this order. `value` is WAVE text (null for a function
/// without a result); `start` is seconds since the Unix epoch and `duration` seconds.
#[derive(Serialize)]
struct JsonReport {
    id: TaskId,
    call: String,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<JsonError>,
    worker: Option<u32>,
    start: Option<f64>,
    duration: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    peak_memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fuel_used: Option<u64>,
    attempts: u32,
    /// The host that ran it, on a cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
}

/// Why a task failed: `kind` and `message` always, the kind's own facts when it has them.
#[derive(Serialize)]
struct JsonError {
    kind: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    trap: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backtrace: Option<Vec<String>>,
    /// The last lines the task wrote to stderr, for a trap or an exit (also at the end of
    /// `message`).
    #[serde(skip_serializing_if = "Option::is_none")]
    stderr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cause: Option<String>,
    /// The limit the task ran into: seconds, bytes or fuel units.
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<f64>,
    /// The bytes a result too large to send needed.
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
}

impl JsonError {
    fn new(error: &TaskError) -> JsonError {
        let mut json = JsonError {
            kind: error.kind(),
            message: error.to_string(),
            trap: None,
            backtrace: None,
            stderr: error.stderr().map(str::to_owned),
            code: None,
            pid: None,
            cause: None,
            limit: None,
            size: None,
        };
        match error {
            TaskError::Trap { code, backtrace, .. } => {
                json.trap = Some(code.to_string());
                json.backtrace = Some(backtrace.iter().map(ToString::to_string).collect());
            }
            TaskError::Exit { code, .. } => json.code = Some(*code),
            TaskError::WorkerDied { pid, cause } => {
                json.pid = Some(*pid);
                json.cause = Some(cause.clone());
            }
            TaskError::Timeout(timeout) => json.limit = Some(timeout.as_secs_f64()),
            TaskError::MemoryLimit(bytes) => json.limit = Some(*bytes as f64),
            TaskError::OutOfFuel(fuel) => json.limit = Some(*fuel as f64),
            TaskError::ResultTooLarge { size, limit } => {
                json.size = Some(*size);
                json.limit = Some(*limit as f64);
            }
            TaskError::HostDied { .. }
            | TaskError::Terminated
            | TaskError::Cancelled
            | TaskError::Failed(_) => {}
        }
        json
    }
}

fn json_report(report: &TaskReport) -> String {
    let json = JsonReport {
        id: report.id,
        call: report.call.to_string(),
        ok: report.result.is_ok(),
        value: report
            .result
            .as_ref()
            .ok()
            .map(|value| value.as_ref().map(ToString::to_string)),
        error: report.result.as_ref().err().map(JsonError::new),
        worker: report.worker,
        start: report
            .started
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64()),
        duration: report.duration.as_secs_f64(),
        peak_memory: report.peak_memory,
        fuel_used: report.fuel_used,
        attempts: report.attempts,
        host: report.host.clone(),
    };
    serde_json::to_string(&json).expect("a report serialises")
}
