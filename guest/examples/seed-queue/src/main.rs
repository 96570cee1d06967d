//! The seed's second program, parent and children, as one component:
//!
//! ```python
//! if __name__=="__main__":
//!     print("(%s) start" % os.getpid())
//!     q = Manager().Queue()
//!     po = Pool()
//!     po.apply_async(writer, (q,))
//!     time.sleep(1)
//!     po.apply_async(reader, (q,))
//!     po.close()
//!     po.join()
//!     print("(%s) End" % os.getpid())
//! ```
//!
//! `poolhost run seed-queue.wasm` runs `main` as the parent with the default pool (one worker per
//! CPU); the writer and the reader run on the workers and share the queue the parent opened.

use std::time::Duration;

use poolhost_guest::{Pool, Queue, process};

wit_bindgen::generate!({
    inline: r#"
        package example:seed-queue;

        world seed-queue {
            /// Prints its pid and parent pid, then puts each character of "itcast" on queue `q`.
            export writer: func();
            /// Prints its pid and parent pid, then gets as many items as queue `q` holds, and
            /// prints each.
            export reader: func();
        }
    "#,
});

/// The queue the parent creates and both tasks use.
const QUEUE: &str = "q";

struct Tasks;

impl Guest for Tasks {
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

    fn reader() {
        println!(
            "reader started ({}), parent is ({})",
            process::pid(),
            process::ppid()
        );
        let q = Queue::open(QUEUE).expect("queue `q` opens");
        for _ in 0..q.qsize() {
            println!(
                "reader got message from Queue: {}",
                q.get_str().expect("the pool is running")
            );
        }
    }
}

export!(Tasks);

fn main() {
    println!("({}) start", process::pid());
    Queue::open(QUEUE).expect("the parent creates queue `q`");
    let pool = Pool::get();
    let writer = pool.apply_async("writer", ()).expect("the pool takes the writer");
    // Let the writer fill the queue first, as the seed does.
    std::thread::sleep(Duration::from_secs(1));
    let reader = pool.apply_async("reader", ()).expect("the pool takes the reader");
    pool.close();
    pool.join().expect("the pool was closed first");
    for task in [writer, reader] {
        if let Err(error) = task.get() {
            eprintln!("a task failed: {error}");
            std::process::exit(1);
        }
    }
    println!("({}) End", process::pid());
}
