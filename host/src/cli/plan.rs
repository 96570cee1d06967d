//! What a `poolhost run` is to do, worked out from its arguments (and the component they name)
//! before anything runs: the calls or jobs, or the driver; the tasks' options and grants; the
//! queues, made and fed; how output and results are printed; `--halt` and `--joblog`. Every
//! argument is read here, and every refusal of one made here: running a [`RunPlan`] reads none.

use std::path::PathBuf;

use anyhow::{Context, bail};
use bytesize::ByteSize;
use poolhost::{Call, Grants, Limits, MAX_ITEM_LIMIT, Manager, Program, TaskOptions};

use super::OutputFormat;
use super::halt::Halt;
use super::input::{feed, read_calls, read_jobs};
use super::joblog;
use super::output::Lines;
use super::run::RunArgs;

/// A run, worked out.
pub struct RunPlan {
    /// The tasks, or the driver.
    pub work: Work,
    /// The number of worker processes.
    pub workers: usize,
    /// Each task's limits and retries.
    pub options: TaskOptions,
    /// What `--dir`, `--dir-rw` and `--env` grant the tasks.
    pub grants: Grants,
    /// The queues the tasks share: made with their bounds and limits, and fed.
    pub manager: Manager,
    /// The queues whose items are printed when the run is done (`--drain`).
    pub drains: Vec<String>,
    /// How the tasks' own output is printed.
    pub lines: Lines,
    /// How results are printed.
    pub output: OutputFormat,
}

/// What a run runs.
pub enum Work {
    /// The component's `main`, driving a pool of its own tasks.
    Driver,
    /// Calls or jobs.
    Tasks(Tasks),
}

/// The calls or jobs of a run, and what only such a run has.
pub struct Tasks {
    /// The calls, in the order they were given, less those `--resume` skips.
    pub calls: Vec<Call>,
    /// Each call's sequence number: they count from 1 in input order, as GNU parallel's do, and
    /// survive `--resume`.
    pub seqs: Vec<usize>,
    /// Where the joblog goes, if anywhere.
    pub joblog: Option<Joblog>,
    /// Each task's output is printed in one piece when it ends (`--group`).
    pub group: bool,
    /// The progress bar may be drawn (no `--quiet`).
    pub progress: bool,
    /// When failures stop the run.
    pub halt: Option<Halt>,
}

/// `--joblog FILE`, and whether `--resume` adds to it.
pub struct Joblog {
    pub path: PathBuf,
    pub resume: bool,
}

impl RunPlan {
    /// The plan for `args`, whose component is `program`, on `workers` workers. Reads the calls,
    /// jobs and queue items the arguments name.
    pub fn new(args: RunArgs, program: &Program, workers: usize) -> anyhow::Result<RunPlan> {
        let calls = calls(&args, program)?;
        let drives = calls.is_empty() && program.is_driver();
        let calls = match drives {
            true => None,
            false => Some(calls_or_main(calls, program)?),
        };
        if args.cluster.redis.is_some() {
            refuse_on_cluster(&args)?;
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
        let grants = args.grants.grants();
        let work = match calls {
            None => Work::Driver,
            Some(calls) => Work::Tasks(tasks(&args, calls)?),
        };
        Ok(RunPlan {
            work,
            workers,
            options,
            grants,
            manager,
            drains: args.drains,
            lines,
            output: args.output,
        })
    }
}

/// Refuses what a run on a cluster cannot do: grant, for grants belong to the hosts.
fn refuse_on_cluster(args: &RunArgs) -> anyhow::Result<()> {
    if args.grants.any() {
        bail!(
            "--dir, --dir-rw and --env are for the hosts to grant: give them to `poolhost serve` (a submitter grants nothing on other machines)"
        );
    }
    Ok(())
}

/// The calls of `--invoke` and `--calls`, then the jobs of `--each` or the one job of the common
/// arguments; none if the arguments give none.
fn calls(args: &RunArgs, program: &Program) -> anyhow::Result<Vec<Call>> {
    let mut calls = args
        .invoke
        .iter()
        .map(|text| program.parse_call(text))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(file) = &args.calls {
        calls.extend(read_calls(program, file)?);
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
    Ok(calls)
}

/// `calls`, or the component's `main` once if there are none; an error if it has no `main`.
fn calls_or_main(mut calls: Vec<Call>, program: &Program) -> anyhow::Result<Vec<Call>> {
    if calls.is_empty() {
        if !program.has_main() {
            bail!(
                "nothing to run: give calls with --invoke or --calls; `{}` exports: {}",
                program.name(),
                program.exports().join(", ")
            );
        }
        calls.push(Call::main());
    }
    Ok(calls)
}

/// The tasks of `calls`, numbered, less those `--resume` finds succeeded in the joblog.
fn tasks(args: &RunArgs, calls: Vec<Call>) -> anyhow::Result<Tasks> {
    let mut numbered: Vec<(usize, Call)> = calls
        .into_iter()
        .enumerate()
        .map(|(i, call)| (i + 1, call))
        .collect();
    if let Some(path) = &args.joblog
        && args.resume
    {
        let done = joblog::succeeded(path)?;
        numbered.retain(|(seq, call)| !done.contains(&(*seq, joblog::command(call))));
    }
    let (seqs, calls) = numbered.into_iter().unzip();
    Ok(Tasks {
        calls,
        seqs,
        joblog: args.joblog.clone().map(|path| Joblog {
            path,
            resume: args.resume,
        }),
        group: args.group,
        progress: !args.quiet,
        halt: args.halt,
    })
}

/// What `--dir`, `--dir-rw` and `--env` grant the tasks.
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
    let limits = Limits {
        max_item_bytes: size(args.max_item, defaults.max_item_bytes),
        max_queue_bytes: size(args.max_queue_bytes, defaults.max_queue_bytes),
        ..defaults
    };
    // On a cluster the queues are the pool's, in Redis, shared with every host's tasks.
    let manager = match args.cluster.cluster()? {
        Some(cluster) => cluster.manager(limits),
        None => Manager::with_limits(limits),
    };
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
