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

/// Appends rows to a joblog, each with one `write`, so that a run cut short (by a signal, say)
/// leaves only whole rows, and `--resume` does not run again a job that had succeeded.
pub struct Writer<W = File>(W);

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
            file.write_all(format!("{HEADER}\n").as_bytes())?;
        }
        Ok(Writer(file))
    }
}

impl<W: Write> Writer<W> {
    /// Records a finished task, at once (a run that is cut short keeps what it finished).
    pub fn record(&mut self, seq: usize, report: &TaskReport) -> io::Result<()> {
        let exitval = match &report.result {
            Ok(_) => "0".to_owned(),
            Err(TaskError::Exit { code, .. }) => code.to_string(),
            Err(error) => error.kind().to_owned(),
        };
        let start = report
            .started
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        let worker = report
            .worker
            .map_or_else(|| "-".to_owned(), |pid| pid.to_string());
        let row = format!(
            "{seq}\t{worker}\t{start:.3}\t{:.3}\t{exitval}\t{}\n",
            report.duration.as_secs_f64(),
            command(&report.call)
        );
        self.0.write_all(row.as_bytes())?;
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Counts the `write` calls made on it.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl Write for Writes {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.push(bytes.to_vec());
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn each_row_is_one_write() {
        let mut log = Writer(Writes::default());
        let report = |call: Call, result| TaskReport {
            id: 0,
            call,
            result,
            worker: Some(7),
            started: Some(UNIX_EPOCH + Duration::from_millis(1500)),
            duration: Duration::from_millis(250),
            peak_memory: None,
            fuel_used: None,
            attempts: 1,
            host: None,
        };
        log.record(1, &report(Call::job(["a b", "c"]), Ok(None))).unwrap();
        log.record(
            2,
            &report(
                Call::job(["d"]),
                Err(TaskError::Exit {
                    code: 3,
                    stderr: None,
                }),
            ),
        )
        .unwrap();
        let rows: Vec<String> = log
            .0
            .0
            .iter()
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect();
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert!(
            rows[0].starts_with("1\t7\t1.500\t0.250\t0\t") && rows[0].ends_with('\n'),
            "{rows:?}"
        );
        assert!(rows[1].starts_with("2\t7\t1.500\t0.250\t3\t"), "{rows:?}");
    }
}
