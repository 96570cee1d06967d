//! The pool, for a driver: a component whose `main` is the parent program submits its own
//! exported functions to the pool's workers.

use std::time::Duration;

use crate::bindings::poolhost::pool::pool as wit;
use crate::wave::{FromWave, WaveError, from_wave};

/// A result's WAVE text read as `T`; a function without a result reads as `()`.
fn typed<T: FromWave>(text: Option<String>) -> Result<T, PoolError> {
    match text {
        Some(text) => from_wave(&text).map_err(PoolError::BadResult),
        None => T::absent().ok_or_else(|| {
            PoolError::BadResult(WaveError {
                message: "the function has no result".into(),
            })
        }),
    }
}

/// Why a pool operation, or a task, gave no result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolError {
    /// The pool takes no more tasks: it was closed or terminated ("pool not running").
    NotRunning,
    /// `join` was called before `close` or `terminate`.
    StillRunning,
    /// The call does not fit the component; the text says why, with the expected signature.
    BadCall(String),
    /// No result within the timeout.
    Timeout,
    /// The task failed.
    Failed {
        /// The kind: `trap`, `exit`, `timeout`, `memory-limit`, `out-of-fuel`, `worker-died`,
        /// `terminated` or `failed`.
        kind: String,
        /// What happened.
        message: String,
    },
    /// This component is running as a task, not as the driver.
    NotDriver,
    /// The result is not of the type asked for.
    BadResult(WaveError),
}

impl std::fmt::Display for PoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolError::NotRunning => f.write_str("pool not running"),
            PoolError::StillRunning => {
                f.write_str("the pool is still running: close or terminate it before join")
            }
            PoolError::BadCall(text) => f.write_str(text),
            PoolError::Timeout => f.write_str("timed out"),
            PoolError::Failed { kind, message } => write!(f, "{kind}: {message}"),
            PoolError::NotDriver => f.write_str("only the driver has the pool"),
            PoolError::BadResult(error) => write!(f, "unexpected result: {error}"),
        }
    }
}

impl std::error::Error for PoolError {}

impl From<wit::Error> for PoolError {
    fn from(error: wit::Error) -> Self {
        match error {
            wit::Error::NotRunning => PoolError::NotRunning,
            wit::Error::StillRunning => PoolError::StillRunning,
            wit::Error::BadCall(text) => PoolError::BadCall(text),
            wit::Error::Timeout => PoolError::Timeout,
            wit::Error::Failed(failure) => PoolError::Failed {
                kind: failure.kind,
                message: failure.message,
            },
            wit::Error::NotDriver => PoolError::NotDriver,
        }
    }
}

/// A value that can be written as a WAVE argument: the SDK writes the call text for you.
pub trait ToWave {
    /// Appends this value in WAVE to `out`.
    fn write_wave(&self, out: &mut String);
}

macro_rules! wave_display {
    ($($ty:ty),*) => {
        $(impl ToWave for $ty {
            fn write_wave(&self, out: &mut String) {
                out.push_str(&self.to_string());
            }
        })*
    };
}

wave_display!(u8, u16, u32, u64, i8, i16, i32, i64, bool);

macro_rules! wave_float {
    ($($ty:ty),*) => {
        $(impl ToWave for $ty {
            fn write_wave(&self, out: &mut String) {
                if self.is_nan() {
                    out.push_str("nan");
                } else if self.is_infinite() {
                    out.push_str(if *self > 0.0 { "inf" } else { "-inf" });
                } else {
                    out.push_str(&format!("{self:?}"));
                }
            }
        })*
    };
}

wave_float!(f32, f64);

fn quoted(text: &str, quote: char, out: &mut String) {
    out.push(quote);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' if quote == '"' => out.push_str("\\\""),
            '\'' if quote == '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push(quote);
}

impl ToWave for char {
    fn write_wave(&self, out: &mut String) {
        quoted(&self.to_string(), '\'', out);
    }
}

impl ToWave for str {
    fn write_wave(&self, out: &mut String) {
        quoted(self, '"', out);
    }
}

impl ToWave for String {
    fn write_wave(&self, out: &mut String) {
        quoted(self, '"', out);
    }
}

impl<T: ToWave + ?Sized> ToWave for &T {
    fn write_wave(&self, out: &mut String) {
        (**self).write_wave(out);
    }
}

impl<T: ToWave> ToWave for [T] {
    fn write_wave(&self, out: &mut String) {
        out.push('[');
        for (i, item) in self.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            item.write_wave(out);
        }
        out.push(']');
    }
}

impl<T: ToWave> ToWave for Vec<T> {
    fn write_wave(&self, out: &mut String) {
        self.as_slice().write_wave(out);
    }
}

impl<T: ToWave> ToWave for Option<T> {
    fn write_wave(&self, out: &mut String) {
        match self {
            Some(value) => {
                out.push_str("some(");
                value.write_wave(out);
                out.push(')');
            }
            None => out.push_str("none"),
        }
    }
}

impl<T: ToWave, E: ToWave> ToWave for Result<T, E> {
    fn write_wave(&self, out: &mut String) {
        let (case, value): (&str, &dyn ToWave) = match self {
            Ok(value) => ("ok(", value),
            Err(error) => ("err(", error),
        };
        out.push_str(case);
        value.write_wave(out);
        out.push(')');
    }
}

/// A function's arguments: a tuple of [`ToWave`] values, `()` for none and `(x,)` for one.
pub trait Args {
    /// The arguments in WAVE, as they stand between the parentheses of a call.
    fn to_wave(&self) -> String;
}

macro_rules! args_tuple {
    ($($name:ident),*) => {
        impl<$($name: ToWave),*> Args for ($($name,)*) {
            #[allow(non_snake_case, unused_mut)]
            fn to_wave(&self) -> String {
                let ($($name,)*) = self;
                let mut out = String::new();
                $(
                    if !out.is_empty() {
                        out.push_str(", ");
                    }
                    $name.write_wave(&mut out);
                )*
                out
            }
        }

        impl<$($name: ToWave),*> ToWave for ($($name,)*) where ($($name,)*): Args {
            fn write_wave(&self, out: &mut String) {
                out.push('(');
                out.push_str(&Args::to_wave(self));
                out.push(')');
            }
        }
    };
}

impl Args for () {
    fn to_wave(&self) -> String {
        String::new()
    }
}

args_tuple!(A);
args_tuple!(A, B);
args_tuple!(A, B, C);
args_tuple!(A, B, C, D);
args_tuple!(A, B, C, D, E);
args_tuple!(A, B, C, D, E, F);

/// The pool of a driver: runs this component's own exported functions on the pool's workers.
///
/// ```no_run
/// use poolhost_guest::Pool;
///
/// // In the component's `fn main`, with `long-time-task: func(name: u32)` exported:
/// let pool = Pool::get();
/// let tasks: Vec<_> = (0..5u32)
///     .map(|i| pool.apply_async("long-time-task", (i,)))
///     .collect::<Result<_, _>>()?;
/// pool.close();
/// pool.join()?;
/// for task in tasks {
///     task.get()?;
/// }
/// # Ok::<(), poolhost_guest::PoolError>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Pool(());

/// A submitted task's result, to come.
pub struct AsyncResult(wit::AsyncResult);

impl Pool {
    /// The pool this component drives.
    pub fn get() -> Pool {
        Pool(())
    }

    /// Submits `function` with typed `args` (a tuple) and returns at once.
    ///
    /// # Errors
    /// [`PoolError::NotRunning`] after `close`, [`PoolError::BadCall`] for arguments that do not
    /// fit the function, [`PoolError::NotDriver`] in a task.
    pub fn apply_async(&self, function: &str, args: impl Args) -> Result<AsyncResult, PoolError> {
        self.apply_async_wave(function, &args.to_wave())
    }

    /// As [`Pool::apply_async`], with the arguments written in WAVE by hand (`"3, \"x\""`).
    ///
    /// # Errors
    /// As [`Pool::apply_async`].
    pub fn apply_async_wave(&self, function: &str, args: &str) -> Result<AsyncResult, PoolError> {
        Ok(AsyncResult(wit::apply_async(function, args)?))
    }

    /// Runs `function` with `args` and waits: the result in WAVE (`None` for a function
    /// without one).
    ///
    /// # Errors
    /// As [`Pool::apply_async`], and [`PoolError::Failed`] if the task fails.
    pub fn apply(&self, function: &str, args: impl Args) -> Result<Option<String>, PoolError> {
        Ok(wit::apply(function, &args.to_wave())?)
    }

    /// As [`Pool::apply`], with the result read as `T` (`()` for a function without one).
    ///
    /// ```no_run
    /// # use poolhost_guest::Pool;
    /// let sum: i32 = Pool::get().apply_as("add", (2, 40))?;
    /// # Ok::<(), poolhost_guest::PoolError>(())
    /// ```
    ///
    /// # Errors
    /// As [`Pool::apply`], and [`PoolError::BadResult`] if the result is not a `T`.
    pub fn apply_as<T: FromWave>(&self, function: &str, args: impl Args) -> Result<T, PoolError> {
        typed(self.apply(function, args)?)
    }

    /// Runs `function` once per argument tuple and waits for all; results in order.
    ///
    /// # Errors
    /// As [`Pool::apply_async`], for the whole call; each task's own failure is in its place.
    pub fn map<A: Args>(
        &self,
        function: &str,
        args: impl IntoIterator<Item = A>,
    ) -> Result<Vec<Result<Option<String>, PoolError>>, PoolError> {
        let args: Vec<String> = args.into_iter().map(|a| a.to_wave()).collect();
        let results = wit::map(function, &args)?;
        Ok(results.into_iter().map(|r| r.map_err(PoolError::from)).collect())
    }

    /// Takes no more tasks; those submitted still run.
    pub fn close(&self) {
        wit::close();
    }

    /// Waits until every task has ended and every worker has exited.
    ///
    /// # Errors
    /// [`PoolError::StillRunning`] before `close` or `terminate`.
    pub fn join(&self) -> Result<(), PoolError> {
        Ok(wit::join()?)
    }

    /// Stops at once: running tasks are killed, pending ones fail as terminated.
    pub fn terminate(&self) {
        wit::terminate();
    }

    /// The number of worker processes.
    pub fn workers(&self) -> u32 {
        wit::workers()
    }
}

fn nanos(timeout: Duration) -> u64 {
    u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX)
}

impl AsyncResult {
    /// Waits for the task: its result in WAVE (`None` for a function without one).
    ///
    /// # Errors
    /// [`PoolError::Failed`] with the task's failure.
    pub fn get(&self) -> Result<Option<String>, PoolError> {
        Ok(self.0.get(None)?)
    }

    /// As [`AsyncResult::get`], with the result read as `T` (`()` for a function without one).
    ///
    /// # Errors
    /// As [`AsyncResult::get`], and [`PoolError::BadResult`] if the result is not a `T`.
    pub fn get_as<T: FromWave>(&self) -> Result<T, PoolError> {
        typed(self.get()?)
    }

    /// As [`AsyncResult::get`], waiting at most `timeout`.
    ///
    /// # Errors
    /// [`PoolError::Timeout`], or as [`AsyncResult::get`].
    pub fn get_timeout(&self, timeout: Duration) -> Result<Option<String>, PoolError> {
        Ok(self.0.get(Some(nanos(timeout)))?)
    }

    /// Waits for the task to end.
    pub fn wait(&self) {
        self.0.wait(None);
    }

    /// Waits at most `timeout`; whether the task has ended.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.0.wait(Some(nanos(timeout)))
    }

    /// Whether the task has ended.
    pub fn ready(&self) -> bool {
        self.0.ready()
    }

    /// Whether it ended with a result; `None` while it runs.
    pub fn successful(&self) -> Option<bool> {
        self.0.successful()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_written_as_wave() {
        assert_eq!((3u32,).to_wave(), "3");
        assert_eq!(().to_wave(), "");
        assert_eq!(
            ("a\"b\n", 'x', -2i8, 1.5f64).to_wave(),
            r#""a\"b\n", 'x', -2, 1.5"#
        );
        assert_eq!(
            (vec![1u8, 2], Some(true), None::<u32>).to_wave(),
            "[1, 2], some(true), none"
        );
        assert_eq!(
            (Ok::<u32, String>(1), Err::<u32, String>("no".into())).to_wave(),
            r#"ok(1), err("no")"#
        );
        assert_eq!(((1u32, "t"),).to_wave(), r#"(1, "t")"#);
        assert_eq!((f64::NAN, f32::NEG_INFINITY).to_wave(), "nan, -inf");
    }
}
