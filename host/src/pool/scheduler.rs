//! The scheduler: which task runs on which worker, and when. A state machine with no threads,
//! sockets or clocks in it: events come in as method calls (a submission, a worker ready, a task
//! done, a worker dead, a recall answered, close, terminate, cancellation), each with the time it
//! happened, and what must follow goes out as [`Action`]s (send this batch to that worker, ask
//! that one for its batch back, complete that result, kill that worker) for the registry to carry
//! out. Its rules, each unit-tested below:
//!
//! - Tasks start in FIFO order, at most one batch per worker plus one batch sent ahead.
//! - Short tasks travel in batches of about [`BATCH_WORK`] (judged by how long the worker's last
//!   task took), and a worker whose batch should end within [`SEND_AHEAD_BELOW`] gets its next
//!   batch ahead of time. A batch sent ahead that has not started is recalled as soon as another
//!   worker is idle with nothing pending.
//! - A failed run worth retrying goes to the back of the queue while it has retries left.
//! - Neither batching nor sending ahead happens while failures may cancel what is pending
//!   ([`Scheduler::new`]'s `cancel_after`), so that no task starts after the failure.
//! - A batch too large for one frame is halved; a task too large alone fails.
//! - When no worker slot can ever start a worker again, what is pending fails.
//! - A submission may come in parts ([`Scheduler::reserve`], [`Scheduler::add`]): its ids and
//!   its count of unfinished tasks are taken whole, and each part is queued, or ended at once if
//!   the pool was terminated or cancelled or has no worker left, as it comes. (Another
//!   submitter's tasks queued meanwhile may run before the later parts: the two submissions were
//!   made at the same time.)
//!
//! A worker slot is a place for one worker process: [`WorkerSlot::Starting`] while its process
//! starts, [`WorkerSlot::Ready`] with the tasks the scheduler gave it, [`WorkerSlot::Gone`] once
//! none will start there again. The scheduler never names a process or wasmtime; `R` is the
//! caller's handle on a task's result, which it hands back in [`Action::Complete`].

use std::collections::VecDeque;
use std::mem;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::ipc::{self, Done, EXIT_TIMED_OUT, IpcError, ToWorker};
use crate::manager::QueueError;
use crate::task::{Call, TaskError, TaskId, TaskOptions, TaskReport, TaskResult};
use crate::value::Value;

/// How long past a task's timeout (and its worker's own [`crate::worker`] grace second) the host
/// waits before it kills the worker itself: a worker that is frozen (SIGSTOP) or stuck where its
/// watchdog cannot act never answers, and the task is reported as timed out.
pub(super) const HOST_GRACE: Duration = Duration::from_secs(2);

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

/// When an event happened, by the wall clock (for reports) and the monotonic one (for
/// durations and deadlines).
#[derive(Clone, Copy, Debug)]
pub(super) struct Now {
    pub wall: SystemTime,
    pub clock: Instant,
}

impl Now {
    pub fn current() -> Now {
        Now {
            wall: SystemTime::now(),
            clock: Instant::now(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Phase {
    Running,
    Closed,
    Terminated,
}

/// The caller's handle on a task's result, as the scheduler sees it.
pub(super) trait ResultHandle {
    /// Nobody will take the result (its batch was dropped): it counts for nothing against the
    /// budget of held results.
    fn abandoned(&self) -> bool;
}

/// What the scheduler asks of the registry after an event, in order.
#[derive(Debug)]
pub(super) enum Action<R> {
    /// Write `frame`, a [`ToWorker::Run`] of a batch of tasks, to the worker in `slot`.
    Run { slot: usize, frame: Vec<u8> },
    /// Ask the worker in `slot` to give back the batch sent ahead ([`ToWorker::Return`]).
    Recall { slot: usize },
    /// Tell the worker in `slot` to exit when it is done ([`ToWorker::Shutdown`]).
    Shutdown { slot: usize },
    /// Kill the worker in `slot`, and let go of any queue operation its task has parked.
    Kill { slot: usize },
    /// The task whose result handle is `result` ended with `report`, which counts `weight`
    /// against the budget of held results until it is taken. (Boxed: a report is the largest
    /// thing an action carries, and the others are small.)
    Complete {
        result: R,
        report: Box<TaskReport>,
        weight: usize,
    },
    /// A task started whose host deadline ([`host_deadline`]) is this: whoever watches the
    /// deadlines must look by then.
    Watch(Instant),
}

/// A submitted task, and where it is in its life.
pub(super) struct Task<R> {
    pub id: TaskId,
    call: Call,
    options: TaskOptions,
    /// How many times it has been sent to a worker.
    attempts: u32,
    result: R,
    /// Its report counts against the budget of held results ([`Scheduler::release`]).
    weighed: bool,
    /// When it was sent to a worker (or, sent ahead, when it started).
    sent: Option<Now>,
}

impl<R> Task<R> {
    /// Undoes the sending of a task that came back unstarted: it was not run.
    fn unsend(&mut self) {
        self.attempts -= 1;
        self.sent = None;
    }

    /// When the host gives up on this running task and kills its worker: [`HOST_GRACE`] past
    /// the task's timeout; `None` for a task without a timeout (or one too long for the clock).
    fn host_deadline(&self) -> Option<Instant> {
        self.sent?
            .clock
            .checked_add(self.options.timeout?)?
            .checked_add(HOST_GRACE)
    }
}

/// A place for one worker process.
pub(super) enum WorkerSlot<R> {
    /// A process is being started for it.
    Starting,
    /// Its worker is ready, with these tasks.
    Ready(WorkerTasks<R>),
    /// No process will be started in it again.
    Gone,
}

/// What the scheduler knows of a ready worker.
pub(super) struct WorkerTasks<R> {
    pub pid: u32,
    /// The tasks sent to the worker and not finished, the one it is on first: its current batch,
    /// then the batch sent ahead of time, if any.
    running: VecDeque<Task<R>>,
    /// How many tasks at the back of `running` are the batch sent ahead (0: none).
    ahead: usize,
    /// [`ToWorker::Return`] was sent and not yet answered.
    recalling: bool,
    /// How long the worker's last task took, once it has finished one.
    last_duration: Option<Duration>,
    /// A one-way put of the running task failed after the task went on: the task fails.
    lost_put: Option<QueueError>,
    /// The worker has finished a task: if it dies now, it is not crashing as it starts.
    finished_a_task: bool,
    /// The task it was killed for ([`Scheduler::abandon`]): if the worker is still on it when it
    /// exits, that task ends cancelled, not dead, and is not retried; if it had finished it, the
    /// task it moved on to did not fail, and goes back to the front of the queue.
    abandoned: Option<TaskId>,
    /// The host killed the worker because its running task ran long past its timeout. The
    /// worker may have finished that task and held its result back; then the task after it,
    /// the one that was stuck, is the one that timed out.
    overdue: bool,
}

/// What became of a worker that exited ([`Scheduler::worker_exited`]).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Exited {
    /// A new worker is to start in its slot.
    pub replace: bool,
    /// It had finished a task: it was working, not crashing as it started.
    pub finished_a_task: bool,
}

/// The scheduler's state: see the module's documentation.
pub(super) struct Scheduler<R> {
    phase: Phase,
    /// `join` has asked the workers to exit.
    shutting_down: bool,
    /// Batches waiting for a worker, oldest first; a batch is one task or one `map` chunk.
    pending: VecDeque<Vec<Task<R>>>,
    slots: Vec<WorkerSlot<R>>,
    /// Slots whose worker waits for work, longest-waiting first.
    idle: VecDeque<usize>,
    /// Tasks submitted and not yet finished.
    unfinished: usize,
    /// Of those, the tasks of a submission under way not yet queued ([`Scheduler::reserve`]).
    reserved: usize,
    /// Why no worker can start any more, once none can.
    no_worker: Option<String>,
    next_id: TaskId,
    /// `cancel_pending` was called: failed tasks are not retried.
    cancelled: bool,
    /// Tasks finished with an error.
    failures: usize,
    /// Cancel what is pending at this many failures.
    cancel_after: Option<usize>,
    /// The weight of finished, weighed results not yet taken, and the most there may be before
    /// no task starts.
    held: usize,
    held_budget: Option<usize>,
    /// Tasks finished so far.
    settled: u64,
    /// The time of the event being handled.
    now: Now,
    actions: Vec<Action<R>>,
}

impl<R: ResultHandle> Scheduler<R> {
    /// A scheduler for `workers` slots, each starting a worker; `cancel_after` failures cancel
    /// what is pending; `held_budget` bounds the weight of held results.
    pub fn new(workers: usize, cancel_after: Option<usize>, held_budget: Option<usize>) -> Self {
        Scheduler {
            phase: Phase::Running,
            shutting_down: false,
            pending: VecDeque::new(),
            slots: (0..workers).map(|_| WorkerSlot::Starting).collect(),
            idle: VecDeque::new(),
            unfinished: 0,
            reserved: 0,
            no_worker: None,
            next_id: 0,
            cancelled: false,
            failures: 0,
            cancel_after,
            held: 0,
            held_budget,
            settled: 0,
            now: Now::current(),
            actions: Vec::new(),
        }
    }

    /// The actions of the events so far, oldest first.
    pub fn take_actions(&mut self) -> Vec<Action<R>> {
        mem::take(&mut self.actions)
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// Whether nothing of the pool is left running: it was terminated, or joined.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Terminated || self.shutting_down
    }

    pub fn unfinished(&self) -> usize {
        self.unfinished
    }

    pub fn settled(&self) -> u64 {
        self.settled
    }

    /// The slots with a ready worker, and its pid, in slot order.
    pub fn ready(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(slot, worker)| match worker {
                WorkerSlot::Ready(worker) => Some((slot, worker.pid)),
                _ => None,
            })
    }

    /// The host deadline of each ready worker's running task, with the slot and the task.
    pub fn deadlines(&self) -> impl Iterator<Item = (usize, TaskId, Instant)> + '_ {
        self.slots.iter().enumerate().filter_map(|(slot, worker)| {
            let WorkerSlot::Ready(worker) = worker else {
                return None;
            };
            let task = worker.running.front()?;
            Some((slot, task.id, task.host_deadline()?))
        })
    }

    /// Records that the host killed the worker in `slot` for overrunning its task's deadline;
    /// `false` if it already had.
    pub fn mark_overdue(&mut self, slot: usize) -> bool {
        match &mut self.slots[slot] {
            WorkerSlot::Ready(worker) if !worker.overdue => {
                worker.overdue = true;
                true
            }
            _ => false,
        }
    }

    /// Queues `chunks` of calls, each chunk a batch that goes to one worker, with their result
    /// handles. Returns the id of the first task; the rest follow in order.
    ///
    /// # Errors
    /// `Err(())` after `close` or `terminate`; nothing is queued.
    #[cfg(test)]
    pub fn submit(
        &mut self,
        chunks: Vec<Vec<(Call, R)>>,
        options: TaskOptions,
        weighed: bool,
        now: Now,
    ) -> Result<TaskId, ()> {
        let first = self.reserve(chunks.iter().map(Vec::len).sum())?;
        self.add(first, chunks, options, weighed, now);
        Ok(first)
    }

    /// Takes the ids of a submission of `count` tasks, which [`Scheduler::add`] then queues in
    /// parts, in order: a large submission starts running with its first part, rather than once
    /// the last is made. The tasks count as unfinished from now, so `join` waits for them all.
    /// Returns the first id; the rest follow.
    ///
    /// # Errors
    /// `Err(())` after `close` or `terminate`; nothing is taken.
    pub fn reserve(&mut self, count: usize) -> Result<TaskId, ()> {
        if self.phase != Phase::Running {
            return Err(());
        }
        let first = self.next_id;
        self.next_id += count as TaskId;
        self.unfinished += count;
        self.reserved += count;
        Ok(first)
    }

    /// Queues the next part of a reserved submission, `chunks` of calls with their result
    /// handles, the first of them task `first`. Each chunk is a batch that goes to one worker.
    /// The pool may have been closed since the reservation, which changes nothing; if it was
    /// terminated or cancelled, or no worker can start any more, the tasks end as pending tasks
    /// then did, and none starts.
    pub fn add(
        &mut self,
        first: TaskId,
        chunks: impl IntoIterator<Item = Vec<(Call, R)>>,
        options: TaskOptions,
        weighed: bool,
        now: Now,
    ) {
        self.now = now;
        let mut id = first;
        for chunk in chunks {
            let batch: Vec<Task<R>> = chunk
                .into_iter()
                .map(|(call, result)| {
                    id += 1;
                    Task {
                        id: id - 1,
                        call,
                        options,
                        attempts: 0,
                        result,
                        weighed,
                        sent: None,
                    }
                })
                .collect();
            self.reserved -= batch.len();
            match self.refusal() {
                Some(error) => self.fail_all(batch, error),
                None if batch.is_empty() => {}
                None => self.pending.push_back(batch),
            }
        }
        self.dispatch();
    }

    /// Why a task queued now would never start, if it would not: the pool was terminated or
    /// cancelled, or no worker is left.
    fn refusal(&self) -> Option<TaskError> {
        if self.phase == Phase::Terminated {
            Some(TaskError::Terminated)
        } else if self.cancelled {
            Some(TaskError::Cancelled)
        } else {
            self.no_worker
                .as_ref()
                .map(|why| TaskError::Failed(format!("no worker left to run the task: {why}")))
        }
    }

    /// The worker started in `slot` is ready, with process id `pid`: it gets work.
    pub fn worker_ready(&mut self, slot: usize, pid: u32, now: Now) {
        self.now = now;
        if self.is_finished() {
            self.actions.push(Action::Kill { slot });
        }
        self.slots[slot] = WorkerSlot::Ready(WorkerTasks {
            pid,
            running: VecDeque::new(),
            ahead: 0,
            recalling: false,
            last_duration: None,
            lost_put: None,
            finished_a_task: false,
            abandoned: None,
            overdue: false,
        });
        self.idle.push_back(slot);
        self.dispatch();
    }

    /// The worker in `slot` finished a task; it gets its next batch. Returns `false` if it was
    /// not running that task.
    pub fn task_done(&mut self, slot: usize, done: Done, now: Now) -> bool {
        self.now = now;
        if !self.record_done(slot, done) {
            return false;
        }
        self.dispatch();
        true
    }

    /// A one-way put of the task running in `slot` failed after the task went on believing the
    /// item was in: the task must not end as a success.
    pub fn put_lost(&mut self, slot: usize, error: QueueError) {
        if let WorkerSlot::Ready(worker) = &mut self.slots[slot] {
            worker.lost_put = Some(error);
        }
    }

    /// The worker in `slot` answered a recall, giving back `tasks`: all of its batch sent ahead,
    /// unstarted, or nothing if it had started it. Returns `false` if those are not the batch
    /// sent ahead.
    pub fn returned(&mut self, slot: usize, tasks: &[TaskId], now: Now) -> bool {
        self.now = now;
        let WorkerSlot::Ready(worker) = &mut self.slots[slot] else {
            return false;
        };
        worker.recalling = false;
        if tasks.is_empty() {
            return true;
        }
        let from = worker.running.len() - worker.ahead;
        let sent = worker.running.range(from..).map(|task| task.id);
        if worker.ahead == 0 || worker.ahead != tasks.len() || !sent.eq(tasks.iter().copied()) {
            return false;
        }
        let mut batch: Vec<Task<R>> = worker.running.split_off(from).into();
        worker.ahead = 0;
        batch.iter_mut().for_each(Task::unsend);
        tracing::debug!(slot, "{} task(s) sent ahead came back", batch.len());
        match self.phase {
            Phase::Terminated => self.fail_all(batch, TaskError::Terminated),
            _ if self.cancelled => self.fail_all(batch, TaskError::Cancelled),
            // They were sent first, so they go first.
            _ => self.pending.push_front(batch),
        }
        self.dispatch();
        true
    }

    /// The worker in `slot` exited (`status`, if known), holding back the results in `journal`.
    /// Exactly the task it was on fails or is retried; the tasks behind it go back to the front
    /// of the queue.
    pub fn worker_exited(
        &mut self,
        slot: usize,
        status: Option<ExitStatus>,
        journal: Vec<Done>,
        now: Now,
    ) -> Exited {
        self.now = now;
        // Results it held back end their tasks as if they had arrived; those that did arrive
        // are no longer its tasks, and are passed over.
        for done in journal {
            self.record_done(slot, done);
        }
        self.idle.retain(|&i| i != slot);
        let WorkerSlot::Ready(worker) = mem::replace(&mut self.slots[slot], WorkerSlot::Starting) else {
            return self.after_exit(slot, false);
        };
        let terminated = self.phase == Phase::Terminated;
        let how = status.map_or_else(|| "status unknown".into(), describe);
        if !self.is_finished() {
            match worker.running.front() {
                Some(task) => tracing::info!(
                    pid = worker.pid,
                    slot,
                    "worker {how} while running task {}",
                    task.id
                ),
                None => tracing::info!(pid = worker.pid, slot, "worker {how}"),
            }
        } else {
            tracing::info!(pid = worker.pid, slot, "worker stopped");
        }
        let mut running = worker.running.into_iter().peekable();
        let killed_for_another = worker
            .abandoned
            .is_some_and(|id| running.peek().is_some_and(|task| task.id != id));
        if killed_for_another && !terminated {
            // Killed for a task that had ended: the one it was on is not to blame.
            tracing::debug!(
                slot,
                "worker killed for a task that had ended; its next goes back"
            );
        } else if let Some(task) = running.next() {
            let error = match (terminated, task.options.timeout) {
                (true, _) => TaskError::Terminated,
                (false, _) if worker.abandoned == Some(task.id) => TaskError::Cancelled,
                // Its watchdog ended the worker (the task overran its timeout in a host call), or
                // the host did (the worker did not answer long past it: frozen, say).
                (false, Some(timeout))
                    if worker.overdue || status.and_then(|s| s.code()) == Some(EXIT_TIMED_OUT) =>
                {
                    TaskError::Timeout(timeout)
                }
                (false, _) => TaskError::WorkerDied {
                    pid: worker.pid,
                    cause: how,
                },
            };
            self.fail(task, Some(worker.pid), error);
        }
        let mut unstarted: Vec<Task<R>> = running.collect();
        unstarted.iter_mut().for_each(Task::unsend);
        if terminated {
            self.fail_all(unstarted, TaskError::Terminated);
        } else if !unstarted.is_empty() {
            self.pending.push_front(unstarted);
        }
        self.after_exit(slot, worker.finished_a_task)
    }

    /// Whether slot `slot`, its worker gone, gets a new one: while the pool runs, or is closed
    /// with tasks pending.
    fn after_exit(&mut self, slot: usize, finished_a_task: bool) -> Exited {
        let replace = !self.shutting_down
            && match self.phase {
                Phase::Running => true,
                Phase::Closed => !self.pending.is_empty() || (self.reserved > 0 && !self.cancelled),
                Phase::Terminated => false,
            };
        if !replace {
            self.slots[slot] = WorkerSlot::Gone;
        }
        Exited {
            replace,
            finished_a_task,
        }
    }

    /// No worker can be started in `slot` (`why`, when it could not, rather than was no longer
    /// needed). If no slot can start one any more, the pending tasks fail: nothing would ever
    /// run them.
    pub fn slot_gone(&mut self, slot: usize, why: Option<&str>, now: Now) {
        self.now = now;
        self.slots[slot] = WorkerSlot::Gone;
        let Some(why) = why else { return };
        if self.slots.iter().all(|slot| matches!(slot, WorkerSlot::Gone)) {
            self.no_worker = Some(why.to_owned());
            let pending: Vec<Task<R>> = mem::take(&mut self.pending).into_iter().flatten().collect();
            let error = self.refusal().expect("no worker is left");
            self.fail_all(pending, error);
        }
    }

    /// A taken report's `weight` no longer counts against the held results; tasks start again
    /// if that brings them under the budget.
    pub fn release(&mut self, weight: usize, now: Now) {
        self.now = now;
        self.held -= weight;
        self.dispatch();
    }

    /// No task may be submitted from now on.
    pub fn close(&mut self) {
        if self.phase == Phase::Running {
            self.phase = Phase::Closed;
        }
    }

    /// Stops at once: pending tasks fail with [`TaskError::Terminated`] and every ready worker is
    /// killed (its running tasks fail as it exits). Returns `false` if already terminated.
    pub fn terminate(&mut self, now: Now) -> bool {
        if self.phase == Phase::Terminated {
            return false;
        }
        self.now = now;
        self.phase = Phase::Terminated;
        let pending: Vec<Task<R>> = mem::take(&mut self.pending).into_iter().flatten().collect();
        self.fail_all(pending, TaskError::Terminated);
        for slot in 0..self.slots.len() {
            if let WorkerSlot::Ready(_) = self.slots[slot] {
                self.actions.push(Action::Kill { slot });
            }
        }
        true
    }

    /// `join`, once every task has finished: every ready worker is told to exit. Returns
    /// `false` if that was done before.
    pub fn shut_down(&mut self) -> bool {
        if self.shutting_down {
            return false;
        }
        self.shutting_down = true;
        for slot in 0..self.slots.len() {
            if let WorkerSlot::Ready(_) = self.slots[slot] {
                self.actions.push(Action::Shutdown { slot });
            }
        }
        true
    }

    /// Takes every task that has not started off the queue, each failing with
    /// [`TaskError::Cancelled`], and recalls batches sent ahead to cancel them as they come back;
    /// failed tasks are no longer retried and none may be submitted. Returns how many were taken.
    pub fn cancel_pending(&mut self, now: Now) -> usize {
        self.now = now;
        let count = self.cancel();
        self.recall();
        count
    }

    /// Gives up on task `id`, whose result nobody wants any more (a cluster's host learns that
    /// another host took it over): pending, it is cancelled; running, its worker is killed and
    /// it ends cancelled, while the tasks behind it go back to the queue. A task sent ahead to a
    /// worker, not yet started, runs (it is short). Returns whether the task was found.
    pub fn abandon(&mut self, id: TaskId, now: Now) -> bool {
        self.now = now;
        for index in 0..self.pending.len() {
            if let Some(at) = self.pending[index].iter().position(|task| task.id == id) {
                let task = self.pending[index].remove(at);
                if self.pending[index].is_empty() {
                    self.pending.remove(index);
                }
                self.fail(task, None, TaskError::Cancelled);
                return true;
            }
        }
        for slot in 0..self.slots.len() {
            if let WorkerSlot::Ready(worker) = &mut self.slots[slot]
                && worker.running.front().is_some_and(|task| task.id == id)
            {
                if worker.abandoned.is_none() {
                    worker.abandoned = Some(id);
                    self.actions.push(Action::Kill { slot });
                }
                return true;
            }
        }
        false
    }

    fn cancel(&mut self) -> usize {
        self.close();
        self.cancelled = true;
        let pending: Vec<Task<R>> = mem::take(&mut self.pending).into_iter().flatten().collect();
        let count = pending.len();
        self.fail_all(pending, TaskError::Cancelled);
        // The parts of a submission still to come are cancelled as they come.
        count + self.reserved
    }

    /// Ends the task the worker in `slot` is on with `done`, and marks the worker idle if that
    /// was its last. Returns `false` if the worker is not on that task.
    fn record_done(&mut self, slot: usize, done: Done) -> bool {
        let terminated = self.phase == Phase::Terminated;
        let now = self.now;
        let WorkerSlot::Ready(worker) = &mut self.slots[slot] else {
            return false;
        };
        if worker.running.front().is_none_or(|task| task.id != done.task) {
            return false;
        }
        let task = worker.running.pop_front().expect("checked above");
        let duration = Duration::from_nanos(done.duration_nanos);
        worker.finished_a_task = true;
        worker.last_duration = Some(duration);
        if worker.running.len() == worker.ahead {
            // The batch sent ahead, if any, is now the current one.
            worker.ahead = 0;
        }
        let mut deadline = None;
        if let Some(next) = worker.running.front_mut() {
            // It starts now, not when it was sent.
            next.sent = Some(now);
            deadline = next.host_deadline();
        }
        let idle = worker.running.is_empty();
        let pid = worker.pid;
        let result = match worker.lost_put.take() {
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
            duration,
            peak_memory: Some(done.peak_memory),
            fuel_used: done.fuel_used,
        };
        self.settle(task, attempt);
        if idle {
            self.idle.push_back(slot);
        }
        self.actions.extend(deadline.map(Action::Watch));
        true
    }

    /// Pairs idle workers with pending batches, oldest first, then sends batches ahead to busy
    /// workers whose current batch should end soon (see [`SEND_AHEAD_BELOW`]). If a worker is
    /// still idle, nothing is pending: the batches sent ahead are recalled, to run on it.
    fn dispatch(&mut self) {
        while !self.pending.is_empty() && self.held_budget.is_none_or(|budget| self.held < budget) {
            let (slot, idle) = match self.idle.pop_front() {
                Some(slot) => (slot, true),
                None => match self.send_ahead_to() {
                    Some(slot) => (slot, false),
                    None => break,
                },
            };
            if !matches!(self.slots[slot], WorkerSlot::Ready(_)) {
                continue;
            }
            let (batch, encoded) = self.next_batch(self.batch_size(slot));
            match encoded {
                Ok(frame) if !idle && frame.len() > MAX_AHEAD_FRAME => {
                    // Too large to wait unread in a busy worker's socket: it waits for a free one.
                    self.pending.push_front(batch);
                    break;
                }
                Ok(frame) => self.send(slot, batch, frame, idle),
                Err(e) => {
                    // Only an over-large task fails to encode: it fails, the worker stays as it
                    // was.
                    let message = format!("the task's arguments are too large to send to a worker: {e}");
                    self.fail_all(batch, TaskError::Failed(message));
                    if idle {
                        self.idle.push_front(slot);
                    }
                }
            }
        }
        if !self.idle.is_empty() {
            self.recall();
        }
    }

    /// Takes the next batch off the queue, with the frame that sends it: the oldest batch,
    /// joined by the single tasks with the same options behind it up to `size` (a `map` chunk
    /// stays as is), and halved until it fits a frame, the rest going back in order.
    fn next_batch(&mut self, size: usize) -> (Vec<Task<R>>, Result<Vec<u8>, IpcError>) {
        let mut batch = self.pending.pop_front().expect("dispatch checked non-empty");
        while batch.len() < size
            && let Some(next) = self.pending.front()
            && next.len() == 1
            && next[0].options == batch[0].options
        {
            batch.extend(self.pending.pop_front().expect("checked non-empty"));
        }
        loop {
            match encode_batch(&batch) {
                // Tasks that each fit a frame but not together: the second half waits, in
                // order, for the next batch.
                Err(IpcError::TooLarge { .. }) if batch.len() > 1 => {
                    let rest = batch.split_off(batch.len() / 2);
                    for task in rest.into_iter().rev() {
                        self.pending.push_front(vec![task]);
                    }
                }
                encoded => return (batch, encoded),
            }
        }
    }

    /// Sends `batch`, encoded as `frame`, to the worker in `slot`: to start now if it is `idle`,
    /// or ahead of time.
    fn send(&mut self, slot: usize, mut batch: Vec<Task<R>>, frame: Vec<u8>, idle: bool) {
        let now = self.now;
        let WorkerSlot::Ready(worker) = &mut self.slots[slot] else {
            unreachable!("dispatch sends only to ready workers")
        };
        for task in &mut batch {
            task.sent = Some(now);
            task.attempts += 1;
        }
        if !idle {
            worker.ahead = batch.len();
        }
        worker.running.extend(batch);
        let deadline = if idle {
            worker.running.front().and_then(Task::host_deadline)
        } else {
            None
        };
        self.actions.push(Action::Run { slot, frame });
        self.actions.extend(deadline.map(Action::Watch));
    }

    /// How long the tasks of `slot` take, if the scheduler may batch them and send them ahead:
    /// not before its worker has finished a task, nor while failures may cancel what is pending,
    /// as no task may start after the failure that cancels it and a worker cannot give back the
    /// rest of the batch it is running.
    fn pace(&self, slot: usize) -> Option<Duration> {
        if self.cancel_after.is_some() || self.cancelled || self.phase == Phase::Terminated {
            return None;
        }
        match &self.slots[slot] {
            WorkerSlot::Ready(worker) => worker.last_duration,
            _ => None,
        }
    }

    /// How many single tasks to send `slot` in one batch: about [`BATCH_WORK`], but no more than
    /// a share of what is pending, so the other workers get some too.
    fn batch_size(&self, slot: usize) -> usize {
        let Some(pace) = self.pace(slot) else { return 1 };
        let work = BATCH_WORK.as_nanos() / pace.as_nanos().max(1);
        let share = self.pending.len() / (2 * self.slots.len());
        usize::try_from(work)
            .unwrap_or(usize::MAX)
            .min(share)
            .clamp(1, MAX_BATCH)
    }

    /// A worker to send a batch ahead to: one with none sent ahead yet whose batch should be done
    /// within [`SEND_AHEAD_BELOW`].
    fn send_ahead_to(&self) -> Option<usize> {
        (0..self.slots.len()).find(|&slot| {
            let WorkerSlot::Ready(worker) = &self.slots[slot] else {
                return false;
            };
            worker.ahead == 0
                && !worker.recalling
                && !worker.running.is_empty()
                && self.pace(slot).is_some_and(|pace| {
                    let held = u32::try_from(worker.running.len()).unwrap_or(u32::MAX);
                    pace.saturating_mul(held) <= SEND_AHEAD_BELOW
                })
        })
    }

    /// Recalls every batch sent ahead ([`Scheduler::returned`] takes it back).
    fn recall(&mut self) {
        for (slot, worker) in self.slots.iter_mut().enumerate() {
            if let WorkerSlot::Ready(worker) = worker
                && worker.ahead > 0
                && !worker.recalling
            {
                worker.recalling = true;
                self.actions.push(Action::Recall { slot });
            }
        }
    }

    fn fail_all(&mut self, tasks: Vec<Task<R>>, error: TaskError) {
        for task in tasks {
            self.fail(task, None, error.clone());
        }
    }

    /// Ends a task with `error`.
    fn fail(&mut self, task: Task<R>, worker: Option<u32>, error: TaskError) {
        let (started, duration) = match task.sent {
            Some(sent) => (
                Some(sent.wall),
                self.now.clock.saturating_duration_since(sent.clock),
            ),
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
    fn settle(&mut self, mut task: Task<R>, attempt: Attempt) {
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
        let weight = match task.weighed && self.held_budget.is_some() && !task.result.abandoned() {
            true => report_weight(&attempt.result),
            false => 0,
        };
        self.held += weight;
        let report = TaskReport {
            id: task.id,
            call: task.call,
            result: attempt.result,
            worker: attempt.worker,
            started: attempt.started,
            duration: attempt.duration,
            peak_memory: attempt.peak_memory,
            fuel_used: attempt.fuel_used,
            attempts: task.attempts,
            host: None,
        };
        self.actions.push(Action::Complete {
            result: task.result,
            report: Box::new(report),
            weight,
        });
        self.unfinished -= 1;
        self.settled += 1;
        if failed {
            self.failures += 1;
            if self.cancel_after.is_some_and(|n| self.failures >= n) && !self.cancelled {
                self.cancel();
            }
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

/// The frame that sends `batch` (tasks with the same options) to a worker.
fn encode_batch<R>(batch: &[Task<R>]) -> Result<Vec<u8>, IpcError> {
    ipc::encode(&ToWorker::Run {
        options: batch[0].options,
        tasks: batch.iter().map(|task| (task.id, task.call.clone())).collect(),
    })
}

/// About how many bytes a finished task's result holds, as counted against the budget of held
/// results.
fn report_weight(result: &TaskResult) -> usize {
    match result {
        Ok(value) => value.as_ref().map_or(0, Value::weight),
        // Messages and backtraces: small, but not nothing.
        Err(_) => 256,
    }
}

/// How a worker process ended, in words.
pub(super) fn describe(status: ExitStatus) -> String {
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

#[cfg(test)]
mod tests {
    //! The scheduler's rules, driven event by event with a made-up clock; each result handle is
    //! the task's index in its submission.

    use super::*;
    use crate::ipc::MAX_FRAME;

    type Events = Scheduler<usize>;

    impl ResultHandle for usize {
        fn abandoned(&self) -> bool {
            false
        }
    }

    fn at(micros: u64) -> Now {
        let start = *START;
        Now {
            wall: UNIX_EPOCH + Duration::from_secs(1_000_000),
            clock: start + Duration::from_micros(micros),
        }
    }

    static START: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

    fn calls(n: usize) -> Vec<Vec<(Call, usize)>> {
        (0..n)
            .map(|i| vec![(Call::new("f", [Value::U32(i as u32)]), i)])
            .collect()
    }

    fn done(task: TaskId, duration_micros: u64) -> Done {
        Done {
            task,
            result: Ok(None),
            started_unix_nanos: 0,
            duration_nanos: duration_micros * 1000,
            peak_memory: 0,
            fuel_used: None,
        }
    }

    /// What the actions so far come to, in order: `run slot [ids]`, `recall slot`, `kill slot`,
    /// `shutdown slot`, `ok id`, `failed id: kind`.
    fn actions(scheduler: &mut Events) -> Vec<String> {
        let actions = scheduler.take_actions().into_iter();
        let described = actions.filter_map(|action| match action {
            Action::Run { slot, frame } => match ipc::read::<ToWorker>(&frame[..]) {
                Ok(ToWorker::Run { tasks, .. }) => {
                    let ids: Vec<TaskId> = tasks.iter().map(|(id, _)| *id).collect();
                    Some(format!("run {slot} {ids:?}"))
                }
                other => panic!("a run action carries a run frame, not {other:?}"),
            },
            Action::Recall { slot } => Some(format!("recall {slot}")),
            Action::Kill { slot } => Some(format!("kill {slot}")),
            Action::Shutdown { slot } => Some(format!("shutdown {slot}")),
            Action::Complete { report, .. } => Some(match &report.result {
                Ok(_) => format!("ok {}", report.id),
                Err(e) => format!("failed {}: {}", report.id, e.kind()),
            }),
            Action::Watch(_) => None,
        });
        described.collect()
    }

    fn started(workers: usize, cancel_after: Option<usize>) -> Events {
        let mut scheduler = Scheduler::new(workers, cancel_after, None);
        for slot in 0..workers {
            scheduler.worker_ready(slot, 100 + slot as u32, at(0));
        }
        scheduler
    }

    #[test]
    fn tasks_start_in_order_at_most_one_per_worker() {
        let mut s = started(2, None);
        assert_eq!(s.submit(calls(5), TaskOptions::default(), false, at(1)), Ok(0));
        assert_eq!(actions(&mut s), ["run 0 [0]", "run 1 [1]"]);
        assert_eq!(s.unfinished(), 5);
        assert!(s.task_done(1, done(1, 50_000), at(2)));
        assert_eq!(actions(&mut s), ["ok 1", "run 1 [2]"]);
        assert!(s.task_done(0, done(0, 50_000), at(3)));
        assert_eq!(actions(&mut s), ["ok 0", "run 0 [3]"]);
        // A result for a task the worker is not on is refused.
        assert!(!s.task_done(0, done(4, 5_000), at(4)));
    }

    #[test]
    fn short_tasks_travel_in_batches_and_the_next_is_sent_ahead() {
        let mut s = started(1, None);
        s.submit(calls(300), TaskOptions::default(), false, at(1))
            .unwrap();
        assert_eq!(actions(&mut s), ["run 0 [0]"]);
        // The first task took 10 µs: a batch is about a millisecond of such tasks (at most
        // 64), and a worker holding under 5 ms of work gets its next batch at once.
        s.task_done(0, done(0, 10), at(20));
        let after = actions(&mut s);
        assert_eq!(after[0], "ok 0");
        let first: Vec<TaskId> = (1..=64).collect();
        let second: Vec<TaskId> = (65..=128).collect();
        assert_eq!(
            after[1..],
            [format!("run 0 {first:?}"), format!("run 0 {second:?}")]
        );
    }

    #[test]
    fn a_batch_sent_ahead_is_recalled_for_an_idle_worker_and_runs_there() {
        let mut s = started(2, None);
        s.submit(calls(4), TaskOptions::default(), false, at(1)).unwrap();
        assert_eq!(actions(&mut s), ["run 0 [0]", "run 1 [1]"]);
        // Worker 0 is quick: its next task goes ahead behind its current one.
        s.task_done(0, done(0, 10), at(2));
        assert_eq!(actions(&mut s), ["ok 0", "run 0 [2]", "run 0 [3]"]);
        // Worker 1 goes idle with nothing pending: the batch sent ahead is asked back.
        s.task_done(1, done(1, 10), at(3));
        assert_eq!(actions(&mut s), ["ok 1", "recall 0"]);
        // Only the batch sent ahead may come back.
        assert!(!s.returned(0, &[2], at(4)));
        assert!(s.returned(0, &[3], at(4)));
        assert_eq!(actions(&mut s), ["run 1 [3]"]);
        // An empty answer (it had started the batch) changes nothing.
        s.task_done(0, done(2, 10), at(5));
        assert_eq!(actions(&mut s), ["ok 2"]);
    }

    #[test]
    fn an_abandoned_task_is_cancelled_or_its_worker_killed_and_the_rest_go_on() {
        let mut s = started(1, None);
        let retried = TaskOptions {
            retries: 3,
            ..TaskOptions::default()
        };
        s.submit(calls(3), retried, false, at(1)).unwrap();
        assert_eq!(actions(&mut s), ["run 0 [0]"]);
        // Pending: taken off the queue.
        assert!(s.abandon(2, at(2)));
        assert_eq!(actions(&mut s), ["failed 2: cancelled"]);
        // Running: its worker is killed, once, and the task ends cancelled, not retried.
        assert!(s.abandon(0, at(3)));
        assert!(s.abandon(0, at(3)));
        assert_eq!(actions(&mut s), ["kill 0"]);
        s.worker_exited(0, Some(ExitStatus::from_raw(9)), Vec::new(), at(4));
        assert_eq!(actions(&mut s), ["failed 0: cancelled"]);
        s.worker_ready(0, 200, at(5));
        assert_eq!(actions(&mut s), ["run 0 [1]"]);
        // Finished or unknown: nothing to do.
        assert!(!s.abandon(0, at(6)));
        assert!(!s.abandon(99, at(6)));
    }

    #[test]
    fn a_worker_killed_for_a_task_that_had_ended_fails_nothing() {
        let mut s = started(1, None);
        s.submit(calls(2), TaskOptions::default(), false, at(1)).unwrap();
        assert_eq!(actions(&mut s), ["run 0 [0]"]);
        assert!(s.abandon(0, at(2)));
        assert_eq!(actions(&mut s), ["kill 0"]);
        // Task 0 ended before the kill landed, and the worker took task 1.
        s.task_done(0, done(0, 50_000), at(3));
        assert_eq!(actions(&mut s), ["ok 0", "run 0 [1]"]);
        s.worker_exited(0, Some(ExitStatus::from_raw(9)), Vec::new(), at(4));
        assert_eq!(actions(&mut s), Vec::<String>::new(), "task 1 is not failed");
        s.worker_ready(0, 200, at(5));
        assert_eq!(actions(&mut s), ["run 0 [1]"]);
    }

    #[test]
    fn a_dead_worker_fails_its_task_and_gives_back_the_rest_in_order() {
        let mut s = started(1, None);
        s.submit(calls(3), TaskOptions::default(), false, at(1)).unwrap();
        assert_eq!(actions(&mut s), ["run 0 [0]"]);
        s.task_done(0, done(0, 10), at(2));
        assert_eq!(actions(&mut s), ["ok 0", "run 0 [1]", "run 0 [2]"]);
        let exited = s.worker_exited(0, Some(ExitStatus::from_raw(9)), Vec::new(), at(3));
        assert_eq!(
            exited,
            Exited {
                replace: true,
                finished_a_task: true
            }
        );
        assert_eq!(actions(&mut s), ["failed 1: worker-died"]);
        // The task behind it was not run: it goes first to the replacement.
        s.worker_ready(0, 200, at(4));
        assert_eq!(actions(&mut s), ["run 0 [2]"]);
    }

    #[test]
    fn results_a_dead_worker_held_back_count_as_arrived() {
        let mut s = started(1, None);
        s.submit(calls(3), TaskOptions::default(), false, at(1)).unwrap();
        s.task_done(0, done(0, 10), at(2));
        actions(&mut s);
        let journal = vec![done(0, 10), done(1, 10)];
        s.worker_exited(0, Some(ExitStatus::from_raw(9)), journal, at(3));
        assert_eq!(actions(&mut s), ["ok 1", "failed 2: worker-died"]);
    }

    #[test]
    fn a_retry_goes_to_the_back_of_the_queue() {
        let mut s = started(1, None);
        let options = TaskOptions {
            retries: 1,
            ..TaskOptions::default()
        };
        s.submit(calls(3), options, false, at(1)).unwrap();
        assert_eq!(actions(&mut s), ["run 0 [0]"]);
        s.worker_exited(0, Some(ExitStatus::from_raw(9)), Vec::new(), at(2));
        assert_eq!(actions(&mut s), Vec::<String>::new());
        s.worker_ready(0, 200, at(3));
        assert_eq!(actions(&mut s), ["run 0 [1]"]);
        s.task_done(0, done(1, 50_000), at(4));
        s.task_done(0, done(2, 50_000), at(5));
        assert_eq!(actions(&mut s), ["ok 1", "run 0 [2]", "ok 2", "run 0 [0]"]);
        // Its second death is its last.
        s.worker_exited(0, Some(ExitStatus::from_raw(9)), Vec::new(), at(6));
        assert_eq!(actions(&mut s), ["failed 0: worker-died"]);
    }

    #[test]
    fn a_failure_past_the_halt_cancels_what_is_pending_and_nothing_is_batched() {
        let mut s = started(2, Some(1));
        s.submit(calls(6), TaskOptions::default(), false, at(1)).unwrap();
        assert_eq!(actions(&mut s), ["run 0 [0]", "run 1 [1]"]);
        // Quick tasks, but with a halt set each goes alone, and nothing is sent ahead.
        s.task_done(0, done(0, 10), at(2));
        assert_eq!(actions(&mut s), ["ok 0", "run 0 [2]"]);
        let mut failed = done(1, 10);
        failed.result = Err(TaskError::Failed("boom".into()));
        s.task_done(1, failed, at(3));
        assert_eq!(
            actions(&mut s),
            [
                "failed 1: failed",
                "failed 3: cancelled",
                "failed 4: cancelled",
                "failed 5: cancelled"
            ]
        );
        assert_eq!(s.submit(calls(1), TaskOptions::default(), false, at(4)), Err(()));
        s.task_done(0, done(2, 10), at(5));
        assert_eq!(actions(&mut s), ["ok 2"]);
        assert_eq!(s.unfinished(), 0);
    }

    /// Calls `from..to` as chunks of one, for [`Scheduler::add`].
    fn part(from: usize, to: usize) -> Vec<Vec<(Call, usize)>> {
        calls(to).split_off(from)
    }

    #[test]
    fn a_submission_in_parts_runs_its_first_part_at_once_and_is_waited_for_whole() {
        let mut s = started(1, None);
        let first = s.reserve(4).unwrap();
        s.add(first, part(0, 1), TaskOptions::default(), false, at(1));
        assert_eq!(actions(&mut s), ["run 0 [0]"]);
        // A later submission takes the ids after the whole of the first.
        assert_eq!(s.reserve(1), Ok(4));
        assert_eq!(s.unfinished(), 5);
        // Closed meanwhile: the rest is still queued and run, in order, before the later one.
        s.close();
        s.add(first + 1, part(1, 4), TaskOptions::default(), false, at(2));
        assert_eq!(actions(&mut s), Vec::<String>::new());
        s.add(4, part(4, 5), TaskOptions::default(), false, at(2));
        assert_eq!(s.reserve(1), Err(()));
        for id in 0..4 {
            s.task_done(0, done(id, 50_000), at(3 + id));
            let next = format!("run 0 [{}]", id + 1);
            assert_eq!(actions(&mut s), [format!("ok {id}"), next]);
        }
        assert_eq!(s.unfinished(), 1);
    }

    #[test]
    fn a_closed_pool_replaces_a_dead_worker_while_a_submission_is_still_being_queued() {
        let mut s = started(1, None);
        let first = s.reserve(3).unwrap();
        s.close();
        let exited = s.worker_exited(0, Some(ExitStatus::from_raw(9)), Vec::new(), at(1));
        assert!(exited.replace, "two tasks are still to come");
        s.worker_ready(0, 101, at(2));
        s.add(first, part(0, 3), TaskOptions::default(), false, at(3));
        assert_eq!(actions(&mut s), ["run 0 [0]"]);
    }

    #[test]
    fn parts_of_a_submission_after_it_was_terminated_cancelled_or_left_without_workers_end_at_once() {
        let ended = |stop: &dyn Fn(&mut Events)| {
            let mut s = started(1, None);
            let first = s.reserve(3).unwrap();
            s.add(first, part(0, 1), TaskOptions::default(), false, at(1));
            actions(&mut s);
            stop(&mut s);
            actions(&mut s);
            s.add(first + 1, part(1, 3), TaskOptions::default(), false, at(3));
            actions(&mut s)
        };
        let terminated = ended(&|s| {
            s.terminate(at(2));
        });
        assert_eq!(terminated, ["failed 1: terminated", "failed 2: terminated"]);
        let cancelled = ended(&|s| {
            assert_eq!(s.cancel_pending(at(2)), 2, "the two still to come");
        });
        assert_eq!(cancelled, ["failed 1: cancelled", "failed 2: cancelled"]);
        let no_worker = ended(&|s| {
            s.worker_exited(0, Some(ExitStatus::from_raw(9)), Vec::new(), at(2));
            s.slot_gone(0, Some("cannot run the worker"), at(2));
        });
        assert_eq!(no_worker, ["failed 1: failed", "failed 2: failed"]);
    }

    #[test]
    fn cancelling_recalls_batches_sent_ahead_and_cancels_them_as_they_return() {
        let mut s = started(1, None);
        s.submit(calls(3), TaskOptions::default(), false, at(1)).unwrap();
        assert_eq!(actions(&mut s), ["run 0 [0]"]);
        s.task_done(0, done(0, 10), at(2));
        assert_eq!(actions(&mut s), ["ok 0", "run 0 [1]", "run 0 [2]"]);
        assert_eq!(s.cancel_pending(at(3)), 0);
        assert_eq!(actions(&mut s), ["recall 0"]);
        s.returned(0, &[2], at(4));
        assert_eq!(actions(&mut s), ["failed 2: cancelled"]);
    }

    #[test]
    fn a_replacement_that_cannot_start_fails_the_pending_tasks_only_when_no_worker_is_left() {
        let mut s = started(2, None);
        s.submit(calls(4), TaskOptions::default(), false, at(1)).unwrap();
        actions(&mut s);
        s.worker_exited(0, Some(ExitStatus::from_raw(9)), Vec::new(), at(2));
        s.slot_gone(0, Some("cannot run the worker"), at(3));
        assert_eq!(actions(&mut s), ["failed 0: worker-died"]);
        // Worker 1 still runs the rest, one after another.
        s.task_done(1, done(1, 50_000), at(4));
        assert_eq!(actions(&mut s), ["ok 1", "run 1 [2]"]);
        s.worker_exited(1, Some(ExitStatus::from_raw(9)), Vec::new(), at(5));
        s.slot_gone(1, Some("cannot run the worker"), at(6));
        assert_eq!(actions(&mut s), ["failed 2: worker-died", "failed 3: failed"]);
        assert_eq!(s.unfinished(), 0);
    }

    #[test]
    fn a_batch_over_the_frame_limit_is_halved_and_a_task_over_it_alone_fails() {
        let mut s = started(1, None);
        let big = |i: u32| Call::new("f", [Value::String("x".repeat(MAX_FRAME / 2 + i as usize))]);
        let chunks = vec![vec![(Call::new("f", []), 0)]]
            .into_iter()
            .chain((1..4).map(|i| vec![(big(i), i as usize)]))
            .chain([vec![(Call::new("f", [Value::String("y".repeat(MAX_FRAME))]), 4)]])
            .collect();
        s.submit(chunks, TaskOptions::default(), false, at(1)).unwrap();
        assert_eq!(actions(&mut s), ["run 0 [0]"]);
        // Quick, so the next two would go together (a share of the four pending); together
        // they are over the limit.
        s.task_done(0, done(0, 10), at(2));
        assert_eq!(actions(&mut s), ["ok 0", "run 0 [1]"]);
        s.task_done(0, done(1, 10), at(3));
        assert_eq!(actions(&mut s), ["ok 1", "run 0 [2]"]);
        // The last is over the limit alone: it fails as soon as it would be sent.
        s.task_done(0, done(2, 10), at(4));
        assert_eq!(actions(&mut s), ["ok 2", "run 0 [3]", "failed 4: failed"]);
        s.task_done(0, done(3, 10), at(5));
        assert_eq!(actions(&mut s), ["ok 3"]);
        assert_eq!(s.unfinished(), 0);
    }

    #[test]
    fn a_task_past_its_host_deadline_is_a_timeout_when_its_worker_is_killed() {
        let mut s = started(1, None);
        let options = TaskOptions {
            timeout: Some(Duration::from_secs(1)),
            ..TaskOptions::default()
        };
        s.submit(calls(1), options, false, at(0)).unwrap();
        let deadlines: Vec<_> = s.deadlines().collect();
        assert_eq!(
            deadlines,
            [(0, 0, at(0).clock + Duration::from_secs(1) + HOST_GRACE)]
        );
        assert!(s.mark_overdue(0));
        assert!(!s.mark_overdue(0), "a worker is killed for its deadline once");
        actions(&mut s);
        s.worker_exited(0, Some(ExitStatus::from_raw(9)), Vec::new(), at(3_000_000));
        assert_eq!(actions(&mut s), ["failed 0: timeout"]);
    }

    #[test]
    fn held_results_over_the_budget_hold_back_the_start_of_tasks() {
        let mut s = Scheduler::new(1, None, Some(100));
        s.worker_ready(0, 100, at(0));
        s.submit(calls(2), TaskOptions::default(), true, at(1)).unwrap();
        assert_eq!(actions(&mut s), ["run 0 [0]"]);
        let mut big = done(0, 50_000);
        big.result = Ok(Some(Value::String("z".repeat(200))));
        s.task_done(0, big, at(2));
        let weight = match &s.take_actions()[..] {
            [Action::Complete { weight, .. }] => *weight,
            other => panic!("expected one completion, not {other:?}"),
        };
        assert!(weight >= 200);
        s.release(weight, at(3));
        assert_eq!(actions(&mut s), ["run 0 [1]"]);
    }

    #[test]
    fn terminate_fails_what_is_pending_and_kills_the_workers_and_join_shuts_them_down() {
        let mut s = started(2, None);
        s.submit(calls(3), TaskOptions::default(), false, at(1)).unwrap();
        actions(&mut s);
        assert!(s.terminate(at(2)));
        assert!(!s.terminate(at(2)));
        assert_eq!(actions(&mut s), ["failed 2: terminated", "kill 0", "kill 1"]);
        let exited = s.worker_exited(0, Some(ExitStatus::from_raw(9)), Vec::new(), at(3));
        assert!(!exited.replace);
        assert_eq!(actions(&mut s), ["failed 0: terminated"]);

        let mut s = started(2, None);
        s.close();
        assert!(s.shut_down());
        assert_eq!(actions(&mut s), ["shutdown 0", "shutdown 1"]);
        // A worker that becomes ready after that is killed.
        s.worker_exited(1, None, Vec::new(), at(1));
        s.worker_ready(1, 300, at(2));
        assert_eq!(actions(&mut s), ["kill 1"]);
    }
}
