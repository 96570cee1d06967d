//! The submitter: a [`Dispatch`] that sends a pool's tasks to the cluster and takes their
//! results back. The component goes first, stored by its digest; each task becomes an entry of
//! the pool's stream (added in pipelined batches), and a collector thread blocks on the run's
//! done list, replays each task's output through the pool's sink and completes its result.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use redis::{Connection, Value};

use super::wire::{self, Finished, Spec};
use super::{COMPONENT_TTL_SECS, Cluster, ClusterError, Keys, MAX_COMPONENT, RESULT_TTL_SECS};
use crate::manager::Manager;
use crate::pool::{AsyncResult, Dispatch, Notify, PoolError, ResultCell};
use crate::runtime::{OutputSink, Program};
use crate::task::{Call, Grants, TaskError, TaskId, TaskOptions};

/// Entries added to the stream in one round trip.
const SUBMIT_BATCH: usize = 512;

/// Results taken from the done list in one round trip, after the one a blocking pop waited for.
const COLLECT_BATCH: usize = 1024;

/// How long the collector blocks on the done list before it looks at the run's state again.
const COLLECT_WAIT: Duration = Duration::from_millis(250);

/// How long the collector tries to reach a server it lost before it fails the tasks it waits for.
const RECONNECT_FOR: Duration = Duration::from_secs(30);

/// A pool's tasks sent to the cluster.
pub(crate) struct Submitter {
    cluster: Cluster,
    keys: Keys,
    /// This run's id: the submitter's own results list and stop key are named by it.
    run: String,
    digest: String,
    program: Program,
    manager: Manager,
    options: TaskOptions,
    grants: Grants,
    output: OutputSink,
    cancel_after: Option<usize>,
    held_budget: Option<usize>,
    connection: Mutex<Connection>,
    state: Mutex<State>,
    changed: Condvar,
    collector: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Closed,
    Terminated,
}

struct State {
    phase: Phase,
    next: TaskId,
    waiting: HashMap<TaskId, Waiting>,
    failures: usize,
    cancelled: bool,
    /// What the results not yet taken weigh, against `held_budget`.
    held: usize,
    /// Results came in since a submitter waiting for room last looked.
    settled: u64,
}

struct Waiting {
    call: Call,
    cell: Arc<ResultCell>,
    weighed: bool,
}

impl Submitter {
    /// Stores the component and starts the collector.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        cluster: Cluster,
        program: Program,
        manager: Manager,
        options: TaskOptions,
        output: OutputSink,
        cancel_after: Option<usize>,
        held_budget: Option<usize>,
    ) -> Result<Arc<Submitter>, ClusterError> {
        let source = program.source();
        if source.len() > MAX_COMPONENT {
            return Err(ClusterError::ComponentTooLarge(source.len()));
        }
        let mut connection = cluster.command_connection()?;
        cluster.ensure_group(&mut connection)?;
        let keys = cluster.keys();
        let digest = wire::digest(source);
        let component = keys.component(&digest);
        // Stored once: later runs only extend its life.
        let stored: bool = redis::cmd("EXPIRE")
            .arg(&component)
            .arg(COMPONENT_TTL_SECS)
            .query(&mut connection)
            .map_err(|e| cluster.error(e))?;
        if !stored {
            redis::cmd("SET")
                .arg(&component)
                .arg(source)
                .arg("EX")
                .arg(COMPONENT_TTL_SECS)
                .query::<Value>(&mut connection)
                .map_err(|e| cluster.error(e))?;
        }
        let submitter = Arc::new(Submitter {
            keys,
            run: run_id(),
            digest,
            program,
            manager,
            options,
            grants: Grants::default(),
            output,
            cancel_after,
            held_budget,
            connection: Mutex::new(connection),
            state: Mutex::new(State {
                phase: Phase::Running,
                next: 0,
                waiting: HashMap::new(),
                failures: 0,
                cancelled: false,
                held: 0,
                settled: 0,
            }),
            changed: Condvar::new(),
            collector: Mutex::new(None),
            cluster,
        });
        let collector = submitter.clone();
        let handle = thread::Builder::new()
            .name("poolhost-collector".into())
            .spawn(move || collector.collect())
            .map_err(|e| ClusterError::Redis {
                url: submitter.cluster.shown.clone(),
                reason: format!("cannot start the collector thread: {e}"),
            })?;
        *submitter.collector.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle);
        Ok(submitter)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds the entries of tasks `first..` to the stream.
    fn send(&self, first: TaskId, calls: &[Call], options: TaskOptions) -> Result<(), ClusterError> {
        let tasks = self.keys.tasks();
        let mut connection = self.connection.lock().unwrap_or_else(PoisonError::into_inner);
        for (offset, chunk) in calls.chunks(SUBMIT_BATCH).enumerate() {
            let mut pipe = redis::pipe();
            for (i, call) in chunk.iter().enumerate() {
                let id = first + (offset * SUBMIT_BATCH + i) as TaskId;
                let spec = postcard::to_allocvec(&Spec {
                    call: call.clone(),
                    options,
                })
                .expect("a task serialises");
                pipe.cmd("XADD")
                    .arg(&tasks)
                    .arg("*")
                    .arg("run")
                    .arg(&self.run)
                    .arg("task")
                    .arg(id)
                    .arg("comp")
                    .arg(&self.digest)
                    .arg("spec")
                    .arg(spec)
                    .ignore();
            }
            pipe.exec(&mut *connection).map_err(|e| self.cluster.error(e))?;
        }
        Ok(())
    }

    /// The collector: takes results off the run's done list until every task has one, or the
    /// pool was terminated.
    fn collect(self: Arc<Self>) {
        let done = self.keys.done(&self.run);
        let mut connection = None;
        let mut lost_since: Option<Instant> = None;
        loop {
            {
                let mut state = self.lock();
                if state.phase == Phase::Terminated
                    || (state.phase == Phase::Closed && state.waiting.is_empty())
                {
                    return;
                }
                // Results come no faster than the pool's user takes them.
                while self.held_budget.is_some_and(|budget| state.held >= budget)
                    && state.phase != Phase::Terminated
                {
                    state = self
                        .changed
                        .wait_timeout(state, COLLECT_WAIT)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
            if connection.is_none() {
                let made = self.cluster.connect(COLLECT_WAIT + Duration::from_secs(10));
                let caught_up = made.and_then(|mut made| match lost_since {
                    Some(_) => self
                        .catch_up(&mut made)
                        .map(|()| made)
                        .map_err(|e| self.cluster.error(e)),
                    None => Ok(made),
                });
                match caught_up {
                    Ok(made) => connection = Some(made),
                    Err(e) => {
                        if self.lost(&mut lost_since, &e) {
                            return;
                        }
                        continue;
                    }
                }
            }
            let popped = self.pop(connection.as_mut().expect("connected above"), &done);
            match popped {
                Ok(()) => lost_since = None,
                Err(e) => {
                    // A new connection next time: this one may be half way through a reply.
                    connection = None;
                    if self.lost(&mut lost_since, &self.cluster.error(e)) {
                        return;
                    }
                }
            }
        }
    }

    /// Waits for the next finished tasks: one blocking pop of the done list, then what else
    /// is there; their results are taken from the results hash, and dropped from it once
    /// handled.
    fn pop(&self, connection: &mut Connection, done: &str) -> redis::RedisResult<()> {
        let first: Value = redis::cmd("BLPOP")
            .arg(done)
            .arg(COLLECT_WAIT.as_secs_f64())
            .query(connection)?;
        let mut pair = wire::array(first).into_iter();
        let Some(first) = pair.nth(1).and_then(wire::text) else {
            return Ok(());
        };
        let mut ids = vec![first];
        let more: Value = redis::cmd("LPOP")
            .arg(done)
            .arg(COLLECT_BATCH)
            .query(connection)?;
        ids.extend(wire::array(more).into_iter().filter_map(wire::text));
        self.take_results(connection, &ids)
    }

    /// Handles the results of tasks `ids` that the results hash holds, and drops them from it.
    fn take_results(&self, connection: &mut Connection, ids: &[String]) -> redis::RedisResult<()> {
        let results = self.keys.results(&self.run);
        for chunk in ids.chunks(COLLECT_BATCH) {
            let payloads: Vec<Option<Vec<u8>>> =
                redis::cmd("HMGET").arg(&results).arg(chunk).query(connection)?;
            let mut handled = Vec::new();
            for (id, payload) in chunk.iter().zip(payloads) {
                if let (Some(payload), Ok(task)) = (payload, id.parse()) {
                    self.finished(task, &payload);
                    handled.push(id);
                }
            }
            if !handled.is_empty() {
                redis::cmd("HDEL").arg(&results).arg(handled).exec(connection)?;
            }
        }
        Ok(())
    }

    /// After a lost connection: the results of waiting tasks that came meanwhile, or whose ids
    /// were popped in a reply that never arrived.
    fn catch_up(&self, connection: &mut Connection) -> redis::RedisResult<()> {
        let ids: Vec<String> = self.lock().waiting.keys().map(ToString::to_string).collect();
        self.take_results(connection, &ids)
    }

    /// The server could not be reached: tries again, with a pause, for a while; then fails
    /// every task still waiting (true: the collector is done).
    fn lost(&self, since: &mut Option<Instant>, error: &ClusterError) -> bool {
        let since = *since.get_or_insert_with(Instant::now);
        if since.elapsed() < RECONNECT_FOR {
            tracing::warn!("{error}; trying again");
            thread::sleep(Duration::from_millis(200));
            return false;
        }
        let waiting: Vec<(TaskId, Waiting)> = {
            let mut state = self.lock();
            // No task submitted from now on could be collected.
            state.phase = Phase::Terminated;
            state.waiting.drain().collect()
        };
        let failure = TaskError::Failed(format!("the cluster's server was lost: {error}"));
        for (id, task) in waiting {
            self.complete(task, Finished::unrun(id, "", Err(failure.clone()), 0));
        }
        self.changed.notify_all();
        true
    }

    /// The result of task `task` came in.
    fn finished(&self, task: TaskId, payload: &[u8]) {
        let Some(waiting) = self.lock().waiting.remove(&task) else {
            // A task this submitter no longer waits for (terminated), or a result handled
            // already (caught up after a lost connection).
            return;
        };
        let finished = match postcard::from_bytes::<Finished>(payload) {
            Ok(finished) if finished.task == task => finished,
            _ => {
                let failure =
                    TaskError::Failed("its result cannot be read (another poolhost version?)".into());
                Finished::unrun(task, "", Err(failure), 0)
            }
        };
        self.complete(waiting, finished);
    }

    /// Replays the task's output through the sink and leaves its report.
    fn complete(&self, waiting: Waiting, finished: Finished) {
        let id = finished.task;
        let (mut report, output) = finished.into_report(waiting.call);
        report.id = id;
        for chunk in output {
            (self.output)(id, chunk.stream, &chunk.bytes);
        }
        let failed = report.result.is_err();
        let weight = match waiting.weighed && self.held_budget.is_some() {
            true => report_weight(&report),
            false => 0,
        };
        let counted = waiting.cell.complete(weight, Box::new(report));
        let mut state = self.lock();
        state.held += counted;
        state.settled += 1;
        if failed {
            state.failures += 1;
            if self.cancel_after.is_some_and(|n| state.failures >= n) && !state.cancelled {
                self.cancel(state);
            }
        }
        self.changed.notify_all();
    }

    /// Cancels the run: no more submissions, and the hosts report the tasks none has taken yet
    /// as cancelled.
    fn cancel(&self, mut state: MutexGuard<'_, State>) {
        state.cancelled = true;
        if state.phase == Phase::Running {
            state.phase = Phase::Closed;
        }
        drop(state);
        self.stop_run();
    }

    /// Tells the hosts that this run's tasks not yet started are cancelled.
    fn stop_run(&self) {
        let mut connection = self.connection.lock().unwrap_or_else(PoisonError::into_inner);
        let stopped = redis::cmd("SET")
            .arg(self.keys.stop(&self.run))
            .arg(1)
            .arg("EX")
            .arg(RESULT_TTL_SECS)
            .query::<Value>(&mut *connection);
        if let Err(e) = stopped {
            tracing::warn!("cannot cancel the run's tasks: {}", self.cluster.error(e));
        }
    }

    /// Removes what the run left in Redis.
    fn clean_up(&self) {
        let mut connection = self.connection.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = redis::cmd("DEL")
            .arg(self.keys.results(&self.run))
            .arg(self.keys.done(&self.run))
            .query::<Value>(&mut *connection);
    }

    fn join_collector(&self) {
        let handle = self
            .collector
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle
            && handle.thread().id() != thread::current().id()
        {
            let _ = handle.join();
        }
    }
}

/// What a report weighs against the budget of held results: about its size.
fn report_weight(report: &crate::TaskReport) -> usize {
    let value = match &report.result {
        Ok(Some(value)) => value.to_string().len(),
        Ok(None) => 0,
        Err(error) => error.to_string().len(),
    };
    64 + value
}

/// A run id unlikely to be any other's: the time, this process and a counter.
fn run_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = format!(
        "{}-{}-{}-{:?}",
        wire::now_ms(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        Instant::now()
    );
    wire::digest(seed.as_bytes())[..16].to_owned()
}

impl Dispatch for Submitter {
    fn program(&self) -> &Program {
        &self.program
    }

    fn manager(&self) -> &Manager {
        &self.manager
    }

    fn options(&self) -> TaskOptions {
        self.options
    }

    fn grants(&self) -> &Grants {
        &self.grants
    }

    fn output(&self) -> &OutputSink {
        &self.output
    }

    fn submit(
        &self,
        calls: Vec<Call>,
        _chunksize: usize,
        options: TaskOptions,
        notify: Option<Notify>,
    ) -> Result<Vec<AsyncResult>, PoolError> {
        if options.fuel.is_some() && !self.program.metered() {
            return Err(PoolError::NotMetered);
        }
        let calls = calls
            .into_iter()
            .map(|call| self.program.prepare(call))
            .collect::<Result<Vec<_>, _>>()?;
        let weighed = notify.is_some();
        let mut state = self.lock();
        if state.phase != Phase::Running {
            return Err(PoolError::NotRunning);
        }
        let first = state.next;
        state.next += calls.len() as TaskId;
        let mut results = Vec::with_capacity(calls.len());
        for (index, call) in calls.iter().enumerate() {
            let cell = Arc::new(ResultCell::new(index, notify.clone()));
            let id = first + index as TaskId;
            state.waiting.insert(
                id,
                Waiting {
                    call: call.clone(),
                    cell: cell.clone(),
                    weighed,
                },
            );
            results.push(AsyncResult::new(id, cell));
        }
        drop(state);
        if let Err(e) = self.send(first, &calls, options) {
            let mut state = self.lock();
            for id in first..first + calls.len() as TaskId {
                state.waiting.remove(&id);
            }
            return Err(PoolError::Cluster(e));
        }
        Ok(results)
    }

    fn release(&self, weight: usize) {
        let mut state = self.lock();
        state.held = state.held.saturating_sub(weight);
        drop(state);
        self.changed.notify_all();
    }

    fn wait_for_room(&self, max: usize) {
        let mut state = self.lock();
        let mut settled = state.settled;
        while state.waiting.len() >= max.max(1) && state.phase == Phase::Running {
            let (waited, timeout) = self
                .changed
                .wait_timeout(state, Duration::from_secs(1))
                .unwrap_or_else(PoisonError::into_inner);
            state = waited;
            if timeout.timed_out() && state.settled == settled {
                // Its tasks may be waiting for the submitter: it goes on.
                return;
            }
            settled = state.settled;
            if state.waiting.len() <= max / 2 {
                return;
            }
        }
    }

    fn cancel_pending(&self) -> usize {
        self.cancel(self.lock());
        self.changed.notify_all();
        // The hosts report each task cancelled as they reach it; how many that will be is
        // not known here.
        0
    }

    /// A submitter abandons nothing: its tasks are the hosts'.
    fn abandon(&self, _id: TaskId) {}

    fn close(&self) {
        let mut state = self.lock();
        if state.phase == Phase::Running {
            state.phase = Phase::Closed;
        }
    }

    fn terminate(&self) {
        let mut state = self.lock();
        let first = state.phase != Phase::Terminated;
        state.phase = Phase::Terminated;
        let waiting: Vec<(TaskId, Waiting)> = state.waiting.drain().collect();
        drop(state);
        if first && !waiting.is_empty() {
            self.stop_run();
        }
        for (id, task) in waiting {
            self.complete(task, Finished::unrun(id, "", Err(TaskError::Terminated), 0));
        }
        self.changed.notify_all();
        self.join_collector();
        if first {
            self.clean_up();
        }
    }

    fn join(&self) -> Result<(), PoolError> {
        let mut state = self.lock();
        if state.phase == Phase::Running {
            return Err(PoolError::StillRunning);
        }
        while !state.waiting.is_empty() {
            state = self.changed.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        drop(state);
        self.join_collector();
        self.clean_up();
        Ok(())
    }

    fn is_finished(&self) -> bool {
        let state = self.lock();
        state.phase != Phase::Running && state.waiting.is_empty()
    }

    fn worker_pids(&self) -> Vec<u32> {
        Vec::new()
    }
}
