//! What `poolhost run` reads from files (or standard input, for `-`), a line at a time and within
//! bounds: the calls of `--calls`, the jobs of `--each`, and the items `--feed` puts on queues.

use std::fs;
use std::io::{self, BufRead};
use std::path::PathBuf;

use anyhow::{Context, bail};
use bytesize::ByteSize;
use poolhost::{Call, Manager, Program, TryPutError};

/// The longest line of calls or jobs read from a file: far above any sensible call, and a bound
/// on what an endless line (`--calls /dev/zero`) takes.
const MAX_INPUT_LINE: usize = 16 << 20;

/// The most bytes of calls or jobs read from one file: every task is held in memory, so an
/// endless input fails here rather than growing the host until it is killed.
const MAX_INPUT: u64 = 256 << 20;

/// An input file (or standard input, for `-`) read a line at a time, each line at most
/// `max_line` bytes and all of them at most `max_total`.
struct InputLines {
    reader: Box<dyn io::BufRead>,
    file: PathBuf,
    what: String,
    max_line: usize,
    left: u64,
    number: usize,
}

impl InputLines {
    fn open(file: &PathBuf, what: &str, max_line: usize, max_total: u64) -> anyhow::Result<InputLines> {
        let reader: Box<dyn io::BufRead> = if file.as_os_str() == "-" {
            Box::new(io::BufReader::new(io::stdin()))
        } else {
            let opened = fs::File::open(file)
                .with_context(|| format!("cannot read {what} from `{}`", file.display()))?;
            Box::new(io::BufReader::new(opened))
        };
        Ok(InputLines {
            reader,
            file: file.clone(),
            what: what.to_owned(),
            max_line,
            left: max_total,
            number: 0,
        })
    }

    fn source(&self) -> String {
        match self.file.as_os_str() == "-" {
            true => "standard input".into(),
            false => format!("`{}`", self.file.display()),
        }
    }

    /// The next line without its newline, or `None` at the end.
    fn next_line(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        let mut line = Vec::new();
        Ok(self.read_line(&mut line)?.then_some(line))
    }

    /// Reads the next line without its newline into `line`, which it clears first; `false` at
    /// the end.
    fn read_line(&mut self, line: &mut Vec<u8>) -> anyhow::Result<bool> {
        line.clear();
        let limit = (self.max_line as u64 + 1).min(self.left.saturating_add(1));
        let read = io::Read::take(&mut self.reader, limit).read_until(b'\n', line);
        read.with_context(|| format!("cannot read {} from {}", self.what, self.source()))?;
        if line.is_empty() {
            return Ok(false);
        }
        self.number += 1;
        let got = line.len() as u64;
        if got > self.left {
            bail!(
                "too much input: {} in {} are over {}",
                self.what,
                self.source(),
                ByteSize(MAX_INPUT)
            );
        }
        self.left -= got;
        if line.last() == Some(&b'\n') {
            line.pop();
        } else if got == limit {
            bail!(
                "{} line {} is longer than {} bytes",
                self.source(),
                self.number,
                self.max_line
            );
        }
        Ok(true)
    }

    /// As [`InputLines::read_line`], for text: the line read into `buffer`, or `None` at the end.
    fn next_text<'a>(&mut self, buffer: &'a mut Vec<u8>) -> anyhow::Result<Option<&'a str>> {
        if !self.read_line(buffer)? {
            return Ok(None);
        }
        std::str::from_utf8(buffer)
            .map(Some)
            .map_err(|_| anyhow::anyhow!("{} line {} is not UTF-8 text", self.source(), self.number))
    }
}

/// Reads calls, one per line, from `file` (`-` for stdin).
pub fn read_calls(program: &Program, file: &PathBuf) -> anyhow::Result<Vec<Call>> {
    let mut lines = InputLines::open(file, "calls", MAX_INPUT_LINE, MAX_INPUT)?;
    let (mut calls, mut buffer) = (Vec::new(), Vec::new());
    while let Some(line) = lines.next_text(&mut buffer)? {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let call = program
            .parse_call(line)
            .with_context(|| format!("{} line {}", lines.source(), lines.number))?;
        calls.push(call);
    }
    Ok(calls)
}

/// Reads jobs, one per line, from `file` (`-` for stdin): each line's words, then `common`.
/// Blank lines are skipped.
pub fn read_jobs(file: &PathBuf, common: &[String]) -> anyhow::Result<Vec<Call>> {
    let mut lines = InputLines::open(file, "jobs", MAX_INPUT_LINE, MAX_INPUT)?;
    let (mut jobs, mut buffer) = (Vec::new(), Vec::new());
    while let Some(line) = lines.next_text(&mut buffer)? {
        // A file written on Windows ends its lines with CR LF.
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let mut words = shell_words::split(line).with_context(|| {
            format!(
                "{} line {}: cannot split `{}` into words",
                lines.source(),
                lines.number,
                line.escape_debug()
            )
        })?;
        words.extend(common.iter().cloned());
        jobs.push(Call::job(words));
    }
    Ok(jobs)
}

/// Puts each line of `file` (`-`: stdin) on queue `name`, without its newline, as it reads it:
/// the queue's limits bound what it takes, and a line longer than an item may be is an error.
pub fn feed(manager: &Manager, name: &str, file: &PathBuf) -> anyhow::Result<()> {
    let queue = manager
        .queue(name)
        .with_context(|| format!("cannot open queue `{name}`"))?;
    let max_item = manager.limits().max_item_bytes;
    let what = format!("queue `{name}`'s items");
    let mut lines = InputLines::open(file, &what, max_item, u64::MAX)?;
    let mut number = 0;
    while let Some(line) = lines.next_line()? {
        number += 1;
        match queue.try_put(line) {
            Ok(()) => {}
            Err(TryPutError::Full(_)) => {
                bail!(
                    "cannot feed queue `{name}`: it is full after {} items from `{}` (see --queue and --max-queue-bytes)",
                    number - 1,
                    file.display()
                )
            }
            Err(e) => bail!(
                "cannot feed queue `{name}` line {number} of `{}`: {e}",
                file.display()
            ),
        }
    }
    Ok(())
}
