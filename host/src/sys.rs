//! The few process primitives that need `unsafe`, each behind a function whose contract a
//! reader can check here: forking the host into a worker, ending that child at once, closing
//! the descriptors it inherited, and mapping the word of a file that a worker and its host share. With the deserialization of precompiled code in `runtime`, this
//! is the only place the crate uses `unsafe`; every other module forbids it.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::panic::{self, AssertUnwindSafe};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

/// What [`fork`] returned in this process.
enum Forked {
    /// This is the new child.
    Child,
    /// This is the parent; the child has this pid.
    Parent(rustix::process::Pid),
}

/// Forks this process.
///
/// # Safety
/// This process must have a single thread, the one calling: the child is then a consistent copy
/// of it, and no lock it inherits can be held by a thread it lacks. The child must not return
/// into code that owns anything the parent also owns (temporary directories, buffered output,
/// exit handlers, descriptors): it runs its own work and ends with [`exit_now`].
unsafe fn fork() -> io::Result<Forked> {
    // SAFETY: the caller upholds the contract above.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(
            rustix::process::Pid::from_raw(pid).expect("fork returns a positive pid"),
        )),
    }
}

/// Runs `main` in a child forked from this process, with `stdin` and `stdout` as its standard
/// input and output and no other descriptor above standard error, and ends the child with the
/// code `main` returns (101 if it panics). Returns the child's pid, or `None` if this process
/// runs more than one thread, when a fork would not be a whole copy of it.
///
/// The child never returns into the caller's code, so nothing the parent owns is cleaned up or
/// written a second time by it.
///
/// # Errors
/// The operating system's, when it cannot fork (out of processes or memory).
pub(crate) fn fork_with(
    stdin: BorrowedFd<'_>,
    stdout: BorrowedFd<'_>,
    main: impl FnOnce() -> i32,
) -> io::Result<Option<rustix::process::Pid>> {
    if !single_threaded() {
        return Ok(None);
    }
    // SAFETY: this process has a single thread, checked just above by the thread that forks (no
    // other can have started since: only a thread starts threads). The child below ends with
    // `exit_now` on every path, never returning from this function.
    match unsafe { fork() }? {
        Forked::Parent(pid) => Ok(Some(pid)),
        Forked::Child => {
            let code =
                match rustix::stdio::dup2_stdin(stdin).and_then(|()| rustix::stdio::dup2_stdout(stdout)) {
                    Ok(()) => {
                        close_descriptors_above_stderr();
                        // The panic hook reports a panic; the child still ends here.
                        panic::catch_unwind(AssertUnwindSafe(main)).unwrap_or(101)
                    }
                    Err(_) => 127,
                };
            exit_now(code)
        }
    }
}

/// Whether this process runs a single thread, so that a fork of it is a whole copy: no lock in
/// it can be held by a thread the child lacks.
pub(crate) fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|tasks| tasks.count() == 1)
}

/// Ends this process at once with `code`, running no exit handler and writing no buffer: for a
/// forked child, whose handlers and buffers are its parent's.
fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` takes a plain number and never returns; skipping the exit handlers is its
    // purpose, sound in any process.
    unsafe { libc::_exit(code) }
}

/// Closes every descriptor above standard error in a freshly forked child: it inherits all of
/// its parent's, where a started worker gets only the three standard ones, and uses none of them.
fn close_descriptors_above_stderr() {
    // SAFETY: `close_range` takes plain numbers and touches nothing but the descriptor table; in
    // the forked child (a single thread, which runs nothing of its parent's again) no owner of
    // those descriptors will use them.
    let closed = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) } == 0;
    if !closed {
        // Kernels before 5.9: close what /proc lists (the listing's own descriptor included,
        // after it is read).
        let open: Vec<i32> = std::fs::read_dir("/proc/self/fd")
            .into_iter()
            .flatten()
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .filter(|&fd| fd > 2)
            .collect();
        for fd in open {
            // SAFETY: as above; a descriptor already closed fails harmlessly.
            unsafe { libc::close(fd) };
        }
    }
}

/// The first word of a file, mapped shared: every process that maps the same file sees and
/// changes the same word, atomically. A worker's lease tally ([`crate::manager::lease`]), a
/// memory file the host seals against shrinking before the worker gets it.
pub(crate) struct SharedWord(NonNull<AtomicU64>);

// SAFETY: the mapping is only ever reached as an `AtomicU64`, which any thread may use.
unsafe impl Send for SharedWord {}
// SAFETY: as above.
unsafe impl Sync for SharedWord {}

impl SharedWord {
    /// Maps the first word of `file`, which must be at least 8 bytes long and stay so while
    /// mapped (a word past the end of a file cannot be touched: the host's tallies are sealed
    /// against shrinking). The mapping is not inherited by a forked child: a worker forked later
    /// must not reach another worker's word.
    ///
    /// # Errors
    /// The operating system's, when the file is shorter or cannot be mapped.
    pub(crate) fn map(file: &File) -> io::Result<SharedWord> {
        if file.metadata()?.len() < 8 {
            return Err(io::Error::other("the file is shorter than a word"));
        }
        // SAFETY: a fresh shared mapping of the first 8 bytes of an open file (the kernel rounds
        // it up to a page), placed where the kernel likes: it overlaps nothing this process
        // uses. The file is long enough, checked above, and sealed so that no process can
        // shorten it (`pool::process`).
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                8,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let word =
            NonNull::new(address.cast::<AtomicU64>()).ok_or_else(|| io::Error::other("mapped at 0"))?;
        let word = SharedWord(word);
        // SAFETY: advice on the mapping just made, which only `word` owns (and unmaps if this
        // fails).
        if unsafe { libc::madvise(address, 8, libc::MADV_DONTFORK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(word)
    }
}

impl crate::manager::Tally for SharedWord {
    fn word(&self) -> &AtomicU64 {
        // SAFETY: the mapping is page-aligned, readable and writable, and lives as long as
        // `self`; the memory is only ever used as this `AtomicU64`, here and in the processes
        // sharing it, so no reference to it is ever a non-atomic one.
        unsafe { self.0.as_ref() }
    }
}

impl Drop for SharedWord {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `map` made, which nothing uses once `self` is gone
        // (every reference to the word borrows `self`).
        unsafe { libc::munmap(self.0.as_ptr().cast(), 8) };
    }
}
