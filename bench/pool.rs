//! `make bench`: poolhost and its peers measured side by side in one run, printed as one table
//! and written as JSON to `target/bench/pool.json`.
//!
//! Workload: 20 000 no-op calls, each in a fresh sandbox, on a pool of one worker per CPU,
//! against CPython's `Pool.apply_async` with the same worker count. Both sides are timed from
//! the first submission to the return of `join`, with the pool already started; each figure is
//! the median of several runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use poolhost::{Call, Pool};

const TASKS: usize = 20_000;
const RUNS: usize = 5;

fn main() {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ is inside the workspace");
    let guest = root.join("target/wasm32-wasip2/release/test_calls.wasm");
    assert!(
        guest.is_file(),
        "missing guest `{}`: run `make guests`",
        guest.display()
    );

    let ours = median((0..RUNS).map(|_| poolhost_apply_async(&guest, workers)).collect());
    let (python, theirs) = python_apply_async(&root, workers);
    let theirs = median(theirs);
    let ratio = ours / theirs;

    println!("poolhost bench: {workers} workers on {workers} CPUs, median of {RUNS} runs");
    println!();
    println!("| workload | poolhost | CPython {python} | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| {} no-op calls, `apply_async` → `join` | {} tasks/s | {} tasks/s | {ratio:.2}× |",
        thousands(TASKS as f64),
        thousands(ours),
        thousands(theirs)
    );

    let out = root.join("target/bench");
    std::fs::create_dir_all(&out).expect("target/bench can be created");
    let json = serde_json::json!({
        "workers": workers,
        "runs": RUNS,
        "rows": [{
            "workload": format!("{TASKS} no-op calls, apply_async -> join"),
            "unit": "tasks/s",
            "poolhost": ours,
            "peer": format!("CPython {python} multiprocessing.Pool.apply_async"),
            "peer_value": theirs,
            "ratio": ratio,
        }],
    });
    let path = out.join("pool.json");
    std::fs::write(&path, format!("{json:#}\n")).expect("the results can be written");
    println!();
    println!("written to {}", path.display());
}

/// Tasks per second for one run: a fresh pool, every task checked to have succeeded.
fn poolhost_apply_async(guest: &PathBuf, workers: usize) -> f64 {
    let pool = Pool::builder()
        .component(guest)
        .worker_program(env!("CARGO_BIN_EXE_poolhost"))
        .workers(workers)
        .build()
        .expect("the pool starts");
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

/// CPython's figures from the peer script: its version and tasks per second per run.
fn python_apply_async(root: &Path, workers: usize) -> (String, Vec<f64>) {
    let output = Command::new("python3")
        .arg(root.join("bench/peers/pool_apply_async.py"))
        .args([
            "--workers",
            &workers.to_string(),
            "--tasks",
            &TASKS.to_string(),
            "--runs",
            &RUNS.to_string(),
        ])
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "the Python peer failed: {}",
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
    let digits = format!("{:.0}", value);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}
