//! The wire protocol between the host and a worker process: the messages, their framing, size
//! limits and decode errors.
//!
//! Each worker talks to the host over its own Unix socket, which the worker receives as a
//! dedicated descriptor (never a guest's stdio: guest output travels inside [`FromWorker::Output`]
//! frames). A frame is a 4-byte little-endian length followed by that many bytes of a
//! [postcard]-encoded message. This module owns the bytes on the wire and nothing else: it never
//! names wasmtime or the pool.
//!
//! Before the first frame, the host sends one byte carrying a descriptor ([`send_descriptor`]):
//! the worker's lease tally, a memory file both map (`crate::manager::lease`).

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags,
};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::manager::{QueueError, QueueId, Wait};
use crate::task::{Call, Grants, Stream, TaskId, TaskOptions, TaskResult};

/// The exit code of a worker whose watchdog ended it: its task ran past its timeout while stuck
/// in a host call that cannot be interrupted (a WASI sleep, say). The host reports the task as
/// timed out and starts a replacement. 124 is what `timeout(1)` exits with.
pub const EXIT_TIMED_OUT: i32 = 124;

/// The largest frame either side accepts, in bytes.
///
/// A frame carries one batch of task calls or one result, so this bounds the size of arguments
/// and results: 64 MiB is far above any sensible call, and low enough that a corrupt length prefix
/// cannot make the reader allocate without bound. Bulk data belongs in a file or a queue.
pub const MAX_FRAME: usize = 64 << 20;

/// A message from the host to a worker.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToWorker {
    /// What to load, ahead of [`ToWorker::Init`], sent to a worker started before the pool was
    /// built as soon as the component is compiled, so it loads while the host still checks it.
    /// Unanswered: a load that fails is reported as the answer to `Init`.
    Load {
        /// The artefact, as [`Init::artifact`].
        artifact: PathBuf,
        /// As [`Init::metered`].
        metered: bool,
    },
    /// What to load and how to run its tasks: the first message, but for [`ToWorker::Load`]. The
    /// worker answers [`FromWorker::Ready`] or [`FromWorker::Failed`].
    Init(Init),
    /// Run these tasks, one after another, each in a fresh sandbox with these options; answer
    /// each with [`FromWorker::Done`].
    Run {
        /// The options (limits) of every task of the batch.
        options: TaskOptions,
        /// The tasks, in order.
        tasks: Vec<(TaskId, Call)>,
    },
    /// Finish: exit once the current batch is done.
    Shutdown,
    /// Give back the batches sent ahead of time that have not started (the pool sends a batch
    /// while the worker is still on its last task, so it never waits for one); answered with
    /// [`FromWorker::Returned`].
    Return,
    /// The answer to the worker's last [`QueueRequest`] that wants one.
    Queue(Result<QueueAnswer, QueueError>),
}

/// What a worker loads at start-up.
#[derive(Debug, Serialize, Deserialize)]
pub struct Init {
    /// The component, precompiled by the host into its private directory.
    pub artifact: PathBuf,
    /// The host's pid, which tasks see as their parent pid.
    pub host_pid: u32,
    /// The manager's per-item limit, so the worker can refuse an over-large item of a
    /// [`QueueRequest::Put`] it does not wait for.
    pub max_item_bytes: usize,
    /// Whether the component was compiled with fuel metering (the worker's engine must match).
    pub metered: bool,
    /// What the tasks may reach outside their sandbox.
    pub grants: Grants,
    /// A job's `argv[0]`: the component's name, as `wasmtime run` gives it.
    pub argv0: String,
}

/// A message from a worker to the host.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromWorker {
    /// The worker has loaded the component and waits for tasks.
    Ready {
        /// The worker's pid, as tasks see it.
        pid: u32,
    },
    /// The worker could not load the component; it exits after sending this.
    Failed {
        /// Why, in one line.
        message: String,
    },
    /// Whole lines a task wrote to one of its output streams (or the unterminated tail of its
    /// output, when the task ended).
    Output {
        /// The task that wrote them.
        task: TaskId,
        /// Which stream.
        stream: Stream,
        /// The bytes: whole lines, at most the runtime's output chunk size.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// A task finished.
    Done(Done),
    /// A task's queue operation, for the host's manager.
    Queue(QueueRequest),
    /// The answer to [`ToWorker::Return`]: the tasks given back, none of them started, in the
    /// order they were sent (empty if every batch had started).
    Returned {
        /// The tasks.
        tasks: Vec<TaskId>,
    },
}

/// A queue operation of a task. Each is answered with [`ToWorker::Queue`], except a put with
/// `ack: false`.
#[derive(Debug, Serialize, Deserialize)]
pub enum QueueRequest {
    /// Open, creating if needed, the queue called `name`; answered with [`QueueAnswer::Opened`].
    Open {
        /// The queue's name.
        name: String,
    },
    /// Put `item` on the queue, waiting as `wait` says while it is full.
    Put {
        /// Which queue.
        queue: QueueId,
        /// The item.
        #[serde(with = "serde_bytes")]
        item: Vec<u8>,
        /// How long to wait for room.
        wait: Wait,
        /// Whether the worker waits for the answer. A put that would wait forever needs none: the
        /// worker goes on, and the host reads nothing more from it until the item is in (or the
        /// task is gone), so the put still appears to the rest of the pool to block.
        ack: bool,
    },
    /// Get an item, waiting as `wait` says while the queue is empty; answered with
    /// [`QueueAnswer::Item`], or [`QueueAnswer::Leased`] if the worker takes leases. Settles the
    /// lease the worker had.
    Get {
        /// Which queue.
        queue: QueueId,
        /// How long to wait for an item.
        wait: Wait,
        /// Whether the worker takes a lease of the items behind this one: it has a tally to
        /// claim them through (`crate::manager::lease`).
        lease: bool,
    },
    /// Get up to `max` items, waiting as `wait` says for the first; answered with
    /// [`QueueAnswer::Items`].
    GetMany {
        /// Which queue.
        queue: QueueId,
        /// The most items to take.
        max: u32,
        /// How long to wait for the first item.
        wait: Wait,
    },
    /// How many items the queue holds; answered with [`QueueAnswer::Len`].
    Len {
        /// Which queue.
        queue: QueueId,
    },
}

/// A successful answer to a [`QueueRequest`].
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum QueueAnswer {
    /// The queue opened.
    Opened(QueueId),
    /// The put is done.
    Put,
    /// The item got.
    Item(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The items got, in queue order.
    Items(Vec<Vec<u8>>),
    /// The item got, and a lease of the items behind it, in queue order, for the worker to claim
    /// one by one.
    Leased {
        /// The item got.
        #[serde(with = "serde_bytes")]
        item: Vec<u8>,
        /// The lease's generation, which the worker's claims name.
        generation: u32,
        /// The leased items.
        items: Vec<Vec<u8>>,
    },
    /// The queue's length.
    Len(u64),
}

/// The end of one task, as the worker saw it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Done {
    /// Which task.
    pub task: TaskId,
    /// Its result.
    pub result: TaskResult,
    /// When it started, in nanoseconds since the Unix epoch.
    pub started_unix_nanos: u64,
    /// How long it ran, in nanoseconds.
    pub duration_nanos: u64,
    /// The most linear memory the task's instance had, in bytes.
    pub peak_memory: u64,
    /// The fuel it used, if it had a budget.
    pub fuel_used: Option<u64>,
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    /// The peer closed the connection between two frames.
    #[error("connection closed")]
    Closed,
    /// The connection ended inside a frame.
    #[error("connection closed inside a frame ({got} of {expected} bytes)")]
    Truncated {
        /// The bytes the frame should have had.
        expected: usize,
        /// The bytes that arrived.
        got: usize,
    },
    /// A frame's length is over [`MAX_FRAME`].
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    TooLarge {
        /// The length announced (reading) or needed (writing).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A frame's bytes are not a valid message.
    #[error("malformed frame: {0}")]
    Malformed(#[from] postcard::Error),
    /// The operating system refused to read or write.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Sends one byte across `socket`, carrying `descriptor` if there is one: the first thing on a
/// new worker's socket, before any frame.
///
/// # Errors
/// The socket's, when the worker has gone.
pub(crate) fn send_descriptor(socket: &UnixStream, descriptor: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let descriptors: Vec<BorrowedFd<'_>> = descriptor.into_iter().collect();
    if !descriptors.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&descriptors)) {
        return Err(io::Error::other("no room for a descriptor"));
    }
    rustix::net::sendmsg(socket, &[IoSlice::new(&[0])], &mut control, SendFlags::NOSIGNAL)?;
    Ok(())
}

/// Receives the byte [`send_descriptor`] sent, and the descriptor it carries (`None` if it
/// carries none). Read before anything else on the socket: a plain read of the byte would drop
/// the descriptor.
///
/// # Errors
/// The socket's; [`io::ErrorKind::UnexpectedEof`] if the host closed it first.
pub(crate) fn receive_descriptor(socket: &UnixStream) -> io::Result<Option<OwnedFd>> {
    let mut byte = [0u8];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = loop {
        match rustix::net::recvmsg(
            socket,
            &mut [IoSliceMut::new(&mut byte)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other?,
        }
    };
    if received.bytes == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let mut descriptor = None;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut descriptors) = message {
            descriptor = descriptors.next();
        }
    }
    Ok(descriptor)
}

/// Encodes `message` as one frame: length prefix and body in one buffer, so it goes out in a
/// single write.
///
/// # Errors
/// [`IpcError::TooLarge`] if the encoded message is over [`MAX_FRAME`].
pub fn encode<M: Serialize>(message: &M) -> Result<Vec<u8>, IpcError> {
    let frame = postcard::to_extend(message, vec![0u8; 4])?;
    let len = frame.len() - 4;
    if len > MAX_FRAME {
        return Err(IpcError::TooLarge { len, max: MAX_FRAME });
    }
    let mut frame = frame;
    frame[..4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(frame)
}

/// Writes `message` as one frame.
///
/// # Errors
/// As [`encode`], or [`IpcError::Io`] if the write fails.
pub fn write<M: Serialize>(mut to: impl Write, message: &M) -> Result<(), IpcError> {
    to.write_all(&encode(message)?)?;
    Ok(())
}

/// Reads one frame and decodes it.
///
/// # Errors
/// [`IpcError::Closed`] at a clean end of the stream, [`IpcError::Truncated`] inside a frame,
/// [`IpcError::TooLarge`] before allocating for an oversized frame, [`IpcError::Malformed`] for
/// bytes that do not decode, [`IpcError::Io`] when reading fails.
pub fn read<M: DeserializeOwned>(mut from: impl Read) -> Result<M, IpcError> {
    let mut prefix = [0u8; 4];
    let got = read_full(&mut from, &mut prefix)?;
    if got == 0 {
        return Err(IpcError::Closed);
    }
    if got < prefix.len() {
        return Err(IpcError::Truncated { expected: 4, got });
    }
    let len = u32::from_le_bytes(prefix) as usize;
    if len > MAX_FRAME {
        return Err(IpcError::TooLarge { len, max: MAX_FRAME });
    }
    let mut body = vec![0u8; len];
    let got = read_full(&mut from, &mut body)?;
    if got < len {
        return Err(IpcError::Truncated {
            expected: len + 4,
            got: got + 4,
        });
    }
    Ok(postcard::from_bytes(&body)?)
}

/// Reads until `buf` is full or the stream ends; returns how many bytes arrived.
fn read_full(from: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match from.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::TaskError;
    use crate::value::Value;

    fn round_trip<M: Serialize + DeserializeOwned>(message: &M) -> M {
        let frame = encode(message).unwrap();
        read(&frame[..]).unwrap()
    }

    #[test]
    fn messages_round_trip() {
        let limits = TaskOptions {
            timeout: Some(std::time::Duration::from_millis(1500)),
            ..TaskOptions::default()
        };
        let run = ToWorker::Run {
            options: limits,
            tasks: vec![(7, Call::new("f", [Value::U32(3), "x".into()]))],
        };
        match round_trip(&run) {
            ToWorker::Run { options: got, tasks } => {
                assert_eq!(got, limits);
                assert_eq!(tasks, vec![(7, Call::new("f", [3u32.into(), "x".into()]))]);
            }
            other => panic!("got {other:?}"),
        }
        let get = FromWorker::Queue(QueueRequest::Get {
            queue: 3,
            wait: Wait::For(std::time::Duration::from_millis(5)),
            lease: true,
        });
        match round_trip(&get) {
            FromWorker::Queue(QueueRequest::Get {
                queue: 3,
                wait,
                lease: true,
            }) => {
                assert_eq!(wait, Wait::For(std::time::Duration::from_millis(5)))
            }
            other => panic!("got {other:?}"),
        }
        let answer = ToWorker::Queue(Err(QueueError::Timeout));
        assert!(matches!(
            round_trip(&answer),
            ToWorker::Queue(Err(QueueError::Timeout))
        ));
        let done = FromWorker::Done(Done {
            task: 9,
            result: Err(TaskError::Exit {
                code: 3,
                stderr: Some("boom".into()),
            }),
            started_unix_nanos: 1,
            duration_nanos: 2,
            peak_memory: 3,
            fuel_used: None,
        });
        match round_trip(&done) {
            FromWorker::Done(d) => {
                assert_eq!((d.task, d.result.unwrap_err().stderr()), (9, Some("boom")));
            }
            other => panic!("got {other:?}"),
        }
    }

    #[test]
    fn frames_follow_each_other() {
        let mut wire = encode(&ToWorker::Shutdown).unwrap();
        wire.extend(encode(&FromWorker::Ready { pid: 5 }).unwrap());
        let mut reader = &wire[..];
        assert!(matches!(read::<ToWorker>(&mut reader), Ok(ToWorker::Shutdown)));
        assert!(matches!(
            read::<FromWorker>(&mut reader),
            Ok(FromWorker::Ready { pid: 5 })
        ));
        assert!(matches!(read::<FromWorker>(&mut reader), Err(IpcError::Closed)));
    }

    #[test]
    fn truncated_prefix_and_body_are_reported() {
        let frame = encode(&FromWorker::Ready { pid: 5 }).unwrap();
        assert!(matches!(
            read::<FromWorker>(&frame[..2]),
            Err(IpcError::Truncated { expected: 4, got: 2 })
        ));
        let cut = &frame[..frame.len() - 1];
        match read::<FromWorker>(cut) {
            Err(IpcError::Truncated { expected, got }) => {
                assert_eq!((expected, got), (frame.len(), frame.len() - 1))
            }
            other => panic!("got {other:?}"),
        }
    }

    #[test]
    fn oversized_frames_are_refused_before_allocating() {
        let prefix = (MAX_FRAME as u32 + 1).to_le_bytes();
        assert!(matches!(
            read::<FromWorker>(&prefix[..]),
            Err(IpcError::TooLarge { len, max: MAX_FRAME }) if len == MAX_FRAME + 1
        ));
        let huge = FromWorker::Output {
            task: 0,
            stream: Stream::Stdout,
            bytes: vec![0; MAX_FRAME + 1],
        };
        assert!(matches!(encode(&huge), Err(IpcError::TooLarge { .. })));
    }

    /// One frame of each kind of message, for the mutation tests.
    fn sample_frames() -> Vec<Vec<u8>> {
        let options = TaskOptions {
            timeout: Some(std::time::Duration::from_millis(1500)),
            max_memory: Some(1 << 20),
            fuel: Some(7),
            retries: 2,
        };
        let to_worker = [
            ToWorker::Run {
                options,
                tasks: vec![
                    (7, Call::new("f", [Value::U32(3), "x".into()])),
                    (
                        8,
                        Call::new("g", [Value::List(vec![Value::S64(-1)]), Value::Option(None)]),
                    ),
                ],
            },
            ToWorker::Queue(Ok(QueueAnswer::Items(vec![b"ab".to_vec(), Vec::new()]))),
            ToWorker::Queue(Ok(QueueAnswer::Leased {
                item: b"head".to_vec(),
                generation: 5,
                items: vec![b"next".to_vec()],
            })),
            ToWorker::Queue(Err(QueueError::Full)),
            ToWorker::Load {
                artifact: "/tmp/x.cwasm".into(),
                metered: true,
            },
            ToWorker::Return,
        ];
        let from_worker = [
            FromWorker::Output {
                task: 1,
                stream: Stream::Stderr,
                bytes: b"line\n".to_vec(),
            },
            FromWorker::Done(Done {
                task: 9,
                result: Err(TaskError::WorkerDied {
                    pid: 4,
                    cause: "killed".into(),
                }),
                started_unix_nanos: 1,
                duration_nanos: 2,
                peak_memory: 3,
                fuel_used: Some(4),
            }),
            FromWorker::Queue(QueueRequest::Put {
                queue: 1,
                item: b"item".to_vec(),
                wait: Wait::For(std::time::Duration::from_secs(1)),
                ack: false,
            }),
            FromWorker::Returned { tasks: vec![1, 2, 3] },
        ];
        let mut frames: Vec<Vec<u8>> = to_worker.iter().map(|m| encode(m).unwrap()).collect();
        frames.extend(from_worker.iter().map(|m| encode(m).unwrap()));
        frames
    }

    /// Decodes `bytes` as a stream of frames of either direction, as far as it goes: each read
    /// gives a message or a typed error, and never panics.
    fn decode_all(bytes: &[u8]) {
        let mut from = bytes;
        while read::<FromWorker>(&mut from).is_ok() {}
        let mut from = bytes;
        while read::<ToWorker>(&mut from).is_ok() {}
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

        #[test]
        fn random_bytes_are_a_message_or_a_typed_error(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
        ) {
            decode_all(&bytes);
        }

        #[test]
        fn random_bodies_behind_a_true_length_are_a_message_or_a_typed_error(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
        ) {
            let mut frame = (body.len() as u32).to_le_bytes().to_vec();
            frame.extend(body);
            decode_all(&frame);
        }

        #[test]
        fn mutated_frames_are_a_message_or_a_typed_error(
            which in 0usize..9,
            flips in proptest::collection::vec(
                (proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 1..6),
            cut in proptest::prelude::any::<usize>(),
        ) {
            let mut frame = sample_frames()[which].clone();
            for (at, byte) in flips {
                let at = at % frame.len();
                // The length prefix keeps its value now and then, so the body is decoded.
                if at >= 4 || byte % 4 == 0 {
                    frame[at] ^= byte;
                }
            }
            frame.truncate(cut % (frame.len() + 1));
            decode_all(&frame);
        }
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let mut frame = 3u32.to_le_bytes().to_vec();
        frame.extend([0xff, 0xff, 0xff]);
        assert!(matches!(
            read::<FromWorker>(&frame[..]),
            Err(IpcError::Malformed(_))
        ));
    }
}
