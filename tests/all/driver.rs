//! Driver mode: the seed's whole programs, parent and children, as single components, and a
//! driver that misuses its pool, on real guests from `make guests`.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};

use crate::common::{self, Run, guest, invoke_with_input, poolhost_bin, process_exists};

/// Runs `poolhost run GUEST ARGS`; also returns the poolhost process's pid, the driver's.
fn drive(guest_name: &str, args: &[&str]) -> (Run, u32) {
    let wasm = guest(guest_name);
    let child = Command::new(poolhost_bin())
        .arg("run")
        .arg(&wasm)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let run = Run {
        code: out.status.code().expect("poolhost exits"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    };
    (run, pid)
}

fn numbers(line: &str) -> Vec<u32> {
    line.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect()
}

#[test]
fn seed_program_1_as_one_component() {
    let (run, host) = drive("seed-pool", &["-n", "4"]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines[0],
        format!("Parent process {host}."),
        "the parent is the driver, in the host process"
    );
    assert_eq!(*lines.last().unwrap(), "All subprocesses done.");
    assert!(lines.contains(&"Waiting for all subprocesses done..."));
    // Each task's worker, and where its lines are.
    let run_line = |i: u32| {
        lines
            .iter()
            .position(|l| l.starts_with(&format!("Run task {i} (")))
            .unwrap()
    };
    let end_line = |i: u32| {
        lines
            .iter()
            .position(|l| l.starts_with(&format!("Task {i} runs ")))
            .unwrap()
    };
    let pid = |i: u32| numbers(lines[run_line(i)])[1];
    let first_four: BTreeSet<u32> = (0..4).map(pid).collect();
    assert_eq!(first_four.len(), 4, "tasks 0-3 run at once on four workers");
    assert!(!first_four.contains(&host));
    // The fifth task reuses the pid of a worker whose task had ended.
    let previous = (0..4)
        .find(|&i| pid(i) == pid(4))
        .expect("task 4 runs on one of the four workers");
    assert!(
        end_line(previous) < run_line(4),
        "task 4 started before task {previous} on its worker ended"
    );
}

#[test]
fn seed_program_1_with_the_default_pool() {
    let cpus = std::thread::available_parallelism().unwrap().get();
    let (run, _) = drive("seed-pool", &[]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let pids: BTreeSet<u32> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("Run task "))
        .map(|l| numbers(l)[1])
        .collect();
    assert!(!pids.is_empty() && pids.len() <= cpus, "{pids:?} on {cpus} CPUs");
    assert_eq!(run.stdout.lines().last(), Some("All subprocesses done."));
}

#[test]
fn seed_program_2_as_one_component() {
    let (run, host) = drive("seed-queue", &["-n", "4"]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines[0], format!("({host}) start"));
    assert_eq!(*lines.last().unwrap(), format!("({host}) End"));
    let started = |who: &str| {
        numbers(
            lines
                .iter()
                .find(|l| l.starts_with(&format!("{who} started")))
                .unwrap(),
        )
    };
    let (writer, reader) = (started("writer"), started("reader"));
    assert_ne!(writer[0], reader[0], "writer and reader run on different workers");
    assert_eq!(
        (writer[1], reader[1]),
        (host, host),
        "their parent is the driver's host process"
    );
    let got: String = lines
        .iter()
        .filter_map(|l| l.strip_prefix("reader got message from Queue: "))
        .collect();
    assert_eq!(got, "itcast");
}

fn test_driver(mode: &str, options: &[&str]) -> Run {
    let env = format!("MODE={mode}");
    let mut args = vec!["-n", "2", "--env", &env];
    args.extend(options);
    drive("test-driver", &args).0
}

#[test]
fn the_pool_answers_the_driver() {
    let run = test_driver("calls", &[]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines[0].ends_with("with 2 workers, mode calls"));
    assert_eq!(lines[1], "apply: ok Some(\"42\")");
    assert_eq!(
        lines[2],
        "map: ok [Ok(Some(\"2\")), Ok(Some(\"4\")), Ok(Some(\"6\"))]"
    );
    assert!(lines[3].starts_with("get: ok Some(\""));
    assert_eq!(lines[4], "successful: ok Some(true)");
    assert_eq!(
        lines[5], "nested: ok Some(\"\\\"NotDriver\\\"\")",
        "a task has no pool"
    );
    // Typed results, read back from WAVE by the SDK.
    assert_eq!(lines[6], "typed: ok -2147483648");
    assert_eq!(lines[7], "typed pid: ok true");
    assert!(
        lines[8].starts_with("wrong type: error BadResult"),
        "{}",
        lines[8]
    );
    assert_eq!(lines[9], "join: ok ()");
}

#[test]
fn a_failed_task_tells_the_driver_what_it_wrote_to_stderr() {
    let run = test_driver("failure", &[]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert!(run.stdout.contains("failure: error Failed"), "{}", run.stdout);
    // The panic's message travels in the failure, not only to the terminal.
    assert!(
        run.stdout.contains("panicked at") && run.stdout.contains("kaput"),
        "{}",
        run.stdout
    );
}

#[test]
fn misuse_gets_the_documented_errors() {
    let run = test_driver("misuse", &[]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        lines[1].starts_with("join before close: error StillRunning"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with("bad arguments: error BadCall"),
        "{}",
        lines[2]
    );
    assert!(
        lines[2].contains("add(a: s32, b: s32) -> s32"),
        "the error names the signature: {}",
        lines[2]
    );
    assert!(lines[3].contains("no export named `subtract`"), "{}", lines[3]);
    assert_eq!(
        lines[4],
        "apply-async after close: error NotRunning (pool not running)"
    );
    assert_eq!(lines[5], "join: ok ()");
}

#[test]
fn a_driver_waiting_in_join_ends_when_its_task_times_out() {
    let run = test_driver("spin", &["--timeout", "500ms"]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert!(run.stdout.contains("join: ok ()"));
    assert!(
        run.stdout
            .contains("spin: error Failed { kind: \"timeout\", message: \"timed out after 500ms\" }")
    );
}

#[test]
fn a_driver_that_traps_exits_1_with_the_trap() {
    let run = test_driver("trap", &[]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("poolhost: the driver failed: trap: unreachable"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("test_driver::main"),
        "the backtrace names the driver's main: {}",
        run.stderr
    );
}

#[test]
fn a_driver_that_never_joins_leaves_no_worker_behind() {
    let run = test_driver("no-join", &[]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert!(
        run.stderr
            .contains("the driver ended without joining its pool; the pool was terminated")
    );
    let workers: Vec<u32> = run
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("worker "))
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(workers.len(), 2);
    assert!(
        workers.iter().all(|&pid| !process_exists(pid)),
        "workers left: {workers:?}"
    );
}

#[test]
fn calls_still_run_a_driver_component_task_by_task() {
    // Given calls, a driver component is a component like any other: its exports are the tasks.
    let run = invoke_with_input("test-driver", &[], &["add(1, 2)"], None);
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "add(1, 2) -> 3\n"),
        "stderr: {}",
        run.stderr
    );
}

#[test]
fn seed_program_2_with_the_default_pool_as_in_the_seed() {
    let (run, host) = drive("seed-queue", &[]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let got: String = run
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("reader got message from Queue: "))
        .collect();
    assert_eq!(got, "itcast");
    assert_eq!(run.stdout.lines().last(), Some(format!("({host}) End").as_str()));
}

/// SIGINT while a driver waits for its pool: the pool is terminated, so the driver's `join`
/// returns and its task fails as terminated; the workers are reaped, the temporary directory
/// removed, and poolhost exits 130.
#[test]
fn an_interrupted_driver_has_its_pool_terminated_and_exits_130() {
    let dir = tempfile::tempdir().unwrap();
    let tmpdir = [("TMPDIR", dir.path().to_str().unwrap())];
    // A driver that ends as it should leaves nothing behind either.
    let seed = guest("seed-pool");
    let calm = common::poolhost_env(&["run", seed.to_str().unwrap(), "-n", "2"], &tmpdir, None);
    assert_eq!(calm.code, 0, "{}", calm.stderr);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "a driver run left its directory"
    );

    let wasm = guest("test-driver");
    let args = ["run", wasm.to_str().unwrap(), "-n", "1", "--env", "MODE=spin"];
    let mut run = common::Background::start(&args, &tmpdir);
    // Interrupted once its task spins on the worker.
    let deadline = std::time::Instant::now() + common::RUN_LIMIT;
    // A worker that has used 300 ms of CPU (30 ticks of user time) is past its start: it spins.
    let spinning = |pid: &u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(") ")
            .map_or(vec![], |(_, rest)| rest.split(' ').collect());
        fields
            .get(11)
            .and_then(|utime| utime.parse::<u64>().ok())
            .is_some_and(|ticks| ticks >= 30)
    };
    let workers = loop {
        let workers = common::children(run.pid());
        if workers.iter().any(spinning) {
            break workers;
        }
        assert!(
            std::time::Instant::now() < deadline && !run.exited(),
            "the task never ran"
        );
        std::thread::yield_now();
    };
    assert!(common::signal(run.pid(), rustix::process::Signal::INT));
    let run = run.finish(common::RUN_LIMIT);
    assert_eq!(run.code, 130, "{}", run.stderr);
    assert_eq!(
        run.stderr.lines().last(),
        Some("poolhost: the driver was interrupted by SIGINT")
    );
    assert!(run.stdout.contains("join: ok"), "{}", run.stdout);
    assert!(run.stdout.contains("spin: error"), "{}", run.stdout);
    assert!(run.stdout.contains("terminated"), "{}", run.stdout);
    for pid in workers {
        assert!(!process_exists(pid), "worker {pid} left behind");
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "the temporary directory is left"
    );
}
