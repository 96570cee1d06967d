//! Everything that touches wasmtime: the engine configuration, loading and compiling a component
//! or a WASI preview 1 core module ([`Program`], host side, with the compile cache), running
//! tasks in fresh sandboxes ([`Runner`], worker side), the WASI context of a task, and the host
//! side of the poolhost WIT imports.
//!
//! This is the only module that names wasmtime types, so a wasmtime upgrade touches this directory
//! alone. It knows nothing of the pool, workers or the wire: it turns [`Call`]s into
//! [`TaskResult`]s.

#[forbid(unsafe_code)]
mod cache;
#[forbid(unsafe_code)]
mod http;
#[forbid(unsafe_code)]
mod output;
mod program;
#[forbid(unsafe_code)]
mod types;
#[forbid(unsafe_code)]
mod values;
#[forbid(unsafe_code)]
mod world;

pub use cache::{CacheError, CompileCache};
pub use program::{Cached, CallError, Description, LoadError, Loader, Program};
pub use world::Unrunnable;

use std::path::Path;
use std::time::Instant;

use wasmtime::component::{
    Component, ComponentExportIndex, HasSelf, InstancePre, Linker, ResourceTable, Val,
};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::manager::Queues;
use crate::task::{
    BacktraceFrame, Call, Grants, Stream, Target, TaskError, TaskId, TaskOptions, TaskResult, TrapCode,
};
use crate::value::Value;
pub use output::OutputSink;

/// Host bindings of the poolhost imports, from the WIT package in `wit/`.
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "poolhost:pool/imports",
        // Queue handles are looked up in the store's resource table, which can fail on a forged
        // handle: such a failure traps the task.
        imports: { default: trappable },
        with: {
            "poolhost:pool/queue.queue": super::queues::QueueHandle,
            "poolhost:pool/pool.async-result": super::driving::AsyncResultHandle,
        },
    });
}

#[forbid(unsafe_code)]
mod driving;
#[forbid(unsafe_code)]
mod queues;

use bindings::Imports;
use bindings::poolhost::pool::process;
pub use driving::{DriveError, Driving};

/// The wasmtime configuration shared by the host (which compiles) and the workers (which load
/// the compiled artefact): both must agree on everything that shapes compiled code, or the
/// workers refuse the artefact. wasmtime's defaults capture the wasm call stack of a trap with
/// function names, which a failed task reports.
fn base_config(metered: bool) -> Config {
    let mut config = Config::new();
    // Timeouts interrupt a running task through epochs: a load and a compare at loop heads and
    // function entries, cheap enough to keep on for every task.
    config.epoch_interruption(true);
    // Fuel makes a CPU budget reproducible but costs more per instruction: it is compiled in
    // only for programs loaded to be metered.
    config.consume_fuel(metered);
    config
}

/// The epoch deadline of a task without a timeout: far beyond any number of interruptions a
/// worker will ever make (wasmtime adds it to the current epoch, so it must not overflow).
const NO_DEADLINE: u64 = u64::MAX / 2;

/// How many task instances a worker keeps slots for in its pooling allocator.
///
/// A worker runs one task at a time; one slot more lets the next task's instance be set up while
/// the last one is torn down, and a few warm slots keep their memory mappings for reuse.
const INSTANCE_SLOTS: u32 = 4;

/// The most of a task's linear memory a worker keeps resident for the next task (see
/// `worker_config`); beyond it, pages are given back to the kernel.
const KEEP_RESIDENT: usize = 8 << 20;

/// The same for a task's tables.
const TABLE_KEEP_RESIDENT: usize = 64 << 10;

/// The pooling allocator of a worker, sized for one task at a time rather than wasmtime's default
/// of a thousand concurrent instances (about 4 TiB of reserved address space per engine).
fn worker_config(metered: bool) -> Config {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(INSTANCE_SLOTS)
        // A component built by the Rust toolchain holds a handful of core instances (the program,
        // the WASI adapter, shims); 16 per task covers the others seen in practice.
        .total_core_instances(16 * INSTANCE_SLOTS)
        .total_memories(4 * INSTANCE_SLOTS)
        .total_tables(8 * INSTANCE_SLOTS)
        // Stacks are for async calls, which tasks never make; the default of a thousand costs a
        // guard-page system call each when a worker starts.
        .total_stacks(1)
        .max_unused_warm_slots(INSTANCE_SLOTS);
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        // Resetting a slot for the next task: wasmtime asks the kernel which pages the last task
        // touched and rewrites only those, up to these sizes, instead of discarding them with
        // `madvise`. The next task then takes no page fault on them, which for a short task is
        // most of its cost (a third of a no-op call's time). Without the scan, keeping memory
        // resident would rewrite all of it after every task, which costs more than the faults.
        pool.pagemap_scan(Enabled::Yes)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(TABLE_KEEP_RESIDENT);
    }
    let mut config = base_config(metered);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// The state of one task's store: its WASI context and what the poolhost imports need.
struct TaskState {
    wasi: WasiCtx,
    table: ResourceTable,
    host_pid: u32,
    queues: Box<dyn Queues>,
    limiter: TaskLimiter,
    /// When the task's timeout runs out, if it has one.
    deadline: Option<Instant>,
    /// The pool, if this is the driver.
    driving: Option<Box<dyn Driving>>,
    /// `wasi:http`, every request refused.
    http: http::Http,
}

/// The state of a core module's store: WASI preview 1 and the memory limit, nothing more.
struct CoreState {
    wasi: WasiP1Ctx,
    limiter: TaskLimiter,
}

/// Holds a task's linear memory, over all its memories, to its limit, and records the peak.
#[derive(Default)]
struct TaskLimiter {
    max: Option<usize>,
    total: usize,
    peak: usize,
}

/// The error a memory growth past the task's limit traps with.
#[derive(Debug, thiserror::Error)]
#[error("the task's memory limit")]
struct MemoryLimitExceeded;

/// The error a queue wait cut short by the task's own deadline traps with.
#[derive(Debug, thiserror::Error)]
#[error("the task's timeout")]
struct DeadlineExceeded;

impl ResourceLimiter for TaskLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.total + desired.saturating_sub(current);
        if self.max.is_some_and(|max| total > max) {
            // An error, not a refusal: the task fails at the growth, with its backtrace, rather
            // than limping on with an allocation failure of its own making.
            return Err(wasmtime::Error::new(MemoryLimitExceeded));
        }
        self.total = total;
        self.peak = self.peak.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables are bounded by the pooling allocator's slots.
        Ok(true)
    }
}

impl WasiView for TaskState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl process::Host for TaskState {
    fn pid(&mut self) -> wasmtime::Result<u32> {
        Ok(std::process::id())
    }

    fn ppid(&mut self) -> wasmtime::Result<u32> {
        Ok(self.host_pid)
    }
}

/// The most host resources (streams, pollables, queue handles, `wasi:http` headers and bodies)
/// a task may hold at once. They live in the worker, outside the task's memory limit; the
/// largest, `wasi:http`'s, hold at most [`http::HTTP_HELD`] bytes each, so a task keeps at most
/// about 64 MiB in the host whatever it does. wasmtime's default is a million.
const MAX_RESOURCES: usize = 16 << 10;

/// A task's resource table, capped at [`MAX_RESOURCES`]: one more is refused, which traps the
/// task or fails its call.
fn task_table() -> ResourceTable {
    let mut table = ResourceTable::new();
    table.set_max_capacity(MAX_RESOURCES);
    table
}

/// The linker every task is instantiated with: WASI 0.2, `wasi:http` (closed) and the poolhost
/// imports.
fn linker(engine: &Engine) -> wasmtime::Result<Linker<TaskState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker)?;
    Imports::add_to_linker::<_, HasSelf<TaskState>>(&mut linker, |state| state)?;
    Ok(linker)
}

/// The linker of core modules: WASI preview 1 alone.
fn core_linker(engine: &Engine) -> wasmtime::Result<wasmtime::Linker<CoreState>> {
    let mut linker = wasmtime::Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |state: &mut CoreState| &mut state.wasi)?;
    Ok(linker)
}

/// The worker side: a loaded component or core module, ready to run tasks, each in a fresh
/// store and instance.
pub struct Runner {
    engine: Engine,
    code: Loaded,
    host_pid: u32,
    metered: bool,
    grants: Grants,
    argv0: String,
}

/// What came of one task, as the worker saw it.
pub struct Outcome {
    /// Its result.
    pub result: TaskResult,
    /// The most linear memory its instance had, in bytes.
    pub peak_memory: u64,
    /// The fuel it used, if it had a budget.
    pub fuel_used: Option<u64>,
}

/// Interrupts the task a [`Runner`] is running, from another thread: the task traps at its next
/// loop head or function entry, and fails as timed out.
#[derive(Clone)]
pub struct Interrupter(Engine);

impl Interrupter {
    /// Interrupts the running task (if it has a timeout: tasks without one cannot be cut).
    pub fn interrupt(&self) {
        self.0.increment_epoch();
    }
}

/// The code a worker has loaded, before it knows the sandbox its tasks get: a worker started
/// ahead of its pool loads it while the host is still checking the component.
pub struct Preloaded {
    engine: Engine,
    code: Loaded,
    metered: bool,
}

impl Preloaded {
    /// Loads the artefact the host compiled, with fuel metering if it was compiled with it.
    ///
    /// # Errors
    /// If the artefact cannot be read or was compiled with another configuration, or the
    /// component's imports cannot be satisfied.
    pub fn load(artifact: &Path, metered: bool) -> anyhow::Result<Preloaded> {
        let engine = Engine::new(&worker_config(metered))?;
        let code = match program::deserialize(&engine, artifact)? {
            program::Code::Component(component) => {
                let pre = linker(&engine)?.instantiate_pre(&component)?;
                let main =
                    types::main_export(&engine, &component).and_then(|name| types::lookup(&component, &name));
                Loaded::Component { component, main, pre }
            }
            program::Code::Module(module) => Loaded::Module {
                pre: core_linker(&engine)?.instantiate_pre(&module)?,
            },
        };
        Ok(Preloaded {
            engine,
            code,
            metered,
        })
    }
}

impl Runner {
    /// Loads the artefact the host compiled ([`Preloaded::load`]) to run tasks in the sandbox
    /// `grants` describes.
    ///
    /// # Errors
    /// As [`Preloaded::load`].
    pub fn load(
        artifact: &Path,
        host_pid: u32,
        metered: bool,
        grants: Grants,
        argv0: String,
    ) -> anyhow::Result<Runner> {
        Ok(Runner::new(
            Preloaded::load(artifact, metered)?,
            host_pid,
            grants,
            argv0,
        ))
    }

    /// Runs tasks of `loaded` code in the sandbox `grants` describes; they see `host_pid` as
    /// their parent and a job's `argv[0]` as `argv0`.
    pub fn new(loaded: Preloaded, host_pid: u32, grants: Grants, argv0: String) -> Runner {
        Runner {
            engine: loaded.engine,
            code: loaded.code,
            host_pid,
            metered: loaded.metered,
            grants,
            argv0,
        }
    }

    /// A handle that interrupts the running task from another thread.
    pub fn interrupter(&self) -> Interrupter {
        Interrupter(self.engine.clone())
    }

    /// Runs one task in a fresh sandbox within `limits`; its output goes to `output`, whole lines
    /// at a time, its queue operations to `queues`, and, for a driver, its pool operations to
    /// `driving`.
    pub fn run(
        &self,
        task: TaskId,
        call: &Call,
        limits: &TaskOptions,
        output: &OutputSink,
        queues: Box<dyn Queues>,
        driving: Option<Box<dyn Driving>>,
    ) -> Outcome {
        let stdout = output::GuestOutput::new(task, Stream::Stdout, output.clone());
        let stderr = output::GuestOutput::new(task, Stream::Stderr, output.clone());
        let (mut wasi, granted) = self.wasi_context(call, &stdout, &stderr);
        let limiter = TaskLimiter {
            max: limits
                .max_memory
                .map(|max| usize::try_from(max).unwrap_or(usize::MAX)),
            ..TaskLimiter::default()
        };
        let (result, fuel_used, peak_memory) = match &self.code {
            Loaded::Component { component, main, pre } => {
                let state = TaskState {
                    wasi: wasi.build(),
                    table: task_table(),
                    host_pid: self.host_pid,
                    queues,
                    limiter,
                    deadline: limits
                        .timeout
                        .and_then(|timeout| Instant::now().checked_add(timeout)),
                    driving,
                    http: http::Http::default(),
                };
                self.run_in(
                    state,
                    |state| &mut state.limiter,
                    granted,
                    limits,
                    |store| {
                        let export = match &call.target {
                            Target::Export(name) => types::lookup(component, name),
                            Target::Main => *main,
                        };
                        call_component(pre, export, store, call)
                    },
                )
            }
            Loaded::Module { pre } => {
                let state = CoreState {
                    wasi: wasi.build_p1(),
                    limiter,
                };
                self.run_in(
                    state,
                    |state| &mut state.limiter,
                    granted,
                    limits,
                    |store| call_core(pre, store, call),
                )
            }
        };
        stdout.finish();
        stderr.finish();
        Outcome {
            result: result.map_err(|error| error.with_stderr(stderr.tail())),
            peak_memory,
            fuel_used,
        }
    }

    /// The WASI context of a task running `call`: its output streams, the granted environment
    /// and directories, a job's arguments, and no network. The directories that could not be
    /// opened fail the task (`Err`), which then does not run.
    fn wasi_context(
        &self,
        call: &Call,
        stdout: &output::GuestOutput,
        stderr: &output::GuestOutput,
    ) -> (WasiCtxBuilder, Result<(), TaskError>) {
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(stdout.clone()).stderr(stderr.clone());
        // No network: wasmtime-wasi already refuses every socket address by default; switching
        // the protocols and name lookup off says so here rather than relying on it.
        wasi.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
        for (name, value) in &self.grants.env {
            wasi.env(name, value);
        }
        if call.target == Target::Main {
            wasi.arg(&self.argv0);
            for arg in call.job_args() {
                wasi.arg(arg);
            }
        }
        let mut granted = Ok(());
        for dir in &self.grants.dirs {
            let perms = if dir.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            if let Err(e) = wasi.preopened_dir(&dir.host, &dir.guest, perms) {
                granted = Err(TaskError::Failed(format!(
                    "cannot open the granted directory `{}`: {e:#}",
                    dir.host.display()
                )));
            }
        }
        (wasi, granted)
    }

    /// Runs `call` in a fresh store holding `state`, within `limits`; returns the result, the
    /// fuel used and the peak memory.
    fn run_in<T: 'static>(
        &self,
        state: T,
        limiter: fn(&mut T) -> &mut TaskLimiter,
        granted: Result<(), TaskError>,
        limits: &TaskOptions,
        call: impl FnOnce(&mut Store<T>) -> Result<Option<Value>, CallFailure>,
    ) -> (TaskResult, Option<u64>, u64) {
        let mut store = Store::new(&self.engine, state);
        store.limiter(move |state| limiter(state) as &mut dyn ResourceLimiter);
        // One interruption ends a task with a timeout; the worker's watchdog makes it.
        store.set_epoch_deadline(if limits.timeout.is_some() { 1 } else { NO_DEADLINE });
        let fuel = match (self.metered, limits.fuel) {
            (_, Some(fuel)) => store.set_fuel(fuel).map(|()| Some(fuel)),
            (true, None) => store.set_fuel(u64::MAX).map(|()| None),
            (false, None) => Ok(None),
        };
        let (result, fuel) = match (granted, fuel) {
            (Err(e), _) => (Err(e), None),
            (Ok(()), Ok(fuel)) => (
                match call(&mut store) {
                    // `exit(0)` is a success that ends the program early.
                    Err(CallFailure::Runtime(e))
                        if e.downcast_ref::<I32Exit>().is_some_and(|exit| exit.0 == 0) =>
                    {
                        Ok(None)
                    }
                    other => other.map_err(|e| failure(e, limits)),
                },
                fuel,
            ),
            (Ok(()), Err(e)) => (
                Err(TaskError::Failed(format!("cannot give the task fuel: {e:#}"))),
                None,
            ),
        };
        let fuel_used = fuel.map(|fuel| fuel - store.get_fuel().unwrap_or(0));
        let peak_memory = limiter(store.data_mut()).peak as u64;
        (result, fuel_used, peak_memory)
    }
}

/// What a worker loaded.
enum Loaded {
    Component {
        component: Component,
        /// The component's `wasi:cli/run` function, found once: jobs run it again and again.
        main: Option<ComponentExportIndex>,
        pre: InstancePre<TaskState>,
    },
    Module {
        pre: wasmtime::InstancePre<CoreState>,
    },
}

/// Calls a component's export (or `main`) in a fresh instance.
fn call_component(
    pre: &InstancePre<TaskState>,
    export: Option<ComponentExportIndex>,
    store: &mut Store<TaskState>,
    call: &Call,
) -> Result<Option<Value>, CallFailure> {
    let Some(export) = export else {
        return Err(CallFailure::Task(TaskError::Failed(format!(
            "the component has no export for `{call}`"
        ))));
    };
    let instance = pre.instantiate(&mut *store)?;
    let Some(func) = instance.get_func(&mut *store, export) else {
        return Err(CallFailure::Task(TaskError::Failed(format!(
            "export of `{call}` is not a function"
        ))));
    };
    // A job's arguments are its argv, set in its WASI context; `run` itself takes none.
    let args: Vec<Val> = match call.target {
        Target::Main => Vec::new(),
        Target::Export(_) => call.args.iter().map(values::to_val).collect(),
    };
    let mut results = vec![Val::Bool(false); func.ty(&*store).results().len()];
    func.call(&mut *store, &args, &mut results)?;
    let result = results.into_iter().next();
    match (&call.target, result) {
        // `wasi:cli/run` returns `result`: an error means exit code 1, as in `wasmtime run`.
        (Target::Main, Some(Val::Result(Err(_)))) => Err(CallFailure::Task(TaskError::Exit {
            code: 1,
            stderr: None,
        })),
        (Target::Main, _) => Ok(None),
        (_, Some(val)) => values::from_val(val)
            .map(Some)
            .map_err(|e| CallFailure::Task(TaskError::Failed(e))),
        (_, None) => Ok(None),
    }
}

/// Calls a core module's export (or `_start`) in a fresh instance: numbers in, a number out.
fn call_core(
    pre: &wasmtime::InstancePre<CoreState>,
    store: &mut Store<CoreState>,
    call: &Call,
) -> Result<Option<Value>, CallFailure> {
    let name = match &call.target {
        Target::Main => "_start",
        Target::Export(name) => name.as_str(),
    };
    let instance = pre.instantiate(&mut *store)?;
    let Some(func) = instance.get_func(&mut *store, name) else {
        return Err(CallFailure::Task(TaskError::Failed(format!(
            "the module has no function export for `{call}`"
        ))));
    };
    let args = match call.target {
        Target::Main => Vec::new(),
        Target::Export(_) => call
            .args
            .iter()
            .map(values::to_core_val)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CallFailure::Task(TaskError::Failed(e)))?,
    };
    let mut results = vec![wasmtime::Val::I32(0); func.ty(&*store).results().len()];
    func.call(&mut *store, &args, &mut results)?;
    match (&call.target, results.into_iter().next()) {
        (Target::Main, _) | (_, None) => Ok(None),
        (_, Some(val)) => values::from_core_val(val)
            .map(Some)
            .map_err(|e| CallFailure::Task(TaskError::Failed(e))),
    }
}

/// Why a call failed: an error from the runtime (a trap, an exit, a limit), or a failure already
/// known to be the task's.
enum CallFailure {
    Runtime(wasmtime::Error),
    Task(TaskError),
}

impl From<wasmtime::Error> for CallFailure {
    fn from(error: wasmtime::Error) -> Self {
        CallFailure::Runtime(error)
    }
}

/// Maps a failed instantiation or call to why the task failed.
fn failure(failure: CallFailure, limits: &TaskOptions) -> TaskError {
    let error = match failure {
        CallFailure::Task(error) => return error,
        CallFailure::Runtime(error) => error,
    };
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return TaskError::Exit {
            code: exit.0,
            stderr: None,
        };
    }
    let timeout = || TaskError::Timeout(limits.timeout.unwrap_or_default());
    if error.downcast_ref::<MemoryLimitExceeded>().is_some() {
        return TaskError::MemoryLimit(limits.max_memory.unwrap_or_default());
    }
    if error.downcast_ref::<DeadlineExceeded>().is_some() {
        return timeout();
    }
    match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => return timeout(),
        Some(wasmtime::Trap::OutOfFuel) => return TaskError::OutOfFuel(limits.fuel.unwrap_or_default()),
        _ => {}
    }
    if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
        let backtrace = error
            .downcast_ref::<wasmtime::WasmBacktrace>()
            .map(|bt| {
                bt.frames()
                    .iter()
                    .map(|frame| BacktraceFrame {
                        function: match frame.func_name() {
                            // `{:#}` leaves out Rust's symbol hashes.
                            Some(name) => format!("{:#}", rustc_demangle::demangle(name)),
                            None => format!("<wasm function {}>", frame.func_index()),
                        },
                        module: frame.module().name().map(str::to_owned),
                    })
                    .collect()
            })
            .unwrap_or_default();
        return TaskError::Trap {
            code: trap_code(*trap),
            backtrace,
            stderr: None,
        };
    }
    TaskError::Failed(format!("{error:#}"))
}

fn trap_code(trap: wasmtime::Trap) -> TrapCode {
    use wasmtime::Trap;
    match trap {
        Trap::UnreachableCodeReached => TrapCode::Unreachable,
        Trap::StackOverflow => TrapCode::StackOverflow,
        Trap::MemoryOutOfBounds => TrapCode::MemoryOutOfBounds,
        Trap::HeapMisaligned => TrapCode::HeapMisaligned,
        Trap::TableOutOfBounds => TrapCode::TableOutOfBounds,
        Trap::IndirectCallToNull => TrapCode::IndirectCallToNull,
        Trap::BadSignature => TrapCode::BadSignature,
        Trap::IntegerOverflow => TrapCode::IntegerOverflow,
        Trap::IntegerDivisionByZero => TrapCode::IntegerDivisionByZero,
        Trap::BadConversionToInteger => TrapCode::BadConversionToInteger,
        Trap::Interrupt => TrapCode::Interrupt,
        Trap::OutOfFuel => TrapCode::OutOfFuel,
        other => TrapCode::Other(other.to_string().trim_start_matches("wasm trap: ").to_owned()),
    }
}
