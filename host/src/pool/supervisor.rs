//! The pool's threads: a supervisor per worker slot, which starts the slot's worker, reads
//! everything it sends (output to the pool's sink, queue operations to the manager, results and
//! returned batches to the scheduler) and starts a replacement when it dies; and the timekeeper,
//! which kills a worker that has stopped answering long past its task's timeout, or past `join`.
//!
//! Replacements of workers that die young (a crash loop) start later each time; a slot whose
//! replacements keep dying as they start is given up after [`GIVE_UP_STARTING`].

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::panic;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::process::{self, ReadyWorker, StartError, StartingWorker};
use super::registry::{Registry, WorkerEnds};
use super::scheduler::{HOST_GRACE, Now, Phase};
use crate::ipc::{self, FromWorker, Init, IpcError, QueueAnswer, QueueRequest, ToWorker};
use crate::manager::{Answer, Got, QueueError, Wait, WaiterId, oneshot};
use crate::worker;

/// A worker that exits sooner than this after it started, without finishing a task, counts as
/// dying young (see [`Registry::back_off`]): a crash loop, not a worker killed from outside after
/// it had done work.
const EARLY_DEATH: Duration = Duration::from_secs(1);

/// How long a slot keeps starting replacements that die before they are ready (with the
/// back-off between) before it gives up. A worker killed as it starts is not a reason to give up
/// a slot, but one that can never start must not leave its tasks waiting forever.
const GIVE_UP_STARTING: Duration = Duration::from_secs(60);

/// A sink call that takes this long held its supervisor up: see [`WorkerEnds::resumed`].
const SINK_STALL: Duration = Duration::from_millis(10);

/// How long `join` lets its workers take to exit once told to, before it kills them: a worker
/// that is frozen never reads the request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The longest wait before a replacement worker starts.
const MAX_RESPAWN_DELAY: Duration = Duration::from_secs(1);

/// Writes whole frames to a worker. Frames come from several threads (the scheduler's actions,
/// the manager's answers to parked operations, its timer).
///
/// A frame is first queued, then written by whichever thread next flushes: the registry queues
/// frames while it holds its lock, so a worker gets them in the order the scheduler decided them
/// even when two threads flush at once, and a write never happens under the registry's lock.
pub(super) struct FrameWriter {
    /// Frames not yet written, oldest first.
    queued: Mutex<VecDeque<Vec<u8>>>,
    /// Held while writing, so that each frame goes out whole and in order.
    stream: Mutex<UnixStream>,
}

impl FrameWriter {
    pub fn new(stream: UnixStream) -> FrameWriter {
        FrameWriter {
            queued: Mutex::default(),
            stream: Mutex::new(stream),
        }
    }

    pub fn queue(&self, frame: Vec<u8>) {
        self.queued
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(frame);
    }

    /// Writes every queued frame.
    pub fn flush(&self) {
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

    fn answer(&self, answer: Result<QueueAnswer, QueueError>) {
        // Items are capped well under the frame limit, so this cannot fail; if it ever did, the
        // worker still gets an answer rather than waiting forever.
        let frame = ipc::encode(&ToWorker::Queue(answer))
            .or_else(|_| ipc::encode(&ToWorker::Queue(Err(QueueError::TooLarge))))
            .expect("an error answer is tiny");
        self.queue(frame);
        self.flush();
    }
}

/// Wakes a supervisor that waits for the answer to its worker's parked one-way put while it
/// watches the worker's socket for a hang-up: an eventfd, made the first time it is needed, so
/// that a put that does not wait costs no system call.
#[derive(Default)]
pub(super) struct Bell {
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

impl Registry {
    /// Starts a worker process and sends it what to load.
    pub fn launch(&self) -> Result<StartingWorker, StartError> {
        self.init(StartingWorker::spawn(&self.worker_program)?)
    }

    /// Sends a started worker process what to load.
    pub fn init(&self, mut starting: StartingWorker) -> Result<StartingWorker, StartError> {
        let init = ToWorker::Init(Init {
            artifact: self.program.artifact().to_owned(),
            host_pid: self.host_pid,
            max_item_bytes: self.manager.limits().max_item_bytes,
            metered: self.program.metered(),
            grants: self.grants.clone(),
            argv0: self.program.name().to_owned(),
        });
        match ipc::write(&starting.socket, &init) {
            Ok(()) => Ok(starting),
            Err(e) => Err(starting.ended(&format!("cannot reach the new worker ({e})"), false)),
        }
    }

    /// Puts a ready worker into slot `slot`, where it gets work (or, in a pool that has
    /// stopped, is killed).
    pub fn install(&self, slot: usize, worker: &ReadyWorker) {
        tracing::info!(pid = worker.pid, slot, "worker ready");
        let mut inner = self.lock();
        inner.workers[slot] = Some(WorkerEnds {
            writer: worker.writer.clone(),
            process: worker.process.clone(),
            blocked: None,
            in_sink: worker.in_sink.clone(),
            resumed: None,
        });
        inner.scheduler.worker_ready(slot, worker.pid, Now::current());
        let after = self.apply(&mut inner);
        drop(inner);
        after.finish(&self.manager);
    }

    /// Slot `slot`'s supervisor: serves its worker (starting one first if it has none) until it
    /// exits, then starts a replacement while the pool still has work for it.
    pub fn supervise(self: Arc<Self>, slot: usize, mut worker: Option<ReadyWorker>) {
        // Workers of this slot that died young in a row: each makes the next start wait longer.
        let mut early_deaths = u32::from(worker.is_none());
        loop {
            let current = match worker.take() {
                Some(current) => current,
                None => match self.replace(slot, &mut early_deaths) {
                    Some(replacement) => replacement,
                    None => return,
                },
            };
            let started = Instant::now();
            if let Err(e) = self.serve(slot, &current) {
                tracing::warn!("worker {} broke the protocol ({e}); killing it", current.pid);
            }
            let status = current
                .process
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .reap();
            let exited = self.worker_exited(slot, &current, status);
            if !exited.replace {
                return;
            }
            // A worker that finished a task was working, not crashing, whenever it died: killed
            // from outside, say, which must not slow its replacement down.
            early_deaths = match exited.finished_a_task || started.elapsed() >= EARLY_DEATH {
                true => 0,
                false => early_deaths + 1,
            };
        }
    }

    /// Starts a replacement worker for slot `slot` and installs it, after the back-off its
    /// `early_deaths` call for. A replacement that dies before it is ready is replaced in turn,
    /// for up to [`GIVE_UP_STARTING`]; `None` if the slot is given up, or no longer needed.
    fn replace(&self, slot: usize, early_deaths: &mut u32) -> Option<ReadyWorker> {
        let mut first_failure = None;
        loop {
            if !self.back_off(*early_deaths) {
                self.event(|scheduler| scheduler.slot_gone(slot, None, Now::current()));
                return None;
            }
            match self.launch().and_then(StartingWorker::ready) {
                Ok(replacement) => {
                    self.install(slot, &replacement);
                    return Some(replacement);
                }
                Err(StartError::Died(message))
                    if first_failure.get_or_insert_with(Instant::now).elapsed() < GIVE_UP_STARTING =>
                {
                    tracing::warn!("a replacement worker died as it started ({message}); starting another");
                    *early_deaths += 1;
                }
                Err(error) => {
                    let message = error.to_string();
                    tracing::warn!("cannot start a replacement worker: {message}");
                    self.event(|scheduler| scheduler.slot_gone(slot, Some(&message), Now::current()));
                    self.changed.notify_all();
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
        let stopped = |inner: &super::registry::Locked| inner.scheduler.is_finished();
        let inner = self.lock();
        let (inner, _) = self
            .changed
            .wait_timeout_while(inner, delay, |inner| !stopped(inner))
            .unwrap_or_else(PoisonError::into_inner);
        !stopped(&inner)
    }

    /// Reads what the worker sends until it closes its socket (`Ok`) or sends something invalid.
    fn serve(&self, slot: usize, worker: &ReadyWorker) -> Result<(), IpcError> {
        let mut from_worker = io::BufReader::new(&worker.socket);
        loop {
            let broke = |what: &str| Err(IpcError::Io(io::Error::other(what.to_owned())));
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
                        && let Some(ends) = &mut self.lock().workers[slot]
                    {
                        ends.resumed = Some(Instant::now());
                    }
                }
                Ok(FromWorker::Done(done)) => {
                    if !self.event(|scheduler| scheduler.task_done(slot, done, Now::current())) {
                        return broke("result for a task it was not running");
                    }
                }
                Ok(FromWorker::Queue(request)) => self.queue_request(slot, worker, request),
                Ok(FromWorker::Returned { tasks }) => {
                    if !self.event(|scheduler| scheduler.returned(slot, &tasks, Now::current())) {
                        return broke("gave back tasks it was not sent ahead");
                    }
                }
                Ok(other) => return broke(&format!("unexpected message {other:?}")),
                // A worker that died: cleanly between frames, while writing one, or with
                // unread data in its socket (the kernel then resets the connection).
                Err(IpcError::Closed | IpcError::Truncated { .. }) => return Ok(()),
                Err(IpcError::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Lets go of the queue operation the task of the worker in `slot` had parked, then settles
    /// the tasks of that worker, which has exited (`status`, if known), with the results it held
    /// back in `journal`.
    fn worker_exited(
        &self,
        slot: usize,
        worker: &ReadyWorker,
        status: Option<std::process::ExitStatus>,
    ) -> super::scheduler::Exited {
        let journal = worker::read_journal(&worker.journal);
        // What it had not claimed of its lease goes back to its queue: it has been reaped, so it
        // claims nothing more.
        self.manager.settle(worker.pid, true);
        // The queue operation its task had parked is let go before the task is reported: once
        // its result is out, no item may still go to it. Only this thread records one for the
        // slot, so none is recorded in between.
        let blocked = self.lock().workers[slot]
            .as_mut()
            .and_then(|ends| ends.blocked.take());
        if let Some(waiter) = blocked {
            self.manager.cancel(waiter);
        }
        let mut inner = self.lock();
        inner.workers[slot] = None;
        let exited = inner
            .scheduler
            .worker_exited(slot, status, journal, Now::current());
        let after = self.apply(&mut inner);
        self.changed.notify_all();
        drop(inner);
        after.finish(&self.manager);
        exited
    }

    /// Carries out a task's queue operation. Answers go straight to the worker, now or when the
    /// manager answers a parked operation; only a one-way put that must wait holds up this
    /// supervisor, which is how it blocks its worker.
    fn queue_request(&self, slot: usize, worker: &ReadyWorker, request: QueueRequest) {
        let to_worker = worker.writer.clone();
        let parked = match request {
            QueueRequest::Open { name } => {
                to_worker.answer(self.manager.open(&name).map(QueueAnswer::Opened));
                None
            }
            QueueRequest::Len { queue } => {
                to_worker.answer(Ok(QueueAnswer::Len(self.manager.len_of(queue) as u64)));
                None
            }
            // Gets are made for the worker's task, which holds what it takes (see
            // `QueueStore::get_many_held`).
            QueueRequest::Get { queue, wait, lease } => {
                let reply = Box::new(move |got: Result<Got, QueueError>| {
                    to_worker.answer(got.map(|got| match got.lease {
                        None => QueueAnswer::Item(got.item),
                        Some(lease) => QueueAnswer::Leased {
                            item: got.item,
                            generation: lease.generation,
                            items: lease.items,
                        },
                    }));
                });
                let tally = worker.tally.as_ref().filter(|_| lease);
                self.manager.get_leased(queue, wait, worker.pid, tally, reply)
            }
            QueueRequest::GetMany { queue, max, wait } => {
                let reply = Box::new(move |got: Result<Vec<Vec<u8>>, QueueError>| {
                    to_worker.answer(got.map(QueueAnswer::Items));
                });
                self.manager
                    .get_many_held(queue, max as usize, wait, worker.pid, reply)
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
                self.one_way_put(slot, worker, queue, item);
                None
            }
        };
        if let Some(waiter) = parked {
            self.record_blocked(slot, worker.pid, waiter);
        }
    }

    /// Puts `item` for a task that did not wait for the answer: no frame is read from its worker
    /// until the item is in, but a worker that dies meanwhile is noticed at once, and its put let
    /// go. A put that fails fails the task, which went on believing the item was in.
    fn one_way_put(&self, slot: usize, worker: &ReadyWorker, queue: crate::manager::QueueId, item: Vec<u8>) {
        let (reply, answer) = oneshot();
        let bell = worker.room.clone();
        let reply = Box::new(move |put| {
            reply(put);
            bell.ring();
        });
        if let Some(waiter) = self.manager.put_with(queue, item, Wait::Forever, reply) {
            self.record_blocked(slot, worker.pid, waiter);
            if !worker.room.wait(&answer, &worker.socket) {
                self.manager.cancel(waiter);
            }
        }
        if let Err((error, _)) = answer.wait() {
            self.lock().scheduler.put_lost(slot, error);
        }
    }

    /// Notes the operation a worker's task has parked, so it can be cancelled if the worker goes,
    /// and settles the worker's lease: a task that waits lets others have what it has not
    /// claimed.
    fn record_blocked(&self, slot: usize, pid: u32, waiter: WaiterId) {
        self.manager.settle(pid, false);
        let mut inner = self.lock();
        if let Some(ends) = &mut inner.workers[slot] {
            ends.blocked = Some(waiter);
        }
        // `terminate` cancels what it finds recorded; one that raced it is cancelled here.
        if inner.scheduler.phase() == Phase::Terminated {
            drop(inner);
            self.manager.cancel(waiter);
        }
    }

    /// The pool's timekeeper thread: kills the worker of a task that runs [`HOST_GRACE`] past its
    /// timeout, which its own watchdog would have ended by then unless the worker is frozen
    /// (SIGSTOP) or stuck where the watchdog cannot act; and once `join` has asked the workers
    /// to exit, kills those that have not within [`SHUTDOWN_GRACE`]. Sleeps until the earliest
    /// such deadline; without one, until woken.
    pub fn keep_time(&self) {
        let mut shutdown_by = None;
        let mut inner = self.lock();
        loop {
            let now = Instant::now();
            let scheduler = &inner.scheduler;
            let live = scheduler.ready().next().is_some();
            if scheduler.phase() == Phase::Terminated || (scheduler.shutting_down() && !live) {
                return;
            }
            let mut next = None;
            if scheduler.shutting_down() {
                let by = *shutdown_by.get_or_insert(now + SHUTDOWN_GRACE);
                if now >= by {
                    tracing::warn!("workers did not exit within {SHUTDOWN_GRACE:?} of `join`; killing them");
                    inner
                        .workers
                        .iter()
                        .flatten()
                        .for_each(|ends| process::kill(&ends.process));
                    return;
                }
                next = Some(by);
            }
            let mut overdue = Vec::new();
            for (slot, task, deadline) in scheduler.deadlines() {
                let Some(ends) = &inner.workers[slot] else {
                    continue;
                };
                // Results its supervisor has not read (held up in the sink) are not the worker's
                // fault: the deadline counts from when it reads again.
                let deadline = match ends.resumed {
                    Some(resumed) => deadline.max(resumed + HOST_GRACE),
                    None => deadline,
                };
                let deadline = match ends.in_sink.load(Ordering::SeqCst) {
                    true => deadline.max(now + HOST_GRACE),
                    false => deadline,
                };
                if now < deadline {
                    next = Some(next.map_or(deadline, |next: Instant| next.min(deadline)));
                } else {
                    overdue.push((slot, task));
                }
            }
            for (slot, task) in overdue {
                if inner.scheduler.mark_overdue(slot)
                    && let Some(ends) = &inner.workers[slot]
                {
                    tracing::warn!(
                        "task {task} is {HOST_GRACE:?} past its timeout and its worker does not answer; killing it"
                    );
                    process::kill(&ends.process);
                }
            }
            inner.next_look = next;
            inner = match next {
                None => self.changed.wait(inner).unwrap_or_else(PoisonError::into_inner),
                Some(next) => {
                    let waited = self.changed.wait_timeout(inner, next - now);
                    waited.unwrap_or_else(PoisonError::into_inner).0
                }
            };
        }
    }
}
