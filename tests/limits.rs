//! Per-task limits and the sandbox, on hostile guests from `make guests`: every task ends with a
//! result or a precise cause, the worker (or its replacement) goes on, and nothing hangs.

mod common;

use std::time::Duration;

use common::{guest, invoke, poolhost_bin};
use poolhost::{Call, Pool, PoolError, Program, TaskError, TaskLimits, TrapCode, Value};
use serde_json::Value as Json;

fn reports(run: &common::Run) -> Vec<Json> {
    run.stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn hostile(limits: TaskLimits, workers: usize) -> Pool {
    Pool::builder()
        .component(guest("test_hostile"))
        .worker_program(poolhost_bin())
        .limits(limits)
        .workers(workers)
        .build()
        .expect("the pool starts")
}

#[test]
fn an_infinite_loop_times_out_and_the_worker_takes_the_next_task() {
    let run = invoke(
        "test_hostile",
        &["-n", "1", "--timeout", "300ms", "--output", "json"],
        &["spin()", "count(3)"],
    );
    assert_eq!(run.code, 1, "a timed-out task makes the exit code 1");
    let tasks = reports(&run);
    assert_eq!(tasks[0]["error"]["kind"], "timeout");
    assert_eq!(tasks[0]["error"]["message"], "timed out after 300ms");
    assert!(tasks[0]["duration"].as_f64().unwrap() >= 0.3);
    assert_eq!(tasks[1]["value"], "3");
    assert_eq!(tasks[0]["worker"], tasks[1]["worker"], "the same worker went on");
}

#[test]
fn a_memory_bomb_hits_its_limit_and_peak_memory_is_reported() {
    let run = invoke(
        "test_hostile",
        &["-n", "1", "--max-memory", "32MiB", "--output", "json"],
        &["bomb()", "hog(8)"],
    );
    assert_eq!(run.code, 1);
    let tasks = reports(&run);
    assert_eq!(tasks[0]["error"]["kind"], "memory-limit");
    assert_eq!(tasks[0]["error"]["limit"], 32.0 * 1024.0 * 1024.0);
    assert!(tasks[0]["peak_memory"].as_u64().unwrap() <= 32 << 20);
    assert_eq!(tasks[1]["value"], "8");
    assert!(
        tasks[1]["peak_memory"].as_u64().unwrap() >= 8 << 20,
        "{}",
        tasks[1]
    );
    assert_eq!(tasks[0]["worker"], tasks[1]["worker"]);
}

#[test]
fn unbounded_recursion_is_a_stack_overflow_trap() {
    let pool = hostile(TaskLimits::default(), 1);
    match pool.apply(Call::new("recurse", [Value::U64(0)])).unwrap() {
        Err(TaskError::Trap { code, backtrace }) => {
            assert_eq!(code, TrapCode::StackOverflow);
            assert!(
                backtrace.iter().any(|f| f.function.ends_with("::recurse")),
                "{backtrace:?}"
            );
        }
        other => panic!("expected a stack overflow, got {other:?}"),
    }
    assert_eq!(
        pool.apply(Call::new("count", [Value::U64(2)])).unwrap(),
        Ok(Some(Value::U64(2)))
    );
}

#[test]
fn fuel_is_a_reproducible_budget() {
    let pool = hostile(
        TaskLimits {
            fuel: Some(100_000),
            ..TaskLimits::default()
        },
        1,
    );
    let out = pool
        .apply_async(Call::new("count", [Value::U64(1_000_000)]))
        .unwrap()
        .wait_report();
    assert_eq!(out.result, Err(TaskError::OutOfFuel(100_000)));
    assert_eq!(out.fuel_used, Some(100_000));
    let used: Vec<_> = (0..2)
        .map(|_| {
            pool.apply_async(Call::new("count", [Value::U64(100)]))
                .unwrap()
                .wait_report()
        })
        .map(|r| {
            assert_eq!(r.result, Ok(Some(Value::U64(100))));
            r.fuel_used.unwrap()
        })
        .collect();
    assert!(used[0] > 100 && used[0] < 100_000, "{used:?}");
    assert_eq!(used[0], used[1], "the same task uses the same fuel");
}

#[test]
fn fuel_needs_a_metered_program() {
    let program = Program::load(guest("test_hostile")).unwrap();
    let built = Pool::builder()
        .program(program.clone())
        .worker_program(poolhost_bin())
        .fuel(10)
        .workers(1)
        .build();
    assert!(matches!(built, Err(PoolError::NotMetered)));
    let pool = Pool::builder()
        .program(program)
        .worker_program(poolhost_bin())
        .workers(1)
        .build()
        .unwrap();
    let fuel = TaskLimits {
        fuel: Some(10),
        ..TaskLimits::default()
    };
    assert!(matches!(
        pool.apply_async_with(Call::new("count", [Value::U64(1)]), fuel),
        Err(PoolError::NotMetered)
    ));
}

#[test]
fn a_task_stuck_in_a_host_sleep_times_out_and_its_worker_is_replaced() {
    let pool = hostile(
        TaskLimits {
            timeout: Some(Duration::from_millis(200)),
            ..TaskLimits::default()
        },
        1,
    );
    let before = pool.worker_pids();
    let report = pool
        .apply_async(Call::new("nap", [Value::U32(60_000)]))
        .unwrap()
        .wait_report();
    assert_eq!(report.result, Err(TaskError::Timeout(Duration::from_millis(200))));
    assert_eq!(
        pool.apply(Call::new("count", [Value::U64(1)])).unwrap(),
        Ok(Some(Value::U64(1)))
    );
    assert_ne!(pool.worker_pids(), before, "the stuck worker was replaced");
}

#[test]
fn a_task_may_have_its_own_limits() {
    let pool = hostile(
        TaskLimits {
            timeout: Some(Duration::from_secs(60)),
            ..TaskLimits::default()
        },
        1,
    );
    let short = TaskLimits {
        timeout: Some(Duration::from_millis(100)),
        ..TaskLimits::default()
    };
    let result = pool.apply_async_with(Call::new("spin", []), short).unwrap().get();
    assert_eq!(result, Err(TaskError::Timeout(Duration::from_millis(100))));
}

#[test]
fn a_task_blocked_in_a_queue_get_is_cut_at_its_deadline() {
    let run = invoke(
        "test_queue",
        &["-n", "1", "--timeout", "300ms", "--output", "json"],
        &[
            "get(\"never\", none)",
            "get(\"never\", some(60000))",
            "try-get(\"never\")",
        ],
    );
    assert_eq!(run.code, 1);
    let tasks = reports(&run);
    for task in &tasks[..2] {
        assert_eq!(task["error"]["kind"], "timeout", "{task}");
        assert!(task["duration"].as_f64().unwrap() >= 0.3);
    }
    assert_eq!(tasks[2]["value"], "err(\"empty\")");
}

#[test]
fn the_filesystem_is_closed_without_a_grant() {
    let run = invoke("test_hostile", &["--output", "json"], &["passwd()"]);
    assert_eq!(run.code, 0);
    let value = reports(&run)[0]["value"].as_str().unwrap().to_owned();
    assert!(value.starts_with("err("), "the guest read /etc/passwd: {value}");
}

#[test]
fn limits_on_the_command_line_are_checked() {
    for (flag, value, expected) in [
        ("--timeout", "soon", "soon"),
        ("--max-memory", "lots", "lots"),
        ("--fuel", "-1", "-1"),
    ] {
        let run = invoke("test_hostile", &[flag, value], &["count(1)"]);
        assert_eq!(run.code, 2, "{flag} {value}");
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
        assert!(run.stderr.contains(expected), "{}", run.stderr);
    }
}

#[test]
fn directories_are_granted_read_only_unless_asked_and_env_only_when_given() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), "hello").unwrap();
    let ro = format!("{}::/data", dir.path().display());
    let run = invoke(
        "test_hostile",
        &[
            "-n",
            "1",
            "--dir",
            &ro,
            "--env",
            "GREETING=hi",
            "--env",
            "POOLHOST_TEST_UNSET_VARIABLE",
        ],
        &[
            "read-file(\"/data/in.txt\")",
            "write-file(\"/data/out.txt\", \"x\")",
            "passwd()",
            "env-var(\"GREETING\")",
            "env-var(\"HOME\")",
            "env-var(\"POOLHOST_TEST_UNSET_VARIABLE\")",
        ],
    );
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines[0], "read-file(\"/data/in.txt\") -> ok(\"hello\")");
    assert!(
        lines[1].contains("-> err("),
        "a read-only grant let the guest write: {}",
        lines[1]
    );
    assert!(!dir.path().join("out.txt").exists());
    assert!(lines[2].starts_with("passwd() -> err("), "{}", lines[2]);
    assert_eq!(lines[3], "env-var(\"GREETING\") -> some(\"hi\")");
    assert_eq!(
        lines[4], "env-var(\"HOME\") -> none",
        "the host's environment leaked"
    );
    assert_eq!(lines[5], "env-var(\"POOLHOST_TEST_UNSET_VARIABLE\") -> none");

    let rw = format!("{}::/data", dir.path().display());
    let run = invoke(
        "test_hostile",
        &["--dir-rw", &rw],
        &["write-file(\"/data/out.txt\", \"written\")"],
    );
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.txt")).unwrap(),
        "written"
    );
}

#[test]
fn a_directory_that_cannot_be_granted_is_a_usage_error() {
    let run = invoke(
        "test_hostile",
        &["--dir", "/nonexistent/poolhost-test"],
        &["count(1)"],
    );
    assert_eq!((run.code, run.stderr.lines().count()), (2, 1), "{}", run.stderr);
    assert!(
        run.stderr.contains("cannot grant `/nonexistent/poolhost-test`"),
        "{}",
        run.stderr
    );
}
