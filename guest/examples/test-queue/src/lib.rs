//! Test-only guest: the queue operations of `poolhost-guest`, one export each, with errors
//! returned as their WIT names so tests can assert on them.

use std::time::Duration;

use poolhost_guest::{Error, Queue, process};

wit_bindgen::generate!({
    inline: r#"
        package test:queue;

        world queue {
            /// Puts `count` items `{tag}:{i}` on `queue`, i from 0; returns the worker's pid.
            export produce: func(queue: string, tag: string, count: u32) -> u32;
            /// Gets `count` items from `queue`, waiting for each; returns them in order.
            export consume: func(queue: string, count: u32) -> list<string>;
            /// `put` with an optional timeout.
            export put: func(queue: string, item: string, timeout-ms: option<u32>) -> result<_, string>;
            /// `try-put`.
            export try-put: func(queue: string, item: string) -> result<_, string>;
            /// `put` of an item of `size` bytes.
            export put-size: func(queue: string, size: u32) -> result<_, string>;
            /// `get` with an optional timeout.
            export get: func(queue: string, timeout-ms: option<u32>) -> result<string, string>;
            /// `try-get`.
            export try-get: func(queue: string) -> result<string, string>;
            /// `qsize` and `empty`.
            export size: func(queue: string) -> tuple<u64, bool>;
            /// Opens a queue by name.
            export open-queue: func(queue: string) -> result<_, string>;
            /// Puts `count` 16-byte items: the benchmark's writer.
            export bench-put: func(queue: string, count: u32);
            /// Gets `count` items: the benchmark's reader.
            export bench-get: func(queue: string, count: u32);
            /// Gets `count` items in batches of at most `batch`: the benchmark's batch reader.
            export bench-get-many: func(queue: string, count: u32, batch: u32);
            /// `get-many` with an optional timeout.
            export get-many: func(queue: string, max: u32, timeout-ms: option<u32>) -> result<list<string>, string>;
            /// Fails (panics) unless `queue` holds a token, leaving one for the next run: a task
            /// that fails once and succeeds when retried.
            export flaky: func(queue: string) -> string;
            /// Puts items of `size` bytes on `queue` until a put fails; returns the error.
            export flood: func(queue: string, size: u32) -> string;
            /// The worker's pid.
            export whoami: func() -> u32;
            /// Gets `count` items from `source`, putting each on `sink` as it comes; then, if
            /// `spin`, spins until the worker is killed.
            export relay: func(source: string, sink: string, count: u32, spin: bool);
        }
    "#,
});

struct Tests;

fn open(name: &str) -> Result<Queue, String> {
    Queue::open(name).map_err(|e| e.name().to_owned())
}

fn name<T>(result: Result<T, Error>) -> Result<T, String> {
    result.map_err(|e| e.name().to_owned())
}

fn timeout(ms: Option<u32>) -> Option<Duration> {
    ms.map(|ms| Duration::from_millis(ms.into()))
}

impl Guest for Tests {
    fn produce(queue: String, tag: String, count: u32) -> u32 {
        let q = open(&queue).unwrap();
        for i in 0..count {
            q.put_str(&format!("{tag}:{i}")).unwrap();
        }
        process::pid()
    }

    fn consume(queue: String, count: u32) -> Vec<String> {
        let q = open(&queue).unwrap();
        (0..count).map(|_| q.get_str().unwrap()).collect()
    }

    fn put(queue: String, item: String, timeout_ms: Option<u32>) -> Result<(), String> {
        let q = open(&queue)?;
        name(match timeout(timeout_ms) {
            Some(timeout) => q.put_timeout(item, timeout),
            None => q.put(item),
        })
    }

    fn try_put(queue: String, item: String) -> Result<(), String> {
        name(open(&queue)?.try_put(item))
    }

    fn put_size(queue: String, size: u32) -> Result<(), String> {
        name(open(&queue)?.put(vec![b'x'; size as usize]))
    }

    fn get(queue: String, timeout_ms: Option<u32>) -> Result<String, String> {
        let q = open(&queue)?;
        let item = match timeout(timeout_ms) {
            Some(timeout) => q.get_timeout(timeout),
            None => q.get(),
        };
        name(item).map(|item| String::from_utf8_lossy(&item).into_owned())
    }

    fn try_get(queue: String) -> Result<String, String> {
        name(open(&queue)?.try_get()).map(|item| String::from_utf8_lossy(&item).into_owned())
    }

    fn size(queue: String) -> (u64, bool) {
        let q = open(&queue).unwrap();
        (q.qsize() as u64, q.is_empty())
    }

    fn open_queue(queue: String) -> Result<(), String> {
        open(&queue).map(drop)
    }

    fn bench_put(queue: String, count: u32) {
        let q = open(&queue).unwrap();
        let mut item = *b"item 0000000000\n";
        for i in 0..count {
            item[5..15].copy_from_slice(format!("{i:010}").as_bytes());
            q.put(item).unwrap();
        }
    }

    fn bench_get(queue: String, count: u32) {
        let q = open(&queue).unwrap();
        for _ in 0..count {
            q.get().unwrap();
        }
    }

    fn bench_get_many(queue: String, count: u32, batch: u32) {
        let q = open(&queue).unwrap();
        let mut left = count as usize;
        while left > 0 {
            left -= q.get_many(left.min(batch as usize)).unwrap().len();
        }
    }

    fn get_many(queue: String, max: u32, timeout_ms: Option<u32>) -> Result<Vec<String>, String> {
        let q = open(&queue)?;
        let items = match timeout(timeout_ms) {
            Some(timeout) => q.get_many_timeout(max as usize, timeout),
            None => q.get_many(max as usize),
        };
        let text = |item: Vec<u8>| String::from_utf8_lossy(&item).into_owned();
        name(items).map(|items| items.into_iter().map(text).collect())
    }

    fn flaky(queue: String) -> String {
        let q = open(&queue).unwrap();
        if q.try_get().is_ok() {
            return "second time lucky".into();
        }
        q.put_str("token").unwrap();
        panic!("the first run fails");
    }

    fn flood(queue: String, size: u32) -> String {
        let q = open(&queue).unwrap();
        let item = vec![b'f'; size as usize];
        loop {
            if let Err(e) = q.put(&item) {
                return e.name().to_owned();
            }
        }
    }

    fn relay(source: String, sink: String, count: u32, spin: bool) {
        let (source, sink) = (open(&source).unwrap(), open(&sink).unwrap());
        for _ in 0..count {
            sink.put(source.get().unwrap()).unwrap();
        }
        while spin {
            std::hint::spin_loop();
        }
    }

    fn whoami() -> u32 {
        process::pid()
    }
}

export!(Tests);
