//! The pool: starts and supervises the worker processes, schedules tasks onto them in FIFO order,
//! collects results, and implements `close`, `join` and `terminate` with Python's rules.
//!
//! Workers are started as `worker_program worker`, or, by [`Builder::prestart`] in a process with
//! a single thread, forked from it; either way before the component is loaded if asked, and told
//! to load it as soon as it is compiled ([`Builder::load`]).
//!
//! Each worker slot has a supervisor thread that reads everything its worker sends: output is
//! handed to the pool's output sink, queue operations to the manager, results complete the
//! tasks' [`AsyncResult`]s (or send a task back to the queue for a retry) and free the worker
//! for the next pending task. When a worker process dies, exactly the task it was running fails
//! (with the signal or exit status) or is retried, the tasks queued behind it go back to the
//! front of the queue, and a replacement starts, later each time if workers keep dying young.
//! This module never names wasmtime.
//!
//! Short tasks get two kinds of help from the scheduler, both judged by how long a worker's last
//! task took (see `SEND_AHEAD_BELOW` and `BATCH_WORK`): single tasks travel to a worker in batches
//! of about a millisecond of work, and a worker is sent its next batch before it finishes the
//! last, so it never waits for the host between tasks. A batch sent ahead that a worker has not
//! started is asked back when another worker goes idle, so tasks still run as soon as any worker
//! is free. Neither happens while failures may cancel what is pending, so that no task starts
//! after them.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::mem;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::panic;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::ipc::{self, EXIT_TIMED_OUT, FromWorker, Init, IpcError, QueueAnswer, QueueRequest, ToWorker};
use crate::manager::{Answer, Manager, QueueError, Wait, WaiterId, oneshot};
use crate::runtime::{CallError, LoadError, Loader, OutputSink, Program};
use crate::task::{Call, DirGrant, Grants, Stream, TaskError, TaskId, TaskOptions, TaskReport, TaskResult};
use crate::value::Value;
use crate::worker;

/// How long a new worker may take to load the component and say it is ready.
///
/// Loading is a memory map of the precompiled artefact (well under a millisecond), but a busy
/// machine starting many processes at once can be slow to schedule them; 30 s only catches a
/// worker that is stuck.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A worker that exits sooner than this after it started, without finishing a task, counts as
/// dying young (see `Shared::back_off`): a crash loop, not a worker killed from outside after it
/// had done work.
const EARLY_DEATH: Duration = Duration::from_secs(1);

/// How long a slot keeps starting replacements that die before they are ready (with the
/// back-off between) before it gives up. A worker killed as it starts is not a reason to give up
/// a slot, but one that can never start must not leave its tasks waiting forever.
const GIVE_UP_STARTING: Duration = Duration::from_secs(60);

/// How long past a task's timeout (and its worker's own [`crate::worker`] grace second) the host
/// waits before it kills the worker itself: a worker that is frozen (SIGSTOP) or stuck where its
/// watchdog cannot act never answers, and the task is reported as timed out.
const HOST_GRACE: Duration = Duration::from_secs(2);

/// How long [`Pool::wait_for_room`] waits for some task to finish before it takes its tasks to
/// be waiting on the submitter.
const STALLED: Duration = Duration::from_secs(1);

/// A sink call that takes this long held its supervisor up: see `Conn::resumed`.
const SINK_STALL: Duration = Duration::from_millis(10);

/// How long `join` lets its workers take to exit once told to, before it kills them: a worker
/// that is frozen never reads the request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The longest wait before a replacement worker starts.
const MAX_RESPAWN_DELAY: Duration = Duration::from_secs(1);

/// A worker gets its next batch ahead of time, while it still runs the last one, when what it
/// holds should take less than this (judged by how long its last task took). It then goes from
/// one batch to the next without waiting for the host.
///
/// Sending ahead saves a round trip to the host per batch (tens of microseconds), a large share
/// of a short task. It costs a wait when the batch sent ahead lands behind a task that turns out
/// long while another worker goes idle; the host then asks for the batch back, but a worker only
/// reads that request between batches or while its task waits on a queue. Below a few
/// milliseconds the saving is worth that risk; above, tasks wait for a free worker, as in
/// Python's pool.
const SEND_AHEAD_BELOW: Duration = Duration::from_millis(5);

/// Tasks shorter than this travel in one batch of up to [`MAX_BATCH`] tasks, about this much
/// work in all: one frame to the worker for many tasks, instead of one each.
const BATCH_WORK: Duration = Duration::from_millis(1);

/// The most tasks put into one batch (see [`BATCH_WORK`]).
const MAX_BATCH: usize = 64;

/// The largest batch frame sent ahead. A busy worker leaves it unread in its socket, so it must
/// fit the socket's buffer with room to spare: a write that blocked there would hold up the
/// thread that also reads that worker's output, and neither side would move.
const MAX_AHEAD_FRAME: usize = 16 << 10;

/// The most worker processes a pool runs. Each holds three of the host's file descriptors (its
/// socket twice, its journal) for its whole life, and a process's usual limit is 1024; a pool
/// asked for a million workers would otherwise fork until the system ran out of descriptors.
pub const MAX_WORKERS: usize = 256;

/// Why the pool refused an operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The builder was given no component.
    #[error("no component given: call `component` or `program` on the pool builder")]
    NoComponent,
    /// The component could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A worker process could not be started.
    #[error("cannot start a worker process: {0}")]
    Start(String),
    /// More workers were asked for than [`MAX_WORKERS`].
    #[error("{0} workers asked for; a pool runs at most {MAX_WORKERS}")]
    TooManyWorkers(usize),
    /// A task was submitted after `close` or `terminate`.
    #[error("pool not running: no tasks can be submitted after `close` or `terminate`")]
    NotRunning,
    /// `join` was called before `close` or `terminate`.
    #[error("pool is still running: call `close` or `terminate` before `join`")]
    StillRunning,
    /// A submitted call does not fit the component.
    #[error(transparent)]
    Call(#[from] CallError),
    /// A granted directory cannot be granted.
    #[error("cannot grant `{path}` to the tasks: {reason}")]
    Grant {
        /// The host directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A task was given fuel, but the program was loaded without fuel metering.
    #[error(
        "tasks cannot be given fuel: the program was loaded without fuel metering (Program::load_metered)"
    )]
    NotMetered,
}

/// Configures and starts a [`Pool`].
#[derive(Default)]
pub struct Builder {
    workers: usize,
    program: Option<Program>,
    component: Option<PathBuf>,
    worker_program: Option<PathBuf>,
    output: Option<OutputSink>,
    manager: Option<Manager>,
    options: TaskOptions,
    grants: Grants,
    cancel_after: Option<usize>,
    held_budget: Option<usize>,
    /// Processes [`Builder::prestart`] started, not yet told what to load.
    prestarted: Vec<Launched>,
}

impl Builder {
    /// The number of worker processes, at most [`MAX_WORKERS`]; 0 (the default) means one per CPU.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// The component to run, loaded from a file (binary or WebAssembly text) when the pool is
    /// built.
    pub fn component(mut self, path: impl Into<PathBuf>) -> Self {
        self.component = Some(path.into());
        self
    }

    /// The component to run, already loaded (for example to parse calls before starting workers).
    pub fn program(mut self, program: Program) -> Self {
        self.program = Some(program);
        self
    }

    /// The executable started as each worker, with the single argument `worker`.
    ///
    /// The default is the current executable, which is right for the `poolhost` binary. A
    /// program that embeds the pool either passes the path of a `poolhost` binary here or makes
    /// its own `main` call [`crate::worker::run`] when its first argument is `worker`.
    pub fn worker_program(mut self, path: impl Into<PathBuf>) -> Self {
        self.worker_program = Some(path.into());
        // Processes started from another executable are not the ones asked for.
        self.prestarted.clear();
        self
    }

    /// Starts the worker processes now, before the component is given or loaded; [`Builder::build`]
    /// then only tells them what to load.
    ///
    /// A process takes about as long to start (exec, dynamic linking, the runtime's set-up) as
    /// the host takes to load a precompiled component, so on a machine with a spare core this
    /// takes the start of the workers off the time to the first result. Call it after
    /// [`Builder::workers`] and [`Builder::worker_program`]. A process that cannot be started now
    /// is started, or its error reported, by [`Builder::build`]; processes the pool does not use
    /// (the builder dropped, or fewer workers asked for since) are killed and reaped.
    ///
    /// When this process has a single thread, as at the start of a program, and no other worker
    /// program was given, the workers are forked from it rather than executed anew: a fork of a
    /// process that has loaded nothing yet costs a fraction of starting one.
    pub fn prestart(mut self) -> Self {
        let own = self.worker_program.is_none();
        let Ok(worker_program) = self.resolved_worker_program() else {
            return self;
        };
        let workers = worker_count(self.workers).min(MAX_WORKERS);
        // Forking starts no thread here, so one look at the threads holds for every worker.
        let fork_them = own && single_threaded();
        while self.prestarted.len() < workers {
            let started = match fork_them {
                true => fork(),
                false => spawn(&worker_program),
            };
            match started {
                Ok(launched) => self.prestarted.push(launched),
                Err(_) => break,
            }
        }
        self.worker_program = Some(worker_program);
        self
    }

    /// Loads the component at `path` with `loader`, for [`Builder::program`]: as [`Loader::load`],
    /// but the workers [`Builder::prestart`] started load it too, as soon as it is compiled,
    /// while the host still checks it and describes its exports.
    ///
    /// # Errors
    /// As [`Loader::load`].
    pub fn load(&self, loader: &Loader, path: impl AsRef<Path>) -> Result<Program, LoadError> {
        let metered = loader.is_metered();
        loader.load_announcing(path.as_ref(), &mut |artifact| {
            let load = ToWorker::Load {
                artifact: artifact.to_owned(),
                metered,
            };
            for launched in &self.prestarted {
                // A worker that cannot be reached now fails its `Init`, which says why.
                let _ = ipc::write(&launched.socket, &load);
            }
        })
    }

    fn resolved_worker_program(&self) -> Result<PathBuf, PoolError> {
        match &self.worker_program {
            Some(path) => Ok(path.clone()),
            None => std::env::current_exe()
                .map_err(|e| PoolError::Start(format!("cannot find the current executable: {e}"))),
        }
    }

    /// Where guest output goes, instead of this process's stdout and stderr: called from the
    /// pool's threads with whole lines; a line longer than 64 KiB comes in pieces, each but its
    /// last without a newline, so output that does not end in a newline always has more to come.
    /// A task's last line gets its newline when the task ends.
    pub fn on_output(mut self, sink: impl Fn(TaskId, Stream, &[u8]) + Send + Sync + 'static) -> Self {
        self.output = Some(Arc::new(sink));
        self
    }

    /// Cancels every task not yet started once `failures` tasks have failed (after their
    /// retries), as [`Pool::cancel_pending`] does, in the same step that records the failure: no
    /// task starts after it. GNU parallel's `--halt soon,fail=N`; terminate the pool as well for
    /// `now`.
    pub fn cancel_after_failures(mut self, failures: usize) -> Self {
        self.cancel_after = Some(failures.max(1));
        self
    }

    /// Holds back the start of tasks while the finished results of [`Pool::batch`] tasks that
    /// have not been taken with [`Batch::take_report`] come to `bytes` or more (about: each
    /// value's size and what it holds): for a runner that takes each report as it reports it, so
    /// that results that come faster than it reports them do not pile up in memory. Such a
    /// runner must take every report, or its pool stops starting tasks.
    pub fn hold_results_under(mut self, bytes: usize) -> Self {
        self.held_budget = Some(bytes);
        self
    }

    /// The manager whose queues the tasks share; by default the pool makes its own (see
    /// [`Pool::manager`]). Pools given the same manager share its queues.
    pub fn manager(mut self, manager: Manager) -> Self {
        self.manager = Some(manager);
        self
    }

    /// What the tasks may reach outside their sandbox (nothing by default).
    pub fn grants(mut self, grants: Grants) -> Self {
        self.grants = grants;
        self
    }

    /// Lets tasks read host directory `host`, which they see as `guest`.
    pub fn dir(mut self, host: impl Into<PathBuf>, guest: impl Into<String>) -> Self {
        self.grants.dirs.push(DirGrant {
            host: host.into(),
            guest: guest.into(),
            writable: false,
        });
        self
    }

    /// Lets tasks read and change host directory `host`, which they see as `guest`.
    pub fn dir_rw(mut self, host: impl Into<PathBuf>, guest: impl Into<String>) -> Self {
        self.grants.dirs.push(DirGrant {
            host: host.into(),
            guest: guest.into(),
            writable: true,
        });
        self
    }

    /// Gives tasks the environment variable `name` with `value`.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.grants.env.push((name.into(), value.into()));
        self
    }

    /// The options (limits, retries) of every task, unless [`Pool::apply_async_with`] gives a task
    /// its own.
    pub fn options(mut self, options: TaskOptions) -> Self {
        self.options = options;
        self
    }

    /// Each task's timeout: past it the task fails with [`TaskError::Timeout`] and its worker
    /// takes the next task.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = Some(timeout);
        self
    }

    /// Each task's linear-memory limit, in bytes.
    pub fn max_memory(mut self, bytes: u64) -> Self {
        self.options.max_memory = Some(bytes);
        self
    }

    /// Each task's fuel budget. A component given by path is then loaded with fuel metering.
    pub fn fuel(mut self, fuel: u64) -> Self {
        self.options.fuel = Some(fuel);
        self
    }

    /// Loads the component (if given as a path), starts the workers and waits until each has
    /// loaded it.
    ///
    /// # Errors
    /// [`PoolError::NoComponent`], [`PoolError::Load`], or [`PoolError::Start`] when a worker
    /// cannot be started or cannot load the component; no worker is left running then.
    /// [`PoolError::NotMetered`] if the tasks get fuel but the program given is not metered.
    pub fn build(mut self) -> Result<Pool, PoolError> {
        let metered = self.options.fuel.is_some();
        let program = match (self.program.take(), self.component.take()) {
            (Some(program), _) => program,
            (None, Some(path)) => self.load(&Program::loader().metered(metered), path)?,
            (None, None) => return Err(PoolError::NoComponent),
        };
        if metered && !program.metered() {
            return Err(PoolError::NotMetered);
        }
        for dir in &self.grants.dirs {
            let grant_error = |reason: String| PoolError::Grant {
                path: dir.host.clone(),
                reason,
            };
            match std::fs::metadata(&dir.host) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => return Err(grant_error("not a directory".into())),
                Err(e) => return Err(grant_error(e.to_string())),
            }
        }
        let workers = worker_count(self.workers);
        if workers > MAX_WORKERS {
            return Err(PoolError::TooManyWorkers(workers));
        }
        let worker_program = self.resolved_worker_program()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                phase: Phase::Running,
                pending: VecDeque::new(),
                slots: (0..workers).map(|_| Slot::Starting).collect(),
                idle: VecDeque::new(),
                unfinished: 0,
                next_id: 0,
                supervisors: Vec::new(),
                shutting_down: false,
                cancelled: false,
                failures: 0,
                cancel_after: self.cancel_after,
                next_look: None,
                wake_timekeeper: false,
                room_waiters: 0,
                room_at: 0,
                held: 0,
                held_budget: self.held_budget,
                settled: 0,
                stalled_at: None,
            }),
            changed: Condvar::new(),
            program,
            worker_program,
            output: self.output.unwrap_or_else(inherit_output),
            manager: self.manager.unwrap_or_default(),
            options: self.options,
            grants: self.grants,
            host_pid: std::process::id(),
        });

        // Start every process first, so they load the component in parallel. Processes started
        // ahead need only be told what to load; any beyond `workers` are dropped, killing them.
        // Every process is owned from here on: an error drops them all, killing and reaping.
        let mut prestarted = self.prestarted.into_iter();
        let launched: Vec<Result<Launched, StartError>> = (0..workers)
            .map(|_| match prestarted.next() {
                Some(launched) => shared.init(launched),
                None => shared.launch(),
            })
            .collect();
        drop(prestarted);
        let mut started = Vec::with_capacity(workers);
        for launched in launched {
            match launched.and_then(Launched::ready) {
                Ok(worker) => started.push(Some(worker)),
                // Killed from outside as it started, say: its supervisor starts another.
                Err(StartError::Died(message)) => {
                    tracing::warn!("a worker died as it started ({message}); starting another");
                    started.push(None);
                }
                Err(StartError::Refused(message)) => return Err(PoolError::Start(message)),
            }
        }

        // From here the pool owns the workers: if a thread cannot start, dropping the pool
        // terminates it, and each worker is killed and reaped by its supervisor, or dropped
        // (killed and reaped) with the closure of a thread that did not start.
        let pool = Pool { shared, workers };
        let shared = pool.shared.clone();
        pool.shared
            .spawn_thread("poolhost-timekeeper".into(), move || shared.keep_time())?;
        for (index, worker) in started.into_iter().enumerate() {
            if let Some(worker) = &worker {
                pool.shared.install(index, worker);
            }
            let shared = pool.shared.clone();
            pool.shared
                .spawn_thread(format!("poolhost-worker-{index}"), move || {
                    shared.supervise(index, worker)
                })?;
        }
        Ok(pool)
    }
}

/// A pool of worker processes running tasks of one component.
///
/// After Python's `multiprocessing.Pool`: at most [`Pool::workers`] tasks run at once, the rest
/// wait in FIFO order and start on the first free worker. Every task runs in a fresh sandbox.
/// Dropping the pool terminates it (Python's `with Pool() as p`), killing and reaping every
/// worker.
///
/// # Examples
/// ```no_run
/// use poolhost::{Call, Pool, Value};
/// let pool = Pool::builder().component("long-time-task.wasm").workers(4).build()?;
/// let results: Vec<_> = (0..5)
///     .map(|i| pool.apply_async(Call::new("long-time-task", [Value::U32(i)])))
///     .collect::<Result<_, _>>()?;
/// pool.close();
/// pool.join()?;
/// for result in results {
///     assert!(result.successful() == Some(true));
/// }
/// # Ok::<(), poolhost::PoolError>(())
/// ```
pub struct Pool {
    shared: Arc<Shared>,
    workers: usize,
}

impl Pool {
    /// A builder for a pool.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The number of worker processes.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Whether the pool was joined or terminated: nothing of it is left running.
    pub fn is_finished(&self) -> bool {
        let state = self.shared.lock();
        state.phase == Phase::Terminated || state.shutting_down
    }

    /// What the tasks may reach outside their sandbox.
    pub(crate) fn grants(&self) -> &Grants {
        &self.shared.grants
    }

    /// Where the tasks' output goes.
    pub(crate) fn output_sink(&self) -> OutputSink {
        self.shared.output.clone()
    }

    /// The pids of the live worker processes, in slot order.
    pub fn worker_pids(&self) -> Vec<u32> {
        let state = self.shared.lock();
        let pids = state.slots.iter().filter_map(|slot| match slot {
            Slot::Live(conn) => Some(conn.pid),
            _ => None,
        });
        pids.collect()
    }

    /// The manager whose named queues the tasks share: the host side of the WIT `queue`
    /// interface. Queues made here before tasks start are the ones tasks open by name.
    pub fn manager(&self) -> &Manager {
        &self.shared.manager
    }

    /// The component the pool runs.
    pub fn program(&self) -> &Program {
        &self.shared.program
    }

    /// Submits one task and returns at once.
    ///
    /// # Errors
    /// [`PoolError::NotRunning`] after `close` or `terminate`; [`PoolError::Call`] if the call
    /// does not fit the component.
    pub fn apply_async(&self, call: Call) -> Result<AsyncResult, PoolError> {
        self.apply_async_with(call, self.shared.options)
    }

    /// As [`Pool::apply_async`], with this task's own options (limits, retries) instead of the
    /// pool's.
    ///
    /// # Errors
    /// As [`Pool::apply_async`], and [`PoolError::NotMetered`] for fuel on an unmetered program.
    pub fn apply_async_with(&self, call: Call, options: TaskOptions) -> Result<AsyncResult, PoolError> {
        let mut results = self.shared.submit(vec![call], 1, options, None)?;
        Ok(results.remove(0))
    }

    /// Waits while `max` or more tasks are unfinished, until half of them are done (or the pool
    /// stops running): backpressure for a submitter that would otherwise queue tasks without
    /// bound, as a driver flooding `apply-async` would.
    ///
    /// Tasks may also wait for the submitter (on a queue it fills later): if no task finishes
    /// for [`STALLED`], it goes on, and does not wait again until a task has finished, so it
    /// cannot deadlock with its own tasks.
    pub(crate) fn wait_for_room(&self, max: usize) {
        let mut state = self.shared.lock();
        if state.unfinished < max || state.stalled_at == Some(state.settled) {
            return;
        }
        state.room_waiters += 1;
        state.room_at = max / 2;
        while state.unfinished > max / 2 && state.phase == Phase::Running {
            let settled = state.settled;
            let (waited, timeout) = self
                .shared
                .changed
                .wait_timeout(state, STALLED)
                .unwrap_or_else(PoisonError::into_inner);
            state = waited;
            if timeout.timed_out() && state.settled == settled {
                tracing::warn!(
                    "no task finished in {STALLED:?} with {} waiting; submitting more anyway",
                    state.unfinished
                );
                state.stalled_at = Some(settled);
                break;
            }
        }
        state.room_waiters -= 1;
    }

    /// Runs one task and waits for its result.
    ///
    /// # Errors
    /// As [`Pool::apply_async`].
    pub fn apply(&self, call: Call) -> Result<TaskResult, PoolError> {
        Ok(self.apply_async(call)?.get())
    }

    /// Calls `function` once per input, each input its single argument, and returns the results
    /// in input order. Inputs are sent to workers in chunks, as Python's `map` does: about four
    /// chunks per worker.
    ///
    /// # Errors
    /// As [`Pool::apply_async`]; nothing is submitted if any call does not fit.
    pub fn map(
        &self,
        function: &str,
        inputs: impl IntoIterator<Item = Value>,
    ) -> Result<Vec<TaskResult>, PoolError> {
        let calls: Vec<Call> = inputs
            .into_iter()
            .map(|input| Call::new(function, [input]))
            .collect();
        self.map_calls(calls, None)
    }

    /// As [`Pool::map`], with `chunksize` inputs sent to a worker at a time (at least 1).
    ///
    /// Larger chunks cost fewer messages; smaller ones share the work out more evenly.
    ///
    /// # Errors
    /// As [`Pool::map`].
    pub fn map_chunked(
        &self,
        function: &str,
        inputs: impl IntoIterator<Item = Value>,
        chunksize: usize,
    ) -> Result<Vec<TaskResult>, PoolError> {
        let calls = inputs
            .into_iter()
            .map(|input| Call::new(function, [input]))
            .collect();
        self.map_calls(calls, Some(chunksize))
    }

    /// Calls `function` once per argument list, results in input order (Python's `starmap`).
    ///
    /// # Errors
    /// As [`Pool::map`].
    pub fn starmap(
        &self,
        function: &str,
        args: impl IntoIterator<Item = Vec<Value>>,
    ) -> Result<Vec<TaskResult>, PoolError> {
        let calls: Vec<Call> = args.into_iter().map(|args| Call::new(function, args)).collect();
        self.map_calls(calls, None)
    }

    /// Runs `calls` in chunks of `chunksize` (at least 1), or, without one, in about four chunks
    /// per worker, as Python's `map` does.
    fn map_calls(&self, calls: Vec<Call>, chunksize: Option<usize>) -> Result<Vec<TaskResult>, PoolError> {
        let chunksize = chunksize
            .unwrap_or_else(|| calls.len().div_ceil(self.workers * 4))
            .max(1);
        let results = self.shared.submit(calls, chunksize, self.shared.options, None)?;
        Ok(results.iter().map(AsyncResult::get).collect())
    }

    /// Calls `function` once per input and yields the results in input order, each as soon as it
    /// and those before it are done.
    ///
    /// # Errors
    /// As [`Pool::map`].
    pub fn imap(&self, function: &str, inputs: impl IntoIterator<Item = Value>) -> Result<Imap, PoolError> {
        let calls = inputs
            .into_iter()
            .map(|input| Call::new(function, [input]))
            .collect();
        let results = self.shared.submit(calls, 1, self.shared.options, None)?;
        Ok(Imap(results.into_iter()))
    }

    /// Calls `function` once per input and yields `(input index, result)` in the order the tasks
    /// finish.
    ///
    /// # Errors
    /// As [`Pool::map`].
    pub fn imap_unordered(
        &self,
        function: &str,
        inputs: impl IntoIterator<Item = Value>,
    ) -> Result<ImapUnordered, PoolError> {
        let calls: Vec<Call> = inputs
            .into_iter()
            .map(|input| Call::new(function, [input]))
            .collect();
        Ok(ImapUnordered(self.batch(calls)?))
    }

    /// Submits each call as its own task and returns their handles in submission order, with
    /// the order they finish in: the building block of a runner that reports each task as it
    /// ends (as `poolhost run` does for progress, `--group` and `--halt`).
    ///
    /// # Errors
    /// As [`Pool::map`].
    pub fn batch(&self, calls: impl IntoIterator<Item = Call>) -> Result<Batch, PoolError> {
        let (tx, rx) = mpsc::channel();
        let results = self
            .shared
            .submit(calls.into_iter().collect(), 1, self.shared.options, Some(tx))?;
        Ok(Batch {
            shared: self.shared.clone(),
            remaining: results.len(),
            results,
            finished: rx,
        })
    }

    /// Takes every task that has not started off the queue; each fails with
    /// [`TaskError::Cancelled`]. Running tasks finish, but are not retried, and no task can be
    /// submitted after this (as after [`Pool::close`]). Returns how many tasks were taken off the
    /// queue.
    ///
    /// A worker running short tasks may hold a few more, sent ahead or in its current batch
    /// (about a millisecond of work). Those sent ahead are asked back and cancelled as they
    /// return, unless the worker started them first; the rest of its current batch runs. For a
    /// stop after which no task starts, use [`Builder::cancel_after_failures`], which keeps
    /// every task in the pool until a worker is free for it.
    ///
    /// With [`Pool::join`] after it, this is `concurrent.futures`'
    /// `shutdown(cancel_futures=True)`: a stop that lets running work end cleanly.
    pub fn cancel_pending(&self) -> usize {
        let mut state = self.shared.lock();
        let count = state.cancel_pending();
        let mut sends = Vec::new();
        state.recall(&mut sends);
        self.shared.changed.notify_all();
        drop(state);
        Sends(sends).send();
        count
    }

    /// Stops accepting tasks; those already submitted still run. Then [`Pool::join`] waits for
    /// them.
    pub fn close(&self) {
        let mut state = self.shared.lock();
        if state.phase == Phase::Running {
            state.phase = Phase::Closed;
        }
    }

    /// Stops at once: pending tasks fail with [`TaskError::Terminated`], running tasks are killed
    /// with their worker processes and fail the same way. Returns when every worker is reaped.
    pub fn terminate(&self) {
        let mut state = self.shared.lock();
        if state.phase != Phase::Terminated {
            state.phase = Phase::Terminated;
            for task in mem::take(&mut state.pending).into_iter().flatten() {
                state.fail(task, None, TaskError::Terminated);
            }
            let mut blocked = Vec::new();
            for slot in &state.slots {
                if let Slot::Live(conn) = slot {
                    conn.kill();
                    blocked.extend(conn.blocked);
                }
            }
            self.shared.changed.notify_all();
            drop(state);
            // A supervisor may be holding back its worker's one-way put: let it go.
            for waiter in blocked {
                self.shared.manager.cancel(waiter);
            }
        } else {
            drop(state);
        }
        self.shared.join_supervisors();
    }

    /// Waits until every task has finished and every worker process has exited.
    ///
    /// # Errors
    /// [`PoolError::StillRunning`] if neither [`Pool::close`] nor [`Pool::terminate`] was called
    /// first, as in Python.
    pub fn join(&self) -> Result<(), PoolError> {
        let mut state = self.shared.lock();
        if state.phase == Phase::Running {
            return Err(PoolError::StillRunning);
        }
        while state.unfinished > 0 {
            state = self
                .shared
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if !state.shutting_down {
            state.shutting_down = true;
            // The timekeeper and any supervisor waiting to start a replacement look again.
            self.shared.changed.notify_all();
            for slot in &state.slots {
                if let Slot::Live(conn) = slot {
                    conn.to_worker
                        .send(ipc::encode(&ToWorker::Shutdown).expect("a shutdown frame is tiny"));
                }
            }
        }
        drop(state);
        self.shared.join_supervisors();
        Ok(())
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// The result of a task submitted with [`Pool::apply_async`].
pub struct AsyncResult {
    id: TaskId,
    cell: Arc<ResultCell>,
}

impl AsyncResult {
    /// The task's submission sequence number.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// Waits for the task to finish and returns its result.
    ///
    /// # Panics
    /// If its report was taken with [`Batch::take_report`].
    pub fn get(&self) -> TaskResult {
        self.cell
            .wait(None, |report| report.result.clone())
            .expect("an untimed wait returns a report, unless it was taken")
    }

    /// Waits at most `timeout` for the result; `None` if the task has not finished by then.
    pub fn get_timeout(&self, timeout: Duration) -> Option<TaskResult> {
        self.cell.wait(Some(timeout), |report| report.result.clone())
    }

    /// Waits for the task to finish.
    pub fn wait(&self) {
        self.cell.wait(None, |_| ());
    }

    /// Waits at most `timeout`; returns whether the task has finished.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.cell.wait(Some(timeout), |_| ()).is_some()
    }

    /// Whether the task has finished.
    pub fn ready(&self) -> bool {
        let state = self.cell.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.report.is_some() || state.taken
    }

    /// Whether the task finished with a result: `None` while it has not finished (where Python
    /// raises `ValueError`).
    pub fn successful(&self) -> Option<bool> {
        self.cell.peek(|report| report.result.is_ok())
    }

    /// Everything known about the finished task (worker pid, start, duration), or `None` while
    /// it has not finished.
    pub fn report(&self) -> Option<TaskReport> {
        self.cell.peek(TaskReport::clone)
    }

    /// Waits for the task to finish and returns everything known about it.
    ///
    /// # Panics
    /// If its report was taken with [`Batch::take_report`].
    pub fn wait_report(&self) -> TaskReport {
        self.cell
            .wait(None, TaskReport::clone)
            .expect("an untimed wait returns a report, unless it was taken")
    }
}

/// The iterator [`Pool::imap`] returns.
pub struct Imap(std::vec::IntoIter<AsyncResult>);

impl Iterator for Imap {
    type Item = TaskResult;

    fn next(&mut self) -> Option<TaskResult> {
        self.0.next().map(|result| result.get())
    }
}

/// The iterator [`Pool::imap_unordered`] returns.
pub struct ImapUnordered(Batch);

impl Iterator for ImapUnordered {
    type Item = (usize, TaskResult);

    fn next(&mut self) -> Option<(usize, TaskResult)> {
        let index = self.0.next_finished()?;
        let report = self.0.take_report(index).expect("a finished task has its report");
        Some((index, report.result))
    }
}

/// Tasks submitted together with [`Pool::batch`].
pub struct Batch {
    shared: Arc<Shared>,
    results: Vec<AsyncResult>,
    remaining: usize,
    finished: mpsc::Receiver<usize>,
}

impl Batch {
    /// The tasks' handles, in submission order.
    pub fn results(&self) -> &[AsyncResult] {
        &self.results
    }

    /// How many tasks have not been returned by [`Batch::next_finished`] yet.
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    /// Waits for the next task to finish and returns its index in [`Batch::results`]; `None`
    /// once every task has been returned. Each task is returned exactly once.
    pub fn next_finished(&mut self) -> Option<usize> {
        if self.remaining == 0 {
            return None;
        }
        // Every task ends with a report (a result, a failure, `Terminated` or `Cancelled`), and
        // each sends its index exactly once, so this cannot wait for a task that never finishes.
        let index = self.finished.recv().ok()?;
        self.remaining -= 1;
        Some(index)
    }

    /// Takes the report of finished task `index` out of the batch, for a runner that reports
    /// each task once and then lets it go: a large result is not held for the whole run.
    /// `None` if the task has not finished or its report was taken; its handle in
    /// [`Batch::results`] is then ready, but has no report or result (`get` panics).
    pub fn take_report(&mut self, index: usize) -> Option<TaskReport> {
        let cell = &self.results.get(index)?.cell;
        let mut state = cell.state.lock().unwrap_or_else(PoisonError::into_inner);
        let report = state.report.take()?;
        state.taken = true;
        let weight = mem::take(&mut state.weight);
        drop(state);
        if weight > 0 {
            self.shared.release(weight);
        }
        Some(report)
    }

    /// As [`Batch::next_finished`], waiting at most `timeout`: `None` also when it runs out.
    pub fn next_finished_timeout(&mut self, timeout: Duration) -> Option<usize> {
        if self.remaining == 0 {
            return None;
        }
        let index = self.finished.recv_timeout(timeout).ok()?;
        self.remaining -= 1;
        Some(index)
    }
}

impl Drop for Batch {
    /// The reports nobody took no longer hold back the pool's tasks.
    fn drop(&mut self) {
        let mut weight = 0;
        for result in &self.results {
            let mut state = result.cell.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.released = true;
            weight += mem::take(&mut state.weight);
        }
        if weight > 0 {
            self.shared.release(weight);
        }
    }
}

/// Where a task's report is left for whoever waits on it.
struct ResultCell {
    index: usize,
    state: Mutex<CellState>,
    done: Condvar,
    notify: Option<mpsc::Sender<usize>>,
}

#[derive(Default)]
struct CellState {
    report: Option<TaskReport>,
    /// Threads waiting for the report: without any, completing it wakes no one (a wake-up is a
    /// system call even with no one to wake).
    waiters: usize,
    /// The report was taken ([`Batch::take_report`]).
    taken: bool,
    /// What the report counts against [`Builder::hold_results_under`] until taken.
    weight: usize,
    /// Its batch was dropped: nobody will take the report, so it counts for nothing.
    released: bool,
}

impl ResultCell {
    /// Leaves `report`, which counts `weight` against the pool's budget of held results until
    /// it is taken (nothing if its batch is gone); returns what it counts.
    fn complete(&self, weight: usize, report: TaskReport) -> usize {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let weight = if state.released { 0 } else { weight };
        state.report = Some(report);
        state.weight = weight;
        if state.waiters > 0 {
            self.done.notify_all();
        }
        drop(state);
        if let Some(notify) = &self.notify {
            let _ = notify.send(self.index);
        }
        weight
    }

    /// `read` of the report, if the task has finished.
    fn peek<R>(&self, read: impl FnOnce(&TaskReport) -> R) -> Option<R> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .report
            .as_ref()
            .map(read)
    }

    /// `read` of the report once the task has finished, waiting at most `timeout` for it.
    fn wait<R>(&self, timeout: Option<Duration>, read: impl FnOnce(&TaskReport) -> R) -> Option<R> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.report.is_none() {
            state.waiters += 1;
            state = match timeout {
                None => self
                    .done
                    .wait_while(state, |s| s.report.is_none() && !s.taken)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(timeout) => {
                    self.done
                        .wait_timeout_while(state, timeout, |s| s.report.is_none() && !s.taken)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
            state.waiters -= 1;
        }
        state.report.as_ref().map(read)
    }
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    program: Program,
    worker_program: PathBuf,
    output: OutputSink,
    manager: Manager,
    /// The options of tasks submitted without their own.
    options: TaskOptions,
    grants: Grants,
    host_pid: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Running,
    Closed,
    Terminated,
}

struct State {
    phase: Phase,
    /// Batches waiting for a worker, oldest first; a batch is one task or one `map` chunk.
    pending: VecDeque<Vec<Task>>,
    slots: Vec<Slot>,
    /// Slots whose worker waits for work, longest-waiting first.
    idle: VecDeque<usize>,
    /// Tasks submitted and not yet finished.
    unfinished: usize,
    next_id: TaskId,
    supervisors: Vec<JoinHandle<()>>,
    /// `join` has asked the workers to exit.
    shutting_down: bool,
    /// `cancel_pending` was called: failed tasks are not retried.
    cancelled: bool,
    /// Tasks finished with an error.
    failures: usize,
    /// Cancel what is pending at this many failures ([`Builder::cancel_after_failures`]).
    cancel_after: Option<usize>,
    /// When the timekeeper ([`Shared::keep_time`]) next looks, if it sleeps until a time.
    next_look: Option<Instant>,
    /// A task started whose deadline comes before `next_look`: the timekeeper must be woken.
    wake_timekeeper: bool,
    /// Threads waiting in [`Pool::wait_for_room`], and the count of unfinished tasks that lets
    /// them go on.
    room_waiters: usize,
    room_at: usize,
    /// The weight of the finished results of batch tasks not yet taken, and the most there may
    /// be before no task starts ([`Builder::hold_results_under`]).
    held: usize,
    held_budget: Option<usize>,
    /// Tasks finished so far, and how many had when [`Pool::wait_for_room`] last gave up
    /// waiting for one.
    settled: u64,
    stalled_at: Option<u64>,
}

/// A worker slot: the process in it, or why there is none.
enum Slot {
    Live(Conn),
    /// A process is being started for this slot.
    Starting,
    /// No process could be started; the slot stays empty.
    Gone,
}

struct Task {
    id: TaskId,
    call: Call,
    options: TaskOptions,
    /// How many times it has been sent to a worker.
    attempts: u32,
    cell: Arc<ResultCell>,
    /// When the task was sent to a worker.
    sent: Option<(SystemTime, Instant)>,
}

impl Task {
    /// Undoes the sending of a task that came back unstarted: it was not run.
    fn unsend(&mut self) {
        self.attempts -= 1;
        self.sent = None;
    }
}

/// The host's end of a live worker.
struct Conn {
    pid: u32,
    to_worker: Arc<Sender>,
    child: Arc<Mutex<Process>>,
    /// The tasks sent to the worker and not finished, the one it is on first: its current batch,
    /// then the batch sent ahead of time, if any.
    running: VecDeque<Task>,
    /// How many tasks at the back of `running` are the batch sent ahead (0: none). There is at
    /// most one, sent when the current batch should end within [`SEND_AHEAD_BELOW`].
    ahead: usize,
    /// [`ToWorker::Return`] was sent and not yet answered.
    recalling: bool,
    /// How long the worker's last task took, once it has finished one.
    last_duration: Option<Duration>,
    /// The queue operation the worker's task last had parked in the manager (a task makes one
    /// at a time); cancelled if the worker goes, so no item is handed to a task that is gone.
    blocked: Option<WaiterId>,
    /// A one-way put of the running task failed after the task went on: the task fails.
    lost_put: Option<QueueError>,
    /// The worker has finished a task: if it dies now, it is not crashing as it starts.
    finished_a_task: bool,
    /// As [`Worker::in_sink`]: the timekeeper does not blame the worker for a result its
    /// supervisor has not read.
    in_sink: Arc<AtomicBool>,
    /// When the supervisor came back from a sink that held it up: the worker's results wait
    /// unread until then, so its running task's deadline counts from then at the earliest.
    resumed: Option<Instant>,
    /// The host killed the worker because its running task ran long past its timeout (see
    /// [`Shared::keep_time`]). The worker may have finished that task and held its result back;
    /// then the task after it, the one that was stuck, is the one that timed out.
    overdue: bool,
}

/// Writes whole frames to a worker. Frames come from several threads (dispatch, the manager's
/// answers to parked operations, its timer).
///
/// A frame is first queued, then written by whichever thread next flushes: the pool queues its
/// batches while it holds its lock, so a worker gets them in the order the pool decided them even
/// when two threads flush at once, and a write never happens under the pool's lock.
struct Sender {
    /// Frames not yet written, oldest first.
    queued: Mutex<VecDeque<Vec<u8>>>,
    /// Held while writing, so that each frame goes out whole and in order.
    stream: Mutex<UnixStream>,
}

impl Sender {
    fn new(stream: UnixStream) -> Sender {
        Sender {
            queued: Mutex::default(),
            stream: Mutex::new(stream),
        }
    }

    fn queue(&self, frame: Vec<u8>) {
        self.queued
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(frame);
    }

    /// Writes every queued frame.
    fn flush(&self) {
        let mut stream = self.stream.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let next = self
                .queued
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop_front();
            let Some(frame) = next else { break };
            // A worker that cannot be written to has died; its supervisor sees the socket close
            // and fails or re-queues its tasks.
            let _ = stream.write_all(&frame);
        }
    }

    fn send(&self, frame: Vec<u8>) {
        self.queue(frame);
        self.flush();
    }

    fn answer(&self, answer: Result<QueueAnswer, QueueError>) {
        // Items are capped well under the frame limit, so this cannot fail; if it ever did, the
        // worker still gets an answer rather than waiting forever.
        let frame = ipc::encode(&ToWorker::Queue(answer))
            .or_else(|_| ipc::encode(&ToWorker::Queue(Err(QueueError::TooLarge))))
            .expect("an error answer is tiny");
        self.send(frame);
    }
}

impl Conn {
    fn kill(&self) {
        let _ = self.child.lock().unwrap_or_else(PoisonError::into_inner).kill();
    }
}

/// A ready worker, as its supervisor holds it.
struct Worker {
    pid: u32,
    from_worker: UnixStream,
    to_worker: Arc<Sender>,
    child: Arc<Mutex<Process>>,
    /// The results the worker holds back, for when it dies ([`worker::read_journal`]).
    journal: File,
    /// Rung when there is room for the worker's one-way put its supervisor waits on.
    room: Arc<Bell>,
    /// Set while the supervisor hands the worker's output to the sink, which may block (a
    /// paused terminal, a full pipe): no frame of the worker is read meanwhile.
    in_sink: Arc<AtomicBool>,
}

/// Wakes a supervisor that waits for the answer to its worker's parked one-way put while it
/// watches the worker's socket for a hang-up: an eventfd, made the first time it is needed, so
/// that a put that does not wait costs no system call.
#[derive(Default)]
struct Bell {
    fd: std::sync::OnceLock<Option<OwnedFd>>,
    /// A supervisor waits: ringing must write to the eventfd.
    armed: AtomicBool,
}

impl Bell {
    fn fd(&self) -> Option<&OwnedFd> {
        let flags = rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK;
        self.fd
            .get_or_init(|| rustix::event::eventfd(0, flags).ok())
            .as_ref()
    }

    /// Called by the put's reply, after the answer is in place.
    fn ring(&self) {
        if self.armed.load(Ordering::SeqCst)
            && let Some(fd) = self.fd()
        {
            let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
        }
    }

    /// Waits until `answer` is there (`true`) or `socket`'s peer has hung up (`false`).
    fn wait<T>(&self, answer: &Answer<T>, socket: &UnixStream) -> bool {
        use rustix::event::{PollFd, PollFlags};
        let Some(fd) = self.fd() else {
            // No eventfd to be woken by (out of descriptors): wait for the answer alone.
            return true;
        };
        // Armed before looking at the answer: a reply that comes after the look rings.
        self.armed.store(true, Ordering::SeqCst);
        let answered = loop {
            if answer.is_ready() {
                break true;
            }
            let mut fds = [
                PollFd::new(fd, PollFlags::IN),
                PollFd::new(socket, PollFlags::RDHUP),
            ];
            if rustix::event::poll(&mut fds, None).is_err() {
                continue;
            }
            let hung_up = PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR;
            if fds[1].revents().intersects(hung_up) {
                break answer.is_ready();
            }
            if fds[0].revents().contains(PollFlags::IN) {
                let _ = rustix::io::read(fd, &mut [0u8; 8]);
            }
        };
        self.armed.store(false, Ordering::SeqCst);
        answered
    }
}

impl Drop for Worker {
    /// Every path that drops a worker (its supervisor ending, a pool that failed to start) kills
    /// and reaps its process; after a first reap this is a no-op.
    fn drop(&mut self) {
        reap(&mut self.child.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// A worker process started (and then sent its `Init`), not yet known to be ready. Dropping it
/// kills and reaps the process.
struct Launched {
    socket: UnixStream,
    child: Option<Process>,
    journal: File,
}

/// Why a worker process did not become ready.
#[derive(Debug, thiserror::Error)]
enum StartError {
    /// It cannot: the program does not run, or the component does not load. Another process
    /// would fail the same way.
    #[error("{0}")]
    Refused(String),
    /// It died, or could not be reached, before it was ready: killed from outside, say, or out of
    /// a resource for a moment. Another process may start.
    #[error("{0}")]
    Died(String),
}

impl Launched {
    fn ready(mut self) -> Result<Worker, StartError> {
        let answer = self
            .socket
            .set_read_timeout(Some(START_TIMEOUT))
            .map_err(IpcError::Io)
            .and_then(|()| ipc::read::<FromWorker>(&self.socket));
        let died = |e: io::Error| StartError::Died(e.to_string());
        match answer {
            Ok(FromWorker::Ready { pid }) => {
                self.socket.set_read_timeout(None).map_err(died)?;
                let to_worker = self.socket.try_clone().map_err(died)?;
                Ok(Worker {
                    pid,
                    from_worker: self.socket.try_clone().map_err(died)?,
                    to_worker: Arc::new(Sender::new(to_worker)),
                    child: Arc::new(Mutex::new(
                        self.child.take().expect("a launched worker has its child"),
                    )),
                    journal: self.journal.try_clone().map_err(died)?,
                    room: Arc::default(),
                    in_sink: Arc::default(),
                })
            }
            Ok(FromWorker::Failed { message }) => Err(StartError::Refused(message)),
            Ok(other) => Err(StartError::Refused(format!(
                "the worker sent {other:?} before saying it was ready"
            ))),
            Err(e) => {
                let stuck = matches!(&e, IpcError::Io(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut));
                Err(self.ended(&format!("the worker ended before it was ready ({e})"), stuck))
            }
        }
    }

    /// Reaps a worker that ended (or, if `stuck`, did not answer) before it was ready, and says
    /// whether another might start: one killed by a signal from outside might; one that exited
    /// on its own, or never answered, would do the same again.
    fn ended(&mut self, what: &str, stuck: bool) -> StartError {
        let status = self.child.as_mut().and_then(reap);
        let message = format!(
            "{what}: {}",
            status.map_or_else(|| "status unknown".into(), describe)
        );
        match status.and_then(|status| status.signal()) {
            Some(_) if !stuck => StartError::Died(message),
            _ => StartError::Refused(message),
        }
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            reap(child);
        }
    }
}

/// Starts `worker_program worker`: a process that waits for its `Init` on the socket it gets as
/// stdin, with the journal of the results it holds back as stdout.
fn spawn(worker_program: &Path) -> Result<Launched, StartError> {
    let (socket, theirs, journal) = worker_ends()?;
    let theirs_journal = journal
        .try_clone()
        .map_err(|e| StartError::Died(format!("cannot create a worker's journal: {e}")))?;
    let child = Command::new(worker_program)
        .arg("worker")
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::from(theirs_journal))
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            let message = format!("cannot run `{}`: {e}", worker_program.display());
            // Out of processes or memory for a moment: another try may work.
            match e.raw_os_error() {
                Some(libc::EAGAIN | libc::ENOMEM) => StartError::Died(message),
                _ => StartError::Refused(message),
            }
        })?;
    Ok(Launched {
        socket,
        child: Some(Process::Spawned(child)),
        journal,
    })
}

/// What a new worker is connected by: the host's end of its socket, the worker's end, and its
/// journal.
fn worker_ends() -> Result<(UnixStream, UnixStream, File), StartError> {
    let (socket, theirs) =
        UnixStream::pair().map_err(|e| StartError::Died(format!("cannot create a socket: {e}")))?;
    let journal = File::from(
        rustix::fs::memfd_create(c"poolhost-journal", rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(|e| StartError::Died(format!("cannot create a worker's journal: {e}")))?,
    );
    Ok((socket, theirs, journal))
}

/// Whether this process runs a single thread, so that a fork of it is a whole copy: no lock in
/// it can be held by a thread the child lacks.
fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|tasks| tasks.count() == 1)
}

/// As [`spawn`], but the worker is a fork of this process that runs [`worker::run_forked`].
/// Only for a process with a single thread ([`single_threaded`]).
#[allow(unsafe_code)]
fn fork() -> Result<Launched, StartError> {
    let (socket, theirs, journal) = worker_ends()?;
    // SAFETY: the caller checked that this process has a single thread, the one forking, so the
    // child is a consistent copy of it: no lock it inherits can be held by a thread it lacks.
    // The child never returns here: `run_forked` serves the pool and ends the process with
    // `_exit`, so nothing the parent owns (its temporary directories, its buffered output) is
    // cleaned up or written a second time by the child.
    match unsafe { libc::fork() } {
        -1 => Err(StartError::Refused(format!(
            "cannot fork a worker: {}",
            io::Error::last_os_error()
        ))),
        0 => worker::run_forked(theirs.as_fd(), journal.as_fd()),
        pid => Ok(Launched {
            socket,
            child: Some(Process::Forked {
                pid: rustix::process::Pid::from_raw(pid).expect("fork returns a positive pid"),
                status: None,
            }),
            journal,
        }),
    }
}

/// A worker process: started from the worker program, or forked from this one.
enum Process {
    Spawned(Child),
    Forked {
        pid: rustix::process::Pid,
        /// Once reaped: the pid may belong to another process from then on.
        status: Option<ExitStatus>,
    },
}

impl Process {
    /// Kills the process, if it has not been reaped.
    fn kill(&mut self) -> io::Result<()> {
        match self {
            Process::Spawned(child) => child.kill(),
            Process::Forked { pid, status: None } => {
                rustix::process::kill_process(*pid, rustix::process::Signal::KILL).map_err(io::Error::from)
            }
            Process::Forked { .. } => Ok(()),
        }
    }

    /// Waits for the process to end; how it ended (the same again after the first time).
    fn wait(&mut self) -> io::Result<ExitStatus> {
        match self {
            Process::Spawned(child) => child.wait(),
            Process::Forked {
                status: Some(status), ..
            } => Ok(*status),
            Process::Forked { pid, status } => loop {
                match rustix::process::waitpid(Some(*pid), rustix::process::WaitOptions::empty()) {
                    Ok(Some((_, raw))) => {
                        let ended = ExitStatus::from_raw(raw.as_raw());
                        *status = Some(ended);
                        return Ok(ended);
                    }
                    Ok(None) | Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            },
        }
    }
}

/// The number of workers for a builder's `workers`: 0 means one per CPU (at most
/// [`MAX_WORKERS`]).
fn worker_count(workers: usize) -> usize {
    match workers {
        0 => thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WORKERS)),
        n => n,
    }
}

/// About how many bytes a finished task's result holds ([`Builder::hold_results_under`]).
fn report_weight(result: &TaskResult) -> usize {
    match result {
        Ok(value) => value.as_ref().map_or(0, Value::weight),
        // Messages and backtraces: small, but not nothing.
        Err(_) => 256,
    }
}

/// When the host gives up on a running task and kills its worker: [`HOST_GRACE`] past the task's
/// timeout, counted from when the host sent it (or learnt that it started); `None` for a task
/// without a timeout (or one too long for the clock).
fn host_deadline(task: &Task) -> Option<Instant> {
    let (_, started) = task.sent?;
    started
        .checked_add(task.options.timeout?)?
        .checked_add(HOST_GRACE)
}

/// Kills (if still running) and waits for a worker; how it ended, if that can be known.
fn reap(child: &mut Process) -> Option<ExitStatus> {
    let _ = child.kill();
    child.wait().ok()
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => {
            let name = match signal {
                1 => " (SIGHUP)",
                2 => " (SIGINT)",
                4 => " (SIGILL)",
                6 => " (SIGABRT)",
                7 => " (SIGBUS)",
                8 => " (SIGFPE)",
                9 => " (SIGKILL)",
                11 => " (SIGSEGV)",
                13 => " (SIGPIPE)",
                15 => " (SIGTERM)",
                _ => "",
            };
            format!("killed by signal {signal}{name}")
        }
        (None, None) => status.to_string(),
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes `join` if no task is left unfinished, and the timekeeper if a task started whose
    /// deadline comes before it meant to look. Only `join` waits for tasks to finish, and only for
    /// the last: waking it for every task would cost it two context switches per task.
    fn wake_if_needed(&self, state: &mut State) {
        let room = state.room_waiters > 0 && state.unfinished <= state.room_at;
        if state.unfinished == 0 || room || mem::take(&mut state.wake_timekeeper) {
            self.changed.notify_all();
        }
    }

    /// The pool's timekeeper thread: kills the worker of a task that runs [`HOST_GRACE`] past its
    /// timeout, which its own watchdog would have ended by then unless the worker is frozen
    /// (SIGSTOP) or stuck where the watchdog cannot act; and once `join` has asked the workers
    /// to exit, kills those that have not within [`SHUTDOWN_GRACE`]. Sleeps until the earliest
    /// such deadline; without one, until woken.
    fn keep_time(&self) {
        let mut shutdown_by = None;
        let mut state = self.lock();
        loop {
            let now = Instant::now();
            let mut next = None;
            let live = state.slots.iter().any(|slot| matches!(slot, Slot::Live(_)));
            if state.phase == Phase::Terminated || (state.shutting_down && !live) {
                return;
            }
            if state.shutting_down {
                let by = *shutdown_by.get_or_insert(now + SHUTDOWN_GRACE);
                if now >= by {
                    tracing::warn!("workers did not exit within {SHUTDOWN_GRACE:?} of `join`; killing them");
                    state.slots.iter().for_each(|slot| {
                        if let Slot::Live(conn) = slot {
                            conn.kill();
                        }
                    });
                    return;
                }
                next = Some(by);
            }
            for slot in &mut state.slots {
                let Slot::Live(conn) = slot else { continue };
                let Some(task) = conn.running.front() else {
                    continue;
                };
                let Some(deadline) = host_deadline(task) else {
                    continue;
                };
                let task = task.id;
                // Results its supervisor has not read (held up in the sink) are not the worker's
                // fault: the deadline counts from when it reads again.
                let deadline = match conn.resumed {
                    Some(resumed) => deadline.max(resumed + HOST_GRACE),
                    None => deadline,
                };
                let deadline = match conn.in_sink.load(Ordering::SeqCst) {
                    true => deadline.max(now + HOST_GRACE),
                    false => deadline,
                };
                if now < deadline {
                    next = Some(next.map_or(deadline, |next: Instant| next.min(deadline)));
                } else if !conn.overdue {
                    tracing::warn!(
                        pid = conn.pid,
                        "task {task} is {HOST_GRACE:?} past its timeout and its worker does not answer; killing it"
                    );
                    conn.overdue = true;
                    conn.kill();
                }
            }
            state.next_look = next;
            state = match next {
                None => self.changed.wait(state).unwrap_or_else(PoisonError::into_inner),
                Some(next) => {
                    let waited = self.changed.wait_timeout(state, next - now);
                    waited.unwrap_or_else(PoisonError::into_inner).0
                }
            };
        }
    }

    /// Starts a worker process and sends it what to load.
    fn launch(&self) -> Result<Launched, StartError> {
        self.init(spawn(&self.worker_program)?)
    }

    /// Sends a started worker process what to load.
    fn init(&self, mut launched: Launched) -> Result<Launched, StartError> {
        let init = ToWorker::Init(Init {
            artifact: self.program.artifact().to_owned(),
            host_pid: self.host_pid,
            max_item_bytes: self.manager.limits().max_item_bytes,
            metered: self.program.metered(),
            grants: self.grants.clone(),
            argv0: self.program.name().to_owned(),
        });
        match ipc::write(&launched.socket, &init) {
            Ok(()) => Ok(launched),
            Err(e) => Err(launched.ended(&format!("cannot reach the new worker ({e})"), false)),
        }
    }

    /// Puts a ready worker into its slot and gives it work.
    fn install(&self, index: usize, worker: &Worker) {
        let mut state = self.lock();
        let conn = Conn {
            pid: worker.pid,
            to_worker: worker.to_worker.clone(),
            child: worker.child.clone(),
            running: VecDeque::new(),
            ahead: 0,
            recalling: false,
            last_duration: None,
            blocked: None,
            lost_put: None,
            finished_a_task: false,
            in_sink: worker.in_sink.clone(),
            resumed: None,
            overdue: false,
        };
        if state.phase == Phase::Terminated || state.shutting_down {
            conn.kill();
        }
        tracing::info!(pid = worker.pid, slot = index, "worker ready");
        state.slots[index] = Slot::Live(conn);
        state.idle.push_back(index);
        let sends = state.dispatch();
        // Dispatch fails a task too large to send: that may have been the last one.
        self.wake_if_needed(&mut state);
        drop(state);
        sends.send();
    }

    /// A slot's supervisor: serves its worker (starting one first if it has none) until it
    /// exits, then starts a replacement while the pool still has work for it.
    fn supervise(self: Arc<Self>, index: usize, mut worker: Option<Worker>) {
        // Workers of this slot that died young in a row: each makes the next start wait longer.
        let mut early_deaths = u32::from(worker.is_none());
        loop {
            let current = match worker.take() {
                Some(current) => current,
                None => match self.replace(index, &mut early_deaths) {
                    Some(replacement) => replacement,
                    None => return,
                },
            };
            let started = Instant::now();
            if let Err(e) = self.serve(index, &current) {
                tracing::warn!("worker {} broke the protocol ({e}); killing it", current.pid);
            }
            let status = reap(&mut current.child.lock().unwrap_or_else(PoisonError::into_inner));
            let Some(finished_a_task) = self.worker_exited(index, current.pid, status, &current.journal)
            else {
                return;
            };
            // A worker that finished a task was working, not crashing, whenever it died: killed
            // from outside, say, which must not slow its replacement down.
            early_deaths = match finished_a_task || started.elapsed() >= EARLY_DEATH {
                true => 0,
                false => early_deaths + 1,
            };
        }
    }

    /// Starts a replacement worker for slot `index` and installs it, after the back-off its
    /// `early_deaths` call for. A replacement that dies before it is ready is replaced in turn,
    /// for up to [`GIVE_UP_STARTING`]; `None` if the slot is given up, or no longer needed.
    fn replace(&self, index: usize, early_deaths: &mut u32) -> Option<Worker> {
        let mut first_failure = None;
        loop {
            if !self.back_off(*early_deaths) {
                self.lock().slots[index] = Slot::Gone;
                return None;
            }
            match self.launch().and_then(Launched::ready) {
                Ok(replacement) => {
                    self.install(index, &replacement);
                    return Some(replacement);
                }
                Err(StartError::Died(message))
                    if first_failure.get_or_insert_with(Instant::now).elapsed() < GIVE_UP_STARTING =>
                {
                    tracing::warn!("a replacement worker died as it started ({message}); starting another");
                    *early_deaths += 1;
                }
                Err(error) => {
                    self.slot_gone(index, &error.to_string());
                    return None;
                }
            }
        }
    }

    /// Waits before a replacement worker starts, if workers have been dying young: 10 ms after
    /// the second early death in a row, doubling up to 1 s, so a task that kills every worker it
    /// lands on cannot make the host spin starting processes. Returns `false` if the pool is
    /// terminated or shutting down meanwhile.
    fn back_off(&self, early_deaths: u32) -> bool {
        let delay = match early_deaths {
            0 | 1 => Duration::ZERO,
            n => (Duration::from_millis(10) * 2u32.saturating_pow(n - 2)).min(MAX_RESPAWN_DELAY),
        };
        if !delay.is_zero() {
            tracing::warn!("{early_deaths} workers in a row died young; the next starts in {delay:?}");
        }
        let state = self.lock();
        let (state, _) = self
            .changed
            .wait_timeout_while(state, delay, |s| s.phase != Phase::Terminated && !s.shutting_down)
            .unwrap_or_else(PoisonError::into_inner);
        state.phase != Phase::Terminated && !state.shutting_down
    }

    /// Reads what the worker sends until it closes its socket (`Ok`) or sends something invalid.
    fn serve(&self, index: usize, worker: &Worker) -> Result<(), IpcError> {
        let mut from_worker = io::BufReader::new(&worker.from_worker);
        loop {
            match ipc::read::<FromWorker>(&mut from_worker) {
                Ok(FromWorker::Output { task, stream, bytes }) => {
                    // A sink that panics must not take the supervisor with it: its worker's
                    // tasks would never finish and `join` would never return.
                    let write = panic::AssertUnwindSafe(|| (self.output)(task, stream, &bytes));
                    worker.in_sink.store(true, Ordering::SeqCst);
                    let clock = Instant::now();
                    if panic::catch_unwind(write).is_err() {
                        tracing::warn!("the output sink panicked on task {task}'s output");
                    }
                    worker.in_sink.store(false, Ordering::SeqCst);
                    if clock.elapsed() >= SINK_STALL
                        && let Slot::Live(conn) = &mut self.lock().slots[index]
                    {
                        conn.resumed = Some(Instant::now());
                    }
                }
                Ok(FromWorker::Done(done)) => {
                    if !self.finish(index, worker.pid, done) {
                        return Err(IpcError::Io(io::Error::other(
                            "result for a task it was not running",
                        )));
                    }
                }
                Ok(FromWorker::Queue(request)) => self.queue_request(index, worker, request),
                Ok(FromWorker::Returned { tasks }) => {
                    if !self.returned(index, &tasks) {
                        return Err(IpcError::Io(io::Error::other(
                            "gave back tasks it was not sent ahead",
                        )));
                    }
                }
                Ok(other) => {
                    return Err(IpcError::Io(io::Error::other(format!(
                        "unexpected message {other:?}"
                    ))));
                }
                // A worker that died: cleanly between frames, while writing one, or with
                // unread data in its socket (the kernel then resets the connection).
                Err(IpcError::Closed | IpcError::Truncated { .. }) => return Ok(()),
                Err(IpcError::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Records a finished task and gives the worker its next batch. Returns `false` if the worker
    /// was not running that task.
    fn finish(&self, index: usize, pid: u32, done: ipc::Done) -> bool {
        let mut state = self.lock();
        if !state.record_done(index, pid, done) {
            return false;
        }
        let sends = state.dispatch();
        self.wake_if_needed(&mut state);
        drop(state);
        sends.send();
        true
    }

    /// Takes back the batch sent ahead to a worker, which gave back `tasks` (all of it, unstarted,
    /// or nothing if it had started it). Returns `false` if those are not the batch sent ahead.
    fn returned(&self, index: usize, tasks: &[TaskId]) -> bool {
        let mut state = self.lock();
        let Slot::Live(conn) = &mut state.slots[index] else {
            return false;
        };
        conn.recalling = false;
        if tasks.is_empty() {
            return true;
        }
        let from = conn.running.len() - conn.ahead;
        let sent = conn.running.range(from..).map(|task| task.id);
        if conn.ahead == 0 || conn.ahead != tasks.len() || !sent.eq(tasks.iter().copied()) {
            return false;
        }
        let mut batch: Vec<Task> = conn.running.split_off(from).into();
        conn.ahead = 0;
        batch.iter_mut().for_each(Task::unsend);
        tracing::debug!(slot = index, "{} task(s) sent ahead came back", batch.len());
        match state.phase {
            Phase::Terminated => batch
                .into_iter()
                .for_each(|task| state.fail(task, None, TaskError::Terminated)),
            _ if state.cancelled => batch
                .into_iter()
                .for_each(|task| state.fail(task, None, TaskError::Cancelled)),
            // They were sent first, so they go first.
            _ => state.pending.push_front(batch),
        }
        let sends = state.dispatch();
        self.wake_if_needed(&mut state);
        drop(state);
        sends.send();
        true
    }

    /// Settles the batch of a worker that has exited. Returns `None` if no replacement is to start,
    /// or whether the worker had finished a task.
    fn worker_exited(
        &self,
        index: usize,
        pid: u32,
        status: Option<ExitStatus>,
        journal: &File,
    ) -> Option<bool> {
        let mut state = self.lock();
        // Results it held back end their tasks as if they had arrived; those that did arrive are
        // no longer its tasks, and are passed over.
        for done in worker::read_journal(journal) {
            state.record_done(index, pid, done);
        }
        state.idle.retain(|&i| i != index);
        let (running, blocked, finished_a_task, overdue) =
            match mem::replace(&mut state.slots[index], Slot::Starting) {
                Slot::Live(conn) => (conn.running, conn.blocked, conn.finished_a_task, conn.overdue),
                _ => (VecDeque::new(), None, false, false),
            };
        if let Some(waiter) = blocked {
            self.manager.cancel(waiter);
        }
        let terminated = state.phase == Phase::Terminated;
        if state.shutting_down || terminated {
            tracing::info!(pid, slot = index, "worker stopped");
        } else {
            let how = status.map_or_else(|| "status unknown".into(), describe);
            match running.front() {
                Some(task) => {
                    tracing::info!(pid, slot = index, "worker {how} while running task {}", task.id)
                }
                None => tracing::info!(pid, slot = index, "worker {how}"),
            }
        }
        let mut running = running.into_iter();
        if let Some(task) = running.next() {
            let error = match (terminated, task.options.timeout) {
                (true, _) => TaskError::Terminated,
                // Its watchdog ended the worker (the task overran its timeout in a host call), or
                // the host did (the worker did not answer long past it: frozen, say).
                (false, Some(timeout))
                    if overdue || status.and_then(|s| s.code()) == Some(EXIT_TIMED_OUT) =>
                {
                    TaskError::Timeout(timeout)
                }
                (false, _) => TaskError::WorkerDied {
                    pid,
                    cause: status.map_or_else(|| "status unknown".into(), describe),
                },
            };
            state.fail(task, Some(pid), error);
        }
        let mut unstarted: Vec<Task> = running.collect();
        unstarted.iter_mut().for_each(Task::unsend);
        if terminated {
            for task in unstarted {
                state.fail(task, None, TaskError::Terminated);
            }
        } else if !unstarted.is_empty() {
            state.pending.push_front(unstarted);
        }
        let respawn = !state.shutting_down
            && match state.phase {
                Phase::Running => true,
                Phase::Closed => !state.pending.is_empty(),
                Phase::Terminated => false,
            };
        if !respawn {
            state.slots[index] = Slot::Gone;
        }
        self.changed.notify_all();
        respawn.then_some(finished_a_task)
    }

    /// A replacement worker could not be started. If no worker is left, the pending tasks fail:
    /// nothing would ever run them.
    fn slot_gone(&self, index: usize, message: &str) {
        tracing::warn!("cannot start a replacement worker: {message}");
        let mut state = self.lock();
        state.slots[index] = Slot::Gone;
        if state.slots.iter().all(|slot| matches!(slot, Slot::Gone)) {
            for task in mem::take(&mut state.pending).into_iter().flatten() {
                state.fail(
                    task,
                    None,
                    TaskError::Failed(format!("no worker left to run the task: {message}")),
                );
            }
        }
        self.changed.notify_all();
    }

    /// Carries out a task's queue operation. Answers go straight to the worker, now or when the
    /// manager answers a parked operation; only a one-way put that must wait holds up this
    /// supervisor, which is how it blocks its worker.
    fn queue_request(&self, index: usize, worker: &Worker, request: QueueRequest) {
        let to_worker = worker.to_worker.clone();
        let parked = match request {
            QueueRequest::Open { name } => {
                to_worker.answer(self.manager.open(&name).map(QueueAnswer::Opened));
                None
            }
            QueueRequest::Len { queue } => {
                to_worker.answer(Ok(QueueAnswer::Len(self.manager.len_of(queue) as u64)));
                None
            }
            QueueRequest::Get { queue, wait } => {
                let reply = Box::new(move |got: Result<Vec<u8>, QueueError>| {
                    to_worker.answer(got.map(QueueAnswer::Item));
                });
                self.manager.get_with(queue, wait, reply)
            }
            QueueRequest::GetMany { queue, max, wait } => {
                let reply = Box::new(move |got: Result<Vec<Vec<u8>>, QueueError>| {
                    to_worker.answer(got.map(QueueAnswer::Items));
                });
                self.manager.get_many_with(queue, max as usize, wait, reply)
            }
            QueueRequest::Put {
                queue,
                item,
                wait,
                ack: true,
            } => {
                let reply = Box::new(move |put: Result<(), (QueueError, Vec<u8>)>| {
                    to_worker.answer(put.map(|()| QueueAnswer::Put).map_err(|(e, _)| e));
                });
                self.manager.put_with(queue, item, wait, reply)
            }
            QueueRequest::Put {
                queue,
                item,
                ack: false,
                ..
            } => {
                let (reply, answer) = oneshot();
                let bell = worker.room.clone();
                let reply = Box::new(move |put| {
                    reply(put);
                    bell.ring();
                });
                if let Some(waiter) = self.manager.put_with(queue, item, Wait::Forever, reply) {
                    self.record_blocked(index, waiter);
                    // No frame is read from the worker until the item is in; but a worker that
                    // dies meanwhile is noticed at once, and its put let go.
                    if !worker.room.wait(&answer, &worker.from_worker) {
                        self.manager.cancel(waiter);
                    }
                }
                if let Err((error, _)) = answer.wait() {
                    // The task went on believing the item was in: it must not end as a success.
                    if let Slot::Live(conn) = &mut self.lock().slots[index] {
                        conn.lost_put = Some(error);
                    }
                }
                None
            }
        };
        if let Some(waiter) = parked {
            self.record_blocked(index, waiter);
        }
    }

    /// Notes the operation a worker's task has parked, so it can be cancelled if the worker goes.
    fn record_blocked(&self, index: usize, waiter: WaiterId) {
        let mut state = self.lock();
        if let Slot::Live(conn) = &mut state.slots[index] {
            conn.blocked = Some(waiter);
        }
        // `terminate` cancels what it finds recorded; one that raced it is cancelled here.
        if state.phase == Phase::Terminated {
            drop(state);
            self.manager.cancel(waiter);
        }
    }

    fn submit(
        &self,
        calls: Vec<Call>,
        chunksize: usize,
        options: TaskOptions,
        notify: Option<mpsc::Sender<usize>>,
    ) -> Result<Vec<AsyncResult>, PoolError> {
        if options.fuel.is_some() && !self.program.metered() {
            return Err(PoolError::NotMetered);
        }
        let calls = calls
            .into_iter()
            .map(|call| self.program.prepare(call))
            .collect::<Result<Vec<_>, _>>()?;
        let mut state = self.lock();
        if state.phase != Phase::Running {
            return Err(PoolError::NotRunning);
        }
        let mut results = Vec::with_capacity(calls.len());
        let mut calls = calls.into_iter().enumerate().peekable();
        while calls.peek().is_some() {
            let batch: Vec<Task> = calls
                .by_ref()
                .take(chunksize)
                .map(|(index, call)| {
                    let id = state.next_id;
                    state.next_id += 1;
                    let cell = Arc::new(ResultCell {
                        index,
                        state: Mutex::default(),
                        done: Condvar::new(),
                        notify: notify.clone(),
                    });
                    results.push(AsyncResult {
                        id,
                        cell: cell.clone(),
                    });
                    Task {
                        id,
                        call,
                        options,
                        attempts: 0,
                        cell,
                        sent: None,
                    }
                })
                .collect();
            state.pending.push_back(batch);
        }
        state.unfinished += results.len();
        let sends = state.dispatch();
        self.wake_if_needed(&mut state);
        drop(state);
        sends.send();
        Ok(results)
    }

    /// Counts a taken report's `weight` off the held results; tasks start again if that brings
    /// them under the budget.
    fn release(&self, weight: usize) {
        let mut state = self.lock();
        state.held -= weight;
        let sends = state.dispatch();
        self.wake_if_needed(&mut state);
        drop(state);
        sends.send();
    }

    /// Starts one of the pool's threads, which `join` and `terminate` wait for.
    fn spawn_thread(&self, name: String, run: impl FnOnce() + Send + 'static) -> Result<(), PoolError> {
        let thread = thread::Builder::new()
            .name(name)
            .spawn(run)
            .map_err(|e| PoolError::Start(format!("cannot start a thread: {e}")))?;
        self.lock().supervisors.push(thread);
        Ok(())
    }

    fn join_supervisors(&self) {
        let supervisors = mem::take(&mut self.lock().supervisors);
        for supervisor in supervisors {
            let _ = supervisor.join();
        }
    }
}

/// What one run of a task came to.
struct Attempt {
    result: TaskResult,
    worker: Option<u32>,
    started: Option<SystemTime>,
    duration: Duration,
    peak_memory: Option<u64>,
    fuel_used: Option<u64>,
}

/// Workers with frames queued, to flush once the pool's lock is released.
struct Sends(Vec<Arc<Sender>>);

impl Sends {
    fn send(self) {
        for to_worker in self.0 {
            to_worker.flush();
        }
    }
}

impl State {
    /// Ends the task the worker in slot `index` is on with `done`, and marks the worker idle if
    /// that was its last. Returns `false` if the worker is not on that task.
    fn record_done(&mut self, index: usize, pid: u32, done: ipc::Done) -> bool {
        let terminated = self.phase == Phase::Terminated;
        let Slot::Live(conn) = &mut self.slots[index] else {
            return false;
        };
        if conn.running.front().is_none_or(|task| task.id != done.task) {
            return false;
        }
        let task = conn.running.pop_front().expect("checked above");
        conn.finished_a_task = true;
        conn.last_duration = Some(Duration::from_nanos(done.duration_nanos));
        if conn.running.len() == conn.ahead {
            // The batch sent ahead, if any, is now the current one.
            conn.ahead = 0;
        }
        let mut deadline = None;
        if let Some(next) = conn.running.front_mut() {
            // It starts now, not when it was sent.
            next.sent = Some((SystemTime::now(), Instant::now()));
            deadline = host_deadline(next);
        }
        let idle = conn.running.is_empty();
        let result = match conn.lost_put.take() {
            None => done.result,
            Some(_) if terminated => Err(TaskError::Terminated),
            Some(error) => Err(TaskError::Failed(format!(
                "a put to a queue failed after the task went on: {error}"
            ))),
        };
        let attempt = Attempt {
            result,
            worker: Some(pid),
            started: Some(UNIX_EPOCH + Duration::from_nanos(done.started_unix_nanos)),
            duration: Duration::from_nanos(done.duration_nanos),
            peak_memory: Some(done.peak_memory),
            fuel_used: done.fuel_used,
        };
        self.settle(task, attempt);
        if idle {
            self.idle.push_back(index);
        }
        self.watch(deadline);
        true
    }

    /// Has the timekeeper woken if a task that just started must be looked at before it meant to
    /// look (`deadline`: the task's [`host_deadline`]).
    fn watch(&mut self, deadline: Option<Instant>) {
        if let Some(deadline) = deadline
            && self.next_look.is_none_or(|look| deadline < look)
        {
            self.wake_timekeeper = true;
        }
    }

    /// Pairs idle workers with pending batches, oldest first, then sends batches ahead to busy
    /// workers whose current batch should end soon (see [`SEND_AHEAD_BELOW`]). If a worker is
    /// still idle, nothing is pending: the batches sent ahead are asked back, to run on it.
    fn dispatch(&mut self) -> Sends {
        let mut sends = Vec::new();
        let over_budget = self.held_budget.is_some_and(|budget| self.held >= budget);
        while !self.pending.is_empty() && !over_budget {
            let (index, idle) = match self.idle.pop_front() {
                Some(index) => (index, true),
                None => match self.send_ahead_to() {
                    Some(index) => (index, false),
                    None => break,
                },
            };
            let size = self.batch_size(index);
            let Slot::Live(conn) = &mut self.slots[index] else {
                continue;
            };
            let mut batch = self.pending.pop_front().expect("checked non-empty");
            // Single tasks with the same options join up to `size` (a `map` chunk stays as is).
            while batch.len() < size
                && let Some(next) = self.pending.front()
                && next.len() == 1
                && next[0].options == batch[0].options
            {
                batch.extend(self.pending.pop_front().expect("checked non-empty"));
            }
            let encoded = loop {
                let run = ToWorker::Run {
                    options: batch[0].options,
                    tasks: batch.iter().map(|task| (task.id, task.call.clone())).collect(),
                };
                match ipc::encode(&run) {
                    // Tasks that each fit a frame but not together: the second half waits, in
                    // order, for the next batch.
                    Err(IpcError::TooLarge { .. }) if batch.len() > 1 => {
                        let rest = batch.split_off(batch.len() / 2);
                        for task in rest.into_iter().rev() {
                            self.pending.push_front(vec![task]);
                        }
                    }
                    encoded => break encoded,
                }
            };
            match encoded {
                Ok(frame) if !idle && frame.len() > MAX_AHEAD_FRAME => {
                    // Too large to wait unread in a busy worker's socket: it waits for a free one.
                    self.pending.push_front(batch);
                    break;
                }
                Ok(frame) => {
                    let now = (SystemTime::now(), Instant::now());
                    for task in &mut batch {
                        task.sent = Some(now);
                        task.attempts += 1;
                    }
                    conn.to_worker.queue(frame);
                    sends.push(conn.to_worker.clone());
                    if !idle {
                        conn.ahead = batch.len();
                    }
                    conn.running.extend(batch);
                    if idle {
                        let deadline = conn.running.front().and_then(host_deadline);
                        self.watch(deadline);
                    }
                }
                Err(e) => {
                    // Only an over-large batch fails to encode: its tasks fail, the worker stays
                    // as it was.
                    let message = format!("the task's arguments are too large to send to a worker: {e}");
                    for task in batch {
                        self.fail(task, None, TaskError::Failed(message.clone()));
                    }
                    if idle {
                        self.idle.push_front(index);
                    }
                }
            }
        }
        if !self.idle.is_empty() {
            self.recall(&mut sends);
        }
        Sends(sends)
    }

    /// How long the tasks of slot `index` take, if the pool may batch them and send them ahead:
    /// not before its worker has finished a task, nor while failures may cancel what is pending
    /// ([`Builder::cancel_after_failures`]), as no task may start after the failure that cancels
    /// it and a worker cannot give back the rest of the batch it is running.
    fn pace(&self, index: usize) -> Option<Duration> {
        if self.cancel_after.is_some() || self.cancelled || self.phase == Phase::Terminated {
            return None;
        }
        match &self.slots[index] {
            Slot::Live(conn) => conn.last_duration,
            _ => None,
        }
    }

    /// How many single tasks to send slot `index` in one batch: about [`BATCH_WORK`], but no
    /// more than a share of what is pending, so the other workers get some too.
    fn batch_size(&self, index: usize) -> usize {
        let Some(pace) = self.pace(index) else { return 1 };
        let work = BATCH_WORK.as_nanos() / pace.as_nanos().max(1);
        let share = self.pending.len() / (2 * self.slots.len());
        (work as usize).min(share).clamp(1, MAX_BATCH)
    }

    /// A worker to send a batch ahead to: one with none sent ahead yet whose batch should be done
    /// within [`SEND_AHEAD_BELOW`].
    fn send_ahead_to(&self) -> Option<usize> {
        (0..self.slots.len()).find(|&index| {
            let Slot::Live(conn) = &self.slots[index] else {
                return false;
            };
            conn.ahead == 0
                && !conn.recalling
                && !conn.running.is_empty()
                && self.pace(index).is_some_and(|pace| {
                    let held = u32::try_from(conn.running.len()).unwrap_or(u32::MAX);
                    pace.saturating_mul(held) <= SEND_AHEAD_BELOW
                })
        })
    }

    /// Asks every worker holding a batch sent ahead to give it back ([`Shared::returned`]).
    fn recall(&mut self, sends: &mut Vec<Arc<Sender>>) {
        for slot in &mut self.slots {
            if let Slot::Live(conn) = slot
                && conn.ahead > 0
                && !conn.recalling
            {
                conn.recalling = true;
                let frame = ipc::encode(&ToWorker::Return).expect("a return frame is tiny");
                conn.to_worker.queue(frame);
                sends.push(conn.to_worker.clone());
            }
        }
    }

    /// Ends a task with `error`.
    fn fail(&mut self, task: Task, worker: Option<u32>, error: TaskError) {
        let (started, duration) = match task.sent {
            Some((at, clock)) => (Some(at), clock.elapsed()),
            None => (None, Duration::ZERO),
        };
        let attempt = Attempt {
            result: Err(error),
            worker,
            started,
            duration,
            peak_memory: None,
            fuel_used: None,
        };
        self.settle(task, attempt);
    }

    /// Ends one run of a task: it goes to the back of the queue if it failed in a way worth
    /// retrying and has retries left (and the pool is neither terminated nor cancelled);
    /// otherwise it is done.
    fn settle(&mut self, mut task: Task, attempt: Attempt) {
        let retry = matches!(&attempt.result, Err(e) if e.retryable())
            && task.attempts <= task.options.retries
            && self.phase != Phase::Terminated
            && !self.cancelled;
        if retry {
            if let Err(error) = &attempt.result {
                tracing::info!(
                    task = task.id,
                    "attempt {} failed ({error}); retrying",
                    task.attempts
                );
            }
            task.sent = None;
            self.pending.push_back(vec![task]);
            return;
        }
        let failed = attempt.result.is_err();
        tracing::debug!(
            task = task.id,
            worker = attempt.worker,
            "task {} in {:.1?}: {}",
            task.call,
            attempt.duration,
            match &attempt.result {
                Ok(_) => "ok".to_owned(),
                Err(error) => error.to_string(),
            }
        );
        let weight = match (&task.cell.notify, self.held_budget) {
            (Some(_), Some(_)) => report_weight(&attempt.result),
            _ => 0,
        };
        self.held += task.cell.complete(
            weight,
            TaskReport {
                id: task.id,
                call: task.call,
                result: attempt.result,
                worker: attempt.worker,
                started: attempt.started,
                duration: attempt.duration,
                peak_memory: attempt.peak_memory,
                fuel_used: attempt.fuel_used,
                attempts: task.attempts,
            },
        );
        self.unfinished -= 1;
        self.settled += 1;
        if failed {
            self.failures += 1;
            if self.cancel_after.is_some_and(|n| self.failures >= n) && !self.cancelled {
                self.cancel_pending();
            }
        }
    }

    /// See [`Pool::cancel_pending`].
    fn cancel_pending(&mut self) -> usize {
        if self.phase == Phase::Running {
            self.phase = Phase::Closed;
        }
        self.cancelled = true;
        let pending: Vec<Task> = mem::take(&mut self.pending).into_iter().flatten().collect();
        let count = pending.len();
        for task in pending {
            self.fail(task, None, TaskError::Cancelled);
        }
        count
    }
}

/// The default output sink: guest output goes to this process's stdout and stderr as it comes,
/// whole lines in one write, so lines of different workers never interleave; only a line longer
/// than 64 KiB, which comes in pieces, may have another's line between them. (`poolhost run`
/// joins the pieces.)
fn inherit_output() -> OutputSink {
    Arc::new(|_task, stream, bytes: &[u8]| {
        let _ = match stream {
            Stream::Stdout => write_flushed(io::stdout().lock(), bytes),
            Stream::Stderr => write_flushed(io::stderr().lock(), bytes),
        };
    })
}

fn write_flushed(mut to: impl Write, bytes: &[u8]) -> io::Result<()> {
    to.write_all(bytes)?;
    to.flush()
}
