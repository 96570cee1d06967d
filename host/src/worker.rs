//! The worker process: the `poolhost` binary re-executed as `poolhost worker`, or a fork of a
//! host that had a single thread (`run_forked`). It loads the component the host compiled
//! (ahead of its `Init` if the host announces it early), then runs the tasks the host sends, one
//! at a time, each in a fresh sandbox, and sends back their output, their queue operations and
//! their results. Asked to, it gives back the batches it holds but has not started.
//!
//! The worker's standard input is its end of a Unix socket to the host; it moves the socket to a
//! descriptor of its own, points stdin at `/dev/null`, and never lets a guest reach the socket (a
//! task's stdin is empty, its stdout and stderr are captured by the runtime). It knows nothing of
//! the pool's scheduling.
//!
//! The results of short tasks are held back and sent together, about once a millisecond or at
//! the end of a batch: a message per task would wake the host for each one, which costs more than
//! a short task itself. So that a worker that dies loses none of them, each result is also
//! written to the worker's journal, a memory file the host passes as its standard output and
//! reads after the worker has gone (`read_journal`).
//!
//! The first byte on the socket carries the worker's lease tally (`crate::manager::lease`), a
//! one-word memory file: a reader that keeps getting from a queue with a backlog is answered with
//! a run of the items behind the one it asked for, and claims them one by one in that word, which
//! the host also maps; the host can take back what the worker has not claimed at any moment,
//! even after the worker has died.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::panic;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

use crate::ipc::{
    self, Done, EXIT_TIMED_OUT, FromWorker, Init, IpcError, QueueAnswer, QueueRequest, ToWorker,
};
use crate::manager::{QueueError, QueueId, Queues, Wait, lease};
use crate::runtime::{Interrupter, OutputSink, Preloaded, Runner};
use crate::sys::SharedWord;
use crate::task::TaskError;

/// The `main` of a worker forked from the host ([`crate::Builder::prestart`], by
/// [`crate::sys::fork_with`]): runs [`run`] and returns the exit code a started worker's `main`
/// would end with.
pub(crate) fn forked_main() -> i32 {
    match panic::catch_unwind(run) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            let _ = writeln!(io::stderr(), "poolhost: {e:#}");
            2
        }
        // The panic hook has reported it.
        Err(_) => 101,
    }
}

/// Runs the worker until the host says `Shutdown` or goes away.
///
/// # Errors
/// If the worker was not started by a pool (no socket on stdin), the first message is not
/// `Init`, or the connection breaks mid-frame.
pub fn run() -> anyhow::Result<()> {
    // The worker must never outlive the host, even if the host is killed while a task runs.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .context("cannot ask to be killed with the host")?;

    // Ctrl-C on a terminal (or a SIGTERM to the process group) reaches every process of the
    // group. What becomes of the tasks is the host's to decide (it reports them and kills its
    // workers), so a worker only notes it.
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::default()).context("cannot take SIGINT and SIGTERM")?;
    }

    let socket = io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(UnixStream::from)
        .context("the worker's stdin is not a socket: `poolhost worker` is started by a pool, not by hand")?;
    // From here on the socket lives on a descriptor of its own; stdin reads nothing.
    let null = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .context("cannot open /dev/null")?;
    rustix::stdio::dup2_stdin(&null).context("cannot detach stdin from the host's socket")?;
    let journal = Journal::open(&null)?;
    let tally = match ipc::receive_descriptor(&socket) {
        // Without a tally, the worker takes no leases.
        Ok(tally) => tally
            .and_then(|tally| SharedWord::map(&File::from(tally)).ok())
            .map(Arc::new),
        // The host went away before the worker started.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
        Err(e) => return Err(e).context("cannot read the first byte from the host"),
    };
    let link = Link::new(socket)?;
    match start(&link)? {
        Some((init, runner)) => serve(&link, journal, tally, &init, &runner),
        // The host went away, or the component did not load (the host was told why).
        None => Ok(()),
    }
}

/// Loads the code the host says, ahead of its `Init` if it announces it early, and tells the
/// host the worker is ready. `None` if there is nothing to do: the host went away, or the code
/// did not load (the host has been told why).
fn start(link: &Link) -> anyhow::Result<Option<(Init, Runner)>> {
    // Code loaded ahead of `Init`, and what it was loaded from.
    let mut early = None;
    let init = loop {
        let next = link.lock().next();
        match next {
            Ok(ToWorker::Load { artifact, metered }) => {
                let loaded = load(&artifact, metered);
                early = Some((artifact, metered, loaded));
            }
            Ok(ToWorker::Init(init)) => break init,
            // The host went away before it said what to load (interrupted as it started, say):
            // there is nothing to do, and nobody to tell.
            Err(IpcError::Closed) => return Ok(None),
            Ok(other) => bail!("expected `Init` as the first message from the host, got {other:?}"),
            Err(e) => return Err(e.into()),
        }
    };
    // The host may have died between spawning this worker and asking to be killed with it.
    if std::os::unix::process::parent_id() != init.host_pid {
        return Ok(None);
    }
    let loaded = match early {
        Some((artifact, metered, loaded)) if artifact == init.artifact && metered == init.metered => loaded,
        _ => load(&init.artifact, init.metered),
    };
    let runner = match loaded {
        Ok(loaded) => Runner::new(loaded, init.host_pid, init.grants.clone(), init.argv0.clone()),
        Err(e) => {
            let message = format!("cannot load `{}`: {e:#}", init.artifact.display());
            link.lock().send(&FromWorker::Failed { message })?;
            return Ok(None);
        }
    };
    link.lock().send(&FromWorker::Ready {
        pid: std::process::id(),
    })?;
    Ok(Some((init, runner)))
}

/// Loads the code at `artifact`, and says how long that took.
fn load(artifact: &Path, metered: bool) -> anyhow::Result<Preloaded> {
    let started = Instant::now();
    let loaded = Preloaded::load(artifact, metered);
    let outcome = match &loaded {
        Ok(_) => "loaded",
        Err(_) => "failed to load",
    };
    tracing::debug!(
        pid = std::process::id(),
        "worker {outcome} `{}` in {:.1?}",
        artifact.display(),
        started.elapsed()
    );
    loaded
}

/// Runs the batches the host sends, one task at a time, until it says `Shutdown` or goes away.
fn serve(
    link: &Link,
    mut journal: Journal,
    tally: Option<Arc<SharedWord>>,
    init: &Init,
    runner: &Runner,
) -> anyhow::Result<()> {
    let output_link = link.clone();
    let output: OutputSink = Arc::new(move |task, stream, bytes: &[u8]| {
        let output = FromWorker::Output {
            task,
            stream,
            bytes: bytes.to_vec(),
        };
        // A failed send means the host is gone; the next read ends the worker.
        let _ = output_link.lock().send(&output);
    });
    let watchdog = Watchdog::start(runner.interrupter());
    loop {
        let next = link.lock().next();
        let (limits, batch) = match next {
            Ok(ToWorker::Run { options, tasks }) => (options, tasks),
            Ok(ToWorker::Shutdown) | Err(IpcError::Closed) => return Ok(()),
            // Every batch sent ahead has been read, and so started: nothing to give back.
            Ok(ToWorker::Return) => {
                link.lock().give_back()?;
                continue;
            }
            Ok(other) => bail!("unexpected message from the host between tasks: {other:?}"),
            Err(e) => return Err(e).context("broken message from the host"),
        };
        journal.start_batch();
        let last = batch.len().saturating_sub(1);
        for (n, (task, call)) in batch.into_iter().enumerate() {
            let queues = Box::new(RemoteQueues {
                link: link.clone(),
                max_item_bytes: init.max_item_bytes,
                tally: tally.clone(),
                lease: None,
                got_before: false,
            });
            let started = SystemTime::now();
            let clock = Instant::now();
            // A timeout too long for the clock to express is none.
            if let Some(deadline) = limits.timeout.and_then(|timeout| clock.checked_add(timeout)) {
                watchdog.arm(deadline);
            }
            let outcome = runner.run(task, &call, &limits, &output, queues, None);
            watchdog.disarm();
            let duration = clock.elapsed();
            let done = Done {
                task,
                result: outcome.result,
                started_unix_nanos: started
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
                duration_nanos: duration.as_nanos() as u64,
                peak_memory: outcome.peak_memory,
                fuel_used: outcome.fuel_used,
            };
            let done = encode_done(done)?;
            let mut link = link.lock();
            let now = n == last || duration >= HOLD || link.held_since.is_some_and(|t| t.elapsed() >= HOLD);
            // A result may wait for the next ones only if it cannot be lost meanwhile.
            let now = now || !journal.record(&done);
            link.hold(&done, now)?;
        }
    }
}

/// The frame that sends `done` to the host. A result too large to send fails its task, not the
/// worker.
fn encode_done(done: Done) -> Result<Vec<u8>, IpcError> {
    let message = FromWorker::Done(done);
    match (ipc::encode(&message), message) {
        (Err(IpcError::TooLarge { len, max }), FromWorker::Done(mut done)) => {
            done.result = Err(TaskError::ResultTooLarge {
                size: len as u64,
                limit: max as u64,
            });
            ipc::encode(&FromWorker::Done(done))
        }
        (encoded, _) => encoded,
    }
}

/// The worker's end of its socket to the host.
#[derive(Clone)]
struct Link(Arc<Mutex<Ends>>);

struct Ends {
    from_host: BufReader<UnixStream>,
    to_host: BufWriter<UnixStream>,
    /// Messages that arrived while a queue answer was awaited, in order.
    stashed: VecDeque<ToWorker>,
    /// Since when results wait in `to_host` unsent, if any do.
    held_since: Option<Instant>,
}

impl Link {
    fn new(socket: UnixStream) -> io::Result<Link> {
        Ok(Link(Arc::new(Mutex::new(Ends {
            from_host: BufReader::new(socket.try_clone()?),
            to_host: BufWriter::new(socket),
            stashed: VecDeque::new(),
            held_since: None,
        }))))
    }

    fn lock(&self) -> MutexGuard<'_, Ends> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Ends {
    /// Sends one message at once, after any results held back.
    fn send(&mut self, message: &FromWorker) -> Result<(), IpcError> {
        ipc::write(&mut self.to_host, message)?;
        self.flush()
    }

    /// Queues a result frame, and sends it with those held before it if `now`.
    fn hold(&mut self, frame: &[u8], now: bool) -> Result<(), IpcError> {
        self.to_host.write_all(frame)?;
        if now {
            self.flush()
        } else {
            self.held_since.get_or_insert_with(Instant::now);
            Ok(())
        }
    }

    fn flush(&mut self) -> Result<(), IpcError> {
        self.to_host.flush()?;
        self.held_since = None;
        Ok(())
    }

    /// The next message from the host.
    fn next(&mut self) -> Result<ToWorker, IpcError> {
        match self.stashed.pop_front() {
            Some(message) => Ok(message),
            None => ipc::read(&mut self.from_host),
        }
    }

    /// Sends a queue request and waits for its answer.
    fn ask(&mut self, request: QueueRequest) -> Result<QueueAnswer, QueueError> {
        // A host that cannot be reached is shutting down: to the task, the queue is closed.
        self.send(&FromWorker::Queue(request))
            .map_err(|_| QueueError::Closed)?;
        loop {
            match ipc::read(&mut self.from_host) {
                Ok(ToWorker::Queue(answer)) => return answer,
                // The pool wants the batches it sent ahead while this task waits on a queue:
                // they are all here, read while waiting, and none has started.
                Ok(ToWorker::Return) => self.give_back().map_err(|_| QueueError::Closed)?,
                Ok(other) => self.stashed.push_back(other),
                Err(_) => return Err(QueueError::Closed),
            }
        }
    }

    /// Answers [`ToWorker::Return`]: drops the batches read but not started, and names their
    /// tasks to the host, which runs them elsewhere.
    fn give_back(&mut self) -> Result<(), IpcError> {
        let mut tasks = Vec::new();
        self.stashed.retain(|message| match message {
            ToWorker::Run { tasks: batch, .. } => {
                tasks.extend(batch.iter().map(|(task, _)| *task));
                false
            }
            _ => true,
        });
        self.send(&FromWorker::Returned { tasks })
    }
}

/// A task's way to the host's manager.
struct RemoteQueues {
    link: Link,
    max_item_bytes: usize,
    /// The word this worker claims leased items in, if it has its journal.
    tally: Option<Arc<SharedWord>>,
    /// The items the host has leased to this task, not yet claimed.
    lease: Option<Leased>,
    /// Whether the task has got from a queue before: its first get takes no lease, so a task
    /// that gets once never takes more.
    got_before: bool,
}

/// A lease of the items behind a get, from the worker's side.
struct Leased {
    queue: QueueId,
    generation: u32,
    items: VecDeque<Vec<u8>>,
    /// How many the task has claimed.
    taken: u32,
}

impl RemoteQueues {
    /// The next item leased from `queue`, if the task holds a lease of it and the host has not
    /// taken the lease back.
    fn claim(&mut self, queue: QueueId) -> Option<Vec<u8>> {
        let tally = self.tally.as_deref()?;
        let leased = self.lease.as_mut().filter(|leased| leased.queue == queue)?;
        if !leased.items.is_empty() && lease::claim(tally, leased.generation, leased.taken) {
            leased.taken += 1;
            return leased.items.pop_front();
        }
        // Used up, or taken back: the next get asks the host, which settles it.
        self.lease = None;
        None
    }
}

impl Queues for RemoteQueues {
    fn open(&mut self, name: &str) -> Result<QueueId, QueueError> {
        match self.link.lock().ask(QueueRequest::Open {
            name: name.to_owned(),
        })? {
            QueueAnswer::Opened(id) => Ok(id),
            _ => Err(QueueError::Closed),
        }
    }

    fn put(&mut self, queue: QueueId, item: Vec<u8>, wait: Wait) -> Result<(), QueueError> {
        if item.len() > self.max_item_bytes {
            return Err(QueueError::TooLarge);
        }
        let mut link = self.link.lock();
        if wait == Wait::Forever {
            // Nothing but `closed` can come of it, and then the task is being stopped anyway.
            let request = QueueRequest::Put {
                queue,
                item,
                wait,
                ack: false,
            };
            return link
                .send(&FromWorker::Queue(request))
                .map_err(|_| QueueError::Closed);
        }
        link.ask(QueueRequest::Put {
            queue,
            item,
            wait,
            ack: true,
        })
        .map(drop)
    }

    fn get(&mut self, queue: QueueId, wait: Wait) -> Result<Vec<u8>, QueueError> {
        if let Some(item) = self.claim(queue) {
            return Ok(item);
        }
        self.lease = None;
        let request = QueueRequest::Get {
            queue,
            wait,
            lease: self.tally.is_some() && self.got_before,
        };
        self.got_before = true;
        match self.link.lock().ask(request)? {
            QueueAnswer::Item(item) => Ok(item),
            QueueAnswer::Leased {
                item,
                generation,
                items,
            } => {
                self.lease = Some(Leased {
                    queue,
                    generation,
                    items: items.into(),
                    taken: 0,
                });
                Ok(item)
            }
            _ => Err(QueueError::Closed),
        }
    }

    fn get_many(&mut self, queue: QueueId, max: u32, wait: Wait) -> Result<Vec<Vec<u8>>, QueueError> {
        // The host settles the lease first: what is not claimed goes back ahead of the batch.
        self.lease = None;
        match self.link.lock().ask(QueueRequest::GetMany { queue, max, wait })? {
            QueueAnswer::Items(items) => Ok(items),
            _ => Err(QueueError::Closed),
        }
    }

    fn len(&mut self, queue: QueueId) -> Result<u64, QueueError> {
        match self.link.lock().ask(QueueRequest::Len { queue })? {
            QueueAnswer::Len(len) => Ok(len),
            _ => Err(QueueError::Closed),
        }
    }
}

/// The longest a short task's result waits to be sent with the next ones. A task that ran longer
/// than this has its result sent at once.
const HOLD: Duration = Duration::from_millis(1);

/// The results held back of the batch being run, as encoded frames one after another, in a
/// memory file the host also holds. Each batch starts it afresh, so it holds no result of an
/// earlier batch.
struct Journal(Option<(File, u64)>);

impl Journal {
    /// Takes the journal the host passed as standard output, and points standard output at
    /// `null`. Without a journal (standard output not a file), every result is sent at once.
    fn open(null: &File) -> anyhow::Result<Journal> {
        let file = File::from(
            io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .context("cannot take the journal from stdout")?,
        );
        rustix::stdio::dup2_stdout(null).context("cannot detach stdout from the journal")?;
        let is_file = file.metadata().is_ok_and(|meta| meta.is_file());
        Ok(Journal(is_file.then_some((file, 0))))
    }

    fn start_batch(&mut self) {
        if let Some((file, len)) = &mut self.0 {
            if file.set_len(0).is_err() {
                self.0 = None;
            } else {
                *len = 0;
            }
        }
    }

    /// Appends a result frame; `false` if it could not be kept, and must be sent at once.
    fn record(&mut self, frame: &[u8]) -> bool {
        let Some((file, len)) = &mut self.0 else {
            return false;
        };
        if file.write_all_at(frame, *len).is_err() {
            self.0 = None;
            return false;
        }
        *len += frame.len() as u64;
        true
    }
}

/// The results a worker that has exited had written to its journal: those held back of its last
/// batch, in order, up to the first that cannot be read. Some may also have reached the host.
pub(crate) fn read_journal(journal: &File) -> Vec<Done> {
    let mut bytes = Vec::new();
    let mut reader = journal;
    if reader.seek(SeekFrom::Start(0)).is_err() || reader.read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    let mut frames = &bytes[..];
    let mut results = Vec::new();
    while let Ok(FromWorker::Done(done)) = ipc::read(&mut frames) {
        results.push(done);
    }
    results
}

/// How long an interrupted task may take to stop before its worker ends itself. Running wasm
/// stops at once; only a task stuck in a host call that cannot be interrupted (a WASI sleep, a
/// blocking read) takes longer, and the pool then replaces the worker.
const GRACE: Duration = Duration::from_secs(1);

/// Cuts the running task at its deadline. A thread that sleeps until the armed deadline (never
/// waking while nothing is armed), interrupts the task, and ends the worker with
/// [`EXIT_TIMED_OUT`] if the task has not stopped within [`GRACE`].
///
/// Arming and disarming are a store under a lock; the thread is woken only when it must look
/// sooner than it planned to. A wake-up per task would cost two context switches per task, a
/// large share of a short task's time.
struct Watchdog(Arc<(Mutex<Armed>, Condvar)>);

#[derive(Default)]
struct Armed {
    /// The running task's deadline.
    deadline: Option<Instant>,
    /// When the watchdog thread will next look, if it is asleep (`None`: only when woken).
    next_look: Option<Instant>,
}

impl Watchdog {
    fn start(interrupter: Interrupter) -> Watchdog {
        let shared = Arc::new((Mutex::new(Armed::default()), Condvar::new()));
        let watched = shared.clone();
        thread::Builder::new()
            .name("poolhost-watchdog".into())
            .spawn(move || watch(&watched, &interrupter))
            .expect("the watchdog thread starts");
        Watchdog(shared)
    }

    fn arm(&self, deadline: Instant) {
        let mut armed = self.0.0.lock().unwrap_or_else(PoisonError::into_inner);
        armed.deadline = Some(deadline);
        // Asleep until later than the deadline (or until woken): it must look sooner.
        if armed.next_look.is_none_or(|next| deadline < next) {
            self.0.1.notify_one();
        }
    }

    fn disarm(&self) {
        // No wake-up: when the thread next looks it finds nothing armed, or the next task's
        // deadline, and sleeps accordingly.
        self.0.0.lock().unwrap_or_else(PoisonError::into_inner).deadline = None;
    }
}

fn watch(shared: &(Mutex<Armed>, Condvar), interrupter: &Interrupter) {
    let (armed, changed) = shared;
    let mut armed = armed.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let Some(deadline) = armed.deadline else {
            armed.next_look = None;
            armed = changed.wait(armed).unwrap_or_else(PoisonError::into_inner);
            continue;
        };
        let now = Instant::now();
        if now < deadline {
            armed.next_look = Some(deadline);
            armed = changed
                .wait_timeout(armed, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            continue;
        }
        // Interrupted while the lock is held: the task cannot have been replaced by the next one.
        interrupter.interrupt();
        let stop_by = deadline + GRACE;
        while armed.deadline == Some(deadline) {
            let now = Instant::now();
            if now >= stop_by {
                std::process::exit(EXIT_TIMED_OUT);
            }
            armed.next_look = Some(stop_by);
            armed = changed
                .wait_timeout(armed, stop_by - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}
