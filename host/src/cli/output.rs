//! What `poolhost run` prints while tasks run: the tasks' own output (passed through, tagged,
//! grouped per task, or hidden) and the progress bar on a terminal. Guest output and the bar
//! share stderr, so every write goes through the bar, which clears itself for it.

use std::borrow::Cow;
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

/// The tasks' output, as the command line asked for it.
pub struct GuestOutput {
    lines: Lines,
    /// Labels by task id: the call or the job's arguments.
    labels: Vec<String>,
    /// With `--group`: each unfinished task's output so far.
    groups: Option<Mutex<HashMap<TaskId, Group>>>,
    progress: Progress,
}

impl GuestOutput {
    /// `labels[id]` is task `id`'s label; `group` holds each task's output until it ends.
    pub fn new(lines: Lines, labels: Vec<String>, group: bool, progress: Progress) -> GuestOutput {
        GuestOutput {
            lines,
            labels,
            groups: group.then(Default::default),
            progress,
        }
    }

    /// Takes a chunk of whole lines task `task` wrote to `stream`.
    pub fn write(&self, task: TaskId, stream: Stream, bytes: &[u8]) {
        let bytes = match self.lines {
            Lines::Hidden => return,
            Lines::Plain => terminated(bytes),
            Lines::Tagged => Cow::Owned(self.tagged(task, bytes)),
        };
        match &self.groups {
            Some(groups) => {
                let mut groups = groups.lock().unwrap_or_else(PoisonError::into_inner);
                let group = groups.entry(task).or_default();
                if let Err(e) = group.stream(stream).write(&bytes) {
                    // A spill file that cannot be written loses nothing: the output is printed
                    // now, ungrouped, with a word about why.
                    self.progress.suspend(|| {
                        say!("poolhost: cannot hold task {task}'s output for --group: {e}");
                        print(stream, &bytes);
                    });
                }
            }
            None => self.progress.suspend(|| print(stream, &bytes)),
        }
    }

    /// Prints everything task `task` wrote, if its output is being grouped: all of its stdout,
    /// then all of its stderr, each in one piece.
    pub fn finish(&self, task: TaskId) {
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

    fn tagged(&self, task: TaskId, bytes: &[u8]) -> Vec<u8> {
        let label = self.labels.get(task as usize).map_or("main", String::as_str);
        let mut tagged = Vec::with_capacity(bytes.len() + label.len() + 2);
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            tagged.extend_from_slice(label.as_bytes());
            tagged.push(b'\t');
            tagged.extend_from_slice(&terminated(line));
        }
        tagged
    }
}

/// `bytes` ending in a newline: an unterminated tail gets one, so it cannot run into the next
/// task's line.
fn terminated(bytes: &[u8]) -> Cow<'_, [u8]> {
    if bytes.ends_with(b"\n") {
        return Cow::Borrowed(bytes);
    }
    let mut line = Vec::with_capacity(bytes.len() + 1);
    line.extend_from_slice(bytes);
    line.push(b'\n');
    Cow::Owned(line)
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
}

impl Spool {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.file.is_none() && self.memory.len() + bytes.len() <= GROUP_MEMORY {
            self.memory.extend_from_slice(bytes);
            return Ok(());
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(tempfile::tempfile()?),
        };
        file.write_all(bytes)
    }

    fn copy_to(&mut self, to: &mut impl Write) -> io::Result<()> {
        to.write_all(&self.memory)?;
        if let Some(file) = &mut self.file {
            file.rewind()?;
            io::copy(file, to)?;
        }
        to.flush()
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
    failed: u64,
    workers: usize,
}

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
                failed: 0,
                workers,
            })),
        }
    }

    /// Counts a finished task.
    pub fn finished(&self, ok: bool) {
        let mut state = self.lock();
        state.failed += u64::from(!ok);
        self.bar.inc(1);
        self.update(&mut state);
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
        let left = self.bar.length().unwrap_or(0).saturating_sub(self.bar.position());
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
