//! Everything that touches wasmtime: the engine configuration, loading and compiling a component
//! ([`Program`], host side), running tasks in fresh sandboxes ([`Runner`], worker side), the WASI
//! context of a task, and the host side of the poolhost WIT imports.
//!
//! This is the only module that names wasmtime types, so a wasmtime upgrade touches this directory
//! alone. It knows nothing of the pool, workers or the wire: it turns [`Call`]s into
//! [`TaskResult`]s.

mod output;
mod program;
mod types;
mod values;

pub use program::{CallError, LoadError, Program};

use std::path::Path;

use wasmtime::component::{Component, HasSelf, InstancePre, Linker, ResourceTable, Val};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::task::{Call, Frame, Stream, Target, TaskError, TaskId, TaskResult, TrapCode};
pub use output::OutputSink;

/// Host bindings of the poolhost imports, from the WIT package in `wit/`.
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "poolhost:pool/imports",
        // Queue handles are looked up in the store's resource table, which can fail on a forged
        // handle: such a failure traps the task.
        imports: { default: trappable },
        with: { "poolhost:pool/queue.queue": super::queues::QueueHandle },
    });
}

mod queues;

use bindings::Imports;
use bindings::poolhost::pool::process;
pub use queues::Queues;

/// The wasmtime configuration shared by the host (which compiles) and the workers (which load
/// the compiled artefact): both must agree on everything that shapes compiled code, or the
/// workers refuse the artefact.
fn base_config() -> Config {
    // wasmtime's defaults capture the wasm call stack of a trap with function names, which a
    // failed task reports. Anything set here must be set identically on both sides.
    Config::new()
}

/// How many task instances a worker keeps slots for in its pooling allocator.
///
/// A worker runs one task at a time; one slot more lets the next task's instance be set up while
/// the last one is torn down, and a few warm slots keep their memory mappings for reuse.
const INSTANCE_SLOTS: u32 = 4;

/// The pooling allocator of a worker, sized for one task at a time rather than wasmtime's default
/// of a thousand concurrent instances (about 4 TiB of reserved address space per engine).
fn worker_config() -> Config {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(INSTANCE_SLOTS)
        // A component built by the Rust toolchain holds a handful of core instances (the program,
        // the WASI adapter, shims); 16 per task covers the others seen in practice.
        .total_core_instances(16 * INSTANCE_SLOTS)
        .total_memories(4 * INSTANCE_SLOTS)
        .total_tables(8 * INSTANCE_SLOTS)
        .max_unused_warm_slots(INSTANCE_SLOTS);
    let mut config = base_config();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// The state of one task's store: its WASI context and what the poolhost imports need.
struct TaskState {
    wasi: WasiCtx,
    table: ResourceTable,
    host_pid: u32,
    queues: Box<dyn Queues>,
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

/// The linker every task is instantiated with: WASI 0.2 and the poolhost imports.
fn linker(engine: &Engine) -> wasmtime::Result<Linker<TaskState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    Imports::add_to_linker::<_, HasSelf<TaskState>>(&mut linker, |state| state)?;
    Ok(linker)
}

/// The worker side: a loaded component, ready to run tasks, each in a fresh store and instance.
pub struct Runner {
    engine: Engine,
    component: Component,
    pre: InstancePre<TaskState>,
    host_pid: u32,
}

impl Runner {
    /// Loads the artefact the host compiled.
    ///
    /// # Errors
    /// If the artefact cannot be read or was compiled with another configuration, or the
    /// component's imports cannot be satisfied.
    pub fn load(artifact: &Path, host_pid: u32) -> anyhow::Result<Runner> {
        let engine = Engine::new(&worker_config())?;
        let component = program::deserialize(&engine, artifact)?;
        let pre = linker(&engine)?.instantiate_pre(&component)?;
        Ok(Runner {
            engine,
            component,
            pre,
            host_pid,
        })
    }

    /// Runs one task in a fresh sandbox; its output goes to `output`, whole lines at a time, and
    /// its queue operations to `queues`.
    pub fn run(&self, task: TaskId, call: &Call, output: &OutputSink, queues: Box<dyn Queues>) -> TaskResult {
        let stdout = output::GuestOutput::new(task, Stream::Stdout, output.clone());
        let stderr = output::GuestOutput::new(task, Stream::Stderr, output.clone());
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build();
        let state = TaskState {
            wasi,
            table: ResourceTable::new(),
            host_pid: self.host_pid,
            queues,
        };
        let mut store = Store::new(&self.engine, state);
        let result = self.call(&mut store, call);
        drop(store);
        stdout.finish();
        stderr.finish();
        result
    }

    fn call(&self, store: &mut Store<TaskState>, call: &Call) -> TaskResult {
        let export = match &call.target {
            Target::Export(name) => types::lookup(&self.component, name),
            Target::Main => types::main_export(&self.engine, &self.component)
                .and_then(|name| types::lookup(&self.component, &name)),
        };
        let Some(export) = export else {
            return Err(TaskError::Failed(format!(
                "the component has no export for `{call}`"
            )));
        };
        let instance = self.pre.instantiate(&mut *store).map_err(failure)?;
        let Some(func) = instance.get_func(&mut *store, export) else {
            return Err(TaskError::Failed(format!("export of `{call}` is not a function")));
        };
        let args: Vec<Val> = call.args.iter().map(values::to_val).collect();
        let mut results = vec![Val::Bool(false); func.ty(&*store).results().len()];
        func.call(&mut *store, &args, &mut results).map_err(failure)?;
        let result = results.into_iter().next();
        match (&call.target, result) {
            // `wasi:cli/run` returns `result`: an error means exit code 1, as in `wasmtime run`.
            (Target::Main, Some(Val::Result(Err(_)))) => Err(TaskError::Exit(1)),
            (Target::Main, _) => Ok(None),
            (_, Some(val)) => values::from_val(val).map(Some).map_err(TaskError::Failed),
            (_, None) => Ok(None),
        }
    }
}

/// Maps a failed instantiation or call to why the task failed.
fn failure(error: wasmtime::Error) -> TaskError {
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return TaskError::Exit(exit.0);
    }
    if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
        let backtrace = error
            .downcast_ref::<wasmtime::WasmBacktrace>()
            .map(|bt| {
                bt.frames()
                    .iter()
                    .map(|frame| Frame {
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
