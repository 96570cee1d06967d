//! The unit of work and its outcome: what a caller submits ([`Call`]), what comes back
//! ([`TaskResult`], [`TaskError`], [`TaskReport`]).
//!
//! These types cross the process boundary between the host and its workers, so they are plain
//! serialisable data. They never name wasmtime: the runtime converts to and from its own types.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::value::Value;

/// A task's identity within one pool: its submission sequence number, starting at 0.
pub type TaskId = u64;

/// What a task returns: the exported function's result (`None` for a function without one), or
/// why it has none.
pub type TaskResult = Result<Option<Value>, TaskError>;

/// Which entry point of the component a task runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Target {
    /// An exported function: `name` for a top-level export, `interface.name` for one inside an
    /// exported interface, as WAVE names them.
    Export(String),
    /// The component's `wasi:cli/run` export: its `main`, run like `wasmtime run` runs it. The
    /// call's arguments, all strings, are its command-line arguments (a job).
    Main,
}

/// One task: an entry point of the component and the arguments to call it with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Call {
    /// The entry point.
    pub target: Target,
    /// The arguments, one per parameter, in order; for [`Target::Main`], the command-line
    /// arguments as strings.
    pub args: Vec<Value>,
}

impl Call {
    /// A call of the exported function `function` with `args`.
    ///
    /// The arguments are checked against the export's signature when the call is submitted.
    ///
    /// # Examples
    /// ```
    /// use poolhost::{Call, Value};
    /// let call = Call::new("long-time-task", [Value::U32(3)]);
    /// assert_eq!(call.to_string(), "long-time-task(3)");
    /// ```
    pub fn new(function: impl Into<String>, args: impl IntoIterator<Item = Value>) -> Self {
        Call {
            target: Target::Export(function.into()),
            args: args.into_iter().collect(),
        }
    }

    /// A run of the component's `main` (its `wasi:cli/run` export).
    pub fn main() -> Self {
        Call::job(Vec::<String>::new())
    }

    /// A job: a run of the component's `main` with these command-line arguments.
    pub fn job(args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Call {
            target: Target::Main,
            args: args.into_iter().map(|arg| Value::String(arg.into())).collect(),
        }
    }

    /// The command-line arguments of a job (the string arguments of a [`Target::Main`] call).
    pub fn job_args(&self) -> Vec<&str> {
        let strings = self.args.iter().filter_map(|arg| match arg {
            Value::String(text) => Some(text.as_str()),
            _ => None,
        });
        strings.collect()
    }
}

/// Shows the call in WAVE, the syntax `poolhost run --invoke` reads: `long-time-task(3)`; a job
/// as its arguments, quoted as a shell would need them (`main` for none).
impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Main if self.args.is_empty() => f.write_str("main"),
            Target::Main => f.write_str(&shell_words::join(self.job_args())),
            Target::Export(name) => {
                write!(f, "{name}(")?;
                for (i, arg) in self.args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{arg}")?;
                }
                f.write_str(")")
            }
        }
    }
}

/// How one task runs: its limits (`None`: no limit of that kind) and its retries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOptions {
    /// Wall-clock time from the task's start; past it the task is cut and fails with
    /// [`TaskError::Timeout`], even inside a queue operation. The worker goes on.
    pub timeout: Option<Duration>,
    /// The most linear memory, in bytes, the task's instance may have; growing past it fails
    /// the task with [`TaskError::MemoryLimit`].
    pub max_memory: Option<u64>,
    /// A deterministic CPU budget: the task fails with [`TaskError::OutOfFuel`] when it has used
    /// it up. Needs a program loaded with fuel metering.
    pub fuel: Option<u64>,
    /// How many times to run the task again if it fails by a trap, a timeout or the death of
    /// its worker (failures another run may not repeat); each run goes to the back of the queue.
    pub retries: u32,
}

/// What tasks may reach outside their sandbox. Nothing unless granted: no files, no
/// environment variables (and no network, which poolhost does not grant at all).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    /// Host directories the tasks see, each at a path of the guest's.
    pub dirs: Vec<DirGrant>,
    /// Environment variables the tasks see, as `(name, value)`.
    pub env: Vec<(String, String)>,
}

/// A host directory granted to tasks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirGrant {
    /// The directory on the host.
    pub host: PathBuf,
    /// Where tasks see it.
    pub guest: String,
    /// Whether tasks may create, change and delete what is in it; read-only otherwise.
    pub writable: bool,
}

/// Why a task has no result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum TaskError {
    /// The guest trapped: a WebAssembly trap (a Rust guest's panic is `unreachable`, and so is
    /// a Python guest's uncaught exception).
    #[error("trap: {code}{}", StderrTail(.stderr))]
    Trap {
        /// What kind of trap.
        code: TrapCode,
        /// The wasm call stack at the trap, innermost frame first.
        backtrace: Vec<BacktraceFrame>,
        /// The last lines the task wrote to stderr before it failed (at most
        /// [`STDERR_TAIL`] bytes): a panic's message, a Python traceback.
        stderr: Option<String>,
    },
    /// The guest called `exit` with a non-zero code, or its `main` returned an error (code 1).
    #[error("exited with code {code}{}", StderrTail(.stderr))]
    Exit {
        /// The exit code.
        code: i32,
        /// The last lines the task wrote to stderr before it exited, as for a trap.
        stderr: Option<String>,
    },
    /// The task ran past its timeout.
    #[error("timed out after {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// The task tried to grow its memory past its limit.
    #[error("memory limit: the task needs more than its {0} bytes")]
    MemoryLimit(u64),
    /// The task used up its fuel.
    #[error("out of fuel: the task used all of its {0} units")]
    OutOfFuel(u64),
    /// The worker process running the task died.
    #[error("worker {pid} died: {cause}")]
    WorkerDied {
        /// The dead worker's pid.
        pid: u32,
        /// The signal or exit status it died of.
        cause: String,
    },
    /// The task's result is too large to send from its worker to the host: its encoded `size`
    /// is over the `limit` of one message between worker and host (64 MiB). Bulk data belongs in
    /// a queue or a file.
    #[error("result too large: {size} bytes, over the {limit}-byte limit of a result")]
    ResultTooLarge {
        /// The bytes the encoded result needs.
        size: u64,
        /// The most it may have.
        limit: u64,
    },
    /// The hosts that took the task kept dying (or stopped answering) before it ended: it was
    /// taken `attempts` times, as often as the cluster allows, and was set aside.
    #[error("host died: the task was taken {attempts} times and its host died each time")]
    HostDied {
        /// How many times hosts took it.
        attempts: u32,
    },
    /// The pool was terminated before the task finished (or before it started).
    #[error("terminated: the pool was terminated before the task finished")]
    Terminated,
    /// The task was taken off the pool's queue before it started ([`crate::Pool::cancel_pending`]).
    #[error("cancelled: the task was taken off the queue before it started")]
    Cancelled,
    /// The task could not be run: the call does not fit the component, the worker could not
    /// start, or the host failed the task for another reason given in the message.
    #[error("{0}")]
    Failed(String),
}

/// The most of a failed task's stderr its [`TaskError`] carries: its last lines, up to 4 KiB.
pub const STDERR_TAIL: usize = 4 << 10;

/// A failure's stderr tail as its message shows it: on the lines after the failure.
struct StderrTail<'a>(&'a Option<String>);

impl std::fmt::Display for StderrTail<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(tail) => write!(f, "\n{tail}"),
            None => Ok(()),
        }
    }
}

impl TaskError {
    /// The last lines the task wrote to stderr before it failed, for a trap or an exit whose
    /// task wrote any.
    pub fn stderr(&self) -> Option<&str> {
        match self {
            TaskError::Trap { stderr, .. } | TaskError::Exit { stderr, .. } => stderr.as_deref(),
            _ => None,
        }
    }

    /// The failure with `tail`, the last lines its task wrote to stderr, if it is a trap or an
    /// exit; other failures are the limits' or the pool's, and explain themselves.
    pub(crate) fn with_stderr(mut self, tail: Option<String>) -> TaskError {
        if let TaskError::Trap { stderr, .. } | TaskError::Exit { stderr, .. } = &mut self {
            *stderr = tail;
        }
        self
    }

    /// Whether another run of the task might succeed: a trap, a timeout or a dead worker may be
    /// transient; an exit code, a limit on memory or fuel, or a call that cannot run are not.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            TaskError::Trap { .. } | TaskError::Timeout(_) | TaskError::WorkerDied { .. }
        )
    }

    /// A short, stable name for the kind of failure, as printed in JSON output: `trap`, `exit`,
    /// `timeout`, `memory-limit`, `out-of-fuel`, `result-too-large`, `worker-died`, `host-died`,
    /// `terminated`,
    /// `cancelled` or `failed`.
    pub fn kind(&self) -> &'static str {
        match self {
            TaskError::Trap { .. } => "trap",
            TaskError::Exit { .. } => "exit",
            TaskError::Timeout(_) => "timeout",
            TaskError::MemoryLimit(_) => "memory-limit",
            TaskError::OutOfFuel(_) => "out-of-fuel",
            TaskError::ResultTooLarge { .. } => "result-too-large",
            TaskError::WorkerDied { .. } => "worker-died",
            TaskError::HostDied { .. } => "host-died",
            TaskError::Terminated => "terminated",
            TaskError::Cancelled => "cancelled",
            TaskError::Failed(_) => "failed",
        }
    }
}

/// The kind of a WebAssembly trap, named as in the WebAssembly and wasmtime documentation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TrapCode {
    /// `unreachable` was executed; a Rust guest's `panic!` ends here.
    Unreachable,
    /// The guest's wasm stack grew past the runtime's limit (unbounded recursion).
    StackOverflow,
    /// A load or store outside linear memory.
    MemoryOutOfBounds,
    /// A misaligned atomic access.
    HeapMisaligned,
    /// An access outside a table.
    TableOutOfBounds,
    /// `call_indirect` through a null table entry.
    IndirectCallToNull,
    /// `call_indirect` to a function of the wrong type.
    BadSignature,
    /// Signed integer division overflowed.
    IntegerOverflow,
    /// Integer division or remainder by zero.
    IntegerDivisionByZero,
    /// A float-to-integer conversion out of range or of NaN.
    BadConversionToInteger,
    /// The task was interrupted by its deadline.
    Interrupt,
    /// The task ran out of fuel.
    OutOfFuel,
    /// Any other trap, with the runtime's description.
    Other(String),
}

impl fmt::Display for TrapCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrapCode::Unreachable => "unreachable",
            TrapCode::StackOverflow => "stack overflow",
            TrapCode::MemoryOutOfBounds => "out-of-bounds memory access",
            TrapCode::HeapMisaligned => "misaligned memory access",
            TrapCode::TableOutOfBounds => "out-of-bounds table access",
            TrapCode::IndirectCallToNull => "indirect call to null",
            TrapCode::BadSignature => "indirect call type mismatch",
            TrapCode::IntegerOverflow => "integer overflow",
            TrapCode::IntegerDivisionByZero => "integer divide by zero",
            TrapCode::BadConversionToInteger => "invalid conversion to integer",
            TrapCode::Interrupt => "interrupted",
            TrapCode::OutOfFuel => "out of fuel",
            TrapCode::Other(message) => message,
        })
    }
}

/// One frame of a wasm backtrace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BacktraceFrame {
    /// The function's name (demangled), or `<wasm function N>` when the module has no names.
    pub function: String,
    /// The core module the function belongs to, when known.
    pub module: Option<String>,
}

impl fmt::Display for BacktraceFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.module {
            Some(module) => write!(f, "{module}!{}", self.function),
            None => f.write_str(&self.function),
        }
    }
}

/// Everything known about a finished task.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskReport {
    /// The task's submission sequence number.
    pub id: TaskId,
    /// What was run.
    pub call: Call,
    /// What came of it.
    pub result: TaskResult,
    /// The pid of the worker process that ran it; `None` if it never started.
    pub worker: Option<u32>,
    /// When it started on the worker; `None` if it never started.
    pub started: Option<SystemTime>,
    /// How long it ran on the worker.
    pub duration: Duration,
    /// The most linear memory its instance had, in bytes, if it ran to an end the worker saw.
    pub peak_memory: Option<u64>,
    /// The fuel it used, if it ran with a fuel budget.
    pub fuel_used: Option<u64>,
    /// How many times it was run: 1, or more if it was retried; 0 if it never started.
    pub attempts: u32,
    /// The id of the host that ran it, for a pool shared by many machines; `None` on one.
    pub host: Option<String>,
}

/// Which of a guest's output streams a chunk of output came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Stream {
    /// The guest's standard output.
    Stdout,
    /// The guest's standard error.
    Stderr,
}
