//! Test-only guest: a driver. `MODE` (granted with `--env MODE=...`) picks what its `main` does;
//! it prints what the pool answers, one line per step.

use std::time::Duration;

use poolhost_guest::{Pool, PoolError, process};

wit_bindgen::generate!({
    inline: r#"
        package test:driver;

        world driver {
            /// a + b.
            export add: func(a: s32, b: s32) -> s32;
            /// Loops forever.
            export spin: func();
            /// Sleeps `ms` milliseconds; returns the worker's pid.
            export nap: func(ms: u32) -> u32;
            /// Tries to use the pool from a task.
            export nested: func() -> string;
            /// Panics with `message`.
            export fail: func(message: string);
        }
    "#,
});

struct Tasks;

impl Guest for Tasks {
    fn add(a: i32, b: i32) -> i32 {
        a.wrapping_add(b)
    }

    fn spin() {
        let mut x = 0u64;
        loop {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }

    fn nap(ms: u32) -> u32 {
        std::thread::sleep(Duration::from_millis(ms.into()));
        process::pid()
    }

    fn fail(message: String) {
        panic!("{message}");
    }

    fn nested() -> String {
        match Pool::get().apply_async("add", (1, 2)) {
            Ok(_) => "a task used the pool".into(),
            Err(e) => format!("{e:?}"),
        }
    }
}

export!(Tasks);

fn show<T: std::fmt::Debug>(step: &str, result: Result<T, PoolError>) {
    match result {
        Ok(value) => println!("{step}: ok {value:?}"),
        Err(error) => println!("{step}: error {error:?} ({error})"),
    }
}

fn main() {
    let pool = Pool::get();
    let mode = std::env::var("MODE").unwrap_or_default();
    println!(
        "driver {} with {} workers, mode {mode}",
        process::pid(),
        pool.workers()
    );
    match mode.as_str() {
        "calls" => {
            show("apply", pool.apply("add", (2, 40)));
            show("map", pool.map("add", [(1, 1), (2, 2), (3, 3)]));
            let task = pool.apply_async("nap", (50u32,)).expect("submitted");
            show("get", task.get());
            show("successful", Ok::<_, PoolError>(task.successful()));
            show("nested", pool.apply("nested", ()));
            show("typed", pool.apply_as::<i32>("add", (i32::MAX, 1)));
            show(
                "typed pid",
                pool.apply_async("nap", (1u32,))
                    .and_then(|t| t.get_as::<u32>())
                    .map(|pid| pid > 0),
            );
            show("wrong type", pool.apply_as::<String>("add", (1, 1)));
            pool.close();
            show("join", pool.join());
        }
        "misuse" => {
            show("join before close", pool.join());
            show("bad arguments", pool.apply_async("add", ("one", 2)).map(drop));
            show("no such function", pool.apply_async("subtract", (1, 2)).map(drop));
            pool.close();
            show(
                "apply-async after close",
                pool.apply_async("add", (1, 2)).map(drop),
            );
            show("join", pool.join());
        }
        "spin" => {
            let task = pool.apply_async("spin", ()).expect("submitted");
            pool.close();
            show("join", pool.join());
            show("spin", task.get());
        }
        "no-join" => {
            // One quick task per worker, so the test learns every worker's pid.
            for _ in 0..pool.workers() {
                println!(
                    "worker {}",
                    pool.apply("nap", (0u32,)).expect("ran").expect("a pid")
                );
            }
            for _ in 0..pool.workers() {
                pool.apply_async("nap", (60_000u32,)).expect("submitted");
            }
            println!("returning without join");
        }
        "flood" => {
            // Submits FLOOD tasks as fast as it can, dropping every handle.
            let count: u32 = std::env::var("FLOOD")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(1_000_000);
            for i in 0..count {
                pool.apply_async("add", (i as i32, 1)).expect("submitted");
            }
            pool.close();
            show("join", pool.join());
            println!("flooded {count}");
        }
        "failure" => show("failure", pool.apply("fail", ("kaput",))),
        "trap" => panic!("the driver fails"),
        other => println!("unknown mode {other:?}"),
    }
}
