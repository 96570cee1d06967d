//! The manager: the host-side named queues that tasks on every worker, and the program owning the
//! pool, share (Python's `Manager().Queue()`).
//!
//! Queues are FIFO across all producers; every item goes to exactly one getter. An operation that
//! cannot complete at once is *parked* as a waiter: a reply callback with an optional deadline,
//! answered by the matching operation, by the timer thread at its deadline, or by `close` /
//! `cancel`. Nothing polls: the timer thread sleeps until the earliest deadline and exists only
//! while some waiter has one. Replies run after the lock is released, so a reply may write to a
//! socket or wake a thread without holding up other queues.
//!
//! Memory is bounded by [`Limits`]: a per-item size, a per-queue byte total, a total over all
//! queues, and a number of queues. This module never names the wire or wasmtime.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub(crate) mod lease;
mod memory;

pub(crate) use lease::Tally;
use memory::MemoryQueues;

/// A queue's number within its manager.
pub type QueueId = u32;

/// A parked operation's number within its manager.
pub type WaiterId = u64;

/// Why a queue operation did not happen. The same cases as the WIT `queue.error` enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
pub enum QueueError {
    /// A non-blocking get found the queue empty.
    #[error("the queue is empty")]
    Empty,
    /// A non-blocking put found the queue full.
    #[error("the queue is full")]
    Full,
    /// A blocking operation waited its whole timeout.
    #[error("timed out")]
    Timeout,
    /// The manager is closed: it takes no more items, and has none left to give.
    #[error("the queue is closed")]
    Closed,
    /// The item is over the per-item size limit.
    #[error("the item is over the per-item size limit")]
    TooLarge,
    /// The queue name is empty or longer than 255 bytes.
    #[error("a queue name is 1 to 255 bytes")]
    InvalidName,
    /// The manager already has [`Limits::max_queues`] queues.
    #[error("too many queues")]
    TooManyQueues,
}

/// The longest queue name, in bytes: names are labels, and this keeps the name table small.
pub const MAX_NAME_BYTES: usize = 255;

/// The highest per-item limit a manager accepts: an item crosses between host and worker in one
/// message, whose size the wire bounds (64 MiB), and 32 MiB leaves room for the rest of it.
pub const MAX_ITEM_LIMIT: usize = 32 << 20;

/// What the queue limits count an item as costing beyond its bytes: its place in the queue and
/// the allocation that holds it (a 24-byte vector, and at least 32 bytes of heap). Without it, a
/// flood of empty items would fit any byte limit and take the host's memory all the same.
pub const ITEM_OVERHEAD: usize = 64;

/// What an item of `len` bytes counts as against the byte limits.
fn cost(len: usize) -> usize {
    len + ITEM_OVERHEAD
}

/// The most bytes a batch get takes (unless its first item alone is larger): a batch travels to
/// its worker in one frame, and this keeps it well under the frame limit.
pub const MAX_BATCH_BYTES: usize = 8 << 20;

/// How long an operation may wait for an item or for room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Wait {
    /// Not at all: fail with `Empty` or `Full`.
    No,
    /// As long as it takes (until the manager closes).
    Forever,
    /// At most this long, then fail with `Timeout`.
    For(Duration),
}

/// What the queues of one manager may hold, so that no guest can exhaust the host's memory
/// through them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest item, in bytes. Default 1 MiB: an item is a message, not a file, and one item
    /// must fit a single frame between host and worker with room to spare.
    pub max_item_bytes: usize,
    /// The most bytes one queue holds, each item counted with [`ITEM_OVERHEAD`]; a put beyond
    /// waits (or is `Full`). Default 64 MiB: room for 63 maximal items, or a million small ones.
    pub max_queue_bytes: usize,
    /// The most bytes all queues together hold, counted the same way. Default 256 MiB: the bound
    /// on the host memory the queues can take, whatever the number of queues.
    pub max_total_bytes: usize,
    /// The most queues. Default 1024: queues are named channels, not per-item objects.
    pub max_queues: usize,
}

impl Limits {
    /// The limits made consistent (see [`Manager::with_limits`]): the per-item limit capped at
    /// [`MAX_ITEM_LIMIT`] and at what fits the per-queue limit, and that at the total, so that
    /// no item that passes the per-item check could wait forever; a queue holds at least one
    /// item.
    pub(crate) fn consistent(self) -> Limits {
        let max_queue_bytes = self.max_queue_bytes.min(self.max_total_bytes).max(cost(0));
        Limits {
            max_queue_bytes,
            max_total_bytes: self.max_total_bytes.max(max_queue_bytes),
            max_item_bytes: self
                .max_item_bytes
                .min(max_queue_bytes - ITEM_OVERHEAD)
                .min(MAX_ITEM_LIMIT),
            ..self
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_item_bytes: 1 << 20,
            max_queue_bytes: 64 << 20,
            max_total_bytes: 256 << 20,
            max_queues: 1024,
        }
    }
}

/// The callback a parked put is answered through: `Ok`, or the error with the item handed back.
pub type PutReply = Box<dyn FnOnce(Result<(), (QueueError, Vec<u8>)>) + Send>;
/// The callback a parked get is answered through.
pub type GetReply = Box<dyn FnOnce(Result<Vec<u8>, QueueError>) + Send>;
/// The callback a batch get is answered through.
pub type BatchReply = Box<dyn FnOnce(Result<Vec<Vec<u8>>, QueueError>) + Send>;
/// The callback a worker's get is answered through: the item, and any lease behind it.
pub(crate) type LeaseReply = Box<dyn FnOnce(Result<Got, QueueError>) + Send>;

/// A worker's get answered through a plain get's reply: the item, with no lease.
fn without_lease(reply: LeaseReply) -> GetReply {
    Box::new(move |got: Result<Vec<u8>, QueueError>| reply(got.map(|item| Got { item, lease: None })))
}

/// A worker's get, answered.
#[derive(Debug, PartialEq)]
pub(crate) struct Got {
    /// The item asked for.
    pub item: Vec<u8>,
    /// The items behind it, leased to the worker ([`lease`]).
    pub lease: Option<Granted>,
}

/// A lease, as the worker is told of it.
#[derive(Debug, PartialEq)]
pub(crate) struct Granted {
    /// The lease's generation, which the worker's claims name.
    pub generation: u32,
    /// The items, in queue order.
    pub items: Vec<Vec<u8>>,
}

/// Where a manager keeps its queues: the storage seam. Every operation either completes at
/// once or is parked and answered later through its reply callback; [`Manager`] and
/// [`Queue`] build the blocking flavours on top ([`Manager::put_blocking`] and the like).
/// [`MemoryQueues`], this process's memory, is the default.
pub(crate) trait QueueStore: Send + Sync {
    /// The store's limits.
    fn limits(&self) -> Limits;
    /// Opens (creating if needed) the queue called `name`.
    fn open(&self, name: &str) -> Result<QueueId, QueueError>;
    /// Bounds queue `id` to `maxsize` items (`None`: no bound on the count).
    fn set_maxsize(&self, id: QueueId, maxsize: Option<usize>);
    /// The bound on the items of queue `id`, if it has one.
    fn maxsize(&self, id: QueueId) -> Option<usize>;
    /// The names of the queues, in the order they were created.
    fn names(&self) -> Vec<String>;
    /// Closes every queue (see [`Manager::close`]).
    fn close(&self);
    /// Puts `item` on queue `id`, answering through `reply` now or once parked. Returns the
    /// waiter's id if the put was parked.
    fn put_with(&self, id: QueueId, item: Vec<u8>, wait: Wait, reply: PutReply) -> Option<WaiterId>;
    /// Gets an item from queue `id`, answering through `reply` now or once parked. Returns the
    /// waiter's id if the get was parked.
    fn get_with(&self, id: QueueId, wait: Wait, reply: GetReply) -> Option<WaiterId>;
    /// Gets up to `max` items from queue `id`: waits like [`QueueStore::get_with`] for the
    /// first, then takes the items there are now, up to [`MAX_BATCH_BYTES`]. Returns the
    /// waiter's id if the get was parked (a parked batch get is answered with the one item that
    /// ends its wait).
    fn get_many_with(&self, id: QueueId, max: usize, wait: Wait, reply: BatchReply) -> Option<WaiterId>;
    /// As [`QueueStore::get_many_with`], for a task running on worker `holder`: a store that can
    /// lose its host (a cluster's) keeps the items taken as held by it until
    /// [`QueueStore::release`], so that they go back to their queue if the host dies first.
    fn get_many_held(
        &self,
        id: QueueId,
        max: usize,
        wait: Wait,
        _holder: u32,
        reply: BatchReply,
    ) -> Option<WaiterId> {
        self.get_many_with(id, max, wait, reply)
    }
    /// As [`QueueStore::get_with`], for a task running on worker `holder` (see
    /// [`QueueStore::get_many_held`]).
    fn get_held(&self, id: QueueId, wait: Wait, _holder: u32, reply: GetReply) -> Option<WaiterId> {
        self.get_with(id, wait, reply)
    }
    /// As [`QueueStore::get_held`], for a worker that may take a lease of the items behind the
    /// one it gets, through its `tally` ([`lease`]). Settles the lease the worker had: it asks
    /// only once it has used that up, or for another queue. A store without leases answers
    /// with the item alone.
    fn get_leased(
        &self,
        id: QueueId,
        wait: Wait,
        holder: u32,
        _tally: Option<&Arc<dyn Tally>>,
        reply: LeaseReply,
    ) -> Option<WaiterId> {
        self.get_held(id, wait, holder, without_lease(reply))
    }
    /// Settles worker `holder`'s lease, if it has one: the items it has not claimed go back to
    /// the head of their queue, in order. When the worker parks an operation, or is `gone`.
    fn settle(&self, _holder: u32, _gone: bool) {}
    /// The task on worker `holder` has ended: the items it took are its own for good.
    fn release(&self, _holder: u32) {}
    /// Answers a parked operation with [`QueueError::Closed`] now (its task is gone); nothing
    /// happens if it was answered already.
    fn cancel(&self, waiter: WaiterId);
    /// How many items queue `id` holds.
    fn len_of(&self, id: QueueId) -> usize;
}

/// The blocking queue operations a task makes, as the runtime maps the WIT `queue` interface
/// onto them (the WIT's `qsize` is `len` here, as in crossbeam-channel). A worker forwards each
/// to its host; a driver, which runs in the host, has the [`Manager`] itself.
pub trait Queues: Send {
    /// Opens, creating if needed, the queue called `name`.
    fn open(&mut self, name: &str) -> Result<QueueId, QueueError>;
    /// Puts `item` on the queue, waiting as `wait` says while it is full.
    fn put(&mut self, queue: QueueId, item: Vec<u8>, wait: Wait) -> Result<(), QueueError>;
    /// Gets an item from the queue, waiting as `wait` says while it is empty.
    fn get(&mut self, queue: QueueId, wait: Wait) -> Result<Vec<u8>, QueueError>;
    /// Gets up to `max` items, waiting as `wait` says for the first.
    fn get_many(&mut self, queue: QueueId, max: u32, wait: Wait) -> Result<Vec<Vec<u8>>, QueueError>;
    /// How many items the queue holds (WIT `qsize`).
    fn len(&mut self, queue: QueueId) -> Result<u64, QueueError>;
}

/// A set of named queues. Cheap to clone: clones share the queues.
#[derive(Clone)]
pub struct Manager {
    store: Arc<dyn QueueStore>,
}

impl Default for Manager {
    fn default() -> Self {
        Manager::with_limits(Limits::default())
    }
}

impl Manager {
    /// A manager with the default [`Limits`].
    pub fn new() -> Self {
        Manager::default()
    }

    /// A manager with `limits`, its queues in this process's memory. The per-item limit is
    /// capped at [`MAX_ITEM_LIMIT`] and at what fits the per-queue limit, and that at the total:
    /// an item that could never fit would wait forever. A queue holds at least one item.
    pub fn with_limits(limits: Limits) -> Self {
        Manager {
            store: Arc::new(MemoryQueues::new(limits)),
        }
    }

    /// A manager whose queues `store` keeps.
    pub(crate) fn with_store(store: Arc<dyn QueueStore>) -> Self {
        Manager { store }
    }

    /// The manager's limits.
    pub fn limits(&self) -> Limits {
        self.store.limits()
    }

    /// The queue called `name`, created unbounded if there is none.
    ///
    /// # Errors
    /// [`QueueError::InvalidName`], [`QueueError::TooManyQueues`].
    pub fn queue(&self, name: &str) -> Result<Queue, QueueError> {
        let id = self.open(name)?;
        Ok(Queue {
            manager: self.clone(),
            id,
            name: name.to_owned(),
        })
    }

    /// The queue called `name`, created if there is none, holding at most `maxsize` items (0 means
    /// no bound on the count, as in Python). A put to a full queue waits for room.
    ///
    /// # Errors
    /// As [`Manager::queue`].
    pub fn bounded(&self, name: &str, maxsize: usize) -> Result<Queue, QueueError> {
        let queue = self.queue(name)?;
        self.store.set_maxsize(queue.id, (maxsize > 0).then_some(maxsize));
        Ok(queue)
    }

    /// The names of the queues, in the order they were created.
    pub fn names(&self) -> Vec<String> {
        self.store.names()
    }

    /// Closes every queue: parked operations fail with [`QueueError::Closed`], puts fail from now
    /// on, gets still take the items left and then fail with `Closed`.
    pub fn close(&self) {
        self.store.close();
    }

    /// Opens (creating if needed) the queue called `name`.
    pub(crate) fn open(&self, name: &str) -> Result<QueueId, QueueError> {
        self.store.open(name)
    }

    /// See [`QueueStore::put_with`].
    pub(crate) fn put_with(
        &self,
        id: QueueId,
        item: Vec<u8>,
        wait: Wait,
        reply: PutReply,
    ) -> Option<WaiterId> {
        self.store.put_with(id, item, wait, reply)
    }

    /// See [`QueueStore::get_many_held`].
    pub(crate) fn get_many_held(
        &self,
        id: QueueId,
        max: usize,
        wait: Wait,
        holder: u32,
        reply: BatchReply,
    ) -> Option<WaiterId> {
        self.store.get_many_held(id, max, wait, holder, reply)
    }

    /// See [`QueueStore::get_leased`].
    pub(crate) fn get_leased(
        &self,
        id: QueueId,
        wait: Wait,
        holder: u32,
        tally: Option<&Arc<dyn Tally>>,
        reply: LeaseReply,
    ) -> Option<WaiterId> {
        self.store.get_leased(id, wait, holder, tally, reply)
    }

    /// See [`QueueStore::settle`].
    pub(crate) fn settle(&self, holder: u32, gone: bool) {
        self.store.settle(holder, gone);
    }

    /// See [`QueueStore::release`].
    pub(crate) fn release(&self, holder: u32) {
        self.store.release(holder);
    }

    /// See [`QueueStore::cancel`].
    pub(crate) fn cancel(&self, waiter: WaiterId) {
        self.store.cancel(waiter);
    }

    /// How many items queue `id` holds.
    pub(crate) fn len_of(&self, id: QueueId) -> usize {
        self.store.len_of(id)
    }

    /// Puts `item` on queue `id`, waiting on this thread as `wait` says: the one blocking adapter
    /// over the store's callbacks, which [`Queue`] and [`Queues`] share.
    pub(crate) fn put_blocking(
        &self,
        id: QueueId,
        item: Vec<u8>,
        wait: Wait,
    ) -> Result<(), (QueueError, Vec<u8>)> {
        let (reply, answer) = oneshot();
        self.store.put_with(id, item, wait, reply);
        answer.wait()
    }

    /// Gets an item from queue `id`, waiting on this thread as `wait` says.
    pub(crate) fn get_blocking(&self, id: QueueId, wait: Wait) -> Result<Vec<u8>, QueueError> {
        let (reply, answer) = oneshot();
        self.store.get_with(id, wait, reply);
        answer.wait()
    }

    /// Gets up to `max` items from queue `id`, waiting on this thread as `wait` says for the
    /// first.
    pub(crate) fn get_many_blocking(
        &self,
        id: QueueId,
        max: usize,
        wait: Wait,
    ) -> Result<Vec<Vec<u8>>, QueueError> {
        let (reply, answer) = oneshot();
        self.store.get_many_with(id, max, wait, reply);
        answer.wait()
    }
}

/// A driver's queue operations, which run in the host: straight to the manager.
impl Queues for Manager {
    fn open(&mut self, name: &str) -> Result<QueueId, QueueError> {
        Manager::open(self, name)
    }

    fn put(&mut self, queue: QueueId, item: Vec<u8>, wait: Wait) -> Result<(), QueueError> {
        self.put_blocking(queue, item, wait).map_err(|(error, _)| error)
    }

    fn get(&mut self, queue: QueueId, wait: Wait) -> Result<Vec<u8>, QueueError> {
        self.get_blocking(queue, wait)
    }

    fn get_many(&mut self, queue: QueueId, max: u32, wait: Wait) -> Result<Vec<Vec<u8>>, QueueError> {
        self.get_many_blocking(queue, max as usize, wait)
    }

    fn len(&mut self, queue: QueueId) -> Result<u64, QueueError> {
        Ok(self.len_of(queue) as u64)
    }
}

/// A handle to one queue of a [`Manager`], for the program that owns the pool.
///
/// The blocking operations wait on the calling thread; the names follow crossbeam-channel.
#[derive(Clone)]
pub struct Queue {
    manager: Manager,
    id: QueueId,
    name: String,
}

/// Why a blocking put failed; the item is handed back.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PutError {
    /// The manager is closed.
    #[error("the queue is closed")]
    Closed(Vec<u8>),
    /// The item is over the per-item size limit.
    #[error("the item is over the per-item size limit")]
    TooLarge(Vec<u8>),
}

/// Why a non-blocking put failed; the item is handed back.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TryPutError {
    /// The queue is full.
    #[error("the queue is full")]
    Full(Vec<u8>),
    /// The manager is closed.
    #[error("the queue is closed")]
    Closed(Vec<u8>),
    /// The item is over the per-item size limit.
    #[error("the item is over the per-item size limit")]
    TooLarge(Vec<u8>),
}

/// Why a put with a timeout failed; the item is handed back.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PutTimeoutError {
    /// The queue stayed full for the whole timeout.
    #[error("timed out waiting for room in the queue")]
    Timeout(Vec<u8>),
    /// The manager is closed.
    #[error("the queue is closed")]
    Closed(Vec<u8>),
    /// The item is over the per-item size limit.
    #[error("the item is over the per-item size limit")]
    TooLarge(Vec<u8>),
}

/// Why a blocking get failed: the manager is closed and the queue is empty.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the queue is closed")]
pub struct GetError;

/// Why a non-blocking get failed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TryGetError {
    /// The queue is empty.
    #[error("the queue is empty")]
    Empty,
    /// The manager is closed and the queue is empty.
    #[error("the queue is closed")]
    Closed,
}

/// Why a get with a timeout failed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum GetTimeoutError {
    /// No item arrived within the timeout.
    #[error("timed out waiting for an item")]
    Timeout,
    /// The manager is closed and the queue is empty.
    #[error("the queue is closed")]
    Closed,
}

impl Queue {
    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds `item` at the back, waiting while the queue is full.
    ///
    /// # Errors
    /// [`PutError`], with the item.
    pub fn put(&self, item: impl Into<Vec<u8>>) -> Result<(), PutError> {
        self.put_wait(item.into(), Wait::Forever)
            .map_err(|(e, item)| match e {
                QueueError::TooLarge => PutError::TooLarge(item),
                _ => PutError::Closed(item),
            })
    }

    /// Adds `item` at the back if there is room now.
    ///
    /// # Errors
    /// [`TryPutError`], with the item.
    pub fn try_put(&self, item: impl Into<Vec<u8>>) -> Result<(), TryPutError> {
        self.put_wait(item.into(), Wait::No).map_err(|(e, item)| match e {
            QueueError::Full => TryPutError::Full(item),
            QueueError::TooLarge => TryPutError::TooLarge(item),
            _ => TryPutError::Closed(item),
        })
    }

    /// Adds `item` at the back, waiting at most `timeout` for room.
    ///
    /// # Errors
    /// [`PutTimeoutError`], with the item.
    pub fn put_timeout(&self, item: impl Into<Vec<u8>>, timeout: Duration) -> Result<(), PutTimeoutError> {
        self.put_wait(item.into(), Wait::For(timeout))
            .map_err(|(e, item)| match e {
                QueueError::Timeout => PutTimeoutError::Timeout(item),
                QueueError::TooLarge => PutTimeoutError::TooLarge(item),
                _ => PutTimeoutError::Closed(item),
            })
    }

    /// Takes the item at the front, waiting while the queue is empty.
    ///
    /// # Errors
    /// [`GetError`] once the manager is closed and the queue empty.
    pub fn get(&self) -> Result<Vec<u8>, GetError> {
        self.get_wait(Wait::Forever).map_err(|_| GetError)
    }

    /// Takes the item at the front if there is one.
    ///
    /// # Errors
    /// [`TryGetError`].
    pub fn try_get(&self) -> Result<Vec<u8>, TryGetError> {
        self.get_wait(Wait::No).map_err(|e| match e {
            QueueError::Empty => TryGetError::Empty,
            _ => TryGetError::Closed,
        })
    }

    /// Takes the item at the front, waiting at most `timeout` for one.
    ///
    /// # Errors
    /// [`GetTimeoutError`].
    pub fn get_timeout(&self, timeout: Duration) -> Result<Vec<u8>, GetTimeoutError> {
        self.get_wait(Wait::For(timeout)).map_err(|e| match e {
            QueueError::Timeout => GetTimeoutError::Timeout,
            _ => GetTimeoutError::Closed,
        })
    }

    /// Takes up to `max` items from the front: waits while the queue is empty, then takes the
    /// items there are (WIT `get-many`).
    ///
    /// # Errors
    /// [`GetError`] once the manager is closed and the queue empty.
    pub fn get_many(&self, max: usize) -> Result<Vec<Vec<u8>>, GetError> {
        self.manager
            .get_many_blocking(self.id, max, Wait::Forever)
            .map_err(|_| GetError)
    }

    /// How many items the queue holds (WIT `qsize`).
    pub fn len(&self) -> usize {
        self.manager.len_of(self.id)
    }

    /// Whether the queue holds no item.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most items the queue holds, if it is bounded.
    pub fn capacity(&self) -> Option<usize> {
        self.manager.store.maxsize(self.id)
    }

    fn put_wait(&self, item: Vec<u8>, wait: Wait) -> Result<(), (QueueError, Vec<u8>)> {
        self.manager.put_blocking(self.id, item, wait)
    }

    fn get_wait(&self, wait: Wait) -> Result<Vec<u8>, QueueError> {
        self.manager.get_blocking(self.id, wait)
    }
}

/// A reply callback and the place the calling thread waits for what it is called with.
pub(crate) fn oneshot<T: Send + 'static>() -> (Box<dyn FnOnce(T) + Send>, Answer<T>) {
    let cell = Arc::new((Mutex::new(None), Condvar::new()));
    let sender = cell.clone();
    let reply = Box::new(move |value| {
        *sender.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(value);
        sender.1.notify_one();
    });
    (reply, Answer(cell))
}

/// Where a [`oneshot`] reply arrives.
pub(crate) struct Answer<T>(Arc<(Mutex<Option<T>>, Condvar)>);

impl<T> Answer<T> {
    /// Whether the reply has come.
    pub(crate) fn is_ready(&self) -> bool {
        self.0.0.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }

    /// Waits for the reply. Every parked operation is answered (by its match, its deadline,
    /// `close` or `cancel`), so this returns.
    pub(crate) fn wait(self) -> T {
        let (value, ready) = &*self.0;
        let mut value = value.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(value) = value.take() {
                return value;
            }
            value = ready.wait(value).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::thread;
    use std::time::Instant;

    use super::*;

    fn bytes(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    /// A reply that sends what it is answered with down a channel.
    type PutResult = Result<(), (QueueError, Vec<u8>)>;

    fn put_reply() -> (PutReply, mpsc::Receiver<PutResult>) {
        let (tx, rx) = mpsc::channel();
        (Box::new(move |r| tx.send(r).unwrap()), rx)
    }

    fn get_reply() -> (GetReply, mpsc::Receiver<Result<Vec<u8>, QueueError>>) {
        let (tx, rx) = mpsc::channel();
        (Box::new(move |r| tx.send(r).unwrap()), rx)
    }

    /// Bound on waiting for something that must happen.
    const SOON: Duration = Duration::from_secs(10);

    #[test]
    fn items_come_out_in_the_order_they_went_in() {
        let q = Manager::new().queue("q").unwrap();
        for c in "itcast".chars() {
            q.put(c.to_string()).unwrap();
        }
        assert_eq!(q.len(), 6);
        let got: String = (0..6)
            .map(|_| String::from_utf8(q.get().unwrap()).unwrap())
            .collect();
        assert_eq!(got, "itcast");
        assert!(q.is_empty());
    }

    #[test]
    fn the_same_name_is_the_same_queue() {
        let manager = Manager::new();
        manager.queue("a").unwrap().put(bytes("x")).unwrap();
        assert_eq!(manager.queue("a").unwrap().try_get(), Ok(bytes("x")));
        assert_eq!(manager.names(), ["a"]);
    }

    #[test]
    fn empty_queue_flavours() {
        let q = Manager::new().queue("q").unwrap();
        assert_eq!(q.try_get(), Err(TryGetError::Empty));
        let start = Instant::now();
        assert_eq!(
            q.get_timeout(Duration::from_millis(100)),
            Err(GetTimeoutError::Timeout)
        );
        assert!(start.elapsed() >= Duration::from_millis(100));
        // A parked get is answered by the next put, not by polling.
        let (reply, answer) = get_reply();
        assert!(q.manager.store.get_with(q.id, Wait::Forever, reply).is_some());
        q.put(bytes("late")).unwrap();
        assert_eq!(answer.recv_timeout(SOON).unwrap(), Ok(bytes("late")));
        assert!(
            q.is_empty(),
            "the item went to the waiting getter, not into the queue"
        );
    }

    #[test]
    fn full_queue_flavours() {
        let q = Manager::new().bounded("q", 2).unwrap();
        assert_eq!(q.capacity(), Some(2));
        q.put(bytes("1")).unwrap();
        q.try_put(bytes("2")).unwrap();
        assert_eq!(q.try_put(bytes("3")), Err(TryPutError::Full(bytes("3"))));
        let start = Instant::now();
        assert_eq!(
            q.put_timeout(bytes("3"), Duration::from_millis(100)),
            Err(PutTimeoutError::Timeout(bytes("3")))
        );
        assert!(start.elapsed() >= Duration::from_millis(100));
        // A blocking put parks until a get makes room, then its item goes in behind the others.
        let (reply, answer) = put_reply();
        assert!(
            q.manager
                .put_with(q.id, bytes("3"), Wait::Forever, reply)
                .is_some()
        );
        assert_eq!(q.get(), Ok(bytes("1")));
        assert_eq!(answer.recv_timeout(SOON).unwrap(), Ok(()));
        assert_eq!((q.get(), q.get(), q.len()), (Ok(bytes("2")), Ok(bytes("3")), 0));
    }

    #[test]
    fn batch_gets_take_what_is_there_in_order() {
        let q = Manager::new().queue("q").unwrap();
        for i in 0..5 {
            q.put(i.to_string()).unwrap();
        }
        assert_eq!(q.get_many(3), Ok(vec![bytes("0"), bytes("1"), bytes("2")]));
        assert_eq!(q.get_many(10), Ok(vec![bytes("3"), bytes("4")]));
        assert_eq!(q.get_many(0), Ok(vec![]), "up to none is none, at once");
        // On an empty queue a batch get waits, and the put that ends its wait gives it one item.
        let (tx, rx) = mpsc::channel();
        let waiter =
            q.manager
                .store
                .get_many_with(q.id, 10, Wait::Forever, Box::new(move |r| tx.send(r).unwrap()));
        assert!(waiter.is_some());
        q.put(bytes("5")).unwrap();
        assert_eq!(rx.recv_timeout(SOON).unwrap(), Ok(vec![bytes("5")]));
        // A batch stops before MAX_BATCH_BYTES, but always takes at least one item.
        let big = Manager::with_limits(Limits {
            max_item_bytes: MAX_BATCH_BYTES,
            max_queue_bytes: 4 * MAX_BATCH_BYTES,
            max_total_bytes: 4 * MAX_BATCH_BYTES,
            max_queues: 1,
        });
        let b = big.queue("b").unwrap();
        b.put(vec![0; MAX_BATCH_BYTES]).unwrap();
        b.put(vec![1; 10]).unwrap();
        assert_eq!(b.get_many(10).unwrap().len(), 1);
        assert_eq!(b.get_many(10), Ok(vec![vec![1; 10]]));
    }

    #[test]
    fn closed_queue_flavours() {
        let manager = Manager::new();
        let q = manager.queue("q").unwrap();
        q.put(bytes("left")).unwrap();
        manager.close();
        assert_eq!(q.put(bytes("x")), Err(PutError::Closed(bytes("x"))));
        assert_eq!(q.try_put(bytes("x")), Err(TryPutError::Closed(bytes("x"))));
        assert_eq!(
            q.put_timeout(bytes("x"), SOON),
            Err(PutTimeoutError::Closed(bytes("x")))
        );
        // What is left can still be taken; then gets fail at once, whatever their flavour.
        assert_eq!(q.get(), Ok(bytes("left")));
        assert_eq!(q.get(), Err(GetError));
        assert_eq!(q.try_get(), Err(TryGetError::Closed));
        assert_eq!(q.get_timeout(SOON), Err(GetTimeoutError::Closed));
    }

    #[test]
    fn closing_answers_blocked_gets_and_puts() {
        let memory = Arc::new(MemoryQueues::new(Limits::default()));
        let manager = Manager {
            store: memory.clone(),
        };
        let empty = manager.queue("empty").unwrap();
        let full = manager.bounded("full", 1).unwrap();
        full.put(bytes("1")).unwrap();
        let getter = {
            let empty = empty.clone();
            thread::spawn(move || empty.get())
        };
        let putter = {
            let full = full.clone();
            thread::spawn(move || full.put(bytes("2")))
        };
        // Wait (bounded) until both are parked, then close.
        let deadline = Instant::now() + SOON;
        while memory.lock().waiting.len() < 2 {
            assert!(Instant::now() < deadline, "the threads never parked");
            thread::yield_now();
        }
        manager.close();
        assert_eq!(getter.join().unwrap(), Err(GetError));
        assert_eq!(putter.join().unwrap(), Err(PutError::Closed(bytes("2"))));
    }

    #[test]
    fn too_large_items_are_refused_by_every_put() {
        let manager = Manager::with_limits(Limits {
            max_item_bytes: 4,
            ..Limits::default()
        });
        let q = manager.queue("q").unwrap();
        let big = bytes("12345");
        assert_eq!(q.put(big.clone()), Err(PutError::TooLarge(big.clone())));
        assert_eq!(q.try_put(big.clone()), Err(TryPutError::TooLarge(big.clone())));
        assert_eq!(
            q.put_timeout(big.clone(), SOON),
            Err(PutTimeoutError::TooLarge(big))
        );
        assert_eq!(q.try_put(bytes("1234")), Ok(()));
    }

    #[test]
    fn byte_limits_per_queue_and_in_total() {
        let manager = Manager::with_limits(Limits {
            max_item_bytes: 4,
            max_queue_bytes: 2 * cost(4),
            max_total_bytes: 3 * cost(4),
            max_queues: 4,
        });
        let a = manager.queue("a").unwrap();
        let b = manager.queue("b").unwrap();
        a.put(bytes("aaaa")).unwrap();
        a.put(bytes("aaaa")).unwrap();
        assert_eq!(
            a.try_put(bytes("a")),
            Err(TryPutError::Full(bytes("a"))),
            "queue a holds two items of 4 bytes"
        );
        b.put(bytes("bbbb")).unwrap();
        assert_eq!(
            b.try_put(bytes("b")),
            Err(TryPutError::Full(bytes("b"))),
            "all queues hold three items of 4 bytes"
        );
        // A put parked on b for room in the total goes in when a get on a frees some.
        let (reply, answer) = put_reply();
        assert!(
            manager
                .put_with(b.id, bytes("bb"), Wait::Forever, reply)
                .is_some()
        );
        assert_eq!(a.get(), Ok(bytes("aaaa")));
        assert_eq!(answer.recv_timeout(SOON).unwrap(), Ok(()));
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn names_and_queue_count_are_limited() {
        let manager = Manager::with_limits(Limits {
            max_queues: 2,
            ..Limits::default()
        });
        assert_eq!(manager.queue("").err(), Some(QueueError::InvalidName));
        assert_eq!(
            manager.queue(&"x".repeat(256)).err(),
            Some(QueueError::InvalidName)
        );
        manager.queue(&"x".repeat(255)).unwrap();
        manager.queue("two").unwrap();
        assert_eq!(manager.queue("three").err(), Some(QueueError::TooManyQueues));
        manager.queue("two").unwrap();
    }

    #[test]
    fn a_cancelled_get_takes_nothing() {
        let q = Manager::new().queue("q").unwrap();
        let (reply, answer) = get_reply();
        let waiter = q.manager.store.get_with(q.id, Wait::Forever, reply).unwrap();
        q.manager.cancel(waiter);
        assert_eq!(answer.recv_timeout(SOON).unwrap(), Err(QueueError::Closed));
        q.put(bytes("kept")).unwrap();
        assert_eq!(q.try_get(), Ok(bytes("kept")));
        q.manager.cancel(waiter); // answered already: nothing happens
    }

    #[test]
    fn a_timed_out_put_lets_smaller_ones_behind_it_in() {
        // Room for the item there and a small one, not for a big one.
        let manager = Manager::with_limits(Limits {
            max_item_bytes: 8,
            max_queue_bytes: cost(4) + cost(2),
            max_total_bytes: cost(4) + cost(2),
            max_queues: 1,
        });
        let q = manager.queue("q").unwrap();
        q.put(bytes("1234")).unwrap();
        let (big, big_answer) = put_reply();
        manager
            .put_with(q.id, bytes("12345678"), Wait::For(Duration::from_millis(50)), big)
            .unwrap();
        let (small, small_answer) = put_reply();
        manager.put_with(q.id, bytes("12"), Wait::Forever, small).unwrap();
        assert_eq!(
            big_answer.recv_timeout(SOON).unwrap(),
            Err((QueueError::Timeout, bytes("12345678")))
        );
        assert_eq!(small_answer.recv_timeout(SOON).unwrap(), Ok(()));
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn the_timer_thread_ends_when_nothing_waits() {
        let memory = Arc::new(MemoryQueues::new(Limits::default()));
        let manager = Manager {
            store: memory.clone(),
        };
        let q = manager.queue("q").unwrap();
        assert_eq!(
            q.get_timeout(Duration::from_millis(10)),
            Err(GetTimeoutError::Timeout)
        );
        let deadline = Instant::now() + SOON;
        while memory.lock().timer_running {
            assert!(Instant::now() < deadline, "the timer thread kept running");
            thread::yield_now();
        }
    }

    #[test]
    fn many_producers_and_consumers_each_item_once_in_producer_order() {
        const PRODUCERS: u32 = 4;
        const CONSUMERS: usize = 4;
        const ITEMS: u32 = 5_000;
        let q = Manager::new().bounded("q", 64).unwrap();
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let q = q.clone();
                thread::spawn(move || {
                    for i in 0..ITEMS {
                        q.put(format!("{p}:{i}")).unwrap();
                    }
                })
            })
            .collect();
        let consumers: Vec<_> = (0..CONSUMERS)
            .map(|_| {
                let q = q.clone();
                thread::spawn(move || {
                    let mut got = Vec::new();
                    while let Ok(item) = q.get_timeout(Duration::from_millis(500)) {
                        got.push(String::from_utf8(item).unwrap());
                    }
                    got
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        let mut seen = std::collections::HashSet::new();
        for c in consumers {
            let got = c.join().unwrap();
            // Each consumer sees each producer's items in the order they were put.
            let mut last = vec![None; PRODUCERS as usize];
            for item in got {
                let (p, i) = item.split_once(':').unwrap();
                let (p, i): (usize, u32) = (p.parse().unwrap(), i.parse().unwrap());
                assert!(last[p].is_none_or(|l| l < i), "producer {p}'s items out of order");
                last[p] = Some(i);
                assert!(seen.insert(item), "an item was delivered twice");
            }
        }
        assert_eq!(seen.len(), (PRODUCERS * ITEMS) as usize, "every item delivered");
        assert_eq!(q.len(), 0);
    }
}
