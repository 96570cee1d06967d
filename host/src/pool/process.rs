//! Worker processes: starting one (as `worker_program worker`, or forked from a host with a
//! single thread), waiting for it to say it is ready, killing and reaping it. A worker is a
//! [`StartingWorker`] until it is ready, then a [`ReadyWorker`], whose supervisor owns it; either
//! way its [`WorkerProcess`] is killed and reaped when it is dropped, so no path leaves one
//! running.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::scheduler::describe;
use super::supervisor::{Bell, FrameWriter};
use crate::ipc::{self, FromWorker, IpcError};
use crate::manager::Tally;
use crate::sys::{self, SharedWord};
use crate::worker;

/// How long a new worker may take to load the component and say it is ready.
///
/// Loading is a memory map of the precompiled artefact (well under a millisecond), but a busy
/// machine starting many processes at once can be slow to schedule them; 30 s only catches a
/// worker that is stuck.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A worker's process: started from the worker program, or forked from this one.
pub(super) enum WorkerProcess {
    Spawned(Child),
    Forked {
        pid: rustix::process::Pid,
        /// Once reaped: the pid may belong to another process from then on.
        status: Option<ExitStatus>,
    },
}

impl WorkerProcess {
    /// Kills the process, if it has not been reaped.
    pub fn kill(&mut self) -> io::Result<()> {
        match self {
            WorkerProcess::Spawned(child) => child.kill(),
            WorkerProcess::Forked { pid, status: None } => {
                rustix::process::kill_process(*pid, rustix::process::Signal::KILL).map_err(io::Error::from)
            }
            WorkerProcess::Forked { .. } => Ok(()),
        }
    }

    /// Waits for the process to end; how it ended (the same again after the first time).
    fn wait(&mut self) -> io::Result<ExitStatus> {
        match self {
            WorkerProcess::Spawned(child) => child.wait(),
            WorkerProcess::Forked {
                status: Some(status), ..
            } => Ok(*status),
            WorkerProcess::Forked { pid, status } => loop {
                match rustix::process::waitpid(Some(*pid), rustix::process::WaitOptions::empty()) {
                    Ok(Some((_, raw))) => {
                        let ended = ExitStatus::from_raw(raw.as_raw());
                        *status = Some(ended);
                        return Ok(ended);
                    }
                    Ok(None) | Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            },
        }
    }

    /// Kills (if still running) and waits for the process; how it ended, if that can be known.
    pub fn reap(&mut self) -> Option<ExitStatus> {
        let _ = self.kill();
        self.wait().ok()
    }
}

/// A shared worker process, killed by any thread and reaped by its supervisor.
pub(super) type SharedProcess = Arc<Mutex<WorkerProcess>>;

/// Kills the shared process `process`.
pub(super) fn kill(process: &SharedProcess) {
    let _ = process.lock().unwrap_or_else(PoisonError::into_inner).kill();
}

/// Why a worker process did not become ready.
#[derive(Debug, thiserror::Error)]
pub(super) enum StartError {
    /// It cannot: the program does not run, or the component does not load. Another process
    /// would fail the same way.
    #[error("{0}")]
    Refused(String),
    /// It died, or could not be reached, before it was ready: killed from outside, say, or out of
    /// a resource for a moment. Another process may start.
    #[error("{0}")]
    Died(String),
}

/// A worker process started (and then sent its `Init`), not yet known to be ready. Dropping it
/// kills and reaps the process.
pub(super) struct StartingWorker {
    pub socket: UnixStream,
    process: Option<WorkerProcess>,
    journal: File,
    tally: Option<Arc<dyn Tally>>,
}

/// A ready worker, as its supervisor holds it. Dropping it kills and reaps its process.
pub(super) struct ReadyWorker {
    pub pid: u32,
    /// Where its frames are read.
    pub socket: UnixStream,
    pub writer: Arc<FrameWriter>,
    pub process: SharedProcess,
    /// The results the worker holds back, for when it dies ([`worker::read_journal`]).
    pub journal: File,
    /// The word where the worker claims the items leased to it, if it could be made (without
    /// it, the worker is leased nothing).
    pub tally: Option<Arc<dyn Tally>>,
    /// Rung when there is room for the worker's one-way put its supervisor waits on.
    pub room: Arc<Bell>,
    /// Set while the supervisor hands the worker's output to the sink, which may block (a
    /// paused terminal, a full pipe): no frame of the worker is read meanwhile.
    pub in_sink: Arc<AtomicBool>,
}

impl StartingWorker {
    /// Starts `worker_program worker`: a process that waits for its `Init` on the socket it gets
    /// as stdin, with the journal of the results it holds back as stdout.
    pub fn spawn(worker_program: &Path) -> Result<StartingWorker, StartError> {
        let (socket, theirs, journal, tally) = worker_ends()?;
        let theirs_journal = journal
            .try_clone()
            .map_err(|e| StartError::Died(format!("cannot create a worker's journal: {e}")))?;
        let child = Command::new(worker_program)
            .arg("worker")
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::from(theirs_journal))
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                let message = format!("cannot run `{}`: {e}", worker_program.display());
                // Out of processes or memory for a moment: another try may work.
                match e.raw_os_error() {
                    Some(libc::EAGAIN | libc::ENOMEM) => StartError::Died(message),
                    _ => StartError::Refused(message),
                }
            })?;
        StartingWorker {
            socket,
            process: Some(WorkerProcess::Spawned(child)),
            journal,
            tally: None,
        }
        .hand_over(tally)
    }

    /// As [`StartingWorker::spawn`], but the worker is a fork of this process that runs
    /// [`worker::forked_main`]; `None` if this process runs more than one thread, when it cannot
    /// be forked safely.
    pub fn fork() -> Result<Option<StartingWorker>, StartError> {
        let (socket, theirs, journal, tally) = worker_ends()?;
        match sys::fork_with(theirs.as_fd(), journal.as_fd(), worker::forked_main) {
            Err(e) => Err(StartError::Refused(format!("cannot fork a worker: {e}"))),
            Ok(None) => Ok(None),
            Ok(Some(pid)) => StartingWorker {
                socket,
                process: Some(WorkerProcess::Forked { pid, status: None }),
                journal,
                tally: None,
            }
            .hand_over(tally)
            .map(Some),
        }
    }

    /// Sends the new worker its lease tally, the first thing on its socket, and maps it here:
    /// a one-word memory file sealed against shrinking, so that neither side can pull the word
    /// from under the other. Without one (the kernel refused it), the worker is leased nothing.
    fn hand_over(mut self, tally: Option<File>) -> Result<StartingWorker, StartError> {
        if let Err(e) = ipc::send_descriptor(&self.socket, tally.as_ref().map(AsFd::as_fd)) {
            return Err(self.ended(&format!("cannot reach the new worker ({e})"), false));
        }
        self.tally = tally
            .and_then(|tally| SharedWord::map(&tally).ok())
            .map(|word| Arc::new(word) as Arc<dyn Tally>);
        Ok(self)
    }

    /// Waits for the worker to say it is ready.
    pub fn ready(mut self) -> Result<ReadyWorker, StartError> {
        let answer = self
            .socket
            .set_read_timeout(Some(START_TIMEOUT))
            .map_err(IpcError::Io)
            .and_then(|()| ipc::read::<FromWorker>(&self.socket));
        let died = |e: io::Error| StartError::Died(e.to_string());
        match answer {
            Ok(FromWorker::Ready { pid }) => {
                self.socket.set_read_timeout(None).map_err(died)?;
                let writer = self.socket.try_clone().map_err(died)?;
                Ok(ReadyWorker {
                    pid,
                    socket: self.socket.try_clone().map_err(died)?,
                    writer: Arc::new(FrameWriter::new(writer)),
                    process: Arc::new(Mutex::new(
                        self.process.take().expect("a starting worker has its process"),
                    )),
                    journal: self.journal.try_clone().map_err(died)?,
                    tally: self.tally.take(),
                    room: Arc::default(),
                    in_sink: Arc::default(),
                })
            }
            Ok(FromWorker::Failed { message }) => Err(StartError::Refused(message)),
            Ok(other) => Err(StartError::Refused(format!(
                "the worker sent {other:?} before saying it was ready"
            ))),
            Err(e) => {
                let stuck = matches!(&e, IpcError::Io(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut));
                Err(self.ended(&format!("the worker ended before it was ready ({e})"), stuck))
            }
        }
    }

    /// Reaps a worker that ended (or, if `stuck`, did not answer) before it was ready, and says
    /// whether another might start: one killed by a signal from outside might; one that exited
    /// on its own, or never answered, would do the same again.
    pub fn ended(&mut self, what: &str, stuck: bool) -> StartError {
        let status = self.process.as_mut().and_then(WorkerProcess::reap);
        let message = format!(
            "{what}: {}",
            status.map_or_else(|| "status unknown".into(), describe)
        );
        match status.and_then(|status| status.signal()) {
            Some(_) if !stuck => StartError::Died(message),
            _ => StartError::Refused(message),
        }
    }
}

impl Drop for StartingWorker {
    fn drop(&mut self) {
        if let Some(process) = &mut self.process {
            process.reap();
        }
    }
}

impl Drop for ReadyWorker {
    /// Every path that drops a worker (its supervisor ending, a pool that failed to start) kills
    /// and reaps its process; after a first reap this is a no-op.
    fn drop(&mut self) {
        self.process.lock().unwrap_or_else(PoisonError::into_inner).reap();
    }
}

/// What a new worker is connected by: the host's end of its socket, the worker's end, its
/// journal, and its lease tally (`None` if the kernel would not make one).
fn worker_ends() -> Result<(UnixStream, UnixStream, File, Option<File>), StartError> {
    let (socket, theirs) =
        UnixStream::pair().map_err(|e| StartError::Died(format!("cannot create a socket: {e}")))?;
    let journal = File::from(
        rustix::fs::memfd_create(c"poolhost-journal", rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(|e| StartError::Died(format!("cannot create a worker's journal: {e}")))?,
    );
    Ok((socket, theirs, journal, tally().ok()))
}

/// A lease tally: a memory file one word long, sealed so that it can never shrink (a word past
/// the end of a mapped file would fault whoever touched it) nor be unsealed.
fn tally() -> io::Result<File> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let file = File::from(rustix::fs::memfd_create(
        c"poolhost-tally",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?);
    file.set_len(8)?;
    rustix::fs::fcntl_add_seals(&file, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker that could shorten its tally would make the host fault on the word it maps.
    #[test]
    fn a_tally_cannot_be_shortened_nor_unsealed() {
        let tally = tally().expect("a tally");
        assert_eq!(tally.metadata().unwrap().len(), 8);
        assert!(tally.set_len(0).is_err(), "shrunk");
        assert!(tally.set_len(4096).is_err(), "grown");
        let unsealed = rustix::fs::fcntl_add_seals(&tally, rustix::fs::SealFlags::WRITE);
        assert!(unsealed.is_err(), "sealed for good");
        let word = SharedWord::map(&tally).expect("mapped");
        word.word()
            .store(0x0102_0304, std::sync::atomic::Ordering::SeqCst);
        let mut bytes = [0u8; 8];
        std::os::unix::fs::FileExt::read_exact_at(&tally, &mut bytes, 0).unwrap();
        assert_eq!(u64::from_ne_bytes(bytes), 0x0102_0304, "the file holds the word");
    }
}
