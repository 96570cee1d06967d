//! The host side of the WIT `pool` interface: what a driver's `main` calls to use its own pool.
//! Each call goes to the task's [`Driving`], which the pool side provides for the driver; a task
//! on a worker has none and gets `not-driver`.

use std::time::Duration;

use wasmtime::component::Resource;

use super::TaskState;
use super::bindings::poolhost::pool::pool::{self, Error, Failure};

/// Why a pool operation, or the task behind a result, gave no result (the WIT `pool.error`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DriveError {
    /// The pool takes no more tasks.
    NotRunning,
    /// `join` before `close` or `terminate`.
    StillRunning,
    /// The call does not fit the component; the text says why.
    BadCall(String),
    /// No result within the timeout.
    Timeout,
    /// The task failed: its kind and message.
    Failed {
        /// The kind, as JSON output names it.
        kind: String,
        /// The message.
        message: String,
    },
    /// Not the driver.
    NotDriver,
}

/// The pool as its driver reaches it. Results are named by numbers the implementation hands out.
pub trait Driving: Send {
    /// Submits `function(args)` (arguments in WAVE); the number of its result.
    fn apply_async(&mut self, function: &str, args: &str) -> Result<u32, DriveError>;
    /// Waits for result `id`, forever or at most `timeout`; the value in WAVE.
    fn get(&mut self, id: u32, timeout: Option<Duration>) -> Result<Option<String>, DriveError>;
    /// Waits for result `id`, forever or at most `timeout`; whether its task has ended.
    fn wait(&mut self, id: u32, timeout: Option<Duration>) -> bool;
    /// Whether result `id`'s task has ended.
    fn ready(&mut self, id: u32) -> bool;
    /// Whether it ended with a result.
    fn successful(&mut self, id: u32) -> Option<bool>;
    /// The driver has dropped its handle to result `id`.
    fn forget(&mut self, id: u32);
    /// Runs `function` once per argument list; results in order.
    #[allow(clippy::type_complexity)] // the WIT signature, spelled in Rust
    fn map(
        &mut self,
        function: &str,
        args: &[String],
    ) -> Result<Vec<Result<Option<String>, DriveError>>, DriveError>;
    /// Stops taking tasks.
    fn close(&mut self);
    /// Waits for every task and worker.
    fn join(&mut self) -> Result<(), DriveError>;
    /// Stops at once.
    fn terminate(&mut self);
    /// The number of workers.
    fn workers(&mut self) -> u32;
}

/// What a guest's `async-result` resource stands for.
pub struct AsyncResultHandle {
    id: u32,
}

fn to_wit(error: DriveError) -> Error {
    match error {
        DriveError::NotRunning => Error::NotRunning,
        DriveError::StillRunning => Error::StillRunning,
        DriveError::BadCall(text) => Error::BadCall(text),
        DriveError::Timeout => Error::Timeout,
        DriveError::Failed { kind, message } => Error::Failed(Failure { kind, message }),
        DriveError::NotDriver => Error::NotDriver,
    }
}

fn timeout(ns: Option<u64>) -> Option<Duration> {
    ns.map(Duration::from_nanos)
}

impl TaskState {
    /// The driver's pool, or `not-driver` for a task on a worker.
    fn driving(&mut self) -> Result<&mut Box<dyn Driving>, Error> {
        self.driving.as_mut().ok_or(Error::NotDriver)
    }

    fn result_id(&self, handle: &Resource<AsyncResultHandle>) -> wasmtime::Result<u32> {
        Ok(self.table.get(handle)?.id)
    }
}

impl pool::Host for TaskState {
    fn apply_async(
        &mut self,
        function: String,
        args: String,
    ) -> wasmtime::Result<Result<Resource<AsyncResultHandle>, Error>> {
        let id = match self.driving() {
            Ok(driving) => driving.apply_async(&function, &args).map_err(to_wit),
            Err(e) => Err(e),
        };
        match id {
            Ok(id) => Ok(Ok(self.table.push(AsyncResultHandle { id })?)),
            Err(e) => Ok(Err(e)),
        }
    }

    fn apply(&mut self, function: String, args: String) -> wasmtime::Result<Result<Option<String>, Error>> {
        Ok(self.driving().and_then(|driving| {
            let id = driving.apply_async(&function, &args).map_err(to_wit)?;
            let result = driving.get(id, None).map_err(to_wit);
            driving.forget(id);
            result
        }))
    }

    #[allow(clippy::type_complexity)] // the WIT signature, spelled in Rust
    fn map(
        &mut self,
        function: String,
        args: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<Result<Option<String>, Error>>, Error>> {
        Ok(self.driving().and_then(|driving| {
            let results = driving.map(&function, &args).map_err(to_wit)?;
            Ok(results.into_iter().map(|r| r.map_err(to_wit)).collect())
        }))
    }

    fn close(&mut self) -> wasmtime::Result<()> {
        if let Ok(driving) = self.driving() {
            driving.close();
        }
        Ok(())
    }

    fn join(&mut self) -> wasmtime::Result<Result<(), Error>> {
        Ok(self.driving().and_then(|driving| driving.join().map_err(to_wit)))
    }

    fn terminate(&mut self) -> wasmtime::Result<()> {
        if let Ok(driving) = self.driving() {
            driving.terminate();
        }
        Ok(())
    }

    fn workers(&mut self) -> wasmtime::Result<u32> {
        Ok(self.driving().map_or(0, |driving| driving.workers()))
    }
}

impl pool::HostAsyncResult for TaskState {
    fn get(
        &mut self,
        handle: Resource<AsyncResultHandle>,
        timeout_ns: Option<u64>,
    ) -> wasmtime::Result<Result<Option<String>, Error>> {
        let id = self.result_id(&handle)?;
        Ok(self
            .driving()
            .and_then(|driving| driving.get(id, timeout(timeout_ns)).map_err(to_wit)))
    }

    fn wait(
        &mut self,
        handle: Resource<AsyncResultHandle>,
        timeout_ns: Option<u64>,
    ) -> wasmtime::Result<bool> {
        let id = self.result_id(&handle)?;
        Ok(self
            .driving()
            .is_ok_and(|driving| driving.wait(id, timeout(timeout_ns))))
    }

    fn ready(&mut self, handle: Resource<AsyncResultHandle>) -> wasmtime::Result<bool> {
        let id = self.result_id(&handle)?;
        Ok(self.driving().is_ok_and(|driving| driving.ready(id)))
    }

    fn successful(&mut self, handle: Resource<AsyncResultHandle>) -> wasmtime::Result<Option<bool>> {
        let id = self.result_id(&handle)?;
        Ok(self.driving().ok().and_then(|driving| driving.successful(id)))
    }

    fn drop(&mut self, handle: Resource<AsyncResultHandle>) -> wasmtime::Result<()> {
        let id = self.table.delete(handle)?.id;
        if let Ok(driving) = self.driving() {
            driving.forget(id);
        }
        Ok(())
    }
}
