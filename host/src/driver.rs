//! Driver mode: a component's `main` as the parent program of its own pool, the seed's whole
//! program as one component.
//!
//! The driver runs in this process, sandboxed like a task (the pool's grants and its memory and
//! fuel limits; the per-task timeout is for its tasks, since a driver lives as long as they do).
//! Its `pool` calls go to a real [`Pool`] running its own exports on the worker processes; its
//! queue calls go straight to the pool's manager. This module joins the pool to the runtime and
//! never names wasmtime.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::pool::{AsyncResult, Pool, PoolError};
use crate::runtime::{DriveError, Driving, Runner};
use crate::task::{Call, TaskError, TaskOptions, TaskResult};

/// The task id the driver's output is labelled with: no task of the pool has it.
pub const DRIVER_TASK: u64 = u64::MAX;

/// How a driver ended.
#[derive(Debug)]
pub struct DriverExit {
    /// Its `main`'s result: `Ok` or why it failed (a trap, an exit code, a limit).
    pub result: TaskResult,
    /// Whether the pool had to be terminated because the driver returned without joining it.
    pub terminated_pool: bool,
}

/// Runs the component's `main` as the driver of `pool`, then makes sure the pool is finished:
/// a driver that returns without joining gets its pool terminated, as Python's finalizer does.
/// The caller may keep a clone of `pool`, to terminate it from another thread (on a signal).
///
/// # Errors
/// If the driver's own sandbox cannot be set up.
pub fn run(pool: Arc<Pool>, options: TaskOptions) -> anyhow::Result<DriverExit> {
    let program = pool.program().clone();
    // The driver's parent is this process's parent, as a Python parent program's would be.
    let runner = Runner::load(
        program.artifact(),
        std::os::unix::process::parent_id(),
        program.metered(),
        pool.grants().clone(),
        program.name().to_owned(),
    )
    .context("cannot load the driver")?;
    let driving = DriverPool {
        pool: pool.clone(),
        results: HashMap::new(),
        next: 0,
    };
    let options = TaskOptions {
        timeout: None,
        retries: 0,
        ..options
    };
    let outcome = runner.run(
        DRIVER_TASK,
        &Call::main(),
        &options,
        &pool.output_sink(),
        Box::new(pool.manager().clone()),
        Some(Box::new(driving)),
    );
    let terminated_pool = !pool.is_finished();
    if terminated_pool {
        pool.terminate();
    }
    Ok(DriverExit {
        result: outcome.result,
        terminated_pool,
    })
}

/// The driver's pool: its results by number.
struct DriverPool {
    pool: Arc<Pool>,
    results: HashMap<u32, AsyncResult>,
    next: u32,
}

impl DriverPool {
    fn call(&self, function: &str, args: &str) -> Result<Call, DriveError> {
        self.pool
            .program()
            .parse_call(&format!("{function}({args})"))
            .map_err(|e| DriveError::BadCall(e.to_string()))
    }

    fn result(&self, id: u32) -> Option<&AsyncResult> {
        self.results.get(&id)
    }
}

fn refused(error: PoolError) -> DriveError {
    match error {
        PoolError::NotRunning => DriveError::NotRunning,
        PoolError::StillRunning => DriveError::StillRunning,
        other => DriveError::BadCall(other.to_string()),
    }
}

fn answer(result: TaskResult) -> Result<Option<String>, DriveError> {
    result
        .map(|value| value.map(|v| v.to_string()))
        .map_err(|error: TaskError| DriveError::Failed {
            kind: error.kind().to_owned(),
            message: error.to_string(),
        })
}

/// The most tasks a driver may have unfinished before `apply-async` waits for half of them: a
/// driver submitting in a loop would otherwise grow the host by a few hundred bytes a task
/// without bound. It is far more than the workers can be busy with, so it never slows them.
pub const DRIVER_BACKLOG: usize = 16_384;

impl Driving for DriverPool {
    fn apply_async(&mut self, function: &str, args: &str) -> Result<u32, DriveError> {
        let call = self.call(function, args)?;
        self.pool.wait_for_room(DRIVER_BACKLOG);
        let result = self.pool.apply_async(call).map_err(refused)?;
        let id = self.next;
        self.next += 1;
        self.results.insert(id, result);
        Ok(id)
    }

    fn get(&mut self, id: u32, timeout: Option<Duration>) -> Result<Option<String>, DriveError> {
        let result = self.result(id).ok_or(DriveError::NotDriver)?;
        match timeout {
            None => answer(result.get()),
            Some(timeout) => result
                .get_timeout(timeout)
                .map_or(Err(DriveError::Timeout), answer),
        }
    }

    fn wait(&mut self, id: u32, timeout: Option<Duration>) -> bool {
        match (self.result(id), timeout) {
            (Some(result), None) => {
                result.wait();
                true
            }
            (Some(result), Some(timeout)) => result.wait_timeout(timeout),
            (None, _) => false,
        }
    }

    fn ready(&mut self, id: u32) -> bool {
        self.result(id).is_some_and(AsyncResult::ready)
    }

    fn successful(&mut self, id: u32) -> Option<bool> {
        self.result(id).and_then(AsyncResult::successful)
    }

    fn forget(&mut self, id: u32) {
        self.results.remove(&id);
    }

    fn map(
        &mut self,
        function: &str,
        args: &[String],
    ) -> Result<Vec<Result<Option<String>, DriveError>>, DriveError> {
        let calls = args
            .iter()
            .map(|args| self.call(function, args))
            .collect::<Result<Vec<_>, _>>()?;
        let results = calls
            .into_iter()
            .map(|call| self.pool.apply_async(call))
            .collect::<Result<Vec<_>, _>>()
            .map_err(refused)?;
        Ok(results.iter().map(|result| answer(result.get())).collect())
    }

    fn close(&mut self) {
        self.pool.close();
    }

    fn join(&mut self) -> Result<(), DriveError> {
        self.pool.join().map_err(refused)
    }

    fn terminate(&mut self) {
        self.pool.terminate();
    }

    fn workers(&mut self) -> u32 {
        self.pool.workers() as u32
    }
}
