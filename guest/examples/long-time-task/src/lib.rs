//! The seed's example 1 as a task component:
//!
//! ```python
//! def long_time_task(name):
//!     print('Run task %s (%s)...' % (name, os.getpid()))
//!     start = time.time()
//!     time.sleep(random.random() * 3)
//!     end = time.time()
//!     print('Task %s runs %0.2f seconds.' % (name, (end - start)))
//! ```
//!
//! Run it on a pool of four: `poolhost run long_time_task.wasm -n 4 --invoke 'long-time-task(0)'
//! 'long-time-task(1)' 'long-time-task(2)' 'long-time-task(3)' 'long-time-task(4)'`.

use std::time::{Duration, Instant};

use poolhost_guest::process;

wit_bindgen::generate!({
    inline: r#"
        package example:long-time-task;

        world long-time-task {
            /// Prints `Run task {name} ({pid})...`, sleeps a random 0-3 seconds, then prints how
            /// long it ran.
            export long-time-task: func(name: u32);
        }
    "#,
});

struct Task;

impl Guest for Task {
    fn long_time_task(name: u32) {
        println!("Run task {name} ({})...", process::pid());
        let start = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(random_unit() * 3.0));
        println!("Task {name} runs {:.2} seconds.", start.elapsed().as_secs_f64());
    }
}

/// A uniform random number in [0, 1), from WASI's random source (Python's `random.random()`).
fn random_unit() -> f64 {
    // The top 53 bits fill an f64 mantissa exactly.
    (wasip2::random::random::get_random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

export!(Task);
