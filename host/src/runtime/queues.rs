//! The host side of the WIT `queue` interface inside a worker: a guest's queue handles live in its
//! store's resource table, and each operation goes to the pool's manager through
//! [`crate::manager::Queues`].

use std::time::{Duration, Instant};

use wasmtime::component::Resource;

use super::bindings::poolhost::pool::queue::{self, Error};
use super::{DeadlineExceeded, TaskState};
use crate::manager::{QueueError, QueueId, Queues, Wait};

/// What a guest's `queue` resource stands for.
pub struct QueueHandle {
    id: QueueId,
    name: String,
}

fn wait_for(timeout_ns: Option<u64>) -> Wait {
    timeout_ns.map_or(Wait::Forever, |ns| Wait::For(Duration::from_nanos(ns)))
}

fn to_wit(error: QueueError) -> Error {
    match error {
        QueueError::Empty => Error::Empty,
        QueueError::Full => Error::Full,
        QueueError::Timeout => Error::Timeout,
        QueueError::Closed => Error::Closed,
        QueueError::TooLarge => Error::TooLarge,
        QueueError::InvalidName => Error::InvalidName,
        QueueError::TooManyQueues => Error::TooManyQueues,
    }
}

impl TaskState {
    fn queue_id(&self, handle: &Resource<QueueHandle>) -> wasmtime::Result<QueueId> {
        Ok(self.table.get(handle)?.id)
    }

    /// Runs a queue operation that may wait, as `timeout_ns` says, within the task's deadline:
    /// a task blocked in a queue is timed out like a running one. Every import that can block
    /// goes through here, so none can forget the deadline.
    fn blocking<T>(
        &mut self,
        timeout_ns: Option<u64>,
        operation: impl FnOnce(&mut dyn Queues, Wait) -> Result<T, QueueError>,
    ) -> wasmtime::Result<Result<T, Error>> {
        let wait = wait_for(timeout_ns);
        let wait = match self.deadline {
            None => wait,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                match wait {
                    Wait::No => Wait::No,
                    Wait::Forever => Wait::For(left),
                    Wait::For(timeout) => Wait::For(timeout.min(left)),
                }
            }
        };
        match operation(self.queues.as_mut(), wait) {
            // The wait ended at the task's deadline: the task is out of time, not the queue.
            Err(QueueError::Timeout) if self.deadline.is_some_and(|d| Instant::now() >= d) => {
                Err(wasmtime::Error::new(DeadlineExceeded))
            }
            result => Ok(result.map_err(to_wit)),
        }
    }
}

impl queue::Host for TaskState {}

impl queue::HostQueue for TaskState {
    fn open(&mut self, name: String) -> wasmtime::Result<Result<Resource<QueueHandle>, Error>> {
        match self.queues.open(&name) {
            Ok(id) => Ok(Ok(self.table.push(QueueHandle { id, name })?)),
            Err(e) => Ok(Err(to_wit(e))),
        }
    }

    fn name(&mut self, handle: Resource<QueueHandle>) -> wasmtime::Result<String> {
        Ok(self.table.get(&handle)?.name.clone())
    }

    fn put(
        &mut self,
        handle: Resource<QueueHandle>,
        item: Vec<u8>,
        timeout_ns: Option<u64>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let id = self.queue_id(&handle)?;
        self.blocking(timeout_ns, |queues, wait| queues.put(id, item, wait))
    }

    fn try_put(
        &mut self,
        handle: Resource<QueueHandle>,
        item: Vec<u8>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let id = self.queue_id(&handle)?;
        Ok(self.queues.put(id, item, Wait::No).map_err(to_wit))
    }

    fn get(
        &mut self,
        handle: Resource<QueueHandle>,
        timeout_ns: Option<u64>,
    ) -> wasmtime::Result<Result<Vec<u8>, Error>> {
        let id = self.queue_id(&handle)?;
        self.blocking(timeout_ns, |queues, wait| queues.get(id, wait))
    }

    fn try_get(&mut self, handle: Resource<QueueHandle>) -> wasmtime::Result<Result<Vec<u8>, Error>> {
        let id = self.queue_id(&handle)?;
        Ok(self.queues.get(id, Wait::No).map_err(to_wit))
    }

    fn get_many(
        &mut self,
        handle: Resource<QueueHandle>,
        max: u32,
        timeout_ns: Option<u64>,
    ) -> wasmtime::Result<Result<Vec<Vec<u8>>, Error>> {
        let id = self.queue_id(&handle)?;
        self.blocking(timeout_ns, |queues, wait| queues.get_many(id, max, wait))
    }

    /// The WIT's `qsize` (Python's name) is the library's `len` (crossbeam-channel's):
    /// [`Queues::len`], and `Queue::len` on the host.
    fn qsize(&mut self, handle: Resource<QueueHandle>) -> wasmtime::Result<u64> {
        let id = self.queue_id(&handle)?;
        // The only failure is a closed pool, where the queue holds nothing the task can take.
        Ok(self.queues.len(id).unwrap_or(0))
    }

    fn empty(&mut self, handle: Resource<QueueHandle>) -> wasmtime::Result<bool> {
        Ok(self.qsize(handle)? == 0)
    }

    fn drop(&mut self, handle: Resource<QueueHandle>) -> wasmtime::Result<()> {
        self.table.delete(handle)?;
        Ok(())
    }
}
