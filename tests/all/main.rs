//! The integration tests, one binary with a module per area, so the library (and wasmtime with
//! it) is linked once and the shared helpers in `common` are compiled once.
//!
//! Every test runs as a thread of this one process, beside tests of the other areas. So no test
//! changes what the process shares: its umask, environment, current directory or signal
//! dispositions are changed only in a child process (as `inspect` does for its umask), children
//! are counted of the `poolhost` processes a test starts, never of this one, and nothing measures
//! this process's own memory.
//!
//! Run one area with its module name as the filter: `cargo test -p poolhost --test all -- limits::`.

mod common;

mod cli;
mod cluster;
mod core_modules;
mod driver;
mod fuzz;
mod inspect;
mod jobs;
mod languages;
mod library;
mod limits;
mod queue;
