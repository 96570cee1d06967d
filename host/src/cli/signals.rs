//! SIGINT and SIGTERM during `poolhost run`: a run that is interrupted still ends as a run does,
//! with every task reported, its workers killed and reaped, its temporary directory removed, the
//! summary line, and exit code 128 + the signal (130, 143), as a shell reports it.
//!
//! A thread of its own receives the signals. Once the run has its pool, it records the signal and
//! stops the pool as the run asked: the run loop terminates it on its next look (at most 250 ms
//! later); a driver's pool is terminated at once, so the driver's calls on it end. A second
//! signal ends the process at once. Before then (the component loading, calls being read), there
//! is nothing to report: it removes the temporary directory and exits at once, and the workers
//! started ahead die with the host.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use signal_hook::consts::{SIGINT, SIGTERM};

/// What the signal thread and the run share.
#[derive(Default)]
pub struct Interrupt {
    /// The signal received, 0 for none.
    caught: AtomicI32,
    /// The run loop acts on the signal.
    handled: AtomicBool,
    /// The directory to remove if the process exits on a signal before the run loop.
    temporary: Mutex<Option<PathBuf>>,
    /// What stops the run, if the run does not look for the signal itself.
    stop: Mutex<Option<Box<dyn Fn() + Send>>>,
}

impl Interrupt {
    /// Starts the thread that receives SIGINT and SIGTERM from now on.
    ///
    /// # Errors
    /// If the handlers cannot be installed or the thread cannot start.
    pub fn watch() -> std::io::Result<Arc<Interrupt>> {
        let interrupt = Arc::new(Interrupt::default());
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
        let shared = interrupt.clone();
        std::thread::Builder::new()
            .name("poolhost-signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    let earlier = shared.caught.swap(signal, Ordering::SeqCst);
                    // A second signal does not wait for the run to wind down.
                    if !shared.handled.load(Ordering::SeqCst) || earlier != 0 {
                        shared.exit_now(signal);
                    }
                    if let Some(stop) = &*shared.stop.lock().unwrap_or_else(PoisonError::into_inner) {
                        stop();
                    }
                }
            })?;
        Ok(interrupt)
    }

    /// The temporary directory to remove if a signal ends the process before the run loop.
    pub fn remove_on_exit(&self, dir: Option<PathBuf>) {
        *self.temporary.lock().unwrap_or_else(PoisonError::into_inner) = dir;
    }

    /// From now on the run acts on signals: it looks at [`Interrupt::caught`], and `stop`, if
    /// given, is called on the signal thread when one comes.
    pub fn hand_over(&self, stop: Option<Box<dyn Fn() + Send>>) {
        // `stop` is in place before the signal thread can see `handled`: a signal it takes from
        // then on stops the run; one before, it handles itself, by ending the process.
        *self.stop.lock().unwrap_or_else(PoisonError::into_inner) = stop;
        self.handled.store(true, Ordering::SeqCst);
    }

    /// The signal received, if any.
    pub fn caught(&self) -> Option<i32> {
        match self.caught.load(Ordering::SeqCst) {
            0 => None,
            signal => Some(signal),
        }
    }

    fn exit_now(&self, signal: i32) -> ! {
        if let Some(dir) = self
            .temporary
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = std::fs::remove_dir_all(dir);
        }
        say!("poolhost: interrupted by {}", name(signal));
        std::process::exit(128 + signal)
    }
}

/// A signal's name, as the summary line gives it.
pub fn name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}
