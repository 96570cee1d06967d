//! `poolhost run`: its arguments, and running them. The workers start and the component loads
//! first; the arguments are then worked out into a [`RunPlan`] (see `plan`), and the plan is
//! run: the pool built, the tasks (or the driver) run, results printed as they come, in order,
//! the queues drained, the summary printed and the exit code chosen.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytesize::ByteSize;
use poolhost::{Batch, Builder, Cluster, MAX_WORKERS, Manager, Pool, TaskError, TaskOptions, TaskReport};

use super::halt::{Halt, When, parse_halt};
use super::joblog;
use super::output::{Lines, OutputPrinter, Progress};
use super::plan::{RunPlan, Tasks, Work};
use super::report::{print_report, write_out};
use super::signals::{self, Interrupt};
use super::{CacheArgs, ClusterArgs, GrantArgs, OutputFormat};

/// The arguments of `poolhost run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The task component: a WebAssembly component (`.wasm`) or WebAssembly text (`.wat`).
    #[arg(value_name = "TASK")]
    pub task: PathBuf,

    /// Number of worker processes, at most 256 [default: the number of CPUs].
    #[arg(short = 'n', long = "workers", value_name = "N", value_parser = parse_workers)]
    pub workers: Option<usize>,

    /// A call to run, in WAVE as for `wasmtime run --invoke`, e.g. 'long-time-task(3)'. Takes
    /// one or more calls and may be repeated.
    #[arg(long, value_name = "CALL", num_args = 1..)]
    pub invoke: Vec<String>,

    /// Read calls from FILE, one per line ('-' reads standard input). Blank lines and lines
    /// starting with '#' are skipped. Runs after the --invoke calls.
    #[arg(long, value_name = "FILE")]
    pub calls: Option<PathBuf>,

    /// Run the component's `main` once per line of FILE ('-' reads standard input): the line is
    /// split into words as a shell would (quotes respected) and the words are the job's
    /// arguments. A sandboxed `xargs -P` / GNU parallel.
    #[arg(long, value_name = "FILE")]
    pub each: Option<PathBuf>,

    /// Arguments given to every job after its own, or to `main` when there is no --each.
    #[arg(last = true, value_name = "ARGS")]
    pub common: Vec<String>,

    /// Write one tab-separated line per task to FILE: sequence, worker pid, start time, run
    /// time, exit value (0, an exit code, or an error kind) and the call or job arguments.
    #[arg(long, value_name = "FILE")]
    pub joblog: Option<PathBuf>,

    /// Skip the tasks --joblog's file records as succeeded, and add to that file.
    #[arg(long, requires = "joblog")]
    pub resume: bool,

    /// Print each line of a task's output after its call or job arguments and a tab.
    #[arg(long, conflicts_with = "quiet")]
    pub tag: bool,

    /// Print each task's output in one piece when it ends (its stdout, then its stderr) instead
    /// of line by line as it comes: no other task's lines inside it. Held in memory up to
    /// 256 KiB a stream, then in a temporary file.
    #[arg(long, conflicts_with = "quiet")]
    pub group: bool,

    /// Hide the tasks' own output and the progress bar; results and the summary are still
    /// printed.
    #[arg(long, short = 'q')]
    pub quiet: bool,

    /// Stop after failures: `now,fail=N` kills the running tasks at the Nth failure, `soon,fail=N`
    /// lets them finish; tasks not yet started are cancelled either way. N may be a percentage
    /// of the tasks, e.g. `soon,fail=10%`.
    #[arg(long, value_name = "now|soon,fail=N", value_parser = parse_halt)]
    pub halt: Option<Halt>,

    /// How to print results: `text`, one line per task, or `json`, one JSON object per task.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// Cut each task at this wall-clock time, e.g. 500ms or 2s: it fails with `timed out` and its
    /// worker takes the next task. A task waiting in a queue is cut too.
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,

    /// Cap each task's linear memory, e.g. 64MiB: growing past it fails the task with
    /// `memory limit`.
    #[arg(long, value_name = "SIZE")]
    pub max_memory: Option<ByteSize>,

    /// Give each task a budget of N units of fuel (about one per wasm instruction): a
    /// reproducible CPU limit. The task fails with `out of fuel` when it is used up.
    #[arg(long, value_name = "N")]
    pub fuel: Option<u64>,

    #[command(flatten)]
    pub grants: GrantArgs,

    /// Run a task that fails by a trap, a timeout or the death of its worker up to N more times.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub retries: u32,

    /// Make queue NAME hold at most MAXSIZE items (0: no bound, the default for every queue).
    #[arg(long = "queue", value_name = "NAME:MAXSIZE", value_parser = parse_queue)]
    pub queues: Vec<(String, usize)>,

    /// Fill queue NAME from FILE before the tasks start, one item per line ('-' reads standard
    /// input). An item is the line's bytes without its newline.
    #[arg(long = "feed", value_name = "NAME=FILE", value_parser = parse_feed)]
    pub feeds: Vec<(String, PathBuf)>,

    /// Print the items left in queue NAME when the tasks are done, one per line, in queue order.
    #[arg(long = "drain", value_name = "NAME")]
    pub drains: Vec<String>,

    #[command(flatten)]
    pub cache: CacheArgs,

    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// The largest queue item, e.g. 64KiB or 4MiB, at most 32MiB [default: 1MiB].
    #[arg(long, value_name = "SIZE")]
    pub max_item: Option<ByteSize>,

    /// The most bytes one queue holds; puts beyond it wait for room [default: 64MiB].
    #[arg(long, value_name = "SIZE")]
    pub max_queue_bytes: Option<ByteSize>,
}

pub(super) fn parse_workers(text: &str) -> Result<usize, String> {
    let n: usize = text.parse().map_err(|e| format!("`{text}`: {e}"))?;
    if n > MAX_WORKERS {
        return Err(format!("{n} workers: a pool runs at most {MAX_WORKERS}"));
    }
    Ok(n)
}

/// A task's timeout: above zero (a task cut before it starts would be no task at all); one too
/// long for the clock to express is no timeout.
pub(super) fn parse_timeout(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(timeout) if timeout.is_zero() => Err("a timeout is longer than zero".into()),
        Ok(timeout) => Ok(timeout),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_queue(text: &str) -> Result<(String, usize), String> {
    let (name, maxsize) = text
        .rsplit_once(':')
        .ok_or("expected NAME:MAXSIZE, e.g. jobs:100")?;
    let maxsize = maxsize.parse().map_err(|e| format!("MAXSIZE `{maxsize}`: {e}"))?;
    Ok((name.to_owned(), maxsize))
}

fn parse_feed(text: &str) -> Result<(String, PathBuf), String> {
    let (name, file) = text
        .split_once('=')
        .ok_or("expected NAME=FILE, e.g. jobs=jobs.txt")?;
    Ok((name.to_owned(), PathBuf::from(file)))
}

impl RunArgs {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let clock = Instant::now();
        if let Some(cluster) = self.cluster.cluster()? {
            return self.execute_on(cluster, clock);
        }
        let workers = self.workers.unwrap_or_else(poolhost::default_workers);
        // The worker processes start while the component loads: on a machine with a spare core the
        // first result then waits for the slower of the two, not for both. They start before
        // anything else, while this process still has one thread (the signal thread comes next),
        // so that they are forked rather than executed.
        let builder = Pool::builder().workers(workers).prestart();
        let interrupt = Interrupt::watch().context("cannot watch for SIGINT and SIGTERM")?;
        let program = builder.load(&self.cache.loader(self.fuel.is_some())?, &self.task)?;
        interrupt.remove_on_exit(program.artifact().parent().map(PathBuf::from));
        let plan = RunPlan::new(self, &program, workers)?;
        let run = Run {
            clock,
            interrupt,
            manager: plan.manager.clone(),
            drains: plan.drains.clone(),
        };
        run.execute(plan, builder.program(program))
    }

    /// Runs the tasks on the hosts of `cluster`: the component is loaded here only to read the
    /// calls; `-n` (by default the live hosts' workers) sizes the progress bar.
    fn execute_on(self, cluster: Cluster, clock: Instant) -> anyhow::Result<ExitCode> {
        let interrupt = Interrupt::watch().context("cannot watch for SIGINT and SIGTERM")?;
        let live = cluster.live_workers()?;
        let workers = self.workers.unwrap_or(live.max(1));
        let program = self.cache.loader(self.fuel.is_some())?.load(&self.task)?;
        interrupt.remove_on_exit(program.artifact().parent().map(PathBuf::from));
        let plan = RunPlan::new(self, &program, workers)?;
        if live == 0 {
            say!(
                "poolhost: no host serves pool `{}` now; the tasks wait for one (`poolhost serve --redis URL`)",
                cluster.name()
            );
        }
        let run = Run {
            clock,
            interrupt,
            manager: plan.manager.clone(),
            drains: plan.drains.clone(),
        };
        let builder = Pool::builder().workers(workers).program(program).cluster(cluster);
        run.execute(plan, builder)
    }
}

/// A run under way, its plan made: what both kinds of run need to the end.
struct Run {
    /// When the run started, for the summary.
    clock: Instant,
    interrupt: Arc<Interrupt>,
    manager: Manager,
    drains: Vec<String>,
}

impl Run {
    /// Runs `plan` on the pool `builder` (its workers started, its component loaded) builds.
    fn execute(self, plan: RunPlan, builder: Builder) -> anyhow::Result<ExitCode> {
        let builder = builder
            .manager(plan.manager)
            .options(plan.options)
            .grants(plan.grants);
        match plan.work {
            Work::Driver => {
                let json = plan.output == OutputFormat::Json;
                let progress = Progress::new(0, plan.workers, false);
                let output = OutputPrinter::new(plan.lines, Vec::new(), false, json, progress);
                let builder = builder.on_output(move |task, stream, bytes| output.write(task, stream, bytes));
                self.driver(builder, plan.options)
            }
            Work::Tasks(tasks) => {
                let printer = ResultPrinter::new(&tasks, plan.lines, plan.output, plan.workers)?;
                self.tasks(builder, tasks, printer)
            }
        }
    }

    /// Runs the component's `main` as the driver of the pool `builder` builds; the exit code is
    /// the driver's, or the signal's that interrupted it.
    fn driver(self, builder: Builder, options: TaskOptions) -> anyhow::Result<ExitCode> {
        let pool = Arc::new(builder.build()?);
        let stopped = pool.clone();
        self.interrupt
            .hand_over(Some(Box::new(move || stopped.terminate())));
        let code = drive(pool, options)?;
        // The stop's clone of the pool goes, and with the pool its temporary directory.
        self.interrupt.hand_over(None);
        self.drain()?;
        if let Some(signal) = self.interrupt.caught() {
            say!(
                "poolhost: the driver was interrupted by {}",
                signals::name(signal)
            );
            return Ok(ExitCode::from(128 + signal as u8));
        }
        Ok(code)
    }

    /// Runs `tasks` on the pool `builder` builds, printing their output and results with
    /// `printer`, and then the summary; the exit code says whether any failed.
    fn tasks(self, builder: Builder, tasks: Tasks, mut printer: ResultPrinter) -> anyhow::Result<ExitCode> {
        // Results are taken as they are reported; those that come faster than that wait in the pool
        // up to this much before it starts no more tasks.
        let mut builder = builder.hold_results_under(HELD_RESULTS);
        if let Some(halt) = tasks.halt {
            // The pool cancels what has not started in the same step that counts the failure, so
            // no task starts after it; the command line then terminates the running ones for `now`.
            builder = builder.cancel_after_failures(halt.failures(tasks.calls.len()));
        }
        let pool = {
            let output = printer.output.clone();
            builder
                .on_output(move |task, stream, bytes| output.write(task, stream, bytes))
                .build()?
        };
        let mut batch = pool.batch(tasks.calls)?;
        pool.close();
        self.interrupt.hand_over(None);

        let interrupted = self.collect(&pool, &mut batch, &tasks.seqs, &mut printer)?;
        printer.write_out()?;
        pool.join()?;
        printer.progress.clear();
        self.drain()?;
        self.summary(&printer, pool.workers(), interrupted);
        // Exits as a shell reports a process killed by the signal, once everything is cleaned up.
        drop(pool);
        Ok(match interrupted {
            Some(signal) => ExitCode::from(128 + signal as u8),
            None if printer.failed > 0 => ExitCode::from(1),
            None => ExitCode::SUCCESS,
        })
    }

    /// Takes the batch's reports as its tasks finish, until none is left (`seqs[i]` is task i's
    /// sequence number); the signal that interrupted the run, if one did. Once it has taken all
    /// there are, it lets [`GATHER`] pass before it waits for the next.
    fn collect(
        &self,
        pool: &Pool,
        batch: &mut Batch,
        seqs: &[usize],
        printer: &mut ResultPrinter,
    ) -> anyhow::Result<Option<i32>> {
        let mut interrupted = None;
        while batch.remaining() > 0 {
            if interrupted.is_none()
                && let Some(signal) = self.interrupt.caught()
            {
                // Every task not done ends as terminated, and is reported as such.
                interrupted = Some(signal);
                pool.terminate();
            }
            let next = match batch.next_finished_timeout(Duration::ZERO) {
                Some(index) => Some(index),
                None => {
                    if !printer.results.is_empty() {
                        printer.write_out()?;
                    }
                    // Results come faster than one at a time: gather them a moment before
                    // waking up for the next (see `GATHER`).
                    thread::sleep(GATHER);
                    batch.next_finished_timeout(Duration::from_millis(250))
                }
            };
            let Some(index) = next else {
                printer.progress.tick();
                continue;
            };
            let report = batch.take_report(index).expect("a finished task has its report");
            printer.finished(pool, index, seqs[index], report)?;
        }
        Ok(interrupted)
    }

    /// Prints what is left in each queue `--drain` names.
    fn drain(&self) -> anyhow::Result<()> {
        for name in &self.drains {
            drain(&self.manager, name)?;
        }
        Ok(())
    }

    /// The last line: how many tasks, how many failed, on how many workers, in how long.
    fn summary(&self, printer: &ResultPrinter, workers: usize, interrupted: Option<i32>) {
        let (total, failed) = (printer.total, printer.failed);
        say!(
            "poolhost: {total} task{}, {} ok, {failed} failed, {workers} workers, {:.2} s{}",
            if total == 1 { "" } else { "s" },
            total - failed,
            self.clock.elapsed().as_secs_f64(),
            interrupted.map_or_else(String::new, |signal| format!(
                ", interrupted by {}",
                signals::name(signal)
            ))
        );
    }
}

/// The most bytes of results `poolhost run` lets wait to be printed before the pool holds back
/// the next tasks: a few large results, or millions of small ones.
const HELD_RESULTS: usize = 64 << 20;

/// How long the command line lets results gather before it takes the next, once it has taken
/// all there were. Waiting for each as it came woke this thread for nearly every result of a run
/// of short tasks (it takes a result faster than a worker's supervisor hands one over): 20 000
/// no-op calls on two cores ran 20% slower than through the library, and 8% slower with this.
/// It delays a line's printing by at most this much, which nobody reading it can see.
const GATHER: Duration = Duration::from_millis(1);

/// What a run of tasks does with each finished task: its output ended (or its group printed),
/// the progress bar moved, the joblog written, failures counted for `--halt`, and its result
/// printed in the order the tasks were given.
struct ResultPrinter {
    /// The printer of the tasks' own output.
    output: Arc<OutputPrinter>,
    progress: Progress,
    /// How results are printed.
    format: OutputFormat,
    joblog: Option<joblog::Writer>,
    halt: Option<Halt>,
    halted: bool,
    /// The tasks in the batch.
    total: usize,
    failed: usize,
    /// The results printed so far: the next one printed is that of the task at this index.
    printed: usize,
    /// Reports of tasks that finished ahead of an earlier one, by index.
    waiting: HashMap<usize, TaskReport>,
    /// Results wait here while more tasks finish at once, and are written before the loop
    /// waits: one write for many short tasks, rather than one each.
    results: Vec<u8>,
}

impl ResultPrinter {
    /// A printer for `tasks`, their output printed as `lines` says and results as `format`
    /// says, the progress bar counting `workers` workers; starts the joblog.
    fn new(
        tasks: &Tasks,
        lines: Lines,
        format: OutputFormat,
        workers: usize,
    ) -> anyhow::Result<ResultPrinter> {
        let joblog = match &tasks.joblog {
            Some(log) => Some(joblog::Writer::open(&log.path, log.resume)?),
            None => None,
        };
        // The pool numbers its tasks from 0 in submission order: label i is task i's. Only
        // `--tag` prints them, and for many short calls they are not free to make.
        let labels = match lines {
            Lines::Tagged => tasks.calls.iter().map(joblog::command).collect(),
            _ => Vec::new(),
        };
        let progress = Progress::new(tasks.calls.len(), workers, tasks.progress);
        let json = format == OutputFormat::Json;
        let output = OutputPrinter::new(lines, labels, tasks.group, json, progress.clone());
        Ok(ResultPrinter {
            output: Arc::new(output),
            progress,
            format,
            joblog,
            halt: tasks.halt,
            halted: false,
            total: tasks.calls.len(),
            failed: 0,
            printed: 0,
            waiting: HashMap::new(),
            results: Vec::new(),
        })
    }

    /// Takes the report of the task at `index` in the batch of `pool`, sequence number `seq`.
    fn finished(&mut self, pool: &Pool, index: usize, seq: usize, report: TaskReport) -> anyhow::Result<()> {
        self.output.finish(report.id);
        self.progress.finished(report.result.is_ok());
        if let Some(joblog) = &mut self.joblog {
            joblog.record(seq, &report)?;
        }
        if report.result.is_err() {
            self.failed += 1;
            self.halt_after_failure(pool);
        }
        // Results are printed in the order the tasks were given, each once those before it are;
        // only those that finished ahead of an earlier one wait here, and each is let go once
        // printed.
        if index == self.printed {
            print_report(&mut self.results, &report, self.format)?;
            self.printed += 1;
        } else {
            self.waiting.insert(index, report);
        }
        while !self.waiting.is_empty()
            && let Some(report) = self.waiting.remove(&self.printed)
        {
            print_report(&mut self.results, &report, self.format)?;
            self.printed += 1;
        }
        if self.results.len() >= 64 << 10 {
            self.write_out()?;
            // A large result grew the buffer: it need not keep that much.
            self.results.shrink_to(64 << 10);
        }
        Ok(())
    }

    /// Halts the run as `--halt` asks, if this failure is the one it waits for.
    fn halt_after_failure(&mut self, pool: &Pool) {
        let failed = self.failed;
        let Some(halt) = self
            .halt
            .filter(|halt| !self.halted && failed >= halt.failures(self.total))
        else {
            return;
        };
        self.halted = true;
        self.progress
            .suspend(|| say!("poolhost: {}", halt.message(failed)));
        match halt.when {
            When::Now => pool.terminate(),
            When::Soon => {
                pool.cancel_pending();
            }
        }
    }

    /// Writes the results gathered to stdout, with the progress bar out of the way.
    fn write_out(&mut self) -> io::Result<()> {
        let results = &mut self.results;
        self.progress.suspend(|| write_out(results))
    }
}

/// Runs the component's `main` as the driver of `pool`; the exit code is the driver's.
fn drive(pool: Arc<Pool>, options: TaskOptions) -> anyhow::Result<ExitCode> {
    let exit = poolhost::driver::run(pool, options)?;
    if exit.terminated_pool {
        say!("poolhost: the driver ended without joining its pool; the pool was terminated");
    }
    Ok(match exit.result {
        Ok(_) => ExitCode::SUCCESS,
        Err(TaskError::Exit { code, .. }) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(error) => {
            // What the driver wrote to stderr is on the terminal already: the failure's
            // first line is enough.
            let message = error.to_string();
            say!(
                "poolhost: the driver failed: {}",
                message.lines().next().unwrap_or_default()
            );
            if let TaskError::Trap { backtrace, .. } = &error {
                for frame in backtrace {
                    say!("    at {frame}");
                }
            }
            ExitCode::from(1)
        }
    })
}

/// Prints what is left in queue `name`, one item per line, in queue order.
fn drain(manager: &Manager, name: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let queue = manager
        .queue(name)
        .with_context(|| format!("cannot open queue `{name}`"))?;
    let mut out = io::stdout().lock();
    while let Ok(item) = queue.try_get() {
        out.write_all(&item)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{Cli, Command};
    use clap::Parser;

    #[test]
    fn invoke_takes_several_calls_and_repeats() {
        let cli = Cli::try_parse_from([
            "poolhost", "run", "t.wasm", "--invoke", "a()", "b()", "--invoke", "c()", "-n", "2",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.invoke, ["a()", "b()", "c()"]);
        assert_eq!(args.workers, Some(2));
    }
}
