//! The worker process: the `poolhost` binary re-executed as `poolhost worker`. It loads the
//! component the host compiled, then runs the tasks the host sends, one at a time, each in a fresh
//! sandbox, and sends back their output and results.
//!
//! The worker's standard input is its end of a Unix socket to the host; it moves the socket to a
//! descriptor of its own, points stdin at `/dev/null`, and never lets a guest reach the socket (a
//! task's stdin is empty, its stdout and stderr are captured by the runtime). It knows nothing of
//! the pool's scheduling.

use std::io::{self, BufReader, BufWriter, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

use crate::ipc::{self, Done, FromWorker, IpcError, ToWorker};
use crate::runtime::{OutputSink, Runner};

/// Runs the worker until the host says `Shutdown` or goes away.
///
/// # Errors
/// If the worker was not started by a pool (no socket on stdin), the first message is not
/// `Init`, or the connection breaks mid-frame.
pub fn run() -> anyhow::Result<()> {
    // The worker must never outlive the host, even if the host is killed while a task runs.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .context("cannot ask to be killed with the host")?;

    let socket = io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(UnixStream::from)
        .context("the worker's stdin is not a socket: `poolhost worker` is started by a pool, not by hand")?;
    // From here on the socket lives on a descriptor of its own; stdin reads nothing.
    let null = std::fs::File::open("/dev/null").context("cannot open /dev/null")?;
    rustix::stdio::dup2_stdin(&null).context("cannot detach stdin from the host's socket")?;
    let mut from_host = BufReader::new(socket.try_clone()?);
    let to_host = Arc::new(Mutex::new(BufWriter::new(socket)));
    let send = move |message: &FromWorker| -> Result<(), IpcError> {
        let mut to_host = to_host.lock().unwrap_or_else(PoisonError::into_inner);
        ipc::write(&mut *to_host, message)?;
        to_host.flush()?;
        Ok(())
    };

    let init = match ipc::read(&mut from_host)? {
        ToWorker::Init(init) => init,
        other => bail!("expected `Init` as the first message from the host, got {other:?}"),
    };
    // The host may have died between spawning this worker and asking to be killed with it.
    if std::os::unix::process::parent_id() != init.host_pid {
        return Ok(());
    }
    let runner = match Runner::load(&init.artifact, init.host_pid) {
        Ok(runner) => runner,
        Err(e) => {
            let message = format!("cannot load `{}`: {e:#}", init.artifact.display());
            send(&FromWorker::Failed { message })?;
            return Ok(());
        }
    };
    send(&FromWorker::Ready {
        pid: std::process::id(),
    })?;

    let send = Arc::new(send);
    let output_send = send.clone();
    let output: OutputSink = Arc::new(move |task, stream, bytes: &[u8]| {
        // A failed send means the host is gone; the next read ends the worker.
        let _ = output_send(&FromWorker::Output {
            task,
            stream,
            bytes: bytes.to_vec(),
        });
    });

    loop {
        let batch = match ipc::read(&mut from_host) {
            Ok(ToWorker::Run(batch)) => batch,
            Ok(ToWorker::Shutdown) | Err(IpcError::Closed) => return Ok(()),
            Ok(ToWorker::Init(_)) => bail!("`Init` received twice"),
            Err(e) => return Err(e).context("broken message from the host"),
        };
        for (task, call) in batch {
            let started = SystemTime::now();
            let clock = Instant::now();
            let result = runner.run(task, &call, &output);
            let duration = clock.elapsed();
            send(&FromWorker::Done(Done {
                task,
                result,
                started_unix_nanos: started
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
                duration_nanos: duration.as_nanos() as u64,
            }))?;
        }
    }
}
