//! Write poolhost tasks in Rust.
//!
//! A task component is a crate built for `wasm32-wasip2` that exports the functions the pool
//! calls. This crate gives such a guest the poolhost imports as ordinary Rust, so guest authors
//! never handle generated bindings for them:
//!
//! - [`process::pid`] and [`process::ppid`]: the worker's pid and the pool owner's pid;
//! - [`Queue`]: the pool's named queues, shared by every task on every worker;
//! - [`Pool`]: for a driver, a component whose `main` is the parent program, the pool that runs
//!   its own exported functions on the workers.
//!
//! ```no_run
//! use poolhost_guest::{Queue, process};
//!
//! // In a guest crate (crate-type = ["cdylib"]) whose exports are declared in WIT, e.g.
//! // wit_bindgen::generate!({ inline: "package my:task; world task { export work: func(n: u32); }" });
//! fn work(n: u32) -> Result<(), poolhost_guest::Error> {
//!     println!("task {n} runs on worker {} of pool {}", process::pid(), process::ppid());
//!     let results = Queue::open("results")?;
//!     results.put_str(&format!("{n} done"))?;
//!     Ok(())
//! }
//! ```
//!
//! The WIT package these imports come from is `poolhost:pool@0.1.0`, in the repository's `wit/`
//! directory; its `task` world is the full set of imports a task may use (WASI 0.2 and poolhost's
//! own).
#![deny(missing_docs)]

use std::time::Duration;

mod pool;
mod wave;

pub use pool::{Args, AsyncResult, Pool, PoolError, ToWave};
pub use wave::{FromWave, Reader, WaveError, from_wave};

#[doc(hidden)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "poolhost:pool/imports",
    });
}

/// Where the task runs: the process ids Python's `os.getpid()` and `os.getppid()` give.
pub mod process {
    use crate::bindings::poolhost::pool::process as imports;

    /// The OS pid of the worker process running this task.
    ///
    /// Tasks that land on the same worker see the same pid; a replacement worker has a new one.
    pub fn pid() -> u32 {
        imports::pid()
    }

    /// The OS pid of the process that owns the pool: the same for every task of one pool.
    pub fn ppid() -> u32 {
        imports::ppid()
    }
}

/// Why a queue operation did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Error {
    /// [`Queue::try_get`]: the queue holds no item.
    Empty,
    /// [`Queue::try_put`]: the queue is full.
    Full,
    /// A `_timeout` operation waited its whole timeout.
    Timeout,
    /// The pool is shutting down.
    Closed,
    /// The item is over the pool's per-item size limit.
    TooLarge,
    /// The queue name is empty or longer than 255 bytes.
    InvalidName,
    /// The pool already has as many queues as it allows.
    TooManyQueues,
}

impl Error {
    /// The error's name in the WIT interface: `empty`, `full`, `timeout`, `closed`, `too-large`,
    /// `invalid-name` or `too-many-queues`.
    pub fn name(self) -> &'static str {
        match self {
            Error::Empty => "empty",
            Error::Full => "full",
            Error::Timeout => "timeout",
            Error::Closed => "closed",
            Error::TooLarge => "too-large",
            Error::InvalidName => "invalid-name",
            Error::TooManyQueues => "too-many-queues",
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Error::Empty => "the queue is empty",
            Error::Full => "the queue is full",
            Error::Timeout => "timed out",
            Error::Closed => "the queue is closed",
            Error::TooLarge => "the item is over the pool's per-item size limit",
            Error::InvalidName => "a queue name is 1 to 255 bytes",
            Error::TooManyQueues => "the pool has too many queues",
        })
    }
}

impl std::error::Error for Error {}

impl From<bindings::poolhost::pool::queue::Error> for Error {
    fn from(error: bindings::poolhost::pool::queue::Error) -> Self {
        use bindings::poolhost::pool::queue::Error as Wit;
        match error {
            Wit::Empty => Error::Empty,
            Wit::Full => Error::Full,
            Wit::Timeout => Error::Timeout,
            Wit::Closed => Error::Closed,
            Wit::TooLarge => Error::TooLarge,
            Wit::InvalidName => Error::InvalidName,
            Wit::TooManyQueues => Error::TooManyQueues,
        }
    }
}

/// One of the pool's named queues: FIFO, shared by every task on every worker and by the program
/// that runs the pool (Python's `Manager().Queue()`).
///
/// Every item put is delivered exactly once, to one getter, in the order the queue received it.
/// Items are bytes; the `_str` methods put and get UTF-8 text.
///
/// ```no_run
/// use std::time::Duration;
/// use poolhost_guest::{Error, Queue};
///
/// let jobs = Queue::open("jobs")?;
/// jobs.put_str("resize a.png")?;
/// match jobs.get_timeout(Duration::from_secs(1)) {
///     Ok(job) => println!("got {} bytes", job.len()),
///     Err(Error::Timeout) => println!("no job within a second"),
///     Err(e) => return Err(e),
/// }
/// # Ok::<(), Error>(())
/// ```
pub struct Queue(bindings::poolhost::pool::queue::Queue);

impl Queue {
    /// Opens the queue called `name`, creating it (unbounded) if the pool has none by that name.
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::TooManyQueues`], [`Error::Closed`].
    pub fn open(name: &str) -> Result<Queue, Error> {
        Ok(Queue(bindings::poolhost::pool::queue::Queue::open(name)?))
    }

    /// The queue's name.
    pub fn name(&self) -> String {
        self.0.name()
    }

    /// Adds `item` at the back, waiting while the queue is full.
    ///
    /// # Errors
    /// [`Error::TooLarge`], [`Error::Closed`].
    pub fn put(&self, item: impl AsRef<[u8]>) -> Result<(), Error> {
        Ok(self.0.put(item.as_ref(), None)?)
    }

    /// Adds the UTF-8 bytes of `text` at the back, waiting while the queue is full.
    ///
    /// # Errors
    /// As [`Queue::put`].
    pub fn put_str(&self, text: &str) -> Result<(), Error> {
        self.put(text)
    }

    /// Adds `item` at the back, waiting at most `timeout` for room.
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::TooLarge`], [`Error::Closed`].
    pub fn put_timeout(&self, item: impl AsRef<[u8]>, timeout: Duration) -> Result<(), Error> {
        Ok(self.0.put(item.as_ref(), Some(nanos(timeout)))?)
    }

    /// Adds `item` at the back if there is room now.
    ///
    /// # Errors
    /// [`Error::Full`], [`Error::TooLarge`], [`Error::Closed`].
    pub fn try_put(&self, item: impl AsRef<[u8]>) -> Result<(), Error> {
        Ok(self.0.try_put(item.as_ref())?)
    }

    /// Takes the item at the front, waiting while the queue is empty.
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub fn get(&self) -> Result<Vec<u8>, Error> {
        Ok(self.0.get(None)?)
    }

    /// Takes the item at the front as text (invalid UTF-8 is replaced by U+FFFD), waiting while
    /// the queue is empty.
    ///
    /// # Errors
    /// As [`Queue::get`].
    pub fn get_str(&self) -> Result<String, Error> {
        Ok(text(self.get()?))
    }

    /// Takes the item at the front, waiting at most `timeout` for one.
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::Closed`].
    pub fn get_timeout(&self, timeout: Duration) -> Result<Vec<u8>, Error> {
        Ok(self.0.get(Some(nanos(timeout)))?)
    }

    /// Takes the item at the front if there is one.
    ///
    /// # Errors
    /// [`Error::Empty`], [`Error::Closed`].
    pub fn try_get(&self) -> Result<Vec<u8>, Error> {
        Ok(self.0.try_get()?)
    }

    /// Takes up to `max` items from the front in one call: waits like [`Queue::get`] for the
    /// first, then takes the items that are there now. Draining a busy queue this way costs one
    /// trip to the host per batch instead of one per item.
    ///
    /// ```no_run
    /// # use poolhost_guest::Queue;
    /// let results = Queue::open("results")?;
    /// let mut left = 1000;
    /// while left > 0 {
    ///     let batch = results.get_many(left.min(256))?;
    ///     left -= batch.len();
    /// }
    /// # Ok::<(), poolhost_guest::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub fn get_many(&self, max: usize) -> Result<Vec<Vec<u8>>, Error> {
        Ok(self.0.get_many(u32::try_from(max).unwrap_or(u32::MAX), None)?)
    }

    /// As [`Queue::get_many`], waiting at most `timeout` for the first item.
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::Closed`].
    pub fn get_many_timeout(&self, max: usize, timeout: Duration) -> Result<Vec<Vec<u8>>, Error> {
        Ok(self
            .0
            .get_many(u32::try_from(max).unwrap_or(u32::MAX), Some(nanos(timeout)))?)
    }

    /// How many items the queue holds now.
    pub fn qsize(&self) -> usize {
        self.0.qsize() as usize
    }

    /// Whether the queue holds no item now.
    pub fn is_empty(&self) -> bool {
        self.0.empty()
    }
}

fn nanos(timeout: Duration) -> u64 {
    u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX)
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}
