//! The pool: a [`Pool`] of worker processes running tasks of one component, with Python's
//! rules for `apply_async`, `map`, `close`, `join` and `terminate`. Its rooms, after rayon-core's
//! `ThreadPool { registry }`:
//!
//! - [`builder`]: what a pool runs and how; starting it, leaving no worker behind if that fails.
//! - `registry`: what the pool's handles and threads share, under one lock; carries out the
//!   scheduler's actions.
//! - `scheduler`: which task runs on which worker and when, as a state machine without threads,
//!   sockets or clocks: FIFO, batching, sending ahead, recall, retries, cancellation.
//! - `supervisor`: the thread per worker slot that reads its worker, and the timekeeper.
//! - `process`: a worker's process: spawned or forked, ready or not, killed and reaped.
//! - [`result`]: what callers wait on: [`AsyncResult`], the `imap` iterators, [`Batch`].
//!
//! A worker is one thing through its life: a `StartingWorker` until it says it is ready, then a
//! `ReadyWorker` its supervisor owns, in a `WorkerSlot` of the scheduler, its process a
//! `WorkerProcess`. When a worker dies, exactly the task it was running fails (with the signal or
//! exit status) or is retried, the tasks queued behind it go back to the front of the queue, and
//! a replacement starts, later each time if workers keep dying young. This module never names
//! wasmtime.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::thread;

use crate::manager::Manager;
use crate::runtime::{CallError, LoadError, OutputSink, Program};
use crate::task::{Call, Grants, Stream, TaskId, TaskOptions, TaskResult};
use crate::value::Value;

mod builder;
mod process;
mod registry;
mod result;
mod scheduler;
mod supervisor;

pub use builder::Builder;
pub use result::{AsyncResult, Batch, Imap, ImapUnordered};
pub(crate) use result::{Notify, ResultCell};

/// The most worker processes a pool runs. Each holds three of the host's file descriptors (its
/// socket twice, its journal) for its whole life, and a process's usual limit is 1024; a pool
/// asked for a million workers would otherwise fork until the system ran out of descriptors.
pub const MAX_WORKERS: usize = 256;

/// The number of workers a pool runs when asked for 0: one per CPU, at most [`MAX_WORKERS`].
pub fn default_workers() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WORKERS))
}

/// The number of workers for a builder's `workers`: 0 means [`default_workers`].
fn worker_count(workers: usize) -> usize {
    match workers {
        0 => default_workers(),
        n => n,
    }
}

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
    /// The cluster's server could not be reached or refused the tasks.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// Where a pool's tasks go and how they end: the seam between the pool's API and what runs the
/// tasks. The embedded default is this machine's worker processes (`registry::Registry`, with
/// its scheduler and supervisors); a backend that shares the tasks among many machines
/// implements the same operations.
pub(crate) trait Dispatch: Send + Sync {
    /// The component the tasks run.
    fn program(&self) -> &Program;
    /// The manager whose queues the tasks share.
    fn manager(&self) -> &Manager;
    /// The options of tasks submitted without their own.
    fn options(&self) -> TaskOptions;
    /// What the tasks may reach outside their sandbox.
    fn grants(&self) -> &Grants;
    /// Where the tasks' output goes.
    fn output(&self) -> &OutputSink;
    /// Submits `calls` in chunks of `chunksize`, each chunk run by one worker, with `options`;
    /// `notify` hears each task's index in `calls` as it finishes, and its result then counts
    /// against the budget of held results until [`Dispatch::release`]d.
    fn submit(
        &self,
        calls: Vec<Call>,
        chunksize: usize,
        options: TaskOptions,
        notify: Option<Notify>,
    ) -> Result<Vec<AsyncResult>, PoolError>;
    /// A held result of `weight` was taken, or its batch dropped.
    fn release(&self, weight: usize);
    /// See [`Pool::wait_for_room`].
    fn wait_for_room(&self, max: usize);
    /// See [`Pool::cancel_pending`].
    fn cancel_pending(&self) -> usize;
    /// Gives up on task `id`: cancelled if pending, its worker killed if running.
    fn abandon(&self, id: TaskId);
    /// See [`Pool::close`].
    fn close(&self);
    /// See [`Pool::terminate`]: returns once nothing of the pool runs.
    fn terminate(&self);
    /// See [`Pool::join`].
    fn join(&self) -> Result<(), PoolError>;
    /// Whether the pool was joined or terminated.
    fn is_finished(&self) -> bool;
    /// The pids of the live worker processes.
    fn worker_pids(&self) -> Vec<u32>;
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
    dispatch: Arc<dyn Dispatch>,
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
        self.dispatch.is_finished()
    }

    /// What the tasks may reach outside their sandbox.
    pub(crate) fn grants(&self) -> &Grants {
        self.dispatch.grants()
    }

    /// Where the tasks' output goes.
    pub(crate) fn output_sink(&self) -> OutputSink {
        self.dispatch.output().clone()
    }

    /// The pids of the live worker processes, in slot order.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.dispatch.worker_pids()
    }

    /// The manager whose named queues the tasks share: the host side of the WIT `queue`
    /// interface. Queues made here before tasks start are the ones tasks open by name.
    pub fn manager(&self) -> &Manager {
        self.dispatch.manager()
    }

    /// The component the pool runs.
    pub fn program(&self) -> &Program {
        self.dispatch.program()
    }

    /// Submits one task and returns at once.
    ///
    /// # Errors
    /// [`PoolError::NotRunning`] after `close` or `terminate`; [`PoolError::Call`] if the call
    /// does not fit the component.
    pub fn apply_async(&self, call: Call) -> Result<AsyncResult, PoolError> {
        self.apply_async_with(call, self.dispatch.options())
    }

    /// As [`Pool::apply_async`], with this task's own options (limits, retries) instead of the
    /// pool's.
    ///
    /// # Errors
    /// As [`Pool::apply_async`], and [`PoolError::NotMetered`] for fuel on an unmetered program.
    pub fn apply_async_with(&self, call: Call, options: TaskOptions) -> Result<AsyncResult, PoolError> {
        let mut results = self.dispatch.submit(vec![call], 1, options, None)?;
        Ok(results.remove(0))
    }

    /// Waits while `max` or more tasks are unfinished, until half of them are done (or the pool
    /// stops running): backpressure for a submitter that would otherwise queue tasks without
    /// bound, as a driver flooding `apply-async` would.
    ///
    /// Tasks may also wait for the submitter (on a queue it fills later): if no task finishes
    /// for a second, it goes on, and does not wait again until a task has finished, so it
    /// cannot deadlock with its own tasks.
    pub(crate) fn wait_for_room(&self, max: usize) {
        self.dispatch.wait_for_room(max);
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
        let results = self
            .dispatch
            .submit(calls, chunksize, self.dispatch.options(), None)?;
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
        let results = self.dispatch.submit(calls, 1, self.dispatch.options(), None)?;
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
        let notify: Notify = Arc::new(move |index| {
            let _ = tx.send(index);
        });
        let results = self.dispatch.submit(
            calls.into_iter().collect(),
            1,
            self.dispatch.options(),
            Some(notify),
        )?;
        Ok(Batch {
            dispatch: self.dispatch.clone(),
            remaining: results.len(),
            results,
            finished: rx,
        })
    }

    /// Submits each call as its own task with `options`; `notify` hears the call's index as
    /// each ends. For a host serving a cluster, which reports each task as it ends.
    pub(crate) fn submit_each(
        &self,
        calls: Vec<Call>,
        options: TaskOptions,
        notify: Notify,
    ) -> Result<Vec<AsyncResult>, PoolError> {
        self.dispatch.submit(calls, 1, options, Some(notify))
    }

    /// Gives up on task `id`, whose result nobody wants any more: pending, it ends cancelled;
    /// running, its worker is killed and it ends cancelled (not retried). For a cluster's host
    /// whose task another host took over.
    pub(crate) fn abandon(&self, id: TaskId) {
        self.dispatch.abandon(id);
    }

    /// Takes every task that has not started off the queue; each fails with
    /// [`crate::TaskError::Cancelled`]. Running tasks finish, but are not retried, and no task can be
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
        self.dispatch.cancel_pending()
    }

    /// Stops accepting tasks; those already submitted still run. Then [`Pool::join`] waits for
    /// them.
    pub fn close(&self) {
        self.dispatch.close();
    }

    /// Stops at once: pending tasks fail with [`crate::TaskError::Terminated`], running tasks are killed
    /// with their worker processes and fail the same way. Returns when every worker is reaped.
    pub fn terminate(&self) {
        self.dispatch.terminate();
    }

    /// Waits until every task has finished and every worker process has exited.
    ///
    /// # Errors
    /// [`PoolError::StillRunning`] if neither [`Pool::close`] nor [`Pool::terminate`] was called
    /// first, as in Python.
    pub fn join(&self) -> Result<(), PoolError> {
        self.dispatch.join()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.terminate();
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
