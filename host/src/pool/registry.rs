//! The registry: what the pool's handles and threads share. It holds the [`Scheduler`] under
//! one lock with the I/O ends of the ready workers, carries out the scheduler's actions (frames
//! are queued under the lock and written after it, so a worker gets them in the order the
//! scheduler decided them and no write happens under the lock), and owns the pool's threads:
//! a supervisor per worker slot and the timekeeper ([`super::supervisor`]).

use std::mem;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::process::{self, SharedProcess};
use super::result::{AsyncResult, Notify, ResultCell};
use super::scheduler::{Action, Now, Phase, Scheduler};
use super::supervisor::FrameWriter;
use super::{Dispatch, PoolError};
use crate::ipc::{self, ToWorker};
use crate::manager::{Manager, WaiterId};
use crate::runtime::{OutputSink, Program};
use crate::task::{Call, Grants, TaskId, TaskOptions};

/// How long [`Registry::wait_for_room`] waits for some task to finish before it takes its tasks
/// to be waiting on the submitter.
const STALLED: Duration = Duration::from_secs(1);

/// The tasks of a submission queued first, and the most queued at a time after them: the part
/// grows fourfold from one to the next. (Queued whole, 20 000 calls kept the ready workers
/// waiting 12–17 ms, a twentieth of their run, before the first could start.)
const FIRST_PART: usize = 64;
const LAST_PART: usize = 16_384;

/// What the pool's handles and threads share: see the module's documentation.
pub(super) struct Registry {
    inner: Mutex<Locked>,
    /// Signalled when the last task finishes (for `join`), when room is made for a submitter
    /// waiting for it, when a deadline comes nearer (for the timekeeper), and when the pool
    /// stops (for supervisors waiting to start a worker).
    pub changed: Condvar,
    pub program: Program,
    pub worker_program: PathBuf,
    pub output: OutputSink,
    pub manager: Manager,
    /// The options of tasks submitted without their own.
    pub options: TaskOptions,
    pub grants: Grants,
    pub host_pid: u32,
}

/// What the registry's lock guards.
pub(super) struct Locked {
    pub scheduler: Scheduler<Arc<ResultCell>>,
    /// The I/O ends of each slot's ready worker.
    pub workers: Vec<Option<WorkerEnds>>,
    threads: Vec<JoinHandle<()>>,
    /// When the timekeeper next looks, if it sleeps until a time.
    pub next_look: Option<Instant>,
    /// A task started whose deadline comes before `next_look`: the timekeeper must be woken.
    wake_timekeeper: bool,
    /// Threads waiting in [`Registry::wait_for_room`], and the count of unfinished tasks that
    /// lets them go on.
    room_waiters: usize,
    room_at: usize,
    /// How many tasks had finished when [`Registry::wait_for_room`] last gave up waiting for one.
    stalled_at: Option<u64>,
}

/// The host's ends of a ready worker that threads other than its supervisor use.
pub(super) struct WorkerEnds {
    pub writer: Arc<FrameWriter>,
    pub process: SharedProcess,
    /// The queue operation the worker's task last had parked in the manager (a task makes one
    /// at a time); cancelled if the worker goes, so no item is handed to a task that is gone.
    pub blocked: Option<WaiterId>,
    /// As [`super::process::ReadyWorker::in_sink`]: the timekeeper does not blame the worker for
    /// a result its supervisor has not read.
    pub in_sink: Arc<AtomicBool>,
    /// When the supervisor came back from a sink that held it up: the worker's results wait
    /// unread until then, so its running task's deadline counts from then at the earliest.
    pub resumed: Option<Instant>,
}

/// What to do once the registry's lock is released: write the frames queued to these workers,
/// and let go of these parked queue operations.
#[must_use = "the frames queued under the lock are written by `finish`"]
pub(super) struct AfterLock {
    writers: Vec<Arc<FrameWriter>>,
    cancel: Vec<WaiterId>,
}

impl AfterLock {
    pub fn finish(self, manager: &Manager) {
        for writer in self.writers {
            writer.flush();
        }
        for waiter in self.cancel {
            manager.cancel(waiter);
        }
    }
}

impl Registry {
    /// A registry for `workers` slots; see [`Scheduler::new`] for the rest.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        workers: usize,
        cancel_after: Option<usize>,
        held_budget: Option<usize>,
        program: Program,
        worker_program: PathBuf,
        output: OutputSink,
        manager: Manager,
        options: TaskOptions,
        grants: Grants,
    ) -> Registry {
        Registry {
            inner: Mutex::new(Locked {
                scheduler: Scheduler::new(workers, cancel_after, held_budget),
                workers: (0..workers).map(|_| None).collect(),
                threads: Vec::new(),
                next_look: None,
                wake_timekeeper: false,
                room_waiters: 0,
                room_at: 0,
                stalled_at: None,
            }),
            changed: Condvar::new(),
            program,
            worker_program,
            output,
            manager,
            options,
            grants,
            host_pid: std::process::id(),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Locked> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `event` on the scheduler and carries out its actions: the one way the pool's state
    /// changes.
    pub fn event<T>(&self, event: impl FnOnce(&mut Scheduler<Arc<ResultCell>>) -> T) -> T {
        let mut inner = self.lock();
        let value = event(&mut inner.scheduler);
        let after = self.apply(&mut inner);
        drop(inner);
        after.finish(&self.manager);
        value
    }

    /// Carries out the scheduler's actions, as far as can be under the lock; the rest is for
    /// [`AfterLock::finish`]. Wakes whoever the actions concern.
    pub fn apply(&self, inner: &mut Locked) -> AfterLock {
        let mut after = AfterLock {
            writers: Vec::new(),
            cancel: Vec::new(),
        };
        loop {
            let mut released = 0;
            for action in inner.scheduler.take_actions() {
                match action {
                    Action::Run { slot, frame, .. } => inner.queue(slot, frame, &mut after),
                    Action::Recall { slot } => {
                        let frame = ipc::encode(&ToWorker::Return).expect("a return frame is tiny");
                        inner.queue(slot, frame, &mut after);
                    }
                    Action::Shutdown { slot } => {
                        let frame = ipc::encode(&ToWorker::Shutdown).expect("a shutdown frame is tiny");
                        inner.queue(slot, frame, &mut after);
                    }
                    Action::Kill { slot } => {
                        if let Some(ends) = &inner.workers[slot] {
                            process::kill(&ends.process);
                            // Its supervisor may be holding back the worker's one-way put.
                            after.cancel.extend(ends.blocked);
                        }
                        self.changed.notify_all();
                    }
                    Action::Complete {
                        result,
                        report,
                        weight,
                    } => {
                        // A result of a batch already dropped counts for nothing after all.
                        released += weight - result.complete(weight, report);
                    }
                    Action::Watch(deadline) => {
                        if inner.next_look.is_none_or(|look| deadline < look) {
                            inner.wake_timekeeper = true;
                        }
                    }
                }
            }
            if released == 0 {
                break;
            }
            inner.scheduler.release(released, Now::current());
        }
        self.wake_if_needed(inner);
        after
    }

    /// Wakes `join` if no task is left unfinished, a submitter waiting for room if there is
    /// room, and the timekeeper if a task started whose deadline comes before it meant to look.
    /// Only `join` waits for tasks to finish, and only for the last: waking it for every task
    /// would cost it two context switches per task.
    fn wake_if_needed(&self, inner: &mut Locked) {
        let unfinished = inner.scheduler.unfinished();
        let room = inner.room_waiters > 0 && unfinished <= inner.room_at;
        if unfinished == 0 || room || mem::take(&mut inner.wake_timekeeper) {
            self.changed.notify_all();
        }
    }

    /// Starts one of the pool's threads, which `join` and `terminate` wait for.
    pub fn spawn_thread(&self, name: String, run: impl FnOnce() + Send + 'static) -> Result<(), PoolError> {
        let thread = thread::Builder::new()
            .name(name)
            .spawn(run)
            .map_err(|e| PoolError::Start(format!("cannot start a thread: {e}")))?;
        self.lock().threads.push(thread);
        Ok(())
    }

    fn join_threads(&self) {
        let threads = mem::take(&mut self.lock().threads);
        for thread in threads {
            let _ = thread.join();
        }
    }
}

/// This machine's worker processes: the embedded default of where a pool's tasks go.
impl Dispatch for Registry {
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
        chunksize: usize,
        options: TaskOptions,
        notify: Option<Notify>,
    ) -> Result<Vec<AsyncResult>, PoolError> {
        if options.fuel.is_some() && !self.program.metered() {
            return Err(PoolError::NotMetered);
        }
        // Every call is checked before any is queued: a submission is taken whole or not at all.
        let calls = calls
            .into_iter()
            .map(|call| self.program.prepare(call))
            .collect::<Result<Vec<_>, _>>()?;
        // Queued in parts, growing, so that the first tasks run while the rest are made ready.
        // The first part is queued with the reservation of every task's id, in one step.
        let (count, weighed) = (calls.len(), notify.is_some());
        let (mut calls, mut cells) = (calls.into_iter(), Vec::with_capacity(count));
        let chunksize = chunksize.min(count.max(1));
        let mut part = FIRST_PART.div_ceil(chunksize) * chunksize;
        let mut next_part = |cells: &mut Vec<Arc<ResultCell>>| {
            let start = cells.len();
            let mut chunks: Vec<Vec<_>> = Vec::with_capacity(part.div_ceil(chunksize));
            for (index, call) in (start..count.min(start + part)).zip(calls.by_ref()) {
                let cell = Arc::new(ResultCell::new(index, notify.clone()));
                cells.push(cell.clone());
                match chunks.last_mut() {
                    Some(chunk) if !(index - start).is_multiple_of(chunksize) => chunk.push((call, cell)),
                    _ => chunks.push(vec![(call, cell)]),
                }
            }
            part = part
                .saturating_mul(4)
                .min(LAST_PART.div_ceil(chunksize) * chunksize);
            (start as TaskId, chunks)
        };
        let (_, chunks) = next_part(&mut cells);
        let first = self
            .event(|scheduler| {
                let first = scheduler.reserve(count)?;
                scheduler.add(first, chunks, options, weighed, Now::current());
                Ok(first)
            })
            .map_err(|()| PoolError::NotRunning)?;
        while cells.len() < count {
            let (start, chunks) = next_part(&mut cells);
            self.event(|scheduler| scheduler.add(first + start, chunks, options, weighed, Now::current()));
        }
        let results = cells.into_iter().zip(first..);
        Ok(results.map(|(cell, id)| AsyncResult::new(id, cell)).collect())
    }

    fn wait_for_room(&self, max: usize) {
        let mut inner = self.lock();
        if inner.scheduler.unfinished() < max || inner.stalled_at == Some(inner.scheduler.settled()) {
            return;
        }
        inner.room_waiters += 1;
        inner.room_at = max / 2;
        while inner.scheduler.unfinished() > max / 2 && inner.scheduler.phase() == Phase::Running {
            let settled = inner.scheduler.settled();
            let (waited, timeout) = self
                .changed
                .wait_timeout(inner, STALLED)
                .unwrap_or_else(PoisonError::into_inner);
            inner = waited;
            if timeout.timed_out() && inner.scheduler.settled() == settled {
                tracing::warn!(
                    "no task finished in {STALLED:?} with {} waiting; submitting more anyway",
                    inner.scheduler.unfinished()
                );
                inner.stalled_at = Some(settled);
                break;
            }
        }
        inner.room_waiters -= 1;
    }

    fn terminate(&self) {
        self.event(|scheduler| scheduler.terminate(Now::current()));
        self.join_threads();
    }

    fn join(&self) -> Result<(), PoolError> {
        let mut inner = self.lock();
        if inner.scheduler.phase() == Phase::Running {
            return Err(PoolError::StillRunning);
        }
        while inner.scheduler.unfinished() > 0 {
            inner = self.changed.wait(inner).unwrap_or_else(PoisonError::into_inner);
        }
        if inner.scheduler.shut_down() {
            // The timekeeper and any supervisor waiting to start a worker look again.
            self.changed.notify_all();
        }
        let after = self.apply(&mut inner);
        drop(inner);
        after.finish(&self.manager);
        self.join_threads();
        Ok(())
    }

    fn release(&self, weight: usize) {
        self.event(|scheduler| scheduler.release(weight, Now::current()));
    }

    fn cancel_pending(&self) -> usize {
        let count = self.event(|scheduler| scheduler.cancel_pending(Now::current()));
        // A submitter waiting for room stops waiting once the pool no longer runs.
        self.changed.notify_all();
        count
    }

    fn close(&self) {
        self.event(|scheduler| scheduler.close());
    }

    fn abandon(&self, id: TaskId) {
        self.event(|scheduler| scheduler.abandon(id, Now::current()));
    }

    fn is_finished(&self) -> bool {
        self.lock().scheduler.is_finished()
    }

    fn worker_pids(&self) -> Vec<u32> {
        self.lock().scheduler.ready().map(|(_, pid)| pid).collect()
    }
}

impl Locked {
    /// Queues `frame` to the worker in `slot`, to be written once the lock is released.
    fn queue(&self, slot: usize, frame: Vec<u8>, after: &mut AfterLock) {
        if let Some(ends) = &self.workers[slot] {
            ends.writer.queue(frame);
            after.writers.push(ends.writer.clone());
        }
    }
}
