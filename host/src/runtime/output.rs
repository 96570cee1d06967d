//! A task's stdout and stderr: what the guest writes is collected and handed on a whole line at a
//! time, so lines of tasks running on different workers never mix mid-line. A line longer than
//! [`MAX_CHUNK`] is handed on in pieces, each but the last without a newline, so the sink can
//! join them back into the line the guest wrote. The last [`STDERR_TAIL`] bytes of stderr are
//! kept too, for the task's failure to carry.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use crate::task::{STDERR_TAIL, Stream, TaskId};

/// Where a task's output goes, never more than [`MAX_CHUNK`] bytes at a time: whole lines, or a
/// piece of a longer line, which does not end in a newline and whose rest follows. A task's
/// unterminated last line is handed on with a newline when the task ends, so that every line
/// ends, and output that does not end in a newline is always a piece with more to come.
pub type OutputSink = Arc<dyn Fn(TaskId, Stream, &[u8]) + Send + Sync>;

/// The most output handed on at once, and the most held back waiting for a line's end.
///
/// A line longer than this is handed on in pieces of this size: a guest that never writes a
/// newline cannot make the worker buffer without bound. The sink joins the pieces.
pub const MAX_CHUNK: usize = 64 << 10;

/// One task's stdout or stderr, as WASI gives it to the guest: what the guest writes goes on to
/// the [`OutputSink`] a line at a time. Clones share the pending partial line: WASI hands a guest
/// a new stream object each time it asks for stdout, and they all write to the same place.
#[derive(Clone)]
pub struct GuestOutput(Arc<Mutex<Pending>>);

struct Pending {
    task: TaskId,
    stream: Stream,
    partial: Vec<u8>,
    sink: OutputSink,
    /// The last bytes written to stderr: a byte more than [`STDERR_TAIL`], up to twice that,
    /// once there are that many, so that keeping it costs a copy every few KiB, not every write.
    tail: Vec<u8>,
}

impl GuestOutput {
    pub fn new(task: TaskId, stream: Stream, sink: OutputSink) -> Self {
        GuestOutput(Arc::new(Mutex::new(Pending {
            task,
            stream,
            partial: Vec::new(),
            sink,
            tail: Vec::new(),
        })))
    }

    /// The last lines written, up to [`STDERR_TAIL`] bytes of them, as text: whole lines, but
    /// for a last line longer than that, which is cut at its start; `None` if nothing was
    /// written but white space. Only stderr keeps them.
    pub fn tail(&self) -> Option<String> {
        let pending = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let kept = &pending.tail;
        let from = kept.len().saturating_sub(STDERR_TAIL);
        let window = &kept[from..];
        let end = window
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        // A window that begins inside a line starts at the next line, if one begins in it.
        let mut start = 0;
        if from > 0 && kept[from - 1] != b'\n' {
            start = window[..end]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(0, |nl| nl + 1);
        }
        // Nor inside a character.
        while start < end && window[start] & 0xc0 == 0x80 {
            start += 1;
        }
        let text = String::from_utf8_lossy(&window[start..end]);
        let text = text.trim_start_matches(['\n', '\r']);
        (!text.trim_start().is_empty()).then(|| text.to_owned())
    }

    fn write(&self, mut bytes: &[u8]) {
        let mut pending = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.stream == Stream::Stderr {
            // One byte more than the tail: whether the tail begins a line.
            const KEEP: usize = STDERR_TAIL + 1;
            let keep = &bytes[bytes.len().saturating_sub(KEEP)..];
            if pending.tail.len() + keep.len() > 2 * KEEP {
                let excess = (pending.tail.len() + keep.len() - KEEP).min(pending.tail.len());
                pending.tail.drain(..excess);
            }
            pending.tail.extend_from_slice(keep);
        }
        while !bytes.is_empty() {
            let room = MAX_CHUNK - pending.partial.len();
            let (now, later) = bytes.split_at(bytes.len().min(room));
            pending.partial.extend_from_slice(now);
            bytes = later;
            // Whole lines go on as soon as there are any; a chunk without a line's end only when
            // it is full, as a piece of a longer line.
            match pending.partial.iter().rposition(|&b| b == b'\n') {
                Some(end) => pending.hand_on(end + 1),
                None if pending.partial.len() == MAX_CHUNK => pending.hand_on(MAX_CHUNK),
                None => {}
            }
        }
    }

    /// Hands on what is left when the task ends, ended with a newline: the last line is whole.
    pub fn finish(&self) {
        let mut pending = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !pending.partial.is_empty() {
            // Shorter than a chunk, or it would have been handed on: the newline fits.
            pending.partial.push(b'\n');
        }
        let len = pending.partial.len();
        pending.hand_on(len);
    }
}

impl Pending {
    fn hand_on(&mut self, len: usize) {
        if len > 0 {
            (self.sink)(self.task, self.stream, &self.partial[..len]);
            self.partial.drain(..len);
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        GuestOutput::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_CHUNK)
    }
}

impl AsyncWrite for GuestOutput {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        GuestOutput::write(&self, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect() -> (OutputSink, Arc<Mutex<Vec<Vec<u8>>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink_seen = seen.clone();
        let sink: OutputSink =
            Arc::new(move |_, _, bytes: &[u8]| sink_seen.lock().unwrap().push(bytes.to_vec()));
        (sink, seen)
    }

    #[test]
    fn whole_lines_are_handed_on_and_the_tail_at_the_end() {
        let (sink, seen) = collect();
        let out = GuestOutput::new(1, Stream::Stdout, sink);
        out.write(b"Run ta");
        out.clone().write(b"sk 1\nTask 1 ");
        out.write(b"runs\nend");
        out.finish();
        let seen = seen.lock().unwrap();
        assert_eq!(
            *seen,
            vec![
                b"Run task 1\n".to_vec(),
                b"Task 1 runs\n".to_vec(),
                b"end\n".to_vec()
            ]
        );
    }

    #[test]
    fn many_lines_written_at_once_go_on_as_whole_lines() {
        let (sink, seen) = collect();
        let out = GuestOutput::new(1, Stream::Stdout, sink);
        let lines = "0123456789\n".repeat(MAX_CHUNK / 5);
        out.write(lines.as_bytes());
        out.finish();
        let seen = seen.lock().unwrap();
        assert!(
            seen.iter()
                .all(|chunk| chunk.ends_with(b"\n") && chunk.len() <= MAX_CHUNK)
        );
        assert_eq!(seen.concat(), lines.as_bytes());
    }

    #[test]
    fn stderr_keeps_its_last_lines_for_a_failure() {
        let (sink, _) = collect();
        let err = GuestOutput::new(1, Stream::Stderr, sink.clone());
        assert_eq!(err.tail(), None);
        err.write(b"Traceback (most recent call last):\n  File \"app.py\"\n");
        err.write(b"RuntimeError: boom\n\n");
        assert_eq!(
            err.tail().unwrap(),
            "Traceback (most recent call last):\n  File \"app.py\"\nRuntimeError: boom"
        );

        // Many lines: the last whole ones that fit, in at most STDERR_TAIL bytes.
        for i in 0..10_000 {
            err.write(format!("line {i}\n").as_bytes());
        }
        let tail = err.tail().unwrap();
        assert!(
            tail.len() <= STDERR_TAIL && tail.len() > STDERR_TAIL - 20,
            "{}",
            tail.len()
        );
        assert!(tail.starts_with("line ") && tail.ends_with("line 9999"), "{tail}");
        let out = GuestOutput::new(1, Stream::Stdout, sink.clone());
        out.write(b"not a failure's\n");
        assert_eq!(out.tail(), None);

        // A last line longer than the tail is kept, cut at its start.
        let err = GuestOutput::new(1, Stream::Stderr, sink.clone());
        err.write(b"Traceback\nRuntimeError: ");
        err.write(&[b'y'; 5000]);
        err.write(b"\n");
        assert_eq!(err.tail().unwrap(), "y".repeat(STDERR_TAIL - 1));

        // A tail that begins exactly at a line's start keeps that line.
        let err = GuestOutput::new(1, Stream::Stderr, sink.clone());
        let first = format!("{}\n", "a".repeat(STDERR_TAIL - 4));
        err.write(format!("zzz\n{first}b\nc").as_bytes());
        assert_eq!(err.tail().unwrap(), format!("{first}b\nc"));

        // Not cut inside a character, and never more than the tail.
        let err = GuestOutput::new(1, Stream::Stderr, sink);
        err.write("é".repeat(STDERR_TAIL).as_bytes());
        let tail = err.tail().unwrap();
        assert!(
            tail.chars().all(|c| c == 'é') && tail.len() <= STDERR_TAIL,
            "{}",
            tail.len()
        );
    }

    #[test]
    fn a_line_without_end_is_cut_at_the_chunk_size() {
        let (sink, seen) = collect();
        let out = GuestOutput::new(1, Stream::Stderr, sink);
        out.write(&vec![b'x'; MAX_CHUNK * 2 + 10]);
        assert_eq!(seen.lock().unwrap().len(), 2);
        out.finish();
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![MAX_CHUNK, MAX_CHUNK, 11]
        );
    }
}
