//! The seed's example 2 as a task component: a writer and a reader on different workers share
//! the pool's queue `q`.
//!
//! ```python
//! def reader(q):
//!     print("reader started (%s), parent is (%s)" % (os.getpid(), os.getppid()))
//!     for i in range(q.qsize()):
//!         print("reader got message from Queue: %s" % q.get(True))
//!
//! def writer(q):
//!     print("writer started (%s), parent is (%s)" % (os.getpid(), os.getppid()))
//!     for i in "itcast":
//!         q.put(i)
//! ```
//!
//! Run both on a pool of two: `poolhost run queue_demo.wasm -n 2 --invoke 'writer()' 'reader(6)'`.
//! The reader waits in `get` for each item the writer puts.

use poolhost_guest::{Queue, process};

wit_bindgen::generate!({
    inline: r#"
        package example:queue-demo;

        world queue-demo {
            /// Prints its pid and parent pid, then puts each character of "itcast" on queue `q`.
            export writer: func();
            /// Prints its pid and parent pid, then gets `n` items from queue `q`, waiting for
            /// each, and prints them.
            export reader: func(n: u32);
        }
    "#,
});

/// The queue the seed's parent creates and hands to both tasks.
const QUEUE: &str = "q";

struct Demo;

impl Guest for Demo {
    fn writer() {
        println!(
            "writer started ({}), parent is ({})",
            process::pid(),
            process::ppid()
        );
        let q = Queue::open(QUEUE).expect("queue `q` opens");
        for c in "itcast".chars() {
            q.put_str(&c.to_string()).expect("the item fits the queue");
        }
    }

    fn reader(n: u32) {
        println!(
            "reader started ({}), parent is ({})",
            process::pid(),
            process::ppid()
        );
        let q = Queue::open(QUEUE).expect("queue `q` opens");
        for _ in 0..n {
            let item = q.get_str().expect("the pool is running");
            println!("reader got message from Queue: {item}");
        }
    }
}

export!(Demo);
