//! `make bench`: poolhost and its peers measured side by side in one run, printed as one table
//! and written as JSON to `target/bench/pool.json`.
//!
//! Rows (each figure the median of several runs, peers with the same worker count):
//! - 20 000 no-op calls, each in a fresh sandbox, on one worker per CPU, against CPython's
//!   `Pool.apply_async`; both timed from the first submission to the return of `join`, with the
//!   pool already started.
//! - 100 000 items put by a writer task and got by a reader task on two workers, against CPython's
//!   `Manager().Queue` with a writer and a reader in a `Pool(2)`; both timed from submitting the
//!   two tasks until both are done, with pool and queue already made.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use poolhost::{Call, Pool, Value};

const RUNS: usize = 5;
const TASKS: usize = 20_000;
const ITEMS: u32 = 100_000;
/// The batch reader's `get_many` size.
const BATCH: u32 = 256;

struct Row {
    workload: String,
    unit: &'static str,
    ours: f64,
    peer: String,
    theirs: f64,
    target: f64,
}

fn main() {
    if std::env::var_os(ECHO).is_some() {
        return echo();
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ is inside the workspace");
    let guests = root.join("target/wasm32-wasip2/release");
    let python = peer(
        root,
        "pool_apply_async.py",
        &["--workers", &workers.to_string(), "--tasks", &TASKS.to_string()],
    );

    let mut rows = vec![Row {
        workload: format!("{} no-op calls, `apply_async` → `join`", thousands(TASKS as f64)),
        unit: "tasks/s",
        ours: median(
            (0..RUNS)
                .map(|_| apply_async(&pool(&guests, "test_calls", workers)))
                .collect(),
        ),
        peer: format!("CPython {} `Pool.apply_async`", python.0),
        theirs: median(python.1),
        target: 1.0,
    }];

    let python = peer(root, "manager_queue.py", &["--items", &ITEMS.to_string()]);
    rows.push(Row {
        workload: format!("{} items put→get between two workers", thousands(ITEMS as f64)),
        unit: "items/s",
        ours: median(
            (0..RUNS)
                .map(|_| put_get(&pool(&guests, "test_queue", 2), None))
                .collect(),
        ),
        peer: format!("CPython {} `Manager().Queue`", python.0),
        theirs: median(python.1.clone()),
        target: 10.0,
    });
    rows.push(Row {
        workload: format!(
            "{} items put→get between two workers, reader using `get_many({BATCH})`",
            thousands(ITEMS as f64)
        ),
        unit: "items/s",
        ours: median(
            (0..RUNS)
                .map(|_| put_get(&pool(&guests, "test_queue", 2), Some(BATCH)))
                .collect(),
        ),
        peer: format!("CPython {} `Manager().Queue`", python.0),
        theirs: median(python.1),
        target: 10.0,
    });

    let floor = median((0..RUNS).map(|_| round_trips()).collect());

    println!("poolhost bench: {workers} CPUs, median of {RUNS} runs");
    println!();
    println!("| workload | poolhost | peer | ratio | target |");
    println!("|---|---|---|---|---|");
    for row in &rows {
        println!(
            "| {} | {} {} | {}: {} {} | {:.2}× | ≥ {}× {} |",
            row.workload,
            thousands(row.ours),
            row.unit,
            row.peer,
            thousands(row.theirs),
            row.unit,
            row.ours / row.theirs,
            row.target,
            if row.ours / row.theirs >= row.target {
                "pass"
            } else {
                "FAIL"
            },
        );
    }

    let out = root.join("target/bench");
    std::fs::create_dir_all(&out).expect("target/bench can be created");
    let json = serde_json::json!({
        "cpus": workers,
        "runs": RUNS,
        "rows": rows.iter().map(|row| serde_json::json!({
            "workload": row.workload,
            "unit": row.unit,
            "poolhost": row.ours,
            "peer": row.peer,
            "peer_value": row.theirs,
            "ratio": row.ours / row.theirs,
            "target": row.target,
        })).collect::<Vec<_>>(),
    });
    let path = out.join("pool.json");
    std::fs::write(&path, format!("{json:#}\n")).expect("the results can be written");
    println!();
    println!(
        "floor: {} round trips/s between two processes over a pipe (one request, one answer); \
         a `get` of one item needs one",
        thousands(floor)
    );
    println!("written to {}", path.display());
}

/// Set in the environment of the child [`round_trips`] starts, which then echoes.
const ECHO: &str = "POOLHOST_BENCH_ECHO";
const ROUND_TRIPS: usize = 20_000;

/// The kernel's floor for a request-answer protocol between two processes on this machine:
/// round trips per second of one byte each way over pipes, to a child that echoes it.
fn round_trips() -> f64 {
    use std::io::{Read, Write};
    use std::process::Stdio;
    let mut child = Command::new(std::env::current_exe().expect("the bench knows its path"))
        .env(ECHO, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the echo child starts");
    let mut to_child = child.stdin.take().expect("piped");
    let mut from_child = child.stdout.take().expect("piped");
    let mut byte = [0u8];
    let start = Instant::now();
    for _ in 0..ROUND_TRIPS {
        to_child.write_all(&byte).expect("the child reads");
        from_child.read_exact(&mut byte).expect("the child answers");
    }
    let elapsed = start.elapsed().as_secs_f64();
    drop(to_child);
    child.wait().expect("the echo child exits");
    ROUND_TRIPS as f64 / elapsed
}

/// The echo child: answers every byte until its input closes.
fn echo() {
    use std::io::{Read, Write};
    let (mut input, mut output) = (std::io::stdin().lock(), std::io::stdout().lock());
    let mut byte = [0u8];
    while input.read_exact(&mut byte).is_ok() {
        if output.write_all(&byte).and_then(|()| output.flush()).is_err() {
            return;
        }
    }
}

fn pool(guests: &Path, guest: &str, workers: usize) -> Pool {
    let guest = guests.join(format!("{guest}.wasm"));
    assert!(
        guest.is_file(),
        "missing guest `{}`: run `make guests`",
        guest.display()
    );
    Pool::builder()
        .component(guest)
        .worker_program(env!("CARGO_BIN_EXE_poolhost"))
        .workers(workers)
        .build()
        .expect("the pool starts")
}

/// Tasks per second: every task checked to have succeeded.
fn apply_async(pool: &Pool) -> f64 {
    let noop = Call::new("noop", []);
    let start = Instant::now();
    let results: Vec<_> = (0..TASKS)
        .map(|_| pool.apply_async(noop.clone()).expect("submitted"))
        .collect();
    pool.close();
    pool.join().expect("joined");
    let elapsed = start.elapsed().as_secs_f64();
    assert!(
        results.iter().all(|r| r.successful() == Some(true)),
        "every no-op succeeds"
    );
    TASKS as f64 / elapsed
}

/// Items per second from a writer task to a reader task on the pool's two workers; the reader
/// gets one item per call, or batches of up to `batch`.
fn put_get(pool: &Pool, batch: Option<u32>) -> f64 {
    let queue = pool.manager().queue("bench").expect("the queue opens");
    let writer = Call::new("bench-put", [Value::from("bench"), Value::U32(ITEMS)]);
    let reader = match batch {
        None => Call::new("bench-get", [Value::from("bench"), Value::U32(ITEMS)]),
        Some(batch) => Call::new(
            "bench-get-many",
            [Value::from("bench"), Value::U32(ITEMS), Value::U32(batch)],
        ),
    };
    let start = Instant::now();
    let writer = pool.apply_async(writer).expect("submitted");
    let reader = pool.apply_async(reader).expect("submitted");
    assert_eq!(writer.get(), Ok(None));
    assert_eq!(reader.get(), Ok(None));
    let elapsed = start.elapsed().as_secs_f64();
    assert!(queue.is_empty(), "the reader got every item");
    ITEMS as f64 / elapsed
}

/// A peer script's figures: its Python version and one rate per run.
fn peer(root: &Path, script: &str, args: &[&str]) -> (String, Vec<f64>) {
    let output = Command::new("python3")
        .arg(root.join("bench/peers").join(script))
        .args(args)
        .args(["--runs", &RUNS.to_string()])
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).expect("the peer prints JSON");
    let rates = answer["rates"]
        .as_array()
        .expect("rates")
        .iter()
        .map(|r| r.as_f64().expect("a rate"))
        .collect();
    (answer["python"].as_str().unwrap_or("?").to_owned(), rates)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn thousands(value: f64) -> String {
    let digits = format!("{value:.0}");
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}
