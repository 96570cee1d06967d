//! The joblog: one tab-separated line per finished task, after GNU parallel's `--joblog`, and
//! what `--resume` reads back from it.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::time::UNIX_EPOCH;

use anyhow::Context;
use poolhost::{Call, TaskError, TaskReport};

const HEADER: &str = "Seq\tWorker\tStarttime\tJobRuntime\tExitval\tCommand";

/// A task's command column: the call, or the job's arguments, on one line.
pub fn command(call: &Call) -> String {
    call.to_string().replace(['\t', '\n', '\r'], " ")
}

/// The (sequence, command) of every task the joblog at `path` records as succeeded; none if
/// there is no joblog yet.
pub fn succeeded(path: &Path) -> anyhow::Result<HashSet<(usize, String)>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read the joblog `{}`", path.display())),
    };
    let rows = text.lines().skip(1).filter_map(|line| {
        let fields: Vec<&str> = line.splitn(6, '\t').collect();
        match fields.as_slice() {
            [seq, _, _, _, "0", command] => Some((seq.parse().ok()?, (*command).to_owned())),
            _ => None,
        }
    });
    Ok(rows.collect())
}

/// Appends rows to a joblog.
pub struct Writer(File);

impl Writer {
    /// Opens the joblog at `path`: added to when resuming, started afresh otherwise.
    pub fn open(path: &Path, resume: bool) -> anyhow::Result<Writer> {
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(resume)
            .truncate(!resume)
            .open(path)
            .with_context(|| format!("cannot write the joblog `{}`", path.display()))?;
        if file.metadata().map(|m| m.len() == 0).unwrap_or(true) {
            writeln!(file, "{HEADER}")?;
        }
        Ok(Writer(file))
    }

    /// Records a finished task, at once (a run that is cut short keeps what it finished).
    pub fn record(&mut self, seq: usize, report: &TaskReport) -> io::Result<()> {
        let exitval = match &report.result {
            Ok(_) => "0".to_owned(),
            Err(TaskError::Exit(code)) => code.to_string(),
            Err(error) => error.kind().to_owned(),
        };
        let start = report
            .started
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        let worker = report
            .worker
            .map_or_else(|| "-".to_owned(), |pid| pid.to_string());
        writeln!(
            self.0,
            "{seq}\t{worker}\t{start:.3}\t{:.3}\t{exitval}\t{}",
            report.duration.as_secs_f64(),
            command(&report.call)
        )?;
        self.0.flush()
    }
}
