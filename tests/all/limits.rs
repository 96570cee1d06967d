//! Per-task limits and the sandbox, on hostile guests from `make guests`: every task ends with a
//! result or a precise cause, the worker (or its replacement) goes on, and nothing hangs.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime};

use poolhost::{Call, Pool, PoolError, Program, TaskError, TaskOptions, TrapCode, Value};

use crate::common::{self, guest, invoke, kill, poolhost_bin, poolhost_memory, process_exists};

/// A pool of `workers` running guest `name` with `options`.
fn pool_of(name: &str, options: TaskOptions, workers: usize) -> Pool {
    Pool::builder()
        .component(guest(name))
        .worker_program(poolhost_bin())
        .options(options)
        .workers(workers)
        .build()
        .expect("the pool starts")
}

fn hostile(options: TaskOptions, workers: usize) -> Pool {
    pool_of("test_hostile", options, workers)
}

#[test]
fn an_infinite_loop_times_out_and_the_worker_takes_the_next_task() {
    let run = invoke(
        "test_hostile",
        &["-n", "1", "--timeout", "300ms", "--output", "json"],
        &["spin()", "count(3)"],
    );
    assert_eq!(run.code, 1, "a timed-out task makes the exit code 1");
    let tasks = run.reports();
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
    let tasks = run.reports();
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
    let pool = hostile(TaskOptions::default(), 1);
    match pool.apply(Call::new("recurse", [Value::U64(0)])).unwrap() {
        Err(TaskError::Trap { code, backtrace, .. }) => {
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
        TaskOptions {
            fuel: Some(100_000),
            ..TaskOptions::default()
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
    let fuel = TaskOptions {
        fuel: Some(10),
        ..TaskOptions::default()
    };
    assert!(matches!(
        pool.apply_async_with(Call::new("count", [Value::U64(1)]), fuel),
        Err(PoolError::NotMetered)
    ));
}

#[test]
fn a_task_stuck_in_a_host_sleep_times_out_and_its_worker_is_replaced() {
    let pool = hostile(
        TaskOptions {
            timeout: Some(Duration::from_millis(200)),
            ..TaskOptions::default()
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

/// A worker holds back the results of short tasks for a moment, to send several at once. One
/// that dies mid-batch loses none of them: every task before the one that killed it keeps its
/// result, exactly that one fails, and the rest run on the replacement.
#[test]
fn results_held_back_by_a_worker_that_dies_are_not_lost() {
    let timeout = Duration::from_millis(200);
    let pool = hostile(
        TaskOptions {
            timeout: Some(timeout),
            ..TaskOptions::default()
        },
        1,
    );
    let before = pool.worker_pids();
    // One batch: twenty short naps around one that outlives its timeout in a host call, which
    // only ending the worker can stop.
    let naps: Vec<u32> = [vec![0; 20], vec![60_000], vec![0; 20]].concat();
    let results = pool
        .map_chunked("nap", naps.iter().map(|&ms| Value::U32(ms)), naps.len())
        .unwrap();
    let expected: Vec<_> = naps
        .iter()
        .map(|&ms| match ms {
            0 => Ok(None),
            _ => Err(TaskError::Timeout(timeout)),
        })
        .collect();
    assert_eq!(results, expected);
    assert_ne!(pool.worker_pids(), before, "the stuck worker was replaced");
}

#[test]
fn a_task_may_have_its_own_limits() {
    let pool = hostile(
        TaskOptions {
            timeout: Some(Duration::from_secs(60)),
            ..TaskOptions::default()
        },
        1,
    );
    let short = TaskOptions {
        timeout: Some(Duration::from_millis(100)),
        ..TaskOptions::default()
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
    let tasks = run.reports();
    for task in &tasks[..2] {
        assert_eq!(task["error"]["kind"], "timeout", "{task}");
        assert!(task["duration"].as_f64().unwrap() >= 0.3);
    }
    assert_eq!(tasks[2]["value"], "err(\"empty\")");
}

#[test]
fn a_task_blocked_in_a_queue_put_is_cut_at_its_deadline() {
    let run = invoke(
        "test_queue",
        &[
            "-n",
            "1",
            "--timeout",
            "300ms",
            "--queue",
            "full:1",
            "--output",
            "json",
        ],
        &[
            "put(\"full\", \"fits\", none)",
            "put(\"full\", \"waits\", none)",
            "size(\"full\")",
        ],
    );
    assert_eq!(run.code, 1);
    let tasks = run.reports();
    assert_eq!(tasks[0]["value"], "ok");
    assert_eq!(tasks[1]["error"]["kind"], "timeout", "{}", tasks[1]);
    assert!(tasks[1]["duration"].as_f64().unwrap() >= 0.3);
    assert_eq!(tasks[2]["value"], "(1, false)", "the cut put left nothing behind");
}

#[test]
fn the_filesystem_is_closed_without_a_grant() {
    let run = invoke("test_hostile", &["--output", "json"], &["passwd()"]);
    assert_eq!(run.code, 0);
    let value = run.reports()[0]["value"].as_str().unwrap().to_owned();
    assert!(value.starts_with("err("), "the guest read /etc/passwd: {value}");
}

#[test]
fn http_requests_are_refused_with_an_error_the_guest_sees() {
    // A server that would answer, had the request been sent.
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    server.set_nonblocking(true).unwrap();
    let call = format!("fetch(\"{}\")", server.local_addr().unwrap());
    let run = invoke("test_hostile", &["--output", "json"], &[&call]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let value = run.reports()[0]["value"].as_str().unwrap().to_owned();
    assert_eq!(value, "err(\"ErrorCode::HttpRequestDenied\")");
    assert!(server.accept().is_err(), "a connection was made");
}

/// A component that makes `n` `wasi:http` header sets of one `size`-byte header each, and keeps
/// them: host memory outside its linear memory. Returns how many it filled; stops at the first
/// header refused.
const HTTP_HOARD: &str = r#"(component
  (type $http_t (instance
    (export "fields" (type $fields (sub resource)))
    (type $herr (variant (case "invalid-syntax") (case "forbidden") (case "immutable")))
    (export "header-error" (type $he (eq $herr)))
    (type $own (own $fields))
    (type $ctor (func (result $own)))
    (export "[constructor]fields" (func (type $ctor)))
    (type $b (borrow $fields))
    (type $bytes (list u8))
    (type $r (result (error $he)))
    (type $app (func (param "self" $b) (param "name" string) (param "value" $bytes) (result $r)))
    (export "[method]fields.append" (func (type $app)))
  ))
  (import "wasi:http/types@0.2.0" (instance $http (type $http_t)))
  (alias export $http "[constructor]fields" (func $ctor))
  (alias export $http "[method]fields.append" (func $append))

  (core module $mem
    (memory (export "memory") 4)
    (data (i32.const 0) "x-a"))
  (core instance $memi (instantiate $mem))
  (alias core export $memi "memory" (core memory $memory))
  (core func $ctor_l (canon lower (func $ctor)))
  (core func $append_l (canon lower (func $append) (memory $memory)))
  (core module $m
    (import "h" "ctor" (func $ctor (result i32)))
    (import "h" "append" (func $append (param i32 i32 i32 i32 i32 i32)))
    (import "m" "memory" (memory 4))
    (func (export "hoard") (param $n i32) (param $size i32) (result i32)
      (local $i i32) (local $f i32)
      (memory.fill (i32.const 1024) (i32.const 97) (local.get $size))
      (block $done
        (loop $l
          (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
          (local.set $f (call $ctor))
          (call $append (local.get $f) (i32.const 0) (i32.const 3) (i32.const 1024) (local.get $size) (i32.const 200000))
          (br_if $done (i32.ne (i32.load8_u (i32.const 200000)) (i32.const 0)))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $l)))
      (local.get $i)))
  (core instance $mi (instantiate $m
    (with "h" (instance (export "ctor" (func $ctor_l)) (export "append" (func $append_l))))
    (with "m" (instance (export "memory" (memory $memory))))))
  (func (export "hoard") (param "n" u32) (param "size" u32) (result u32) (canon lift (core func $mi "hoard")))
)"#;

#[test]
fn what_a_task_keeps_in_the_host_through_wasi_http_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let wat = dir.path().join("hoard.wat");
    std::fs::write(&wat, HTTP_HOARD).unwrap();
    let run = crate::common::poolhost(
        &[
            "run",
            wat.to_str().unwrap(),
            "--max-memory",
            "1MiB",
            "--output",
            "json",
            "--invoke",
            "hoard(10, 1000)",
            "hoard(1, 120000)",
            "hoard(100000, 1000)",
        ],
        None,
    );
    let mut reports = run.reports();
    reports.sort_by_key(|report| report["id"].as_u64());
    assert_eq!(reports[0]["value"], "10", "{}", run.stdout);
    // A header of 120 kB fails the task: requests are never sent, and need no more than 4 KiB.
    let message = |i: usize| {
        reports[i]["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        message(1).contains("total size of fields exceeds limit"),
        "{}",
        run.stdout
    );
    // A hundred thousand header sets (a gigabyte, before) run into the cap on resources.
    assert!(
        message(2).contains("resource table has no free keys"),
        "{}",
        run.stdout
    );
    assert_eq!(run.code, 1);
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

#[test]
fn retries_rerun_a_failed_task_and_report_attempts() {
    let run = invoke(
        "test_queue",
        &["-n", "1", "--retries", "1", "--output", "json"],
        &["flaky(\"once\")"],
    );
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let task = &run.reports()[0];
    assert_eq!(task["value"], "\"second time lucky\"");
    assert_eq!(task["attempts"], 2);

    // A task that always fails is run 1 + retries times, then reported with its last failure.
    let run = invoke(
        "test_calls",
        &["--retries", "2", "--output", "json"],
        &["fail(\"always\")", "quit(1)"],
    );
    assert_eq!(run.code, 1);
    let tasks = run.reports();
    assert_eq!(
        (tasks[0]["error"]["kind"].clone(), tasks[0]["attempts"].clone()),
        ("trap".into(), 3.into())
    );
    // An exit code is the guest's own answer, not a transient failure: it is not retried.
    assert_eq!(
        (tasks[1]["error"]["kind"].clone(), tasks[1]["attempts"].clone()),
        ("exit".into(), 1.into())
    );
}

#[test]
fn a_task_whose_worker_dies_is_retried_on_its_replacement() {
    let retry_once = TaskOptions {
        retries: 1,
        ..TaskOptions::default()
    };
    let pool = pool_of("test_queue", retry_once, 1);
    let gate = pool.manager().queue("gate").unwrap();
    let task = pool
        .apply_async(Call::new("get", [Value::from("gate"), Value::Option(None)]))
        .unwrap();
    assert!(
        !task.wait_timeout(Duration::from_millis(200)),
        "the task waits at the gate"
    );
    let victim = pool.worker_pids()[0];
    assert!(kill(victim));
    // The retry runs on the replacement and waits at the gate again; open it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.worker_pids() == [victim] || pool.worker_pids().is_empty() {
        assert!(Instant::now() < deadline, "no replacement worker");
        std::thread::yield_now();
    }
    gate.put("open").unwrap();
    let report = task.wait_report();
    assert_eq!(
        report.result,
        Ok(Some(Value::Result(Ok(Some(Box::new(Value::from("open")))))))
    );
    assert_eq!(report.attempts, 2);
    assert_ne!(report.worker, Some(victim));
}

/// A small deterministic generator: the chaos test needs no statistical quality, only variety.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn chaos_tasks_survive_random_worker_kills_and_join_returns() {
    const TASKS: u32 = 2000;
    let retries = TaskOptions {
        retries: 3,
        ..TaskOptions::default()
    };
    let pool = pool_of("test_calls", retries, 4);
    let pool = Arc::new(pool);
    let done = Arc::new(AtomicBool::new(false));
    let killer = {
        let (pool, done) = (pool.clone(), done.clone());
        std::thread::spawn(move || {
            let mut seed = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1;
            let mut seen = BTreeSet::new();
            let mut kills = 0;
            while !done.load(Ordering::Relaxed) {
                let pids = pool.worker_pids();
                seen.extend(pids.iter().copied());
                if !pids.is_empty() {
                    let victim = pids[(next(&mut seed) % pids.len() as u64) as usize];
                    if kill(victim) {
                        kills += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(5 + next(&mut seed) % 30));
            }
            (seen, kills)
        })
    };
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            pool.apply_async(Call::new("add", [Value::S32(i as i32), Value::S32(1)]))
                .unwrap()
        })
        .collect();
    let results: Vec<_> = tasks.iter().map(|t| t.wait_report()).collect();
    done.store(true, Ordering::Relaxed);
    let (mut seen, kills) = killer.join().unwrap();
    assert!(kills > 0, "the test killed no worker");

    // join returns, within a bound, even after all that.
    pool.close();
    let (joined_tx, joined) = mpsc::channel();
    let joiner = {
        let pool = pool.clone();
        std::thread::spawn(move || joined_tx.send(pool.join().is_ok()).unwrap())
    };
    assert_eq!(
        joined.recv_timeout(Duration::from_secs(60)),
        Ok(true),
        "join did not return"
    );
    joiner.join().unwrap();

    // Every task is accounted for: its result, or the death of its worker after every retry.
    let (mut ok, mut died) = (0, 0);
    for (i, report) in results.iter().enumerate() {
        match &report.result {
            Ok(value) => {
                assert_eq!(value, &Some(Value::S32(i as i32 + 1)));
                ok += 1;
            }
            Err(TaskError::WorkerDied { .. }) => {
                assert_eq!(report.attempts, 4);
                died += 1;
            }
            other => panic!("task {i}: {other:?}"),
        }
        seen.extend(report.worker);
    }
    assert_eq!(ok + died, TASKS);
    assert!(ok > 0);
    // No worker process is left: none alive, none a zombie.
    let left: Vec<_> = seen.iter().filter(|&&pid| process_exists(pid)).collect();
    assert!(left.is_empty(), "worker processes left behind: {left:?}");
}

/// The most the host process may hold while a guest floods it: far below what the guests push.
const HOST_MEMORY_BOUND_KIB: u64 = 64 * 1024;

#[test]
fn a_stdout_flood_streams_through_in_bounded_memory() {
    let wasm = guest("test_hostile");
    // 700 000 lines of 100 bytes: 70 MB of output, more than the host may hold.
    let (code, bytes, peak_kib) =
        poolhost_memory(&["run", wasm.to_str().unwrap(), "--invoke", "flood(700000)"]);
    assert_eq!(code, 0);
    assert!(bytes >= 70_000_000, "only {bytes} bytes came through");
    assert!(peak_kib < HOST_MEMORY_BOUND_KIB, "the host held {peak_kib} KiB");
}

#[test]
fn a_queue_flood_is_held_by_the_queue_limits() {
    let wasm = guest("test_queue");
    let wasm = wasm.to_str().unwrap();
    // Without a timeout the flooding task would wait forever for room: the limit holds it.
    let (code, _, peak_kib) = poolhost_memory(&[
        "run",
        wasm,
        "--timeout",
        "2s",
        "--max-queue-bytes",
        "16MiB",
        "--invoke",
        "flood(\"f\", 65536)",
    ]);
    assert_eq!(code, 1, "the flood ends in a timeout");
    assert!(peak_kib < HOST_MEMORY_BOUND_KIB, "the host held {peak_kib} KiB");
}

#[test]
fn unbounded_recursion_through_the_cli() {
    let run = invoke(
        "test_hostile",
        &["-n", "1", "--output", "json"],
        &["recurse(0)", "count(1)"],
    );
    assert_eq!(run.code, 1);
    let tasks = run.reports();
    assert_eq!(tasks[0]["error"]["trap"], "stack overflow");
    assert_eq!(tasks[1]["value"], "1", "the worker went on");
}

#[test]
fn a_worker_that_sends_a_malformed_frame_is_killed_and_the_host_goes_on() {
    // A stand-in worker that says it is ready, then sends garbage: a guest cannot reach the
    // socket, so only a broken worker could, and the host must survive it.
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake-worker");
    common::write_executable(
        &fake,
        "#!/bin/sh\n\
         # Ready { pid: 1 }, then a frame whose bytes are no message.\n\
         printf '\\002\\000\\000\\000\\000\\001' >&0\n\
         printf '\\003\\000\\000\\000\\377\\377\\377' >&0\n\
         exec sleep 60\n",
    );
    let pool = Pool::builder()
        .component(guest("test_hostile"))
        .worker_program(&fake)
        .workers(1)
        .build()
        .unwrap();
    // The task went to the stand-in, which was killed for its garbage: exactly that task fails.
    let task = pool.apply_async(Call::new("count", [Value::U64(1)])).unwrap();
    assert!(
        matches!(task.get(), Err(TaskError::WorkerDied { pid: 1, .. })),
        "{:?}",
        task.get()
    );
    // The host goes on replacing stand-ins (each killed in turn), and terminate ends it all.
    let clock = Instant::now();
    pool.terminate();
    assert!(clock.elapsed() < Duration::from_secs(10));
}

/// The descriptors a worker process has open, as `/proc` shows their targets.
fn open_files(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the worker is alive")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .map(|target| target.display().to_string())
        .collect()
}

#[test]
fn workers_forked_by_the_command_line_keep_none_of_the_hosts_files() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let wasm = guest("test_calls");
    let mut host = Command::new(poolhost_bin())
        .args(["-v", "run", wasm.to_str().unwrap(), "-n", "3", "--invoke"])
        .args(["sleep-ms(60000)", "sleep-ms(60000)", "sleep-ms(60000)"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // `-v` logs each worker's pid once it is ready, so after it has closed what it inherited.
    let mut workers = Vec::new();
    for line in BufReader::new(host.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(pid) = line
            .contains("worker ready")
            .then(|| line.split("pid=").nth(1))
            .flatten()
        {
            workers.push(
                pid.split(|c: char| !c.is_ascii_digit())
                    .next()
                    .unwrap()
                    .parse::<u32>()
                    .unwrap(),
            );
            if workers.len() == 3 {
                break;
            }
        }
    }
    let host_cmdline = std::fs::read(format!("/proc/{}/cmdline", host.id())).unwrap();
    let files: Vec<Vec<String>> = workers.iter().map(|&pid| open_files(pid)).collect();
    let cmdlines: Vec<Vec<u8>> = workers
        .iter()
        .map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).unwrap())
        .collect();
    host.kill().unwrap();
    host.wait().unwrap();

    for ((pid, files), cmdline) in workers.iter().zip(&files).zip(&cmdlines) {
        // Forked from the host, not started anew as `poolhost worker`: the path under test.
        assert_eq!(cmdline, &host_cmdline, "worker {pid}");
        // Its own journal only: the journals (and sockets) of the workers forked before it were
        // open in the host when it was forked.
        let journals = files.iter().filter(|f| f.contains("poolhost-journal")).count();
        assert_eq!(journals, 1, "worker {pid} has {files:?}");
        assert!(
            files.iter().all(|f| !f.ends_with(".wasm")),
            "worker {pid} has {files:?}"
        );
    }
}

#[test]
fn a_task_blocked_in_get_many_is_cut_at_its_deadline_and_its_worker_lives_on() {
    let run = invoke(
        "test_queue",
        &["-n", "1", "--timeout", "300ms", "--output", "json"],
        &[
            "get-many(\"never\", 8, none)",
            "get-many(\"never\", 8, some(60000))",
            "whoami()",
        ],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    let tasks = run.reports();
    for task in &tasks[..2] {
        assert_eq!(task["error"]["kind"], "timeout", "{task}");
        assert!(task["duration"].as_f64().unwrap() >= 0.3);
        // Cut by the deadline inside the import, not by the watchdog ending the worker.
        assert_eq!(
            task["worker"].to_string(),
            tasks[2]["value"].as_str().unwrap(),
            "{task}"
        );
    }
}

#[test]
fn a_result_too_large_to_send_fails_its_task_not_its_worker() {
    let run = invoke(
        "test_hostile",
        &["-n", "1", "--retries", "2", "--output", "json"],
        &["huge-result(70)", "huge-result(1)"],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    let tasks = run.reports();
    let error = &tasks[0]["error"];
    assert_eq!(error["kind"], "result-too-large", "{}", tasks[0]);
    assert_eq!(error["limit"], 67108864.0, "{error}");
    assert!(error["size"].as_u64().unwrap() > 70 << 20, "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("bytes, over the 67108864-byte limit"),
        "{error}"
    );
    assert_eq!(
        tasks[0]["attempts"], 1,
        "not retried: another run would fail the same way"
    );
    assert_eq!(tasks[1]["ok"], true, "{}", tasks[1]);
    assert_eq!(tasks[0]["worker"], tasks[1]["worker"], "the worker lived on");
}

/// Kills every worker of poolhost process `host` as soon as it appears, until `until`; returns
/// the pids it saw.
fn kill_every_worker(host: u32, until: Instant) -> BTreeSet<u32> {
    let mut seen = BTreeSet::new();
    while Instant::now() < until {
        for pid in common::children(host) {
            seen.insert(pid);
            kill(pid);
        }
        std::thread::yield_now();
    }
    seen
}

#[test]
fn workers_killed_as_they_start_cost_the_pool_no_slot() {
    let wasm = guest("test_calls");
    let calls: Vec<String> = (0..10).map(|i| format!("add({i}, 1)")).collect();
    let mut args = vec![
        "run",
        wasm.to_str().unwrap(),
        "-n",
        "1",
        "--retries",
        "3",
        "--output",
        "json",
    ];
    args.push("--invoke");
    args.extend(calls.iter().map(String::as_str));
    let mut run = common::Background::start(&args, &[]);
    // Every worker dies as it appears, the first one before it is ever ready, for 1.5 s.
    let seen = kill_every_worker(run.pid(), Instant::now() + Duration::from_millis(1500));
    assert!(!seen.is_empty(), "no worker was killed");
    assert!(!run.exited(), "the run ended while its workers were being killed");
    let run = run.finish(common::RUN_LIMIT);
    assert!(!run.stderr.contains("no worker left"), "{}", run.stderr);
    let tasks = run.reports();
    assert_eq!(tasks.len(), 10, "{}\n{}", run.stdout, run.stderr);
    for (i, task) in tasks.iter().enumerate() {
        match task["ok"].as_bool().unwrap() {
            true => assert_eq!(task["value"], (i + 1).to_string()),
            // Only a task whose every attempt was killed fails.
            false => assert_eq!(
                (&task["error"]["kind"], &task["attempts"]),
                (&"worker-died".into(), &4.into())
            ),
        }
    }
    assert!(tasks.iter().any(|task| task["ok"] == true), "{}", run.stdout);
    let left: Vec<_> = seen.iter().filter(|&&pid| process_exists(pid)).collect();
    assert!(left.is_empty(), "worker processes left behind: {left:?}");
}

/// `poolhost run` of `tasks` 2 ms calls on 2 workers with 3 retries, while (with `kill_every`) a
/// random worker is killed that often. Returns the run, how long it took and the pids killed.
fn chaos_run(tasks: u32, kill_every: Option<Duration>) -> (common::Run, Duration, BTreeSet<u32>) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("calls");
    let calls: String = (0..tasks).map(|_| "sleep-ms(2)\n").collect();
    std::fs::write(&file, calls).unwrap();
    let wasm = guest("test_calls");
    let args = [
        "run",
        wasm.to_str().unwrap(),
        "-n",
        "2",
        "--retries",
        "3",
        "--output",
        "json",
        "--calls",
        file.to_str().unwrap(),
    ];
    let clock = Instant::now();
    let mut run = common::Background::start(&args, &[]);
    let mut killed = BTreeSet::new();
    let mut seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    if let Some(every) = kill_every {
        let deadline = clock + common::RUN_LIMIT;
        while !run.exited() && Instant::now() < deadline {
            std::thread::sleep(every);
            let workers = common::children(run.pid());
            if let Some(&victim) = workers.get((next(&mut seed) % workers.len().max(1) as u64) as usize)
                && kill(victim)
            {
                killed.insert(victim);
            }
        }
    }
    let run = run.finish(common::RUN_LIMIT);
    (run, clock.elapsed(), killed)
}

/// Checks a chaos run: every task reported exactly once, at least 99% ok, a failure only after
/// every retry was killed, no worker left, and the time within a few times the run without kills.
fn check_chaos(tasks: u32) {
    let (calm, calm_time, _) = chaos_run(tasks, None);
    assert_eq!(calm.code, 0, "{}", calm.stderr);
    let (run, time, killed) = chaos_run(tasks, Some(Duration::from_millis(50)));
    assert!(killed.len() >= 5, "only {} kills", killed.len());
    let reports = run.reports();
    let ids: BTreeSet<u64> = reports.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert_eq!(
        (reports.len(), ids.len()),
        (tasks as usize, tasks as usize),
        "each task exactly once"
    );
    let ok = reports.iter().filter(|r| r["ok"] == true).count();
    for report in reports.iter().filter(|r| r["ok"] != true) {
        assert_eq!(
            (&report["error"]["kind"], &report["attempts"]),
            (&"worker-died".into(), &4.into())
        );
    }
    assert!(ok * 100 >= tasks as usize * 99, "{ok} of {tasks} ok");
    let left: Vec<_> = killed.iter().filter(|&&pid| process_exists(pid)).collect();
    assert!(left.is_empty(), "worker processes left behind: {left:?}");
    assert!(
        time < calm_time * 4 + Duration::from_secs(3),
        "{tasks} tasks took {time:?} under {} kills, {calm_time:?} without",
        killed.len()
    );
    eprintln!(
        "chaos: {tasks} tasks, {} kills, {ok} ok, {} failed, {time:.2?} (without kills {calm_time:.2?})",
        killed.len(),
        tasks as usize - ok
    );
}

#[test]
fn chaos_through_the_command_line_reports_every_task_once() {
    check_chaos(1500);
}

/// The full chaos run of the README: `cargo test -p poolhost --test all -- --ignored limits::chaos`.
#[test]
#[ignore]
fn chaos_at_scale_through_the_command_line() {
    check_chaos(10_000);
}

#[test]
fn a_worker_killed_while_its_one_way_put_waits_for_room_is_noticed_at_once() {
    let pool = pool_of("test_queue", TaskOptions::default(), 1);
    let queue = pool.manager().bounded("q", 1).unwrap();
    let task = pool
        .apply_async(Call::new(
            "produce",
            [Value::from("q"), Value::from("t"), Value::U32(3)],
        ))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while queue.is_empty() {
        assert!(Instant::now() < deadline, "the first item never arrived");
        std::thread::yield_now();
    }
    // The second put waits for room; its worker dies meanwhile.
    let victim = pool.worker_pids()[0];
    assert!(kill(victim));
    let report = task.wait_timeout(Duration::from_secs(30));
    assert!(report, "the death of a worker whose put waits went unnoticed");
    // It died on the task, or after the task had gone on past its put: either way it fails,
    // for its item never went in.
    match task.get() {
        Err(TaskError::WorkerDied { .. }) => {}
        Err(TaskError::Failed(message)) => assert!(message.contains("a put to a queue failed"), "{message}"),
        other => panic!("{other:?}"),
    }
    // Its result may come before its supervisor reaches the end of its socket and reaps it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while process_exists(victim) {
        assert!(Instant::now() < deadline, "the dead worker was not reaped");
        std::thread::yield_now();
    }
}

#[test]
fn a_frozen_worker_is_killed_past_its_tasks_timeout_and_join_does_not_wait_for_one() {
    let options = TaskOptions {
        timeout: Some(Duration::from_millis(300)),
        ..TaskOptions::default()
    };
    let pool = pool_of("test_calls", options, 1);
    let task = pool
        .apply_async(Call::new("sleep-ms", [Value::U32(10_000)]))
        .unwrap();
    let frozen = pool.worker_pids()[0];
    assert!(common::signal(frozen, rustix::process::Signal::STOP));
    assert!(
        task.wait_timeout(Duration::from_secs(30)),
        "a frozen worker was never given up on"
    );
    assert_eq!(task.get(), Err(TaskError::Timeout(Duration::from_millis(300))));
    assert!(
        !process_exists(frozen),
        "the frozen worker was not killed and reaped"
    );
    // Its replacement runs the next task; then it too is frozen, idle, and `join` still returns.
    assert_eq!(
        pool.apply(Call::new("add", [Value::S32(1), Value::S32(2)]))
            .unwrap(),
        Ok(Some(Value::S32(3)))
    );
    let idle = pool.worker_pids()[0];
    assert!(common::signal(idle, rustix::process::Signal::STOP));
    pool.close();
    let pool = Arc::new(pool);
    let (joined_tx, joined) = mpsc::channel();
    let joiner = {
        let pool = pool.clone();
        std::thread::spawn(move || joined_tx.send(pool.join().is_ok()).unwrap())
    };
    assert_eq!(
        joined.recv_timeout(Duration::from_secs(30)),
        Ok(true),
        "join waited for a frozen worker"
    );
    joiner.join().unwrap();
    assert!(!process_exists(idle));
}

/// The host's bound in the hostile cases of memory: what the issue of record asks, whatever the
/// guest or the input does.
const HOSTILE_BOUND_KIB: u64 = 512 * 1024;

#[test]
fn large_results_are_printed_and_let_go() {
    let wasm = guest("test_hostile");
    // Each is printed slower than it is computed: without a bound the results pile up in the host.
    let calls: Vec<String> = (0..30).map(|_| "huge-result(30)".to_owned()).collect();
    let mut args = vec!["run", wasm.to_str().unwrap(), "-n", "2", "--invoke"];
    args.extend(calls.iter().map(String::as_str));
    let (code, bytes, peak_kib) = poolhost_memory(&args);
    assert_eq!(code, 0);
    assert!(bytes > 30 * (30 << 20), "{bytes} bytes printed");
    assert!(peak_kib < HOSTILE_BOUND_KIB, "the host held {peak_kib} KiB");
    eprintln!("30 results of 30 MiB: host peak {} MiB", peak_kib / 1024);
}

#[test]
fn empty_items_count_against_the_queue_limits() {
    let dir = tempfile::tempdir().unwrap();
    let lines = dir.path().join("lines");
    std::fs::write(&lines, "\n".repeat(20_000_000)).unwrap();
    let feed = format!("q={}", lines.display());
    let wasm = guest("test_queue");
    let wasm = wasm.to_str().unwrap();
    let run = common::poolhost(&["run", wasm, "--feed", &feed, "--invoke", "size(\"q\")"], None);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("cannot feed queue `q`: it is full after"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    // A guest putting empty items is held by the same limits (and its timeout).
    let (code, _, peak_kib) =
        poolhost_memory(&["run", wasm, "--timeout", "3s", "--invoke", "flood(\"f\", 0)"]);
    assert_eq!(code, 1, "the flood ends in a timeout");
    assert!(peak_kib < HOSTILE_BOUND_KIB, "the host held {peak_kib} KiB");
    eprintln!("empty items flooding a queue: host peak {} MiB", peak_kib / 1024);
}

#[test]
fn endless_input_is_refused_not_read_forever() {
    let calls = guest("test_calls");
    let calls = calls.to_str().unwrap();
    for args in [
        vec!["run", calls, "--calls", "/dev/zero"],
        vec!["run", calls, "--feed", "q=/dev/zero", "--invoke", "noop()"],
    ] {
        let (code, _, peak_kib) = poolhost_memory(&args);
        assert_eq!(code, 2, "{args:?}");
        assert!(
            peak_kib < HOSTILE_BOUND_KIB,
            "{args:?}: the host held {peak_kib} KiB"
        );
        let run = common::poolhost(&args, None);
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
        assert!(
            run.stderr.contains("/dev/zero` line 1 is longer than"),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn a_driver_flooding_apply_async_is_held_back() {
    let wasm = guest("test-driver");
    let (code, _, peak_kib) = poolhost_memory(&[
        "run",
        wasm.to_str().unwrap(),
        "-n",
        "1",
        "--env",
        "MODE=flood",
        "--env",
        "FLOOD=300000",
    ]);
    assert_eq!(code, 0);
    assert!(peak_kib < HOST_MEMORY_BOUND_KIB, "the host held {peak_kib} KiB");
    eprintln!(
        "a driver submitting 300 000 tasks: host peak {} MiB",
        peak_kib / 1024
    );
}
