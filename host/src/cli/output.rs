//! What `poolhost run` prints while tasks run: the tasks' own output (passed through, tagged,
//! grouped per task, or hidden) and the progress bar on a terminal. Guest output and the bar
//! share stderr, so every write goes through the bar, which clears itself for it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, IsTerminal, Seek, Write};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use poolhost::{Stream, TaskId};

/// How a task's output lines are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lines {
    /// As they come, whole lines at a time.
    Plain,
    /// After the task's label and a tab.
    Tagged,
    /// Not at all.
    Hidden,
}

/// The most bytes of one task's stream `--group` holds in memory; beyond it the rest goes to a
/// temporary file. A few running tasks at 256 KiB each keeps the host small however much the
/// tasks print.
const GROUP_MEMORY: usize = 256 * 1024;

/// The longest line printed whole. Longer lines are printed in pieces of this size, each ended
/// with a newline: a guest that never ends its line must not fill the disk its pieces are held
/// on.
const MAX_LINE: u64 = 64 << 20;

/// Prints the tasks' own output, what they write to stdout and stderr, as the command line asked
/// for it.
pub struct OutputPrinter {
    lines: Lines,
    /// Labels by task id: the call or the job's arguments.
    labels: Vec<String>,
    /// With `--group`: each unfinished task's output so far.
    groups: Option<Mutex<HashMap<TaskId, Group>>>,
    /// The start of each line that comes in pieces (longer than the runtime's chunk), by task
    /// and stream, held until the line ends so that it is printed whole.
    partial: Mutex<HashMap<(TaskId, Stream), Spool>>,
    /// With `--output json`: stdout lines become JSON objects.
    json: bool,
    progress: Progress,
}

/// A task's stdout line (or a piece of a longer one) under `--output json`.
#[derive(serde::Serialize)]
struct JsonLine<'a> {
    /// The task that wrote it.
    task: TaskId,
    /// The line without its newline, if it is UTF-8 text...
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<&'a str>,
    /// ...or its bytes, if it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes: Option<&'a [u8]>,
    /// A piece of a line longer than 64 KiB: the next piece continues it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    more: bool,
}

impl OutputPrinter {
    /// `labels[id]` is task `id`'s label (needed for [`Lines::Tagged`] only); `group` holds each task's output until it ends; `json`
    /// prints the tasks' stdout lines as JSON objects.
    pub fn new(
        lines: Lines,
        labels: Vec<String>,
        group: bool,
        json: bool,
        progress: Progress,
    ) -> OutputPrinter {
        OutputPrinter {
            lines,
            labels,
            groups: group.then(Default::default),
            partial: Mutex::default(),
            json,
            progress,
        }
    }

    /// Takes what task `task` wrote to `stream`: whole lines, or a piece of a longer line (one
    /// that does not end in a newline; see `poolhost::OutputSink`).
    pub fn write(&self, task: TaskId, stream: Stream, bytes: &[u8]) {
        if self.lines == Lines::Hidden {
            return;
        }
        if self.json && stream == Stream::Stdout {
            return self.progress.suspend(|| print(stream, &json_lines(task, bytes)));
        }
        let key = (task, stream);
        let mut partial = self.partial.lock().unwrap_or_else(PoisonError::into_inner);
        if !bytes.ends_with(b"\n") {
            let spool = partial.entry(key).or_default();
            if spool.write(bytes).is_ok() && spool.len < MAX_LINE {
                return;
            }
            // Too long to hold (or the spill file failed): what is held is a line of its own.
            let held = partial.remove(&key);
            drop(partial);
            return self.emit(task, stream, held, b"\n");
        }
        let held = partial.remove(&key);
        drop(partial);
        self.emit(task, stream, held, bytes);
    }

    /// Prints (or, with `--group`, keeps) the start of a line held in pieces, if any, and then
    /// `rest`: whole lines, the first of which ends the held one.
    fn emit(&self, task: TaskId, stream: Stream, mut held: Option<Spool>, rest: &[u8]) {
        let label = match self.lines {
            Lines::Tagged => Some(self.labels.get(task as usize).map_or("main", String::as_str)),
            _ => None,
        };
        let mut write_to = |out: &mut dyn Write| render(label, held.as_mut(), rest, out);
        match &self.groups {
            Some(groups) => {
                let mut groups = groups.lock().unwrap_or_else(PoisonError::into_inner);
                let group = groups.entry(task).or_default();
                if let Err(e) = write_to(group.stream(stream)) {
                    // A spill file that cannot be written: the output is printed now, ungrouped,
                    // with a word about why.
                    self.progress.suspend(|| {
                        say!("poolhost: cannot hold task {task}'s output for --group: {e}");
                        print(stream, rest);
                    });
                }
            }
            None => self.progress.suspend(|| {
                let _ = match stream {
                    Stream::Stdout => write_to(&mut io::stdout().lock()),
                    Stream::Stderr => write_to(&mut io::stderr().lock()),
                };
            }),
        }
    }

    /// Prints everything task `task` wrote, if its output is being grouped: all of its stdout,
    /// then all of its stderr, each in one piece. A line its task left unended (its worker died
    /// mid-line) is ended first.
    pub fn finish(&self, task: TaskId) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let held = {
                let mut partial = self.partial.lock().unwrap_or_else(PoisonError::into_inner);
                // Most tasks leave no partial line: no need to hash their ids.
                if partial.is_empty() {
                    break;
                }
                partial.remove(&(task, stream))
            };
            if held.is_some() {
                self.emit(task, stream, held, b"\n");
            }
        }
        let Some(groups) = &self.groups else { return };
        let group = groups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&task);
        let Some(mut group) = group else { return };
        self.progress.suspend(|| {
            for (stream, spool) in [
                (Stream::Stdout, &mut group.stdout),
                (Stream::Stderr, &mut group.stderr),
            ] {
                let written = match stream {
                    Stream::Stdout => spool.copy_to(&mut io::stdout().lock()),
                    Stream::Stderr => spool.copy_to(&mut io::stderr().lock()),
                };
                if let Err(e) = written {
                    say!("poolhost: cannot print task {task}'s grouped output: {e}");
                }
            }
        });
    }
}

/// Writes the held start of a line, then `rest`, each line after `label` and a tab if there is a
/// label; flushes.
fn render(label: Option<&str>, held: Option<&mut Spool>, rest: &[u8], out: &mut dyn Write) -> io::Result<()> {
    let mut line_starts = true;
    if let Some(held) = held {
        if let Some(label) = label {
            out.write_all(format!("{label}\t").as_bytes())?;
        }
        held.copy_to(out)?;
        line_starts = false;
    }
    match label {
        None => out.write_all(rest)?,
        Some(label) => {
            for line in rest.split_inclusive(|&b| b == b'\n') {
                if line_starts {
                    out.write_all(format!("{label}\t").as_bytes())?;
                }
                out.write_all(line)?;
                line_starts = true;
            }
        }
    }
    out.flush()
}

/// Task `task`'s stdout lines (or piece of a line) as JSON objects, one per line.
fn json_lines(task: TaskId, bytes: &[u8]) -> Vec<u8> {
    let mut json = Vec::new();
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        let (line, more) = match line.strip_suffix(b"\n") {
            Some(line) => (line, false),
            None => (line, true),
        };
        let text = std::str::from_utf8(line).ok();
        let object = JsonLine {
            task,
            output: text,
            bytes: text.is_none().then_some(line),
            more,
        };
        serde_json::to_writer(&mut json, &object).expect("a line serialises");
        json.push(b'\n');
    }
    json
}

/// Writes `bytes` to `stream` in one locked write.
fn print(stream: Stream, bytes: &[u8]) {
    let _ = match stream {
        Stream::Stdout => write_flushed(&mut io::stdout().lock(), bytes),
        Stream::Stderr => write_flushed(&mut io::stderr().lock(), bytes),
    };
}

fn write_flushed(to: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    to.write_all(bytes)?;
    to.flush()
}

/// One task's grouped output.
#[derive(Default)]
struct Group {
    stdout: Spool,
    stderr: Spool,
}

impl Group {
    fn stream(&mut self, stream: Stream) -> &mut Spool {
        match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        }
    }
}

/// Bytes held in memory up to [`GROUP_MEMORY`], then in an unnamed temporary file.
#[derive(Default)]
struct Spool {
    memory: Vec<u8>,
    file: Option<File>,
    /// The bytes held in all.
    len: u64,
}

impl Spool {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.file.is_none() && self.memory.len() + bytes.len() <= GROUP_MEMORY {
            self.memory.extend_from_slice(bytes);
        } else {
            let file = match &mut self.file {
                Some(file) => file,
                None => self.file.insert(tempfile::tempfile()?),
            };
            file.write_all(bytes)?;
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn copy_to(&mut self, to: &mut (impl Write + ?Sized)) -> io::Result<()> {
        to.write_all(&self.memory)?;
        if let Some(file) = &mut self.file {
            file.rewind()?;
            io::copy(file, to)?;
        }
        to.flush()
    }
}

impl Write for Spool {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        Spool::write(self, bytes)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How long a run goes before its progress bar appears: a run that ends sooner draws nothing.
const PROGRESS_DELAY: Duration = Duration::from_secs(1);

/// The progress bar of a run: done of all, failed, running, and the time left, on stderr. Drawn
/// only when stderr is a terminal, and only once the run has lasted [`PROGRESS_DELAY`].
#[derive(Clone)]
pub struct Progress {
    bar: ProgressBar,
    state: Arc<Mutex<ProgressState>>,
}

struct ProgressState {
    /// Whether the bar may ever be drawn.
    enabled: bool,
    shown: bool,
    started: Instant,
    /// When the bar was last brought up to date, once shown.
    updated: Instant,
    done: u64,
    failed: u64,
    workers: usize,
}

/// How often a shown bar takes the counts: it is drawn five times a second, and bringing it up
/// to date for every task of a fast run would cost more than the tasks' own printing.
const PROGRESS_UPDATE: Duration = Duration::from_millis(50);

impl Progress {
    /// A bar for `tasks` tasks on `workers` workers; `enabled` is false for `--quiet`.
    pub fn new(tasks: usize, workers: usize, enabled: bool) -> Progress {
        let bar = ProgressBar::hidden();
        bar.set_length(tasks as u64);
        bar.set_style(
            ProgressStyle::with_template("{elapsed:>4} [{wide_bar}] {pos}/{len} done, {msg}, ETA {eta}")
                .expect("the progress template is valid")
                .progress_chars("=> "),
        );
        Progress {
            bar,
            state: Arc::new(Mutex::new(ProgressState {
                enabled: enabled && io::stderr().is_terminal(),
                shown: false,
                started: Instant::now(),
                updated: Instant::now(),
                done: 0,
                failed: 0,
                workers,
            })),
        }
    }

    /// Counts a finished task: a count, unless the bar may be drawn and is due an update.
    pub fn finished(&self, ok: bool) {
        let mut state = self.lock();
        state.done += 1;
        state.failed += u64::from(!ok);
        if state.enabled && state.updated.elapsed() >= PROGRESS_UPDATE {
            self.update(&mut state);
        }
    }

    /// Draws the bar if the run has lasted long enough; call it now and then.
    pub fn tick(&self) {
        let mut state = self.lock();
        self.update(&mut state);
    }

    fn update(&self, state: &mut ProgressState) {
        if state.enabled && !state.shown && state.started.elapsed() >= PROGRESS_DELAY {
            state.shown = true;
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
            self.bar.enable_steady_tick(Duration::from_millis(200));
        }
        if !state.shown {
            return;
        }
        state.updated = Instant::now();
        self.bar.set_position(state.done);
        let left = self.bar.length().unwrap_or(0).saturating_sub(state.done);
        let running = left.min(state.workers as u64);
        self.bar
            .set_message(format!("{} failed, {running} running", state.failed));
    }

    /// Runs `write` with the bar cleared from the terminal, then draws it again.
    pub fn suspend<R>(&self, write: impl FnOnce() -> R) -> R {
        self.bar.suspend(write)
    }

    /// Removes the bar for good, before the summary.
    pub fn clear(&self) {
        self.bar.finish_and_clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProgressState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
