//! poolhost: a pool of WebAssembly-sandboxed worker processes, after Python's
//! `multiprocessing.Pool`.
//!
//! A [`Pool`] runs N worker processes. Each loads one WASI component, compiled once by the host,
//! and runs tasks: calls of the component's exported functions, each in a fresh sandbox (its own
//! store and instance, no files, environment or network). At most N tasks run at once; the rest
//! wait in FIFO order.
//!
//! ```no_run
//! use poolhost::{Call, Pool, Value};
//!
//! let pool = Pool::builder().component("long-time-task.wasm").workers(4).build()?;
//! let pending: Vec<_> = (0..5u32)
//!     .map(|i| pool.apply_async(Call::new("long-time-task", [Value::U32(i)])))
//!     .collect::<Result<_, _>>()?;
//! pool.close();
//! pool.join()?;
//! for task in pending {
//!     println!("{:?}", task.get());
//! }
//! # Ok::<(), poolhost::PoolError>(())
//! ```
//!
//! The workers are processes running the `poolhost` binary as `poolhost worker`; see
//! [`Builder::worker_program`] for programs that embed the pool.
#![deny(missing_docs)]
// `unsafe` lives in two places, each `unsafe` block with a `SAFETY` comment: `sys` (forking a
// worker, ending it, closing what it inherited) and `runtime`'s deserialization of precompiled
// code. Every other module forbids it; the crate denies it by default.
#![deny(unsafe_code)]

#[forbid(unsafe_code)]
mod cluster;
#[forbid(unsafe_code)]
pub mod driver;
// Public for the codec's microbenchmarks (`bench/micro.rs`) only: not a stable API.
#[doc(hidden)]
#[forbid(unsafe_code)]
pub mod ipc;
#[forbid(unsafe_code)]
mod manager;
#[forbid(unsafe_code)]
mod pool;
mod runtime;
mod sys;
#[forbid(unsafe_code)]
mod task;
#[forbid(unsafe_code)]
mod value;
#[forbid(unsafe_code)]
pub mod worker;

pub use cluster::{Cluster, ClusterError, HostStatus, MAX_COMPONENT, Serve, ServeStop, Status};
pub use manager::{
    GetError, GetTimeoutError, ITEM_OVERHEAD, Limits, MAX_ITEM_LIMIT, Manager, PutError, PutTimeoutError,
    Queue, QueueError, TryGetError, TryPutError,
};
pub use pool::{
    AsyncResult, Batch, Builder, Imap, ImapUnordered, MAX_WORKERS, Pool, PoolError, default_workers,
};
pub use runtime::{
    CacheError, Cached, CallError, CompileCache, Description, LoadError, Loader, Program, Unrunnable,
};
pub use task::{
    BacktraceFrame, Call, DirGrant, Grants, Stream, Target, TaskError, TaskId, TaskOptions, TaskReport,
    TaskResult, TrapCode,
};
pub use value::Value;
