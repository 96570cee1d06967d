//! A host of the cluster: takes tasks from the pool's stream while it has room, runs each on a
//! local [`Pool`] of the task's component (a fresh sandbox per task, its limits capped by the
//! host's, its grants the host's), and writes each result back as it ends.
//!
//! Three threads, each with its own connection:
//! - the taker (the caller's thread): first takes over entries idle past the visibility time
//!   (their host died), then reads new ones, never more than it has room for;
//! - the reporter: completes finished tasks, many in one round trip;
//! - the heartbeat: says the host is alive and renews the entries it holds, and learns of those
//!   it lost (paused past the visibility time), whose results are then dropped.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use redis::{Connection, Value};

use super::queues::RedisQueues;
use super::wire::{self, Chunk, Entry, Finished, Spec};
use super::{Cluster, ClusterError, GROUP, Keys, RESULT_TTL_SECS, complete_script, keep_script};
use crate::manager::{Limits, Manager};
use crate::pool::{AsyncResult, Notify, Pool};
use crate::runtime::Loader;
use crate::task::{Grants, Stream, TaskError, TaskId, TaskOptions};

/// How long a read of new entries blocks before the taker looks at its state again.
const READ_BLOCK: Duration = Duration::from_millis(250);

/// The most output one task sends back with its result; more is dropped, with a note.
const MAX_OUTPUT: usize = 16 << 20;

/// Local pools kept at once, one per component (and metering); an idle one goes for a new one.
const MAX_POOLS: usize = 4;

/// Every this many heartbeat periods the taker looks for dead hosts to reap, besides when it
/// takes over their tasks (a reap that failed then is done now).
const REAP_EVERY: u64 = 10;

/// Results completed in one round trip.
const REPORT_BATCH: usize = 256;

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
                host.beat(heartbeat, stop)
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

/// The lower of what was asked and the host's limit: the limit when nothing was asked.
fn cap<T: Ord>(asked: Option<T>, limit: Option<T>) -> Option<T> {
    match (asked, limit) {
        (Some(asked), Some(limit)) => Some(asked.min(limit)),
        (asked, limit) => asked.or(limit),
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

/// A task taken from the stream, decoded: its entry, the hosts that died running it before, its
/// id in its run, and what to run.
struct Taken {
    entry: Entry,
    prior: u32,
    task: TaskId,
    spec: Spec,
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

    /// The taker's loop: takes entries while there is room, until told to drain.
    fn take(&self, mut connection: Connection, stop: &ServeStop) {
        let (heartbeat, visibility) = self.serve.cluster.timing();
        let mut cursor = "0-0".to_owned();
        let mut last_claim: Option<Instant> = None;
        let mut claims: u64 = 0;
        while !stop.draining() && !self.lock().failed {
            let room = {
                let mut state = self.lock();
                while state.holding() >= state.limit(self.workers) && !stop.draining() && !state.failed {
                    state = self
                        .room
                        .wait_timeout(state, READ_BLOCK)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                state.limit(self.workers).saturating_sub(state.holding())
            };
            if stop.draining() || room == 0 {
                continue;
            }
            let taken = match last_claim.is_none_or(|at| at.elapsed() >= heartbeat) {
                true => {
                    last_claim = Some(Instant::now());
                    claims += 1;
                    // Now and then, dead hosts whose tasks someone else took over.
                    if claims.is_multiple_of(REAP_EVERY) {
                        self.reap_dead_hosts(&mut connection);
                    }
                    self.claim_stale(&mut connection, &mut cursor, visibility, room)
                }
                false => Ok(Vec::new()),
            };
            let taken = match taken {
                Ok(claimed) if !claimed.is_empty() => Ok(claimed),
                Ok(_) => self.read_new(&mut connection, room),
                Err(e) => Err(e),
            };
            match taken {
                Ok(entries) => {
                    // Renewed by the heartbeat while their pool is made (a component fetched,
                    // compiled, its workers started), which may take longer than the
                    // visibility time; from their submission on, as held tasks.
                    let ids: Vec<String> = entries.iter().map(|(entry, _)| entry.id.clone()).collect();
                    self.lock().starting.extend(ids.iter().cloned());
                    self.start(&mut connection, entries);
                    let mut state = self.lock();
                    for id in &ids {
                        state.starting.remove(id);
                    }
                }
                Err(e) => {
                    tracing::warn!("{}; trying again", self.serve.cluster.error(e));
                    thread::sleep(Duration::from_millis(200));
                    if let Ok(made) = self.serve.cluster.connect(READ_BLOCK + Duration::from_secs(10)) {
                        connection = made;
                    }
                }
            }
        }
    }

    /// Takes over entries idle past the visibility time: their host died or stopped answering.
    /// Each counts a death; one whose hosts died too often is set aside.
    fn claim_stale(
        &self,
        connection: &mut Connection,
        cursor: &mut String,
        visibility: Duration,
        room: usize,
    ) -> redis::RedisResult<Vec<(Entry, u32)>> {
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(self.keys.tasks())
            .arg(GROUP)
            .arg(&self.serve.id)
            .arg(visibility.as_millis() as u64)
            .arg(cursor.as_str())
            .arg("COUNT")
            .arg(room)
            .query(connection)?;
        let (next, entries) = wire::claimed_entries(reply);
        *cursor = next;
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        // Their host is dead (its heartbeat key, with the same life, is gone before its entries
        // can be claimed): what its tasks took from queues goes back first.
        self.reap_dead_hosts(connection);
        let mut pipe = redis::pipe();
        for entry in &entries {
            pipe.cmd("HINCRBY").arg(self.keys.deaths()).arg(&entry.id).arg(1);
        }
        let deaths: Vec<u32> = pipe.query(connection)?;
        let mut claimed = Vec::new();
        for (entry, deaths) in entries.into_iter().zip(deaths) {
            tracing::warn!(
                "took over task entry {} after its host died ({deaths} so far)",
                entry.id
            );
            if deaths >= self.serve.cluster.max_attempts {
                self.set_aside(connection, &entry, deaths)?;
            } else {
                claimed.push((entry, deaths));
            }
        }
        Ok(claimed)
    }

    /// Gives back what the tasks of hosts whose heartbeat is gone held, each dead host by one
    /// survivor (a lock per dead host), and forgets those hosts.
    fn reap_dead_hosts(&self, connection: &mut Connection) {
        let mut reaped = || -> redis::RedisResult<()> {
            let hosts: Vec<String> = redis::cmd("ZRANGE")
                .arg(self.keys.hosts())
                .arg(0)
                .arg(-1)
                .query(connection)?;
            for host in hosts.into_iter().filter(|host| *host != self.serve.id) {
                let alive: bool = redis::cmd("EXISTS")
                    .arg(self.keys.host(&host))
                    .query(connection)?;
                if alive {
                    continue;
                }
                let locked: Option<String> = redis::cmd("SET")
                    .arg(self.keys.key(format_args!("reap:{host}")))
                    .arg(&self.serve.id)
                    .arg("NX")
                    .arg("PX")
                    .arg(30_000)
                    .query(connection)?;
                if locked.is_none() {
                    continue;
                }
                match self.queues.reap(&host) {
                    Ok(0) => {}
                    Ok(count) => {
                        tracing::warn!("gave back {count} queue items that tasks of dead host {host} held")
                    }
                    Err(e) => {
                        tracing::warn!("cannot give back what dead host {host} held: {e}");
                        continue;
                    }
                }
                redis::cmd("ZREM")
                    .arg(self.keys.hosts())
                    .arg(&host)
                    .exec(connection)?;
            }
            Ok(())
        };
        if let Err(e) = reaped() {
            tracing::warn!("cannot look for dead hosts: {}", self.serve.cluster.error(e));
        }
    }

    /// Fails a task whose hosts died too often, and keeps it in the dead-letter stream.
    fn set_aside(&self, connection: &mut Connection, entry: &Entry, deaths: u32) -> redis::RedisResult<()> {
        let (Some(run), Some(task)) = (entry.text("run"), entry.text("task").and_then(|t| t.parse().ok()))
        else {
            return self.discard(connection, entry);
        };
        let finished = Finished::unrun(
            task,
            &self.serve.id,
            Err(TaskError::HostDied { attempts: deaths }),
            deaths,
        );
        self.complete_now(connection, entry, run, finished)?;
        redis::cmd("XADD")
            .arg(self.keys.dead())
            .arg("MAXLEN")
            .arg("~")
            .arg(10_000)
            .arg("*")
            .arg("run")
            .arg(run)
            .arg("task")
            .arg(task)
            .arg("entry")
            .arg(&entry.id)
            .arg("attempts")
            .arg(deaths)
            .exec(connection)?;
        redis::cmd("HDEL")
            .arg(self.keys.deaths())
            .arg(&entry.id)
            .exec(connection)
    }

    /// Drops an entry that is no task of this version's.
    fn discard(&self, connection: &mut Connection, entry: &Entry) -> redis::RedisResult<()> {
        tracing::warn!("task entry {} is not one of this version's; dropped", entry.id);
        redis::pipe()
            .cmd("XACK")
            .arg(self.keys.tasks())
            .arg(GROUP)
            .arg(&entry.id)
            .cmd("XDEL")
            .arg(self.keys.tasks())
            .arg(&entry.id)
            .exec(connection)
    }

    /// Reads new entries, at most `room`, blocking a while for them.
    fn read_new(&self, connection: &mut Connection, room: usize) -> redis::RedisResult<Vec<(Entry, u32)>> {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.serve.id)
            .arg("COUNT")
            .arg(room)
            .arg("BLOCK")
            .arg(READ_BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(self.keys.tasks())
            .arg(">")
            .query(connection)?;
        Ok(wire::read_entries(reply)
            .into_iter()
            .map(|entry| (entry, 0))
            .collect())
    }

    /// Starts the entries taken on the local pools of their components.
    fn start(&self, connection: &mut Connection, entries: Vec<(Entry, u32)>) {
        if entries.is_empty() {
            return;
        }
        let stopped = match self.stopped_runs(connection, &entries) {
            Ok(stopped) => stopped,
            Err(e) => {
                // Unknown: they run; a cancelled run's submitter drops their results.
                tracing::warn!("{}", self.serve.cluster.error(e));
                HashSet::new()
            }
        };
        // Entries of one component and metering go to its pool in one submission.
        let mut groups: HashMap<PoolKey, Vec<Taken>> = HashMap::new();
        for (entry, prior) in entries {
            let decoded = (
                entry.text("run").map(str::to_owned),
                entry.text("task").and_then(|t| t.parse::<TaskId>().ok()),
                entry.text("comp").map(str::to_owned),
                entry
                    .fields
                    .get("spec")
                    .and_then(|spec| postcard::from_bytes::<Spec>(spec).ok()),
            );
            let (run, task, digest, spec) = match decoded {
                (Some(run), Some(task), Some(digest), Some(spec)) => (run, task, digest, spec),
                // A task of another version's: its submitter hears why it did not run.
                (Some(run), Some(task), _, _) => {
                    let failure =
                        TaskError::Failed("the host cannot read the task (another poolhost version?)".into());
                    let finished = Finished::unrun(task, &self.serve.id, Err(failure), prior);
                    self.complete_now_logged(connection, &entry, &run, finished);
                    continue;
                }
                _ => {
                    let _ = self.discard(connection, &entry);
                    continue;
                }
            };
            if stopped.contains(&run) {
                let finished = Finished::unrun(task, &self.serve.id, Err(TaskError::Cancelled), prior);
                self.complete_now_logged(connection, &entry, &run, finished);
                continue;
            }
            let metered = spec.options.fuel.is_some() || self.serve.limits.fuel.is_some();
            groups.entry((digest, metered)).or_default().push(Taken {
                entry,
                prior,
                task,
                spec,
            });
        }
        for ((digest, metered), tasks) in groups {
            if let Err(failure) = self.ensure_pool(connection, &digest, metered) {
                for Taken {
                    entry, prior, task, ..
                } in tasks
                {
                    let run = entry.text("run").unwrap_or_default().to_owned();
                    let finished = Finished::unrun(task, &self.serve.id, Err(failure.clone()), prior);
                    self.complete_now_logged(connection, &entry, &run, finished);
                }
                continue;
            }
            self.submit(&digest, metered, tasks);
        }
    }

    /// The runs among `entries` whose submitters cancelled them.
    fn stopped_runs(
        &self,
        connection: &mut Connection,
        entries: &[(Entry, u32)],
    ) -> redis::RedisResult<HashSet<String>> {
        let runs: HashSet<&str> = entries
            .iter()
            .filter_map(|(entry, _)| entry.text("run"))
            .collect();
        let runs: Vec<&str> = runs.into_iter().collect();
        let mut pipe = redis::pipe();
        for run in &runs {
            pipe.cmd("EXISTS").arg(self.keys.stop(run));
        }
        let exists: Vec<bool> = pipe.query(connection)?;
        Ok(runs
            .into_iter()
            .zip(exists)
            .filter(|(_, stopped)| *stopped)
            .map(|(run, _)| run.to_owned())
            .collect())
    }

    /// Makes sure a local pool of component `digest` runs, fetching and compiling it if need be;
    /// the failure of its tasks otherwise.
    fn ensure_pool(&self, connection: &mut Connection, digest: &str, metered: bool) -> Result<(), TaskError> {
        let key = (digest.to_owned(), metered);
        let evicted: Vec<LocalPool> = {
            let mut state = self.lock();
            if state.pools.contains_key(&key) {
                return Ok(());
            }
            let idle: Vec<PoolKey> = match state.pools.len() >= MAX_POOLS {
                true => state
                    .pools
                    .iter()
                    .filter(|(_, pool)| pool.held == 0)
                    .map(|(key, _)| key.clone())
                    .collect(),
                false => Vec::new(),
            };
            idle.iter().filter_map(|key| state.pools.remove(key)).collect()
        };
        // Their workers are stopped with the lock let go: the other threads go on meanwhile.
        drop(evicted);
        let fetched: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.keys.component(digest))
            .query(connection)
            .map_err(|e| {
                TaskError::Failed(format!(
                    "cannot fetch the component: {}",
                    self.serve.cluster.error(e)
                ))
            })?;
        let bytes = fetched.ok_or_else(|| {
            TaskError::Failed(format!(
                "component {digest} is not stored in the cluster (expired?)"
            ))
        })?;
        if wire::digest(&bytes) != digest {
            return Err(TaskError::Failed(format!(
                "the bytes stored as component {digest} do not have that digest; refused"
            )));
        }
        let name = format!("component {}", &digest[..12]);
        let program = self
            .serve
            .loader
            .clone()
            .metered(metered)
            .from_bytes(&name, &bytes)
            .map_err(|e| TaskError::Failed(format!("cannot load {name}: {e}")))?;
        let output = Arc::new(OutputBuffers::default());
        let sink = output.clone();
        let mut builder = Pool::builder()
            .workers(self.serve.workers)
            .program(program)
            .grants(self.serve.grants.clone())
            .manager(self.manager.clone())
            .on_output(move |task, stream, bytes| sink.write(task, stream, bytes));
        if let Some(path) = &self.serve.worker_program {
            builder = builder.worker_program(path);
        }
        let pool = builder
            .build()
            .map_err(|e| TaskError::Failed(format!("cannot start workers for {name}: {e}")))?;
        tracing::info!("started {} workers for {name}", pool.workers());
        self.lock().pools.insert(
            key,
            LocalPool {
                pool,
                output,
                held: 0,
            },
        );
        Ok(())
    }

    /// Submits tasks to the local pool of `digest`.
    fn submit(&self, digest: &str, metered: bool, tasks: Vec<Taken>) {
        let mut state = self.lock();
        let state = &mut *state;
        let pool = state
            .pools
            .get_mut(&(digest.to_owned(), metered))
            .expect("the pool was made just now");
        // One submission per distinct options (a run's tasks share theirs).
        let mut by_options: Vec<(TaskOptions, Vec<Taken>)> = Vec::new();
        for task in tasks {
            let options = self.capped(task.spec.options);
            match by_options.iter_mut().find(|(o, _)| *o == options) {
                Some((_, list)) => list.push(task),
                None => by_options.push((options, vec![task])),
            }
        }
        for (options, tasks) in by_options {
            let mut keys = Vec::with_capacity(tasks.len());
            let mut calls = Vec::with_capacity(tasks.len());
            for Taken {
                entry,
                prior,
                task,
                spec,
            } in tasks
            {
                let key = state.next_key;
                state.next_key += 1;
                keys.push(key);
                calls.push(spec.call);
                let run = entry.text("run").unwrap_or_default().to_owned();
                state.held.insert(
                    key,
                    Held {
                        entry: entry.id,
                        run,
                        task,
                        prior,
                        pool: (digest.to_owned(), metered),
                        result: Err(TaskError::Failed("not submitted".into())),
                        output: pool.output.clone(),
                        lost: false,
                    },
                );
                pool.held += 1;
            }
            let finished = self.finished.clone();
            let notify_keys = keys.clone();
            let notify: Notify = Arc::new(move |index| {
                let _ = finished.send(notify_keys[index]);
            });
            match pool.pool.submit_each(calls, options, notify) {
                Ok(results) => {
                    for (key, result) in keys.iter().zip(results) {
                        if let Some(held) = state.held.get_mut(key) {
                            held.result = Ok(result);
                        }
                    }
                }
                Err(e) => {
                    // The call does not fit the component, say: each task fails, saying why.
                    let failure = TaskError::Failed(e.to_string());
                    for key in keys {
                        if let Some(held) = state.held.get_mut(&key) {
                            held.result = Err(failure.clone());
                        }
                        let _ = self.finished.send(key);
                    }
                }
            }
        }
    }

    /// A submitter's options within the host's limits.
    fn capped(&self, asked: TaskOptions) -> TaskOptions {
        TaskOptions {
            timeout: cap(asked.timeout, self.serve.limits.timeout),
            max_memory: cap(asked.max_memory, self.serve.limits.max_memory),
            fuel: cap(asked.fuel, self.serve.limits.fuel),
            retries: asked.retries,
        }
    }

    /// Completes a task that did not run here, on the taker's connection.
    fn complete_now(
        &self,
        connection: &mut Connection,
        entry: &Entry,
        run: &str,
        finished: Finished,
    ) -> redis::RedisResult<()> {
        let ok = finished.result.is_ok();
        let payload = postcard::to_allocvec(&finished).expect("a result serialises");
        let outcome: i64 = complete_script()
            .key(self.keys.tasks())
            .key(self.keys.results(run))
            .key(self.keys.done(run))
            .key(self.keys.stats())
            .key(self.keys.deaths())
            .arg(GROUP)
            .arg(&entry.id)
            .arg(&self.serve.id)
            .arg(finished.task)
            .arg(payload)
            .arg(RESULT_TTL_SECS)
            .arg(if ok { "done" } else { "failed" })
            .invoke(connection)?;
        if outcome == 0 {
            tracing::warn!(
                "task entry {} was taken over by another host; its result is dropped",
                entry.id
            );
        }
        Ok(())
    }

    fn complete_now_logged(&self, connection: &mut Connection, entry: &Entry, run: &str, finished: Finished) {
        if let Err(e) = self.complete_now(connection, entry, run, finished) {
            tracing::warn!(
                "cannot complete task entry {}: {}",
                entry.id,
                self.serve.cluster.error(e)
            );
        }
    }

    /// The reporter's loop: completes the tasks the local pools finish, in batches; ends when
    /// the host takes nothing more and holds nothing. Returns how many it completed.
    fn report(&self, mut connection: Connection, results: Receiver<u64>) -> u64 {
        let script = complete_script();
        let mut completed = 0;
        loop {
            let first = match results.recv_timeout(READ_BLOCK) {
                Ok(key) => key,
                Err(RecvTimeoutError::Timeout) => {
                    let state = self.lock();
                    if (!state.taking && state.held.is_empty()) || state.failed {
                        return completed;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return completed,
            };
            let mut keys = vec![first];
            keys.extend(results.try_iter().take(REPORT_BATCH - 1));
            let batch = self.finished_batch(&keys);
            self.room.notify_all();
            if !batch.is_empty() {
                completed += self.send_results(&mut connection, &script, batch);
            }
        }
    }

    /// The results of the held tasks `keys`, which are let go; those lost to another host are
    /// dropped.
    fn finished_batch(&self, keys: &[u64]) -> Vec<(String, String, Finished)> {
        let mut state = self.lock();
        let (mut release, mut give_back) = (Vec::new(), Vec::new());
        let mut batch = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(held) = state.held.remove(key) else {
                continue;
            };
            if let Some(pool) = state.pools.get_mut(&held.pool) {
                pool.held = pool.held.saturating_sub(1);
            }
            if held.lost {
                if let Ok(Some(report)) = held.result.as_ref().map(AsyncResult::report) {
                    held.output.take(report.id);
                    // The host that took it over runs it again, with what it had taken.
                    give_back.extend(report.worker);
                }
                tracing::warn!(
                    "task entry {} finished after another host took it over; its result is dropped",
                    held.entry
                );
                continue;
            }
            let finished = match held.result.map(|result| result.report()) {
                Ok(Some(report)) => {
                    // What the task took from queues is its own now.
                    release.extend(report.worker);
                    let output = held.output.take(report.id);
                    Finished::from_report(held.task, &self.serve.id, report, held.prior, output)
                }
                Ok(None) => Finished::unrun(
                    held.task,
                    &self.serve.id,
                    Err(TaskError::Failed("the host lost the task's result".into())),
                    held.prior,
                ),
                Err(failure) => Finished::unrun(held.task, &self.serve.id, Err(failure), held.prior),
            };
            batch.push((held.entry, held.run, finished));
        }
        // Redis is reached with the lock let go: the other threads go on meanwhile. Until the
        // workers' held items are let go, their places stay taken: a next task on the same
        // worker must not have its items let go with them.
        let releasing = release.len() + give_back.len();
        state.releasing += releasing;
        drop(state);
        for worker in release {
            self.manager.release(worker);
        }
        for worker in give_back {
            self.queues.give_back(worker);
        }
        self.lock().releasing -= releasing;
        batch
    }

    /// Completes `batch` in one round trip, trying again while the server is away (the entries
    /// stay this host's until the visibility time passes). Returns how many were recorded.
    fn send_results(
        &self,
        connection: &mut Connection,
        script: &redis::Script,
        batch: Vec<(String, String, Finished)>,
    ) -> u64 {
        let mut pipe = redis::pipe();
        for (entry, run, finished) in &batch {
            let payload = postcard::to_allocvec(finished).expect("a result serialises");
            pipe.cmd("EVALSHA")
                .arg(script.get_hash())
                .arg(5)
                .arg(self.keys.tasks())
                .arg(self.keys.results(run))
                .arg(self.keys.done(run))
                .arg(self.keys.stats())
                .arg(self.keys.deaths())
                .arg(GROUP)
                .arg(entry)
                .arg(&self.serve.id)
                .arg(finished.task)
                .arg(payload)
                .arg(RESULT_TTL_SECS)
                .arg(if finished.result.is_ok() { "done" } else { "failed" });
        }
        let started = Instant::now();
        let mut retried = false;
        loop {
            match pipe.query::<Vec<i64>>(connection) {
                Ok(outcomes) => {
                    let mut recorded = 0;
                    for ((entry, run, finished), outcome) in batch.iter().zip(&outcomes) {
                        // Tried again after a reply was lost: the first try may have recorded it.
                        let ours = *outcome == 1
                            || (retried
                                && *outcome == 0
                                && redis::cmd("HEXISTS")
                                    .arg(self.keys.results(run))
                                    .arg(finished.task)
                                    .query::<bool>(connection)
                                    .unwrap_or(false));
                        if ours {
                            recorded += 1;
                        } else if *outcome == 0 {
                            tracing::warn!(
                                "task entry {entry} was taken over by another host; its result is dropped"
                            );
                        }
                    }
                    return recorded;
                }
                Err(e) if e.code() == Some("NOSCRIPT") => {
                    if let Err(e) = script.load(connection) {
                        tracing::warn!("{}", self.serve.cluster.error(e));
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        "cannot report results: {}; trying again",
                        self.serve.cluster.error(e)
                    );
                    if started.elapsed() > self.serve.cluster.timing().1 * 2 {
                        // Past the visibility time they are another host's anyway.
                        return 0;
                    }
                    thread::sleep(Duration::from_millis(200));
                    if let Ok(made) = self.serve.cluster.command_connection() {
                        *connection = made;
                    }
                    retried = true;
                }
            }
        }
    }

    /// The heartbeat's loop, until the host has finished.
    fn beat(&self, mut connection: Connection, stop: &ServeStop) {
        let (period, _) = self.serve.cluster.timing();
        let keep = keep_script();
        loop {
            {
                let state = self.lock();
                let state = self
                    .room
                    .wait_timeout_while(state, period, |state| !state.finished)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                if state.finished {
                    return;
                }
            }
            let _ = stop.draining();
            self.beat_once(&mut connection);
            let entries: Vec<String> = {
                let state = self.lock();
                let held = state.held.values().map(|held| held.entry.clone());
                held.chain(state.starting.iter().cloned()).collect()
            };
            if entries.is_empty() {
                continue;
            }
            let lost: Result<Vec<String>, _> = keep
                .key(self.keys.tasks())
                .arg(GROUP)
                .arg(&self.serve.id)
                .arg(&entries)
                .invoke(&mut connection);
            match lost {
                Ok(lost) if !lost.is_empty() => {
                    let lost: HashSet<String> = lost.into_iter().collect();
                    let mut state = self.lock();
                    let state = &mut *state;
                    for held in state.held.values_mut().filter(|held| lost.contains(&held.entry)) {
                        if held.lost {
                            continue;
                        }
                        held.lost = true;
                        // Its result would be dropped: its worker is freed for other tasks.
                        let pool = state.pools.get(&held.pool);
                        match (pool, &held.result) {
                            (Some(local), Ok(result)) => {
                                local.pool.abandon(result.id());
                                tracing::warn!(
                                    "task entry {} was taken over by another host; stopped its run here",
                                    held.entry
                                );
                            }
                            _ => tracing::warn!("task entry {} was taken over by another host", held.entry),
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("cannot renew the host's tasks: {}", self.serve.cluster.error(e));
                    if let Ok(made) = self.serve.cluster.command_connection() {
                        connection = made;
                    }
                }
            }
        }
    }

    /// Says the host is alive: its key, with a life of the visibility time, and its place in the
    /// pool's set of hosts.
    fn beat_once(&self, connection: &mut Connection) {
        let (_, visibility) = self.serve.cluster.timing();
        let running = self.lock().held.len();
        let info = serde_json::json!({
            "workers": self.serve.workers,
            "running": running,
            "pid": std::process::id(),
        });
        let beat = redis::pipe()
            .cmd("SET")
            .arg(self.keys.host(&self.serve.id))
            .arg(info.to_string())
            .arg("PX")
            .arg(visibility.as_millis() as u64)
            .ignore()
            .cmd("ZADD")
            .arg(self.keys.hosts())
            .arg(wire::now_ms())
            .arg(&self.serve.id)
            .ignore()
            .exec(connection);
        if let Err(e) = beat {
            tracing::warn!(
                "cannot send the host's heartbeat: {}",
                self.serve.cluster.error(e)
            );
        }
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
