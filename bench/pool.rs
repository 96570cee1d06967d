//! `make bench`: poolhost and its peers measured side by side in one run, printed as one table
//! and written as JSON to `target/bench/pool.json`.
//!
//! Rows (each figure the median of several runs, peers with the same worker count; each row also
//! shows its spread, the farthest run from the median on each side, and where one applies the
//! floor this machine sets for the workload, measured in the same run):
//! - 20 000 no-op calls, each in a fresh sandbox, on one worker per CPU, against the faster of
//!   CPython's `Pool.apply_async` and `Pool.map(chunksize=1)`; both timed from the first
//!   submission to the return of `join`, with the pool already started. Floor: the calls per
//!   second if the pool cost nothing beyond the time each task takes in its worker.
//! - The same calls from a file through `poolhost run --calls`, whole commands with start-up and
//!   printing, against a CPython script doing the same with its faster way; and that command
//!   line's rate against the library's.
//! - 2 000 no-op calls of a Python component, against CPython's `Pool(maxtasksperchild=1)`.
//! - 100 000 items put by a writer task and got by a reader task on two workers, one `get` per
//!   item and then in batches, against CPython's `Manager().Queue` with a writer and a reader in
//!   a `Pool(2)`; both timed from submitting the two tasks until both are done, with pool and
//!   queue already made. Floor: request/answer round trips per second over a pipe.
//! - 200 jobs of the `hello` command, `poolhost run --each` against GNU parallel running
//!   `wasmtime run` per job (the same wasm), both whole commands.
//! - One call, the first run after `poolhost compile`, against `wasmtime run --invoke` of the
//!   same call on the same component precompiled with `wasmtime compile`: whole commands, the
//!   two alternating, each the median of `FIRST_CALL_RUNS` runs.
//! - A CPU-bound guest (`sieve`) on two workers against one, with the machine's own scaling for
//!   the same calls (`wasmtime run` processes, two at once against one) as its floor.
//! - The resident memory of an idle worker.
//! - 5 000 no-op calls through a Redis server on loopback (one host, then two, each with one
//!   worker per CPU) against Celery's no-op tasks with the same Redis as broker and result
//!   backend, on a prefork worker of as many processes; both timed from the first submission to
//!   the last result, hosts and worker already started.
//! - 20 000 items through a cluster queue from a writer task on one host to a reader task on
//!   another, against CPython's `Manager().Queue` on one machine (the row above's figure).
//!
//! The peers are installed by `make bench` when missing: GNU parallel and redis-server from
//! Debian's packages, the `wasmtime` CLI of our wasmtime's major version into
//! `target/bench/peers`, Celery into a virtual environment of its own, `target/bench/celery-venv`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use poolhost::{Call, Cluster, Pool, Value};

const RUNS: usize = 5;
/// Runs of the library's no-op calls, each followed by the same from the command line. The two
/// are compared run by run, and a ratio of two runs moves by ±10% on a busy machine, so more runs
/// than the others: their median is then steady to a few percent.
const CLI_RUNS: usize = 15;
/// Runs of each side of the first-call row, alternating.
const FIRST_CALL_RUNS: usize = 31;
const TASKS: usize = 20_000;
/// No-op calls of the Python component.
const PYTHON_TASKS: usize = 2_000;
/// No-op calls of CPython's fresh-process pool: fewer, each costs a process start.
const FRESH_PROCESS_TASKS: usize = 500;
const ITEMS: u32 = 100_000;
/// The batch reader's `get_many` size.
const BATCH: u32 = 256;
const JOBS: usize = 200;
/// The sieve calls of the scaling row: enough work per call (about 0.1 s) to dwarf the
/// scheduling.
const SIEVE_CALLS: usize = 16;
const SIEVE_LIMIT: u32 = 5_000_000;

/// What a row's figure must be to pass.
#[derive(Clone, Copy)]
enum Goal {
    AtLeast(f64),
    AtMost(f64),
}

struct Row {
    workload: String,
    /// poolhost's figure, formatted with its unit.
    ours: String,
    /// The peer and its figure, or a dash.
    peer: String,
    /// The figure held against the goal: a ratio to the peer, or a measure of its own.
    figure: f64,
    /// How the figure is shown: `3.2×`, `12.1 MiB`.
    shown: String,
    goal: Goal,
    /// How far the runs strayed from the median, poolhost's and the peer's: `±4% / ±9%`.
    spread: String,
    /// What this machine allows for the workload, measured in the same run, or a dash.
    floor: String,
}

/// The figures of a workload's runs.
#[derive(Clone)]
struct Runs(Vec<f64>);

impl Runs {
    fn median(&self) -> f64 {
        median(self.0.clone())
    }

    /// The largest distance of a run from the median, as a share of it: `±4%`.
    fn spread(&self) -> String {
        let median = self.median();
        let far = self.0.iter().map(|run| (run - median).abs()).fold(0.0, f64::max);
        format!("±{:.0}%", far / median * 100.0)
    }
}

impl Row {
    fn passes(&self) -> bool {
        match self.goal {
            Goal::AtLeast(goal) => self.figure >= goal,
            Goal::AtMost(goal) => self.figure <= goal,
        }
    }

    fn goal(&self) -> String {
        let unit = if self.shown.ends_with("MiB") { " MiB" } else { "×" };
        match self.goal {
            Goal::AtLeast(goal) => format!("≥ {goal}{unit}"),
            Goal::AtMost(goal) => format!("≤ {goal}{unit}"),
        }
    }
}

/// The row of a rate (higher is better) against a peer's, the medians of their runs.
fn rate_row(workload: String, unit: &str, ours: &Runs, peer: &str, theirs: &Runs, goal: f64) -> Row {
    let (median, their_median) = (ours.median(), theirs.median());
    Row {
        workload,
        ours: format!("{} {unit}", thousands(median)),
        peer: format!("{peer}: {} {unit}", thousands(their_median)),
        figure: median / their_median,
        shown: format!("{:.2}×", median / their_median),
        goal: Goal::AtLeast(goal),
        spread: format!("{} / {}", ours.spread(), theirs.spread()),
        floor: "—".into(),
    }
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
    let wasmtime = root.join("target/bench/peers/bin/wasmtime");
    assert!(
        wasmtime.is_file(),
        "missing peer `{}`: `make bench` installs it",
        wasmtime.display()
    );
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let round_trips = runs_of(round_trips);
    let n = workers.to_string();

    // No-op calls, against the faster of CPython's two ways.
    let python = peer(
        root,
        "pool_apply_async.py",
        &["--workers", &n, "--tasks", &TASKS.to_string()],
    );
    let (how, theirs) = faster(
        ("`Pool.apply_async`", Runs(rates(&python.1, "rates"))),
        ("`Pool.map(chunksize=1)`", Runs(rates(&python.1, "map_rates"))),
    );
    // The same calls from the command line, whole commands, start-up included, taken in turn
    // with the library's runs: the two are compared run by run, so that a slow spell of the
    // machine slows both sides of a ratio.
    let list = scratch.path().join("calls.txt");
    std::fs::write(&list, "noop()\n".repeat(TASKS)).expect("the call list can be written");
    let test_calls = guests.join("test_calls.wasm");
    let (mut library, mut in_workers, mut command_line) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..CLI_RUNS {
        let (rate, in_worker) = timed_calls(&pool(&guests, "test_calls", workers), TASKS);
        library.push(rate);
        in_workers.push(in_worker);
        command_line.push(
            TASKS as f64
                / timed(Command::new(env!("CARGO_BIN_EXE_poolhost")).args([
                    "run",
                    path(&test_calls),
                    "-n",
                    &n,
                    "--calls",
                    path(&list),
                ])),
        );
    }
    let against_library = Runs(
        command_line
            .iter()
            .zip(&library)
            .map(|(cli, lib)| cli / lib)
            .collect(),
    );
    let (library, command_line) = (Runs(library), Runs(command_line));
    let in_workers = workers as f64 / median(in_workers);
    let mut row = rate_row(
        format!(
            "{} no-op calls, fresh sandbox each, `apply_async` → `join`",
            thousands(TASKS as f64)
        ),
        "tasks/s",
        &library,
        &format!("CPython {} {how}", python.0),
        &theirs,
        3.0,
    );
    row.floor = format!("{} tasks/s in the workers alone", thousands(in_workers));
    let mut rows = vec![row];

    // Against a CPython script doing the same, start-up included on both sides.
    let python_command = root.join("bench/peers/pool_command.py");
    let python_side = |how: &str| {
        runs_of(|| {
            TASKS as f64
                / timed(Command::new("python3").arg(&python_command).args([
                    "--workers",
                    &n,
                    "--tasks",
                    &TASKS.to_string(),
                    "--how",
                    how,
                ]))
        })
    };
    let (how, theirs) = faster(
        ("`Pool.apply_async`", python_side("apply_async")),
        ("`Pool.map(chunksize=1)`", python_side("map")),
    );
    let mut row = rate_row(
        "the same from a file, `poolhost run --calls`, whole command with its output".into(),
        "tasks/s",
        &command_line,
        &format!("a CPython {} script, {how}, each result printed", python.0),
        &theirs,
        3.0,
    );
    row.floor = format!("the library, above: {} tasks/s", thousands(library.median()));
    rows.push(row);
    rows.push(Row {
        workload: "`poolhost run --calls` against the library (the two rows above, run by run)".into(),
        ours: format!("{} tasks/s", thousands(command_line.median())),
        peer: format!("the library: {} tasks/s", thousands(library.median())),
        figure: against_library.median(),
        shown: format!("{:.2}×", against_library.median()),
        goal: Goal::AtLeast(0.9),
        spread: against_library.spread(),
        floor: "—".into(),
    });

    // No-op calls of a Python component, each in a fresh CPython instance, against CPython's
    // pool with a fresh process per task.
    let python = peer(
        root,
        "pool_fresh_process.py",
        &["--workers", &n, "--tasks", &FRESH_PROCESS_TASKS.to_string()],
    );
    let theirs = Runs(rates(&python.1, "rates"));
    let python_guests = root.join("target/python");
    let (ours, in_workers) = calls(&python_guests, "tasks", workers, PYTHON_TASKS);
    let mut row = rate_row(
        format!(
            "{} no-op calls of a Python component (componentize-py), a fresh CPython each",
            thousands(PYTHON_TASKS as f64)
        ),
        "tasks/s",
        &ours,
        &format!("CPython {} `Pool(maxtasksperchild=1)`", python.0),
        &theirs,
        20.0,
    );
    row.floor = format!("{} tasks/s in the workers alone", thousands(in_workers));
    rows.push(row);

    // Queues.
    let python = peer(root, "manager_queue.py", &["--items", &ITEMS.to_string()]);
    let theirs = Runs(rates(&python.1, "rates"));
    let peer_name = format!("CPython {} `Manager().Queue`", python.0);
    let queue_peer = (peer_name.clone(), theirs.clone());
    for (batch, workload) in [
        (
            None,
            format!(
                "{} items put→get between two workers, one `get` per item",
                thousands(ITEMS as f64)
            ),
        ),
        (
            Some(BATCH),
            format!(
                "{} items put→get between two workers, reader using `get_many({BATCH})`",
                thousands(ITEMS as f64)
            ),
        ),
    ] {
        let ours = runs_of(|| put_get(&pool(&guests, "test_queue", 2), batch));
        let mut row = rate_row(workload, "items/s", &ours, &peer_name, &theirs, 10.0);
        row.floor = format!(
            "{} round trips/s over a pipe (a get without a lease is one)",
            thousands(round_trips.median())
        );
        rows.push(row);
    }

    // Jobs, against GNU parallel running wasmtime per job.
    let hello = guests.join("hello.wasm");
    let lines = scratch.path().join("jobs.txt");
    let input: String = (0..JOBS).map(|i| format!("job{i}\n")).collect();
    std::fs::write(&lines, input).expect("the job list can be written");
    let ours = runs_of(|| {
        JOBS as f64
            / timed(Command::new(env!("CARGO_BIN_EXE_poolhost")).args([
                "run",
                path(&hello),
                "-n",
                &n,
                "--each",
                path(&lines),
            ]))
    });
    let theirs = runs_of(|| {
        JOBS as f64
            / timed(Command::new("parallel").args([
                "--will-cite",
                "-j",
                &n,
                path(&wasmtime),
                "run",
                path(&hello),
                "{}",
                "::::",
                path(&lines),
            ]))
    });
    rows.push(rate_row(
        format!("{JOBS} jobs of a hello command, `run --each`"),
        "jobs/s",
        &ours,
        &format!("GNU parallel -j {workers} + `wasmtime run`"),
        &theirs,
        20.0,
    ));

    // One call, the first run after compiling ahead, both sides.
    let sieve = guests.join("sieve.wasm");
    let cache = scratch.path().join("cache");
    let precompiled = scratch.path().join("sieve.cwasm");
    let compile = Command::new(env!("CARGO_BIN_EXE_poolhost"))
        .args(["compile", path(&sieve), "--cache-dir", path(&cache)])
        .stdout(Stdio::null())
        .status();
    assert!(compile.is_ok_and(|s| s.success()), "poolhost compile works");
    let compile = Command::new(&wasmtime)
        .args(["compile", path(&sieve), "-o", path(&precompiled)])
        .status();
    assert!(compile.is_ok_and(|s| s.success()), "wasmtime compile works");
    // A few milliseconds each, so the machine's hiccups weigh more than in the other rows: the
    // two sides alternate, so that a slow spell slows both, and each takes more runs.
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..FIRST_CALL_RUNS {
        ours.push(timed(Command::new(env!("CARGO_BIN_EXE_poolhost")).args([
            "run",
            path(&sieve),
            "--cache-dir",
            path(&cache),
            "-n",
            "1",
            "--invoke",
            "primes(1000)",
        ])));
        theirs.push(timed(Command::new(&wasmtime).args([
            "run",
            "--allow-precompiled",
            "--invoke",
            "primes(1000)",
            path(&precompiled),
        ])));
    }
    let (ours, theirs) = (Runs(ours), Runs(theirs));
    rows.push(Row {
        workload: format!(
            "one call, first run after `poolhost compile` (wall time, median of {FIRST_CALL_RUNS})"
        ),
        ours: format!("{:.1} ms", ours.median() * 1e3),
        peer: format!(
            "`wasmtime run --invoke` of a `wasmtime compile`d file: {:.1} ms",
            theirs.median() * 1e3
        ),
        figure: ours.median() / theirs.median(),
        shown: format!("{:.2}×", ours.median() / theirs.median()),
        goal: Goal::AtMost(1.2),
        spread: format!("{} / {}", ours.spread(), theirs.spread()),
        floor: "—".into(),
    });

    rows.push(scaling_row(&guests, &wasmtime, &precompiled));

    // Idle workers' resident memory.
    let rss = runs_of(|| idle_worker_rss(&pool(&guests, "test_calls", workers)));
    rows.push(Row {
        workload: "an idle worker's resident memory (after its first task)".into(),
        ours: format!("{:.1} MiB", rss.median()),
        peer: "—".into(),
        figure: rss.median(),
        shown: format!("{:.1} MiB", rss.median()),
        goal: Goal::AtMost(15.0),
        spread: rss.spread(),
        floor: "—".into(),
    });

    rows.extend(cluster_rows(root, &guests, workers, &queue_peer));

    println!("poolhost bench: {workers} CPUs, median of {RUNS} runs");
    println!();
    println!("| workload | poolhost | peer | ratio | target | | spread | floor |");
    println!("|---|---|---|---|---|---|---|---|");
    for row in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            row.workload,
            row.ours,
            row.peer,
            row.shown,
            row.goal(),
            if row.passes() { "pass" } else { "FAIL" },
            row.spread,
            row.floor,
        );
    }

    let out = root.join("target/bench");
    std::fs::create_dir_all(&out).expect("target/bench can be created");
    let json = serde_json::json!({
        "cpus": workers,
        "runs": RUNS,
        "rows": rows.iter().map(|row| serde_json::json!({
            "workload": row.workload,
            "poolhost": row.ours,
            "peer": row.peer,
            "figure": row.figure,
            "shown": row.shown,
            "target": row.goal(),
            "pass": row.passes(),
            "spread": row.spread,
            "floor": row.floor,
        })).collect::<Vec<_>>(),
        "round_trips_per_second": round_trips.median(),
    });
    let path = out.join("pool.json");
    std::fs::write(&path, format!("{json:#}\n")).expect("the results can be written");
    println!();
    println!(
        "spread: the farthest run from the median, poolhost's / the peer's. floor: {} round \
         trips/s between two processes over a pipe (one request, one answer)",
        thousands(round_trips.median())
    );
    println!("written to {}", path.display());
}

/// The faster of two ways of a peer, by their medians.
fn faster<'a>(one: (&'a str, Runs), other: (&'a str, Runs)) -> (&'a str, Runs) {
    if one.1.median() >= other.1.median() {
        one
    } else {
        other
    }
}

/// Runs of the scaling row, each a pair taken back to back.
const SCALING_RUNS: usize = 7;

/// CPU-bound scaling from one worker to two, against the machine's own: the same calls in
/// `wasmtime run` processes, one at a time and two at once. Each run's four figures are taken
/// back to back, and the row holds the median of the runs' ratios: a slow spell of the machine
/// (this VM's speed moves by a fifth from minute to minute) then slows both sides of a ratio.
fn scaling_row(guests: &Path, wasmtime: &Path, precompiled: &Path) -> Row {
    let (one, two) = (pool(guests, "sieve", 1), pool(guests, "sieve", 2));
    sieve_rate(&one);
    let (mut ours, mut machine, mut busy) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..SCALING_RUNS {
        let (alone, _) = sieve_rate(&one);
        let (pair, busy_share) = sieve_rate(&two);
        ours.push(pair / alone);
        busy.push(busy_share);
        let alone = sieve_processes(wasmtime, precompiled, 1);
        let pair = sieve_processes(wasmtime, precompiled, 2);
        machine.push(pair / alone);
    }
    let (ours, machine, busy) = (Runs(ours), Runs(machine), Runs(busy));
    Row {
        workload: format!("{SIEVE_CALLS} CPU-bound calls (`sieve`), 2 workers against 1"),
        ours: format!(
            "{:.2}× (the workers busy {:.0}% of the time)",
            ours.median(),
            busy.median() * 100.0
        ),
        peer: "—".into(),
        figure: ours.median(),
        shown: format!("{:.2}×", ours.median()),
        goal: Goal::AtLeast(1.8),
        spread: format!("{} / {}", ours.spread(), machine.spread()),
        floor: format!(
            "the machine: {:.2}× for `wasmtime run` processes, two at once against one",
            machine.median()
        ),
    }
}

/// Sieve calls per second in `wasmtime run` processes, `at_once` streams of them side by side,
/// [`SIEVE_CALLS`] in all.
fn sieve_processes(wasmtime: &Path, precompiled: &Path, at_once: usize) -> f64 {
    let start = Instant::now();
    let streams: Vec<_> = (0..at_once)
        .map(|_| {
            let (wasmtime, precompiled) = (wasmtime.to_owned(), precompiled.to_owned());
            std::thread::spawn(move || {
                for _ in 0..SIEVE_CALLS / at_once {
                    timed(Command::new(&wasmtime).args([
                        "run",
                        "--allow-precompiled",
                        "--invoke",
                        &format!("primes({SIEVE_LIMIT})"),
                        path(&precompiled),
                    ]));
                }
            })
        })
        .collect();
    for stream in streams {
        stream.join().expect("a stream of wasmtime runs");
    }
    SIEVE_CALLS as f64 / start.elapsed().as_secs_f64()
}

fn path(path: &Path) -> &str {
    path.to_str().expect("paths in the workspace are UTF-8")
}

/// Seconds a command takes, its output discarded; it must succeed.
fn timed(command: &mut Command) -> f64 {
    let start = Instant::now();
    let status = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("the command starts");
    let elapsed = start.elapsed().as_secs_f64();
    assert!(status.success(), "{command:?} failed: {status}");
    elapsed
}

/// Sieve calls per second on `pool`, every result checked, and the share of the time its
/// workers spent running them.
fn sieve_rate(pool: &Pool) -> (f64, f64) {
    let call = Call::new("primes", [Value::U32(SIEVE_LIMIT)]);
    let start = Instant::now();
    let results: Vec<_> = (0..SIEVE_CALLS)
        .map(|_| pool.apply_async(call.clone()).expect("submitted"))
        .collect();
    for result in &results {
        assert_eq!(
            result.get(),
            Ok(Some(Value::U32(348_513))),
            "primes below 5 000 000"
        );
    }
    let elapsed = start.elapsed().as_secs_f64();
    let busy: f64 = results
        .iter()
        .map(|result| result.wait_report().duration.as_secs_f64())
        .sum();
    (
        SIEVE_CALLS as f64 / elapsed,
        busy / (elapsed * pool.workers() as f64),
    )
}

/// The median resident memory of the pool's workers, in MiB, once each has run a task and
/// gone idle.
fn idle_worker_rss(pool: &Pool) -> f64 {
    let results: Vec<_> = (0..pool.workers())
        .map(|_| pool.apply_async(Call::new("noop", [])).expect("submitted"))
        .collect();
    for result in results {
        assert_eq!(result.get(), Ok(None));
    }
    std::thread::sleep(Duration::from_millis(100));
    let rss = pool
        .worker_pids()
        .into_iter()
        .map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the worker lives");
            let kib: f64 = status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
                .expect("VmRSS in kB");
            kib / 1024.0
        })
        .collect();
    median(rss)
}

fn rates(answer: &serde_json::Value, key: &str) -> Vec<f64> {
    answer[key]
        .as_array()
        .unwrap_or_else(|| panic!("the peer reports `{key}`"))
        .iter()
        .map(|r| r.as_f64().expect("a rate"))
        .collect()
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

/// `tasks` no-op calls per second on `pool`, from the first submission to `join`; every task
/// checked to have succeeded.
fn apply_async(pool: &Pool, tasks: usize) -> f64 {
    timed_calls(pool, tasks).0
}

/// As [`apply_async`], and how long a task took in its worker, on average: the runtime's part.
fn timed_calls(pool: &Pool, tasks: usize) -> (f64, f64) {
    let noop = Call::new("noop", []);
    let start = Instant::now();
    let results: Vec<_> = (0..tasks)
        .map(|_| pool.apply_async(noop.clone()).expect("submitted"))
        .collect();
    pool.close();
    pool.join().expect("joined");
    let elapsed = start.elapsed().as_secs_f64();
    assert!(
        results.iter().all(|r| r.successful() == Some(true)),
        "every no-op succeeds"
    );
    let in_workers: f64 = results
        .iter()
        .map(|r| r.wait_report().duration.as_secs_f64())
        .sum();
    (tasks as f64 / elapsed, in_workers / tasks as f64)
}

/// [`RUNS`] runs of `tasks` no-op calls of `guest`, each on a pool of its own of `workers`, and
/// the floor the workers set: the calls per second if the pool cost nothing beyond running each
/// task in its worker (the median time a task took there).
fn calls(guests: &Path, guest: &str, workers: usize, tasks: usize) -> (Runs, f64) {
    let (rates, in_workers): (Vec<f64>, Vec<f64>) = (0..RUNS)
        .map(|_| timed_calls(&pool(guests, guest, workers), tasks))
        .unzip();
    (Runs(rates), workers as f64 / median(in_workers))
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

/// A peer script's answer: its Python version and its JSON (one rate per run under each key).
fn peer(root: &Path, script: &str, args: &[&str]) -> (String, serde_json::Value) {
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
    (answer["python"].as_str().unwrap_or("?").to_owned(), answer)
}

/// [`RUNS`] runs of `run`.
fn runs_of(mut run: impl FnMut() -> f64) -> Runs {
    Runs((0..RUNS).map(|_| run()).collect())
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

/// No-op calls in each cluster row: Celery's side takes seconds per thousand.
const CLUSTER_TASKS: usize = 5_000;

/// A process of the bench's own, killed and reaped when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The cluster rows: a Redis server of the bench's own on a free loopback port, poolhost hosts
/// (one, then two) and Celery on it.
fn cluster_rows(root: &Path, guests: &Path, workers: usize, queue_peer: &(String, Runs)) -> Vec<Row> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let _redis = Child(
        Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts: `make bench` installs it"),
    );
    let url = format!("redis://127.0.0.1:{port}/");
    let cluster = Cluster::open(&url, "bench").expect("a valid URL");
    let host = || host_of(&url, "bench", workers);
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.status().is_err() {
        assert!(Instant::now() < deadline, "redis-server did not answer");
        std::thread::sleep(Duration::from_millis(20));
    }
    let test_calls = guests.join("test_calls.wasm");
    let run = || {
        let pool = Pool::builder()
            .component(&test_calls)
            .cluster(cluster.clone())
            .build()
            .expect("the cluster pool starts");
        apply_async(&pool, CLUSTER_TASKS)
    };
    let _first = host();
    hosts_alive(&cluster, 1);
    run(); // The hosts compile the component and start their workers once.
    let one = runs_of(run);
    let _second = host();
    hosts_alive(&cluster, 2);
    run();
    let two = runs_of(run);

    let venv = root.join("target/bench/celery-venv/bin/python");
    assert!(
        venv.is_file(),
        "missing peer `{}`: `make bench` makes it",
        venv.display()
    );
    let output = Command::new(&venv)
        .arg(root.join("bench/peers/celery_noop.py"))
        .args(["--redis", &format!("redis://127.0.0.1:{port}/1")])
        .args([
            "--workers",
            &workers.to_string(),
            "--tasks",
            &CLUSTER_TASKS.to_string(),
        ])
        .args(["--runs", &RUNS.to_string()])
        .output()
        .expect("the Celery peer runs");
    assert!(
        output.status.success(),
        "celery_noop.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).expect("the peer prints JSON");
    let theirs = Runs(rates(&answer, "rates"));
    let peer = format!(
        "Celery {} on the same Redis, prefork ×{workers}",
        answer["celery"].as_str().unwrap_or("?")
    );
    let workload = |hosts: &str| {
        format!(
            "{} no-op calls through Redis on loopback, {hosts} of {workers} workers, fresh sandbox each",
            thousands(CLUSTER_TASKS as f64)
        )
    };
    let mut rows = vec![
        rate_row(workload("one host"), "tasks/s", &one, &peer, &theirs, 10.0),
        rate_row(workload("two hosts"), "tasks/s", &two, &peer, &theirs, 10.0),
    ];

    // Items through a cluster queue from a writer task on one host to a reader on another: two
    // hosts of one worker each, in a pool of their own.
    let queues = Cluster::open(&url, "bench-queue").expect("a valid URL");
    let _writer_host = host_of(&url, "bench-queue", 1);
    let _reader_host = host_of(&url, "bench-queue", 1);
    hosts_alive(&queues, 2);
    let test_queue = guests.join("test_queue.wasm");
    let put_get = || {
        let pool = Pool::builder()
            .component(&test_queue)
            .cluster(queues.clone())
            .build()
            .expect("the cluster pool starts");
        let start = Instant::now();
        let reader = pool
            .apply_async(Call::new(
                "bench-get",
                [Value::from("cq"), Value::U32(CLUSTER_ITEMS)],
            ))
            .expect("submitted");
        let writer = pool
            .apply_async(Call::new(
                "bench-put",
                [Value::from("cq"), Value::U32(CLUSTER_ITEMS)],
            ))
            .expect("submitted");
        assert_eq!(writer.get(), Ok(None));
        assert_eq!(reader.get(), Ok(None));
        let elapsed = start.elapsed().as_secs_f64();
        let hosts = (
            writer.report().and_then(|r| r.host),
            reader.report().and_then(|r| r.host),
        );
        assert_ne!(hosts.0, hosts.1, "writer and reader ran on different hosts");
        CLUSTER_ITEMS as f64 / elapsed
    };
    put_get();
    let ours = runs_of(put_get);
    rows.push(rate_row(
        format!(
            "{} items put→get through Redis, writer and reader on two hosts",
            thousands(CLUSTER_ITEMS as f64)
        ),
        "items/s",
        &ours,
        &format!("{} on one machine", queue_peer.0),
        &queue_peer.1,
        0.5,
    ));
    rows
}

/// Items through the cluster queue row.
const CLUSTER_ITEMS: u32 = 20_000;

/// Waits, at most 30 s, until `count` hosts of `cluster`'s pool are alive.
fn hosts_alive(cluster: &Cluster, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let alive = cluster
            .status()
            .map_or(0, |status| status.hosts.iter().filter(|h| h.alive).count());
        if alive >= count {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{count} hosts did not come up");
}

/// A `poolhost serve` of pool `pool` on the server at `url`.
fn host_of(url: &str, pool: &str, workers: usize) -> Child {
    Child(
        Command::new(env!("CARGO_BIN_EXE_poolhost"))
            .args([
                "serve",
                "--redis",
                url,
                "--pool",
                pool,
                "-n",
                &workers.to_string(),
            ])
            .stderr(Stdio::null())
            .spawn()
            .expect("poolhost serve starts"),
    )
}
