//! The seed's first program, parent and children, as one component:
//!
//! ```python
//! if __name__=='__main__':
//!     print('Parent process %s.' % os.getpid())
//!     p = Pool(4)
//!     for i in range(5):
//!         p.apply_async(long_time_task, args=(i,))
//!     print('Waiting for all subprocesses done...')
//!     p.close()
//!     p.join()
//!     print('All subprocesses done.')
//! ```
//!
//! `poolhost run seed-pool.wasm -n 4` runs `main` as the parent; each `long-time-task(i)` runs on
//! one of the pool's four worker processes.

use std::time::{Duration, Instant};

use poolhost_guest::{Pool, process};

wit_bindgen::generate!({
    inline: r#"
        package example:seed-pool;

        world seed-pool {
            /// Prints `Run task {name} ({pid})...`, sleeps a random 0-3 seconds, then prints how
            /// long it ran.
            export long-time-task: func(name: u32);
        }
    "#,
});

struct Tasks;

impl Guest for Tasks {
    fn long_time_task(name: u32) {
        println!("Run task {name} ({})...", process::pid());
        let start = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(random_unit() * 3.0));
        println!("Task {name} runs {:.2} seconds.", start.elapsed().as_secs_f64());
    }
}

export!(Tasks);

/// A uniform random number in [0, 1), from WASI's random source (Python's `random.random()`).
fn random_unit() -> f64 {
    (wasip2::random::random::get_random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

fn main() {
    println!("Parent process {}.", process::pid());
    let pool = Pool::get();
    let tasks: Vec<_> = (0..5u32)
        .map(|i| {
            pool.apply_async("long-time-task", (i,))
                .expect("the pool takes the task")
        })
        .collect();
    println!("Waiting for all subprocesses done...");
    pool.close();
    pool.join().expect("the pool was closed first");
    // Unlike Python's, a failed task does not pass unnoticed.
    for task in tasks {
        if let Err(error) = task.get() {
            eprintln!("a task failed: {error}");
            std::process::exit(1);
        }
    }
    println!("All subprocesses done.");
}
