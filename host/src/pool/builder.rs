//! The pool's builder: what a pool runs and how, and [`Builder::build`], which starts its
//! workers. From the first process it starts, a failure leaves none running: processes not yet
//! ready are killed and reaped when dropped, and a [`Terminator`] terminates the registry of a
//! pool that does not finish starting, killing the workers already supervised and joining their
//! supervisors.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::process::{StartError, StartingWorker};
use super::registry::Registry;
use super::{Dispatch, MAX_WORKERS, Pool, PoolError, inherit_output, worker_count};
use crate::cluster::{Cluster, Submitter};
use crate::ipc::{self, ToWorker};
use crate::manager::Manager;
use crate::runtime::{LoadError, Loader, OutputSink, Program};
use crate::sys;
use crate::task::{DirGrant, Grants, Stream, TaskId, TaskOptions};

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
    prestarted: Vec<StartingWorker>,
    cluster: Option<Cluster>,
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
        let fork_them = own && sys::single_threaded();
        while self.prestarted.len() < workers {
            let started = match fork_them {
                true => StartingWorker::fork().transpose(),
                false => None,
            };
            match started.unwrap_or_else(|| StartingWorker::spawn(&worker_program)) {
                Ok(starting) => self.prestarted.push(starting),
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
            for starting in &self.prestarted {
                // A worker that cannot be reached now fails its `Init`, which says why.
                let _ = ipc::write(&starting.socket, &load);
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

    /// Sends the tasks to the hosts of `cluster` instead of running them on this machine's
    /// workers: the same API, with results that say which host ran each task. Grants belong
    /// to the hosts, so a pool with grants is refused; [`Builder::workers`] only sizes `map`'s
    /// chunks.
    pub fn cluster(mut self, cluster: Cluster) -> Self {
        self.cluster = Some(cluster);
        self.prestarted.clear();
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
        if let Some(cluster) = self.cluster.take() {
            return self.build_cluster(cluster, program);
        }
        self.check_grants()?;
        let workers = worker_count(self.workers);
        if workers > MAX_WORKERS {
            return Err(PoolError::TooManyWorkers(workers));
        }
        let registry = Arc::new(Registry::new(
            workers,
            self.cancel_after,
            self.held_budget,
            program,
            self.resolved_worker_program()?,
            self.output.unwrap_or_else(inherit_output),
            self.manager.unwrap_or_default(),
            self.options,
            self.grants,
        ));
        // From here every worker is the registry's: if the pool does not finish starting, the
        // terminator kills those supervised, and the others are killed as they are dropped.
        let terminator = Terminator(&registry);

        // Start every process first, so they load the component in parallel. Processes started
        // ahead need only be told what to load; any beyond `workers` are dropped, killing them.
        let mut prestarted = self.prestarted.into_iter();
        let starting: Vec<Result<StartingWorker, StartError>> = (0..workers)
            .map(|_| match prestarted.next() {
                Some(starting) => registry.init(starting),
                None => registry.launch(),
            })
            .collect();
        drop(prestarted);
        // Each worker is supervised as soon as it is ready; a worker that refuses to start
        // fails the build, and the terminator stops those already supervised.
        let timekeeper = registry.clone();
        registry.spawn_thread("poolhost-timekeeper".into(), move || timekeeper.keep_time())?;
        for (slot, starting) in starting.into_iter().enumerate() {
            let worker = match starting.and_then(StartingWorker::ready) {
                Ok(worker) => {
                    registry.install(slot, &worker);
                    Some(worker)
                }
                // Killed from outside as it started, say: its supervisor starts another.
                Err(StartError::Died(message)) => {
                    tracing::warn!("a worker died as it started ({message}); starting another");
                    None
                }
                Err(StartError::Refused(message)) => return Err(PoolError::Start(message)),
            };
            let supervisor = registry.clone();
            registry.spawn_thread(format!("poolhost-worker-{slot}"), move || {
                supervisor.supervise(slot, worker)
            })?;
        }
        terminator.disarm();
        Ok(Pool {
            dispatch: registry,
            workers,
        })
    }

    /// A pool whose tasks go to the hosts of `cluster`.
    fn build_cluster(self, cluster: Cluster, program: Program) -> Result<Pool, PoolError> {
        if self.grants != Grants::default() {
            return Err(PoolError::Grant {
                path: self
                    .grants
                    .dirs
                    .first()
                    .map(|dir| dir.host.clone())
                    .unwrap_or_default(),
                reason: "grants belong to the hosts of a cluster: give them to `poolhost serve`".into(),
            });
        }
        let workers = worker_count(self.workers);
        let submitter = Submitter::start(
            cluster,
            program,
            self.manager.unwrap_or_default(),
            self.options,
            self.output.unwrap_or_else(inherit_output),
            self.cancel_after,
            self.held_budget,
        )?;
        Ok(Pool {
            dispatch: submitter,
            workers,
        })
    }

    /// Checks that every directory to grant is one.
    fn check_grants(&self) -> Result<(), PoolError> {
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
        Ok(())
    }
}

/// Terminates the registry of a pool that does not finish starting (rayon's guard of the same
/// name): its installed workers are killed and reaped, and its threads joined.
struct Terminator<'a>(&'a Registry);

impl Terminator<'_> {
    /// The pool started: it owns the registry from here.
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for Terminator<'_> {
    fn drop(&mut self) {
        self.0.terminate();
    }
}
