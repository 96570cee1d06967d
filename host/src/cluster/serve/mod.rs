//! A host of the cluster: takes tasks from the pool's stream while it has room, runs each on a
//! local [`Pool`] of the task's component (a fresh sandbox per task, its limits capped by the
//! host's, its grants the host's), and writes each result back as it ends.
//!
//! Three threads, each with its own connection and its own room:
//! - the taker (the caller's thread, [`take`]): first takes over entries idle past the
//!   visibility time (their host died), then reads new ones, never more than it has room for;
//! - the reporter ([`report`]): completes finished tasks, many in one round trip;
//! - the heartbeat ([`beat`]): says the host is alive and renews the entries it holds, and
//!   learns of those it lost (paused past the visibility time), whose results are then dropped.
//!
//! This module holds what they share: the [`Serve`] builder and its `run`, which starts them
//! and waits for them, the host's state under one lock, the tasks' output buffers, and the host's
//! leaving.

mod beat;
mod report;
mod take;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use super::queues::RedisQueues;
use super::wire::Chunk;
use super::{Cluster, ClusterError, Keys};
use crate::manager::{Limits, Manager};
use crate::pool::{AsyncResult, Pool};
use crate::runtime::Loader;
use crate::task::{Grants, Stream, TaskError, TaskId, TaskOptions};

/// How long a read of new entries blocks before the taker looks at its state again.
const READ_BLOCK: Duration = Duration::from_millis(250);

/// The most output one task sends back with its result; more is dropped, with a note.
const MAX_OUTPUT: usize = 16 << 20;

/// How a serving host is asked to stop: [`ServeStop::drain`] takes no new task and returns once
/// those it holds are done.
#[derive(Default)]
pub struct ServeStop(AtomicU8);

impl ServeStop {
    /// Takes nothing new; [`Serve::run`] returns once the host's tasks are done.
    pub fn drain(&self) {
        self.0.store(1, Ordering::SeqCst);
    }

    fn draining(&self) -> bool {
        self.0.load(Ordering::SeqCst) > 0
    }
}

/// A host joining a cluster's pool: its workers, grants and limits.
pub struct Serve {
    cluster: Cluster,
    workers: usize,
    grants: Grants,
    limits: TaskOptions,
    loader: Loader,
    worker_program: Option<PathBuf>,
    queue_limits: Limits,
    id: String,
}

impl Serve {
    /// A host of `cluster` with one worker per CPU, no grants and no limits of its own.
    pub fn new(cluster: Cluster) -> Serve {
        Serve {
            cluster,
            workers: crate::default_workers(),
            grants: Grants::default(),
            limits: TaskOptions::default(),
            loader: Loader::default(),
            worker_program: None,
            queue_limits: Limits::default(),
            id: default_host_id(),
        }
    }

    /// The worker processes of each of its local pools (0: one per CPU).
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = match workers {
            0 => crate::default_workers(),
            n => n,
        };
        self
    }

    /// What its tasks may reach: its directories and environment, whatever submitters ask.
    pub fn grants(mut self, grants: Grants) -> Self {
        self.grants = grants;
        self
    }

    /// The most a task may ask for: a submitter's timeout, memory and fuel are capped by these,
    /// and apply in full when the submitter gives none. `retries` is ignored.
    pub fn limits(mut self, limits: TaskOptions) -> Self {
        self.limits = limits;
        self
    }

    /// How components are compiled: with the host's compile cache, say.
    pub fn loader(mut self, loader: Loader) -> Self {
        self.loader = loader;
        self
    }

    /// The limits of its tasks' queue operations: the largest item, the most bytes a queue
    /// holds (checked against the pool's queues in Redis).
    pub fn queue_limits(mut self, limits: Limits) -> Self {
        self.queue_limits = limits;
        self
    }

    /// The executable its workers run (see [`crate::Builder::worker_program`]).
    pub fn worker_program(mut self, path: impl Into<PathBuf>) -> Self {
        self.worker_program = Some(path.into());
        self
    }

    /// The host's id in the cluster (default: the machine's name and this process's id).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Serves until `stop` says to drain and what the host holds is done; returns how many tasks
    /// it completed.
    ///
    /// # Errors
    /// If the server cannot be reached at the start. Later losses of the server are retried.
    pub fn run(self, stop: &ServeStop) -> Result<u64, ClusterError> {
        let mut taker = self.cluster.connect(READ_BLOCK + Duration::from_secs(10))?;
        self.cluster.ensure_group(&mut taker)?;
        let reporter = self.cluster.command_connection()?;
        let heartbeat = self.cluster.command_connection()?;
        let (finished, results) = mpsc::channel();
        let queues = Arc::new(RedisQueues::for_host(
            self.cluster.clone(),
            self.queue_limits,
            &self.id,
        ));
        let host = Arc::new(Host {
            keys: self.cluster.keys(),
            state: Mutex::new(HostState::default()),
            room: Condvar::new(),
            workers: self.workers,
            finished,
            manager: Manager::with_store(queues.clone()),
            queues,
            serve: self,
        });
        host.beat_once(&mut host.serve.cluster.command_connection()?);
        tracing::info!("host {} serves pool `{}`", host.serve.id, host.serve.cluster.pool);
        host.lock().taking = true;
        let completed = thread::scope(|scope| {
            let reporting = scope.spawn(|| {
                let _failing = Failing(&host);
                host.report(reporter, results)
            });
            let beating = scope.spawn(|| {
                let _failing = Failing(&host);
                host.beat(heartbeat)
            });
            {
                let _failing = Failing(&host);
                host.take(taker, stop);
            }
            // Nothing more is taken: the reporter ends once what is held is done.
            host.lock().taking = false;
            host.room.notify_all();
            let completed = reporting.join().unwrap_or(0);
            host.lock().finished = true;
            host.room.notify_all();
            let _ = beating.join();
            completed
        });
        host.leave();
        if host.lock().failed {
            return Err(ClusterError::Redis {
                url: host.serve.cluster.shown.clone(),
                reason: "a thread of the host failed; the host left the pool, and its tasks run elsewhere"
                    .into(),
            });
        }
        Ok(completed)
    }
}

/// Stops the host if a thread of it panics: without the others would wait for it forever,
/// holding (and renewing) its tasks.
struct Failing<'a>(&'a Host);

impl Drop for Failing<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            let mut state = self.0.lock();
            state.failed = true;
            state.taking = false;
            state.finished = true;
            drop(state);
            self.0.room.notify_all();
        }
    }
}

/// The machine's name, this process's id and a random part: unique among live hosts.
fn default_host_id() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "host".into());
    // Containers repeat both names and pids: a random part keeps two hosts apart.
    let mut random = [0u8; 4];
    let _ =
        std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random));
    let random: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("{name}-{}-{random}", std::process::id())
}

/// What the host's threads share.
struct Host {
    serve: Serve,
    keys: Keys,
    state: Mutex<HostState>,
    /// Room was made, or the host is stopping.
    room: Condvar,
    /// The workers of each local pool (see [`HostState::limit`]).
    workers: usize,
    /// Where a local pool's notification of a finished task goes: its key in `held`.
    finished: Sender<u64>,
    /// The pool's queues, which every local pool's tasks share.
    manager: Manager,
    /// The same queues, for giving back what dead hosts' tasks held.
    queues: Arc<RedisQueues>,
}

#[derive(Default)]
struct HostState {
    /// The tasks held, by a key of the host's own.
    held: HashMap<u64, Held>,
    next_key: u64,
    pools: HashMap<PoolKey, LocalPool>,
    /// Entries taken and not yet submitted to a local pool.
    starting: HashSet<String>,
    /// Finished tasks whose held queue items are being let go: they count as held.
    releasing: usize,
    taking: bool,
    finished: bool,
    /// A thread of the host panicked: the others stop.
    failed: bool,
}

impl HostState {
    /// The most tasks to hold: one per worker. No task waits here behind another, which might
    /// block on a queue for an item only that task would put, while other hosts are free. (A
    /// second per worker would save short tasks a round trip each, about a tenth of their
    /// rate here, and needs a way to hand such waiting tasks back first.)
    fn limit(&self, workers: usize) -> usize {
        workers
    }

    /// Tasks held, or finishing.
    fn holding(&self) -> usize {
        self.held.len() + self.releasing
    }
}

/// A task the host holds.
struct Held {
    entry: String,
    run: String,
    task: TaskId,
    /// Hosts that died running it before this one.
    prior: u32,
    /// The local pool it runs on.
    pool: PoolKey,
    /// Its handle in that pool, or why it could not be submitted there.
    result: Result<AsyncResult, TaskError>,
    output: Arc<OutputBuffers>,
    /// Another host took it over: its result will be dropped.
    lost: bool,
}

/// Output of a local pool's tasks, by the local pool's task id, until each is reported.
#[derive(Default)]
struct OutputBuffers(Mutex<HashMap<TaskId, Output>>);

#[derive(Default)]
struct Output {
    chunks: Vec<Chunk>,
    size: usize,
    dropped: bool,
}

impl OutputBuffers {
    fn write(&self, task: TaskId, stream: Stream, bytes: &[u8]) {
        let mut buffers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let output = buffers.entry(task).or_default();
        if output.size + bytes.len() > MAX_OUTPUT {
            if !output.dropped {
                output.dropped = true;
                output.chunks.push(Chunk {
                    stream: Stream::Stderr,
                    bytes: format!("\npoolhost: the task's output past {MAX_OUTPUT} bytes was dropped\n")
                        .into_bytes(),
                });
            }
            return;
        }
        output.size += bytes.len();
        match output.chunks.last_mut() {
            Some(last) if last.stream == stream && last.bytes.len() < 64 << 10 => {
                last.bytes.extend_from_slice(bytes)
            }
            _ => output.chunks.push(Chunk {
                stream,
                bytes: bytes.to_vec(),
            }),
        }
    }

    fn take(&self, task: TaskId) -> Vec<Chunk> {
        let mut buffers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        buffers
            .remove(&task)
            .map(|output| output.chunks)
            .unwrap_or_default()
    }
}

/// A local pool's key: the component's digest, and whether it is metered.
type PoolKey = (String, bool);

struct LocalPool {
    pool: Pool,
    output: Arc<OutputBuffers>,
    held: usize,
}

impl Host {
    fn lock(&self) -> MutexGuard<'_, HostState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The host leaves the pool: its heartbeat key goes, and its local pools with their workers.
    fn leave(&self) {
        if let Ok(mut connection) = self.serve.cluster.command_connection() {
            let _ = redis::pipe()
                .cmd("DEL")
                .arg(self.keys.host(&self.serve.id))
                .cmd("ZREM")
                .arg(self.keys.hosts())
                .arg(&self.serve.id)
                .exec(&mut connection);
        }
        let failed = self.lock().failed;
        let pools: Vec<LocalPool> = self.lock().pools.drain().map(|(_, pool)| pool).collect();
        for local in pools {
            // A failed host waits for nothing: what it held runs elsewhere.
            if failed {
                local.pool.terminate();
            } else {
                local.pool.close();
                let _ = local.pool.join();
            }
        }
        if failed {
            self.manager.close();
        }
    }
}
