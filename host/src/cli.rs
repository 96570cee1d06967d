//! The command line: clap definitions, turning arguments into calls for the pool, printing
//! results, and mapping outcomes to exit codes (0 every task succeeded, 1 a task failed, 2 usage
//! or host error). A thin layer over the library: it never names wasmtime.

use std::fs;
use std::io::{self, BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use output::{GuestOutput, Lines, Progress};

use anyhow::{Context, bail};
use bytesize::ByteSize;
use clap::{Parser, Subcommand, ValueEnum};
use poolhost::{
    Call, CompileCache, DirGrant, Grants, Limits, Loader, MAX_ITEM_LIMIT, MAX_WORKERS, Manager, Pool,
    Program, Target, TaskError, TaskId, TaskOptions, TaskReport, TryPutError,
};
use serde::Serialize;

/// Writes a line to stderr as `eprintln!` does, but a closed stderr is no reason to panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        // Formatted first, then written whole: stderr is unbuffered, and `writeln!` would write
        // each piece of the message with a system call of its own, interleaving with others'.
        let line = format!("{}\n", format_args!($($arg)*));
        let _ = std::io::stderr().write_all(line.as_bytes());
    }};
}

mod joblog;
mod output;
mod signals;

/// Run WebAssembly tasks on a pool of sandboxed worker processes.
#[derive(Debug, Parser)]
#[command(name = "poolhost", version, about, max_term_width = 100)]
struct Cli {
    /// Log what the host does on stderr: -v worker starts and exits, compiles and the compile
    /// cache; -vv every task; -vvv everything. RUST_LOG, if set, overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run tasks of a component on a pool of worker processes.
    ///
    /// Each call runs in a fresh sandbox on one of N worker processes; at most N run at once and
    /// the rest wait for a free worker. Results are printed in the order the calls were given.
    /// A component that exports `wasi:cli/run` and is given no calls runs its `main` once.
    Run(Box<RunArgs>),
    /// Compile components into the compile cache ahead of time, and say where it is.
    ///
    /// `run` then loads them from the cache instead of compiling: its first run starts as fast
    /// as later ones.
    Compile(CompileArgs),
    /// Show what a component exports (with WIT signatures) and imports, and how `run` treats
    /// it: as calls, jobs, or a driver.
    Inspect(InspectArgs),
    /// Serve as a worker process of a pool (started by the pool itself).
    #[command(hide = true)]
    Worker,
}

/// Where compiled components are kept.
#[derive(Debug, clap::Args)]
struct CacheArgs {
    /// The compile cache directory [default: $XDG_CACHE_HOME/poolhost or ~/.cache/poolhost].
    /// It must be private to this user.
    #[arg(long, value_name = "DIR", env = "POOLHOST_CACHE_DIR")]
    cache_dir: Option<PathBuf>,

    /// Compile without reading or filling the compile cache (whatever --cache-dir or
    /// POOLHOST_CACHE_DIR say).
    #[arg(long)]
    no_cache: bool,
}

#[derive(Debug, clap::Args)]
struct CompileArgs {
    /// The components (`.wasm` or `.wat`).
    #[arg(value_name = "TASK", required = true)]
    tasks: Vec<PathBuf>,

    /// Compile for runs with --fuel, which need metered code.
    #[arg(long)]
    metered: bool,

    /// The compile cache directory [default: $XDG_CACHE_HOME/poolhost or ~/.cache/poolhost].
    #[arg(long, value_name = "DIR", env = "POOLHOST_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct InspectArgs {
    /// The component (`.wasm` or `.wat`).
    #[arg(value_name = "TASK")]
    task: PathBuf,

    /// `text` for people, `json` for programs.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,

    #[command(flatten)]
    cache: CacheArgs,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The task component: a WebAssembly component (`.wasm`) or WebAssembly text (`.wat`).
    #[arg(value_name = "TASK")]
    task: PathBuf,

    /// Number of worker processes, at most 256 [default: the number of CPUs].
    #[arg(short = 'n', long = "workers", value_name = "N", value_parser = parse_workers)]
    workers: Option<usize>,

    /// A call to run, in WAVE as for `wasmtime run --invoke`, e.g. 'long-time-task(3)'. Takes
    /// one or more calls and may be repeated.
    #[arg(long, value_name = "CALL", num_args = 1..)]
    invoke: Vec<String>,

    /// Read calls from FILE, one per line ('-' reads standard input). Blank lines and lines
    /// starting with '#' are skipped. Runs after the --invoke calls.
    #[arg(long, value_name = "FILE")]
    calls: Option<PathBuf>,

    /// Run the component's `main` once per line of FILE ('-' reads standard input): the line is
    /// split into words as a shell would (quotes respected) and the words are the job's
    /// arguments. A sandboxed `xargs -P` / GNU parallel.
    #[arg(long, value_name = "FILE")]
    each: Option<PathBuf>,

    /// Arguments given to every job after its own, or to `main` when there is no --each.
    #[arg(last = true, value_name = "ARGS")]
    common: Vec<String>,

    /// Write one tab-separated line per task to FILE: sequence, worker pid, start time, run
    /// time, exit value (0, an exit code, or an error kind) and the call or job arguments.
    #[arg(long, value_name = "FILE")]
    joblog: Option<PathBuf>,

    /// Skip the tasks --joblog's file records as succeeded, and add to that file.
    #[arg(long, requires = "joblog")]
    resume: bool,

    /// Print each line of a task's output after its call or job arguments and a tab.
    #[arg(long, conflicts_with = "quiet")]
    tag: bool,

    /// Print each task's output in one piece when it ends (its stdout, then its stderr) instead
    /// of line by line as it comes: no other task's lines inside it. Held in memory up to
    /// 256 KiB a stream, then in a temporary file.
    #[arg(long, conflicts_with = "quiet")]
    group: bool,

    /// Hide the tasks' own output and the progress bar; results and the summary are still
    /// printed.
    #[arg(long, short = 'q')]
    quiet: bool,

    /// Stop after failures: `now,fail=N` kills the running tasks at the Nth failure, `soon,fail=N`
    /// lets them finish; tasks not yet started are cancelled either way. N may be a percentage
    /// of the tasks, e.g. `soon,fail=10%`.
    #[arg(long, value_name = "now|soon,fail=N", value_parser = parse_halt)]
    halt: Option<Halt>,

    /// How to print results: `text`, one line per task, or `json`, one JSON object per task.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,

    /// Cut each task at this wall-clock time, e.g. 500ms or 2s: it fails with `timed out` and its
    /// worker takes the next task. A task waiting in a queue is cut too.
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    timeout: Option<Duration>,

    /// Cap each task's linear memory, e.g. 64MiB: growing past it fails the task with
    /// `memory limit`.
    #[arg(long, value_name = "SIZE")]
    max_memory: Option<ByteSize>,

    /// Give each task a budget of N units of fuel (about one per wasm instruction): a
    /// reproducible CPU limit. The task fails with `out of fuel` when it is used up.
    #[arg(long, value_name = "N")]
    fuel: Option<u64>,

    /// Let tasks read host directory HOST, seen as GUEST (default: the same path). Tasks reach no
    /// files unless granted.
    #[arg(long = "dir", value_name = "HOST[::GUEST]", value_parser = parse_dir)]
    dirs: Vec<(PathBuf, String)>,

    /// As --dir, and let tasks create, change and delete what is in it.
    #[arg(long = "dir-rw", value_name = "HOST[::GUEST]", value_parser = parse_dir)]
    dirs_rw: Vec<(PathBuf, String)>,

    /// Give tasks environment variable NAME with VALUE, or with its value here if no VALUE is
    /// given. Tasks see no environment unless granted.
    #[arg(long = "env", value_name = "NAME[=VALUE]", value_parser = parse_env)]
    env: Vec<String>,

    /// Run a task that fails by a trap, a timeout or the death of its worker up to N more times.
    #[arg(long, value_name = "N", default_value_t = 0)]
    retries: u32,

    /// Make queue NAME hold at most MAXSIZE items (0: no bound, the default for every queue).
    #[arg(long = "queue", value_name = "NAME:MAXSIZE", value_parser = parse_queue)]
    queues: Vec<(String, usize)>,

    /// Fill queue NAME from FILE before the tasks start, one item per line ('-' reads standard
    /// input). An item is the line's bytes without its newline.
    #[arg(long = "feed", value_name = "NAME=FILE", value_parser = parse_feed)]
    feeds: Vec<(String, PathBuf)>,

    /// Print the items left in queue NAME when the tasks are done, one per line, in queue order.
    #[arg(long = "drain", value_name = "NAME")]
    drains: Vec<String>,

    #[command(flatten)]
    cache: CacheArgs,

    /// The largest queue item, e.g. 64KiB or 4MiB, at most 32MiB [default: 1MiB].
    #[arg(long, value_name = "SIZE")]
    max_item: Option<ByteSize>,

    /// The most bytes one queue holds; puts beyond it wait for room [default: 64MiB].
    #[arg(long, value_name = "SIZE")]
    max_queue_bytes: Option<ByteSize>,
}

fn parse_workers(text: &str) -> Result<usize, String> {
    let n: usize = text.parse().map_err(|e| format!("`{text}`: {e}"))?;
    if n > MAX_WORKERS {
        return Err(format!("{n} workers: a pool runs at most {MAX_WORKERS}"));
    }
    Ok(n)
}

/// A task's timeout: above zero (a task cut before it starts would be no task at all); one too
/// long for the clock to express is no timeout.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(timeout) if timeout.is_zero() => Err("a timeout is longer than zero".into()),
        Ok(timeout) => Ok(timeout),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_env(text: &str) -> Result<String, String> {
    let name = text.split_once('=').map_or(text, |(name, _)| name);
    if name.is_empty() {
        return Err("expected NAME or NAME=VALUE, with a NAME".into());
    }
    if name.contains('\0') {
        return Err("a NAME has no NUL byte".into());
    }
    Ok(text.to_owned())
}

fn parse_dir(text: &str) -> Result<(PathBuf, String), String> {
    let (host, guest) = text.split_once("::").unwrap_or((text, text));
    if host.is_empty() || guest.is_empty() {
        return Err("expected HOST or HOST::GUEST".into());
    }
    Ok((PathBuf::from(host), guest.to_owned()))
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or_default();
            say!(
                "poolhost: {} (see `poolhost --help`)",
                first.trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Run(args) => run(*args),
        Command::Compile(args) => compile(args),
        Command::Inspect(args) => inspect(args),
        Command::Worker => poolhost::worker::run().map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|e| {
        say!("poolhost: {}", one_line(&format!("{e:#}")));
        ExitCode::from(2)
    })
}

/// A refusal as the one line it must be: an error from deeper down that spans lines (a
/// runtime's message with its context, say) has its lines joined.
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    lines.join(" ")
}

/// Sends the host's `tracing` events to stderr: warnings only by default, more with each `-v`,
/// or what RUST_LOG asks for. Workers inherit RUST_LOG, so it reaches their events too.
fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "warn,poolhost=info",
        2 => "warn,poolhost=debug",
        _ => "trace",
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => EnvFilter::new(spec),
        _ => EnvFilter::new(default),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .with_target(false)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        // Its own complaint about a closed stderr would panic; there is nobody to tell.
        .log_internal_errors(false)
        .try_init();
}

/// The cache directory the arguments and environment name, if any.
fn cache_dir(given: Option<&PathBuf>) -> Option<PathBuf> {
    let home_cache = || {
        std::env::var_os("XDG_CACHE_HOME")
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
    };
    given
        .cloned()
        .or_else(|| home_cache().map(|dir| dir.join("poolhost")))
}

/// A loader with the compile cache. A cache directory the user named (`--cache-dir`,
/// `POOLHOST_CACHE_DIR`) that cannot serve is an error; the default one is only a warning, and
/// the component is compiled as if there were no cache.
fn loader(cache: &CacheArgs, metered: bool) -> anyhow::Result<Loader> {
    let loader = Program::loader().metered(metered);
    if cache.no_cache {
        return Ok(loader);
    }
    Ok(
        match cache_dir(cache.cache_dir.as_ref()).map(CompileCache::open) {
            Some(Ok(cache)) => loader.cache(cache),
            Some(Err(e)) if cache.cache_dir.is_some() => return Err(e.into()),
            Some(Err(e)) => {
                tracing::warn!("{e}; compiling without it");
                loader
            }
            None => loader,
        },
    )
}

fn compile(args: CompileArgs) -> anyhow::Result<ExitCode> {
    let dir = cache_dir(args.cache_dir.as_ref())
        .context("no cache directory: give --cache-dir, or set POOLHOST_CACHE_DIR or HOME")?;
    let cache = CompileCache::open(dir)?;
    let loader = Program::loader().metered(args.metered).cache(cache);
    for task in &args.tasks {
        let program = loader.load(task)?;
        let cached = program.cached().with_context(|| {
            format!(
                "`{}` was compiled but could not be stored in the cache (see the warning above)",
                task.display()
            )
        })?;
        let what = if cached.hit {
            "already in the cache"
        } else {
            "compiled into the cache"
        };
        println!("{}: {what}: {}", task.display(), cached.path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let program = loader(&args.cache, false)?.load(&args.task)?;
    let mut kinds = Vec::new();
    if !program.exports().is_empty() {
        kinds.push("calls");
    }
    if program.is_driver() {
        kinds.push("driver");
    } else if program.has_main() {
        kinds.push("jobs");
    }
    let mut out = io::stdout().lock();
    if args.output == Output::Json {
        let json = serde_json::json!({
            "task": args.task,
            "component": program.is_component(),
            "kinds": kinds,
            "main": program.has_main(),
            "exports": program.exports(),
            "imports": program.imports(),
        });
        writeln!(out, "{json}")?;
        return Ok(ExitCode::SUCCESS);
    }
    let what = match program.is_component() {
        true => "a WebAssembly component",
        false => "a core WebAssembly module (WASI preview 1)",
    };
    writeln!(out, "{}: {what}", args.task.display())?;
    writeln!(out, "\nhow `poolhost run` treats it:")?;
    for kind in &kinds {
        let how = match *kind {
            "calls" => "calls: call its exports with --invoke 'f(1, \"a\")' or --calls FILE",
            "driver" => {
                "driver: with no calls, its `main` runs on the host and drives a pool of its own tasks"
            }
            _ => {
                "jobs: with no calls its `main` runs once (arguments after --), or once per line with --each"
            }
        };
        writeln!(out, "  {how}")?;
    }
    if kinds.is_empty() {
        writeln!(
            out,
            "  nothing: it exports no function a task can call, and no `main`"
        )?;
    }
    writeln!(out, "\nexports:")?;
    match (program.has_main(), program.is_component()) {
        (true, true) => writeln!(out, "  main (wasi:cli/run)")?,
        (true, false) => writeln!(out, "  main (_start)")?,
        (false, _) => {}
    }
    for export in program.exports() {
        writeln!(out, "  {export}")?;
    }
    writeln!(out, "\nimports:")?;
    for import in program.imports() {
        writeln!(out, "  {import}")?;
    }
    Ok(ExitCode::SUCCESS)
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let clock = Instant::now();
    let workers = match args.workers {
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WORKERS)),
    };
    // The worker processes start while the component loads: on a machine with a spare core the
    // first result then waits for the slower of the two, not for both.
    let builder = Pool::builder().workers(workers).prestart();
    let interrupt = signals::Interrupt::watch().context("cannot watch for SIGINT and SIGTERM")?;
    let program = builder.load(&loader(&args.cache, args.fuel.is_some())?, &args.task)?;
    interrupt.remove_on_exit(program.artifact().parent().map(PathBuf::from));
    let mut calls = args
        .invoke
        .iter()
        .map(|text| program.parse_call(text))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(file) = &args.calls {
        calls.extend(read_calls(&program, file)?);
    }
    if let Some(file) = &args.each {
        if !program.has_main() {
            bail!(
                "--each runs a command (a component that exports `wasi:cli/run` or a module that exports `_start`, a Rust `fn main`); `{}` exports: {}",
                program.name(),
                program.exports().join(", ")
            );
        }
        calls.extend(read_jobs(file, &args.common)?);
    } else if !args.common.is_empty() && calls.is_empty() {
        calls.push(Call::job(args.common.clone()));
    }
    let drives = calls.is_empty() && program.is_driver();
    if calls.is_empty() && !drives {
        if !program.has_main() {
            bail!(
                "nothing to run: give calls with --invoke or --calls; `{}` exports: {}",
                program.name(),
                program.exports().join(", ")
            );
        }
        calls.push(Call::main());
    }

    let manager = manager(&args)?;
    let options = TaskOptions {
        timeout: args.timeout,
        max_memory: args.max_memory.map(|size| size.as_u64()),
        fuel: args.fuel,
        retries: args.retries,
    };
    let lines = if args.quiet {
        Lines::Hidden
    } else if args.tag {
        Lines::Tagged
    } else {
        Lines::Plain
    };
    let builder = builder
        .program(program)
        .manager(manager.clone())
        .options(options)
        .grants(grants(&args));
    let json = args.output == Output::Json;
    if drives {
        let output = GuestOutput::new(lines, Vec::new(), false, json, Progress::new(0, workers, false));
        let pool = builder
            .on_output(move |task, stream, bytes| output.write(task, stream, bytes))
            .build()?;
        let pool = Arc::new(pool);
        let stopped = pool.clone();
        interrupt.hand_over(Some(Box::new(move || stopped.terminate())));
        let code = drive(pool, options)?;
        // The stop's clone of the pool goes, and with the pool its temporary directory.
        interrupt.hand_over(None);
        for name in &args.drains {
            drain(&manager, name)?;
        }
        if let Some(signal) = interrupt.caught() {
            say!(
                "poolhost: the driver was interrupted by {}",
                signals::name(signal)
            );
            return Ok(ExitCode::from(128 + signal as u8));
        }
        return Ok(code);
    }

    // Sequence numbers count from 1 in input order, as GNU parallel's do, and survive --resume.
    let mut numbered: Vec<(usize, Call)> = calls
        .into_iter()
        .enumerate()
        .map(|(i, call)| (i + 1, call))
        .collect();
    let mut joblog = match &args.joblog {
        Some(path) => {
            if args.resume {
                let done = joblog::succeeded(path)?;
                numbered.retain(|(seq, call)| !done.contains(&(*seq, joblog::command(call))));
            }
            Some(joblog::Writer::open(path, args.resume)?)
        }
        None => None,
    };
    let (seqs, calls): (Vec<usize>, Vec<Call>) = numbered.into_iter().unzip();
    // The pool numbers its tasks from 0 in submission order: label i is task i's.
    let labels = calls.iter().map(joblog::command).collect();
    let progress = Progress::new(calls.len(), workers, !args.quiet);
    let output = Arc::new(GuestOutput::new(
        lines,
        labels,
        args.group,
        json,
        progress.clone(),
    ));
    // Results are taken as they are reported; those that come faster than that wait in the pool
    // up to this much before it starts no more tasks.
    let mut builder = builder.hold_results_under(HELD_RESULTS);
    if let Some(halt) = args.halt {
        // The pool cancels what has not started in the same step that counts the failure, so
        // no task starts after it; the command line then terminates the running ones for `now`.
        builder = builder.cancel_after_failures(halt.failures(calls.len()));
    }
    let pool = {
        let output = output.clone();
        builder
            .on_output(move |task, stream, bytes| output.write(task, stream, bytes))
            .build()?
    };
    let mut batch = pool.batch(calls)?;
    pool.close();
    interrupt.hand_over(None);

    let total = batch.results().len();
    let mut failed = 0;
    let mut halted = false;
    let mut interrupted = None;
    let mut printed = 0;
    let mut waiting = std::collections::HashMap::new();
    // Results wait here while more tasks finish at once, and are written before the loop waits:
    // one write for many short tasks, rather than one each.
    let mut results = Vec::new();
    while batch.remaining() > 0 {
        if interrupted.is_none()
            && let Some(signal) = interrupt.caught()
        {
            // Every task not done ends as terminated, and is reported as such.
            interrupted = Some(signal);
            pool.terminate();
        }
        let next = match batch.next_finished_timeout(Duration::ZERO) {
            Some(index) => Some(index),
            None => {
                if !results.is_empty() {
                    progress.suspend(|| write_out(&mut results))?;
                }
                batch.next_finished_timeout(Duration::from_millis(250))
            }
        };
        let Some(index) = next else {
            progress.tick();
            continue;
        };
        let report = batch.take_report(index).expect("a finished task has its report");
        output.finish(report.id);
        progress.finished(report.result.is_ok());
        if let Some(joblog) = &mut joblog {
            joblog.record(seqs[index], &report)?;
        }
        if report.result.is_err() {
            failed += 1;
            if let Some(halt) = args.halt.filter(|halt| !halted && failed >= halt.failures(total)) {
                halted = true;
                progress.suspend(|| say!("poolhost: {}", halt.message(failed)));
                match halt.when {
                    When::Now => pool.terminate(),
                    When::Soon => {
                        pool.cancel_pending();
                    }
                }
            }
        }
        // Results are printed in the order the tasks were given, each once those before it are;
        // only those that finished ahead of an earlier one wait here, and each is let go once
        // printed.
        waiting.insert(index, report);
        while let Some(report) = waiting.remove(&printed) {
            print_report(&mut results, &report, args.output)?;
            printed += 1;
        }
        if results.len() >= 64 << 10 {
            progress.suspend(|| write_out(&mut results))?;
            // A large result grew the buffer: it need not keep that much.
            results.shrink_to(64 << 10);
        }
    }
    progress.suspend(|| write_out(&mut results))?;
    pool.join()?;
    progress.clear();
    for name in &args.drains {
        drain(&manager, name)?;
    }
    say!(
        "poolhost: {total} task{}, {} ok, {failed} failed, {} workers, {:.2} s{}",
        if total == 1 { "" } else { "s" },
        total - failed,
        pool.workers(),
        clock.elapsed().as_secs_f64(),
        interrupted.map_or_else(String::new, |signal| format!(
            ", interrupted by {}",
            signals::name(signal)
        ))
    );
    // Exits as a shell reports a process killed by the signal, once everything is cleaned up.
    drop(pool);
    Ok(match interrupted {
        Some(signal) => ExitCode::from(128 + signal as u8),
        None if failed > 0 => ExitCode::from(1),
        None => ExitCode::SUCCESS,
    })
}

/// The most bytes of results `poolhost run` lets wait to be printed before the pool holds back
/// the next tasks: a few large results, or millions of small ones.
const HELD_RESULTS: usize = 64 << 20;

/// When `--halt` stops a run: how, and after how many failures.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Halt {
    when: When,
    fail: Threshold,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum When {
    /// Kill the running tasks too.
    Now,
    /// Let the running tasks finish; start no more.
    Soon,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Threshold {
    Count(usize),
    Percent(f64),
}

impl Halt {
    /// How many failures of `total` tasks halt the run (at least one).
    fn failures(&self, total: usize) -> usize {
        match self.fail {
            Threshold::Count(n) => n,
            Threshold::Percent(p) => ((p / 100.0 * total as f64).ceil() as usize).max(1),
        }
    }

    fn message(&self, failed: usize) -> String {
        let what = match self.when {
            When::Now => "terminating the running tasks and cancelling the rest",
            When::Soon => "letting the running tasks finish and cancelling the rest",
        };
        format!(
            "halting after {failed} failed task{} (--halt {self}): {what}",
            if failed == 1 { "" } else { "s" },
        )
    }
}

impl std::fmt::Display for Halt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let when = match self.when {
            When::Now => "now",
            When::Soon => "soon",
        };
        match self.fail {
            Threshold::Count(n) => write!(f, "{when},fail={n}"),
            Threshold::Percent(p) => write!(f, "{when},fail={p}%"),
        }
    }
}

/// Parses `now,fail=N` or `soon,fail=N`, N a count or a percentage, as GNU parallel's `--halt`.
fn parse_halt(text: &str) -> Result<Halt, String> {
    const EXPECTED: &str = "expected now,fail=N or soon,fail=N (N a count or a percentage, e.g. 10%)";
    let (when, condition) = text.split_once(',').ok_or(EXPECTED)?;
    let when = match when {
        "now" => When::Now,
        "soon" => When::Soon,
        _ => return Err(EXPECTED.into()),
    };
    let value = condition.strip_prefix("fail=").ok_or(EXPECTED)?;
    let fail = match value.strip_suffix('%') {
        Some(percent) => match percent.parse::<f64>() {
            Ok(p) if p > 0.0 && p <= 100.0 => Threshold::Percent(p),
            _ => return Err(format!("`{value}`: a percentage is above 0 and at most 100")),
        },
        None => match value.parse::<usize>() {
            Ok(n) if n > 0 => Threshold::Count(n),
            _ => {
                return Err(format!(
                    "`{value}`: a count of failures is a whole number above 0"
                ));
            }
        },
    };
    Ok(Halt { when, fail })
}

/// Runs the component's `main` as the driver of `pool`; the exit code is the driver's.
fn drive(pool: Arc<Pool>, options: TaskOptions) -> anyhow::Result<ExitCode> {
    let exit = poolhost::driver::run(pool, options)?;
    if exit.terminated_pool {
        say!("poolhost: the driver ended without joining its pool; the pool was terminated");
    }
    Ok(match exit.result {
        Ok(_) => ExitCode::SUCCESS,
        Err(TaskError::Exit(code)) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(error) => {
            say!("poolhost: the driver failed: {error}");
            if let TaskError::Trap { backtrace, .. } = &error {
                for frame in backtrace {
                    say!("    at {frame}");
                }
            }
            ExitCode::from(1)
        }
    })
}

/// What `--dir`, `--dir-rw` and `--env` grant the tasks.
fn grants(args: &RunArgs) -> Grants {
    let dir = |writable: bool| {
        move |(host, guest): &(PathBuf, String)| DirGrant {
            host: host.clone(),
            guest: guest.clone(),
            writable,
        }
    };
    let mut dirs: Vec<DirGrant> = args.dirs.iter().map(dir(false)).collect();
    dirs.extend(args.dirs_rw.iter().map(dir(true)));
    let env = args
        .env
        .iter()
        .filter_map(|spec| match spec.split_once('=') {
            Some((name, value)) => Some((name.to_owned(), value.to_owned())),
            // `--env NAME` passes the variable on if this process has it, as `wasmtime run` does.
            None => std::env::var(spec).ok().map(|value| (spec.clone(), value)),
        })
        .collect();
    Grants { dirs, env }
}

/// The pool's manager, with the queues and limits the arguments ask for, fed.
fn manager(args: &RunArgs) -> anyhow::Result<Manager> {
    let defaults = Limits::default();
    if let Some(max_item) = args.max_item.filter(|size| size.as_u64() > MAX_ITEM_LIMIT as u64) {
        bail!(
            "--max-item {max_item} is over the highest per-item limit, {}",
            ByteSize(MAX_ITEM_LIMIT as u64)
        );
    }
    let size = |size: Option<ByteSize>, default: usize| size.map_or(default, |s| s.as_u64() as usize);
    let manager = Manager::with_limits(Limits {
        max_item_bytes: size(args.max_item, defaults.max_item_bytes),
        max_queue_bytes: size(args.max_queue_bytes, defaults.max_queue_bytes),
        ..defaults
    });
    for (n, (name, maxsize)) in args.queues.iter().enumerate() {
        if args.queues[..n].iter().any(|(earlier, _)| earlier == name) {
            bail!("--queue `{name}` is given twice; give each queue one MAXSIZE");
        }
        manager
            .bounded(name, *maxsize)
            .with_context(|| format!("cannot make queue `{name}`"))?;
    }
    for (name, file) in &args.feeds {
        feed(&manager, name, file)?;
    }
    Ok(manager)
}

/// Puts each line of `file` (`-`: stdin) on queue `name`, without its newline, as it reads it:
/// the queue's limits bound what it takes, and a line longer than an item may be is an error.
fn feed(manager: &Manager, name: &str, file: &PathBuf) -> anyhow::Result<()> {
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
        let limit = (self.max_line as u64 + 1).min(self.left.saturating_add(1));
        let read = io::Read::take(&mut self.reader, limit).read_until(b'\n', &mut line);
        read.with_context(|| format!("cannot read {} from {}", self.what, self.source()))?;
        if line.is_empty() {
            return Ok(None);
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
        Ok(Some(line))
    }

    /// As [`InputLines::next_line`], for text.
    fn next_text(&mut self) -> anyhow::Result<Option<String>> {
        let Some(line) = self.next_line()? else {
            return Ok(None);
        };
        String::from_utf8(line)
            .map(Some)
            .map_err(|_| anyhow::anyhow!("{} line {} is not UTF-8 text", self.source(), self.number))
    }
}

/// Prints what is left in queue `name`, one item per line, in queue order.
fn drain(manager: &Manager, name: &str) -> anyhow::Result<()> {
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

/// Reads jobs, one per line, from `file` (`-` for stdin): each line's words, then `common`.
/// Blank lines are skipped.
fn read_jobs(file: &PathBuf, common: &[String]) -> anyhow::Result<Vec<Call>> {
    let mut lines = InputLines::open(file, "jobs", MAX_INPUT_LINE, MAX_INPUT)?;
    let mut jobs = Vec::new();
    while let Some(line) = lines.next_text()? {
        // A file written on Windows ends its lines with CR LF.
        let line = line.strip_suffix('\r').unwrap_or(&line);
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

/// Reads calls, one per line, from `file` (`-` for stdin).
fn read_calls(program: &Program, file: &PathBuf) -> anyhow::Result<Vec<Call>> {
    let mut lines = InputLines::open(file, "calls", MAX_INPUT_LINE, MAX_INPUT)?;
    let mut calls = Vec::new();
    while let Some(line) = lines.next_text()? {
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

/// Writes what `print_report` gathered to stdout, and empties it.
fn write_out(results: &mut Vec<u8>) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(results)?;
    results.clear();
    out.flush()
}

/// Writes the line (or lines, for a backtrace) of one task's result to `out`.
fn print_report(out: &mut impl Write, report: &TaskReport, output: Output) -> io::Result<()> {
    match output {
        Output::Text => {
            match &report.result {
                // A command's own output is its result, as with `wasmtime run`.
                Ok(_) if report.call.target == Target::Main => {}
                Ok(None) => writeln!(out, "{} -> ok", report.call)?,
                Ok(Some(value)) => writeln!(out, "{} -> {value}", report.call)?,
                Err(error) => {
                    writeln!(out, "{} -> error: {error}", report.call)?;
                    if let TaskError::Trap { backtrace, .. } = error {
                        for frame in backtrace {
                            writeln!(out, "    at {frame}")?;
                        }
                    }
                }
            }
        }
        Output::Json => writeln!(out, "{}", json_report(report))?,
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

fn json_report(report: &TaskReport) -> String {
    let error = report.result.as_ref().err().map(|error| {
        let mut json = JsonError {
            kind: error.kind(),
            message: error.to_string(),
            trap: None,
            backtrace: None,
            code: None,
            pid: None,
            cause: None,
            limit: None,
            size: None,
        };
        match error {
            TaskError::Trap { code, backtrace } => {
                json.trap = Some(code.to_string());
                json.backtrace = Some(backtrace.iter().map(ToString::to_string).collect());
            }
            TaskError::Exit(code) => json.code = Some(*code),
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
            TaskError::Terminated | TaskError::Cancelled | TaskError::Failed(_) => {}
        }
        json
    });
    let json = JsonReport {
        id: report.id,
        call: report.call.to_string(),
        ok: report.result.is_ok(),
        value: report
            .result
            .as_ref()
            .ok()
            .map(|value| value.as_ref().map(ToString::to_string)),
        error,
        worker: report.worker,
        start: report
            .started
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64()),
        duration: report.duration.as_secs_f64(),
        peak_memory: report.peak_memory,
        fuel_used: report.fuel_used,
        attempts: report.attempts,
    };
    serde_json::to_string(&json).expect("a report serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

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
