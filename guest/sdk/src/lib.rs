//! Write poolhost tasks in Rust.
//!
//! A task component is a crate built for `wasm32-wasip2` that exports the functions the pool
//! calls. This crate gives such a guest the poolhost imports as ordinary Rust functions, so guest
//! authors never handle generated bindings for them:
//!
//! ```no_run
//! // In a guest crate (crate-type = ["cdylib"]), with its exports declared in WIT:
//! // wit_bindgen::generate!({ inline: "package my:task; world task { export work: func(n: u32); }" });
//! fn work(n: u32) {
//!     println!("task {n} runs on worker {} of pool {}", poolhost_guest::process::pid(), poolhost_guest::process::ppid());
//! }
//! ```
//!
//! The WIT package these imports come from is `poolhost:pool@0.1.0`, in the repository's `wit/`
//! directory; its `task` world is the full set of imports a task may use (WASI 0.2 and poolhost's
//! own).
#![deny(missing_docs)]

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
