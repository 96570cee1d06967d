//! The library API, on real worker processes running real guests from `make guests`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use poolhost::{Call, CallError, Pool, PoolError, Program, Stream, TaskError, Value};

use crate::common::{guest, kill, poolhost_bin, process_exists, write_executable};

/// A bound on how long `terminate` and `drop` may take: they kill, they do not wait for tasks.
const PROMPT: Duration = Duration::from_secs(10);

fn pool(workers: usize) -> Pool {
    Pool::builder()
        .component(guest("test_calls"))
        .worker_program(poolhost_bin())
        .workers(workers)
        .build()
        .expect("the pool starts")
}

fn sleep(ms: u32) -> Call {
    Call::new("sleep-ms", [Value::U32(ms)])
}

#[test]
fn apply_and_apply_async() {
    let pool = pool(2);
    assert_eq!(
        pool.apply(Call::new("add", [2i32.into(), 40i32.into()])).unwrap(),
        Ok(Some(Value::S32(42)))
    );

    let slow = pool.apply_async(sleep(300)).unwrap();
    assert!(!slow.ready());
    assert_eq!(slow.successful(), None);
    assert_eq!(slow.get_timeout(Duration::from_millis(1)), None);
    assert!(!slow.wait_timeout(Duration::from_millis(1)));
    slow.wait();
    assert!(slow.ready());
    assert_eq!(slow.successful(), Some(true));
    assert_eq!(slow.get(), Ok(Some(Value::U32(300))));
    let report = slow.report().unwrap();
    assert!(pool.worker_pids().contains(&report.worker.unwrap()));
    assert!(report.duration >= Duration::from_millis(300));

    let failed = pool.apply_async(Call::new("fail", ["no".into()])).unwrap();
    let error = failed.get().unwrap_err();
    assert!(matches!(error, TaskError::Trap { .. }), "{error:?}");
    // The panic's message, written to stderr, is part of the failure.
    let stderr = error.stderr().unwrap();
    assert!(
        stderr.starts_with("thread ") && stderr.contains("panicked at"),
        "{stderr}"
    );
    assert!(
        error.to_string().starts_with("trap: unreachable\nthread "),
        "{error}"
    );
    assert_eq!(failed.successful(), Some(false));
}

#[test]
fn tasks_see_their_worker_and_the_pool_owner() {
    let pool = pool(2);
    let me = std::process::id();
    assert_eq!(
        pool.apply(Call::new("parent", [])).unwrap(),
        Ok(Some(Value::U32(me)))
    );
    let Ok(Some(Value::U32(pid))) = pool.apply(Call::new("whoami", [])).unwrap() else {
        panic!()
    };
    assert!(pool.worker_pids().contains(&pid));
}

#[test]
fn arguments_are_checked_and_widened_at_submission() {
    let pool = pool(1);
    // An s32 literal for a u32 parameter is given the parameter's type.
    assert_eq!(
        pool.apply(Call::new("sleep-ms", [Value::S32(1)])).unwrap(),
        Ok(Some(Value::U32(1)))
    );
    assert!(matches!(
        pool.apply_async(Call::new("sleep-ms", [Value::S32(-1)])),
        Err(PoolError::Call(CallError::Mismatch { .. }))
    ));
    assert!(matches!(
        pool.apply_async(Call::new("add", [Value::S32(1)])),
        Err(PoolError::Call(CallError::Mismatch { .. }))
    ));
    assert!(matches!(
        pool.apply_async(Call::new("nope", [])),
        Err(PoolError::Call(CallError::UnknownExport { .. }))
    ));
    assert!(matches!(
        pool.apply_async(Call::main()),
        Err(PoolError::Call(CallError::NoMain))
    ));
}

#[test]
fn a_large_map_is_queued_in_parts_and_keeps_input_order() {
    // 1 000 inputs are queued in parts (64, then 256, then the rest), each part a whole number
    // of chunks; a chunk far larger than the input is one chunk.
    let pool = pool(2);
    let inputs = || (0..1_000u64).map(Value::U64);
    let doubled: Vec<_> = (0..1_000u64).map(|i| Ok(Some(Value::U64(2 * i)))).collect();
    for chunksize in [1, 3, 7, 100, usize::MAX] {
        let results = pool.map_chunked("math.double", inputs(), chunksize).unwrap();
        assert!(
            results == doubled,
            "chunks of {chunksize}: results out of order or missing"
        );
    }
    let mut batch = pool
        .batch(inputs().map(|i| Call::new("math.double", [i])))
        .unwrap();
    let mut seen = vec![false; 1_000];
    while let Some(index) = batch.next_finished() {
        assert!(!std::mem::replace(&mut seen[index], true), "index {index} twice");
        let report = batch.take_report(index).unwrap();
        assert_eq!(report.id, batch.results()[index].id());
        assert_eq!(report.result, doubled[index]);
    }
    assert!(seen.iter().all(|&seen| seen), "every task of the batch finished");
    let ids: Vec<_> = batch.results().iter().map(|r| r.id()).collect();
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "a batch's ids follow each other"
    );
}

#[test]
fn map_starmap_and_imap_keep_input_order() {
    let pool = pool(2);
    let inputs = || (0..20u64).map(Value::U64);
    let doubled: Vec<_> = (0..20u64).map(|i| Ok(Some(Value::U64(2 * i)))).collect();
    assert_eq!(pool.map("math.double", inputs()).unwrap(), doubled);
    assert_eq!(pool.map_chunked("math.double", inputs(), 3).unwrap(), doubled);
    assert_eq!(
        pool.imap("math.double", inputs()).unwrap().collect::<Vec<_>>(),
        doubled
    );
    let sums = pool
        .starmap("add", (0..10i32).map(|i| vec![Value::S32(i), Value::S32(i)]))
        .unwrap();
    assert_eq!(
        sums,
        (0..10i32)
            .map(|i| Ok(Some(Value::S32(2 * i))))
            .collect::<Vec<_>>()
    );
    // Results keep input order even when later inputs finish first.
    let slow_first = pool
        .map_chunked("sleep-ms", [300u32, 1, 1].map(Value::U32), 1)
        .unwrap();
    assert_eq!(slow_first, [300, 1, 1].map(|ms| Ok(Some(Value::U32(ms)))));
}

#[test]
fn imap_unordered_yields_in_completion_order() {
    let pool = pool(3);
    let order: Vec<usize> = pool
        .imap_unordered("sleep-ms", [900u32, 10, 450].map(Value::U32))
        .unwrap()
        .map(|(i, _)| i)
        .collect();
    assert_eq!(order, [1, 2, 0]);
}

#[test]
fn at_most_n_tasks_run_at_once_and_the_rest_wait_in_fifo_order() {
    let pool = pool(2);
    let tasks: Vec<_> = (0..6).map(|_| pool.apply_async(sleep(100)).unwrap()).collect();
    let reports: Vec<_> = tasks.iter().map(|t| t.wait_report()).collect();
    let workers: BTreeSet<u32> = reports.iter().map(|r| r.worker.unwrap()).collect();
    assert_eq!(workers.len(), 2);
    // Each worker takes its tasks in submission order. (Across workers, two tasks sent at the same
    // moment may start in either order: each worker process is scheduled on its own.)
    for worker in &workers {
        let starts: Vec<_> = reports
            .iter()
            .filter(|r| r.worker == Some(*worker))
            .map(|r| r.started.unwrap())
            .collect();
        assert!(starts.is_sorted(), "worker {worker} ran tasks out of order");
    }
    // Never more than two at once: the third starts after the first or second ends.
    for (i, report) in reports.iter().enumerate().skip(2) {
        let start = report.started.unwrap();
        let ended_before = reports[..i]
            .iter()
            .filter(|r| r.started.unwrap() + r.duration <= start)
            .count();
        assert!(
            ended_before >= i - 1,
            "task {i} started while {} were running",
            i - ended_before
        );
    }
}

#[test]
fn close_and_join_follow_pythons_rules() {
    let pool = pool(1);
    assert!(matches!(pool.join(), Err(PoolError::StillRunning)));
    let task = pool.apply_async(sleep(200)).unwrap();
    pool.close();
    assert!(matches!(pool.apply_async(sleep(1)), Err(PoolError::NotRunning)));
    // join waits for submitted tasks, then for the workers to exit.
    let pids = pool.worker_pids();
    pool.join().unwrap();
    assert_eq!(task.get(), Ok(Some(Value::U32(200))));
    assert!(pids.iter().all(|&pid| !process_exists(pid)), "workers reaped");
    pool.join().unwrap();
}

#[test]
fn terminate_kills_running_tasks_fails_pending_ones_and_reaps_workers() {
    let pool = pool(2);
    let pids = pool.worker_pids();
    // The first two go straight to the two idle workers; the other three wait in the queue.
    let tasks: Vec<_> = (0..5).map(|_| pool.apply_async(sleep(60_000)).unwrap()).collect();
    let clock = Instant::now();
    pool.terminate();
    assert!(clock.elapsed() < PROMPT, "terminate took {:?}", clock.elapsed());
    for task in &tasks {
        assert_eq!(task.get(), Err(TaskError::Terminated));
    }
    assert!(
        pids.iter().all(|&pid| !process_exists(pid)),
        "workers {pids:?} reaped"
    );
    assert!(matches!(pool.apply_async(sleep(1)), Err(PoolError::NotRunning)));
    pool.join().unwrap();
}

#[test]
fn dropping_the_pool_kills_and_reaps_every_worker() {
    let pool = pool(2);
    let pids = pool.worker_pids();
    let task = pool.apply_async(sleep(60_000)).unwrap();
    let clock = Instant::now();
    drop(pool);
    assert!(clock.elapsed() < PROMPT);
    assert_eq!(task.get(), Err(TaskError::Terminated));
    assert!(
        pids.iter().all(|&pid| !process_exists(pid)),
        "workers {pids:?} reaped"
    );
}

#[test]
fn a_killed_worker_fails_only_its_task_and_is_replaced() {
    let pool = pool(2);
    let victim_task = pool
        .apply_async(Call::new("sleep-ms", [Value::U32(60_000)]))
        .unwrap();
    // The first task went to the first idle worker.
    let victim = pool.worker_pids()[0];
    let others: Vec<_> = (0..4).map(|_| pool.apply_async(sleep(50)).unwrap()).collect();
    assert!(kill(victim), "the worker can be killed");
    assert_eq!(
        victim_task.get(),
        Err(TaskError::WorkerDied {
            pid: victim,
            cause: "killed by signal 9 (SIGKILL)".into()
        })
    );
    for task in &others {
        assert_eq!(task.get(), Ok(Some(Value::U32(50))));
    }
    // A replacement took the dead worker's place, and it runs tasks.
    let pids = pool.worker_pids();
    assert_eq!(pids.len(), 2);
    assert!(!pids.contains(&victim));
    let after: BTreeSet<_> = (0..4)
        .map(|_| pool.apply_async(sleep(100)).unwrap())
        .collect::<Vec<_>>()
        .iter()
        .map(|t| t.wait_report().worker.unwrap())
        .collect();
    assert_eq!(after, pids.into_iter().collect());
    pool.close();
    pool.join().unwrap();
}

#[test]
fn output_can_be_captured_with_its_task() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let pool = Pool::builder()
        .component(guest("test_calls"))
        .worker_program(poolhost_bin())
        .workers(1)
        .on_output(move |task, stream, bytes| {
            sink.lock()
                .unwrap()
                .push((task, stream, String::from_utf8_lossy(bytes).into_owned()))
        })
        .build()
        .unwrap();
    let task = pool
        .apply_async(Call::new("shout", ["x".into(), 2u32.into()]))
        .unwrap();
    task.wait();
    let seen = seen.lock().unwrap();
    let stdout: String = seen
        .iter()
        .filter(|(_, s, _)| *s == Stream::Stdout)
        .map(|(_, _, t)| t.as_str())
        .collect();
    assert_eq!(stdout, "x line 0 of 2\nx line 1 of 2\n");
    assert!(seen.iter().all(|(id, _, _)| *id == task.id()));
    assert!(
        seen.iter()
            .any(|(_, s, t)| *s == Stream::Stderr && t == "x done\n")
    );
}

#[test]
fn a_missing_component_or_worker_program_is_an_error_not_a_hang() {
    assert!(matches!(Pool::builder().build(), Err(PoolError::NoComponent)));
    assert!(matches!(
        Pool::builder().component("/nonexistent.wasm").build(),
        Err(PoolError::Load(_))
    ));
    let result = Pool::builder()
        .component(guest("test_calls"))
        .worker_program("/nonexistent/poolhost")
        .workers(1)
        .build();
    assert!(matches!(result, Err(PoolError::Start(_))));
}

#[test]
fn a_pool_that_fails_part_way_through_starting_leaves_no_worker_running() {
    // The first two processes to start become workers; the others fail at once, as a worker
    // program that cannot load the component would. The pool must kill and reap the two.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("worker");
    let text = format!(
        "#!/bin/sh\n\
         echo $$ >> \"$(dirname \"$0\")/pids\"\n\
         mkdir \"$(dirname \"$0\")/1\" 2>/dev/null && exec {bin} \"$@\"\n\
         mkdir \"$(dirname \"$0\")/2\" 2>/dev/null && exec {bin} \"$@\"\n\
         exit 1\n",
        bin = poolhost_bin()
    );
    write_executable(&script, &text);
    let result = Pool::builder()
        .component(guest("test_calls"))
        .worker_program(&script)
        .workers(4)
        .build();
    assert!(matches!(result, Err(PoolError::Start(_))), "the build fails");
    let pids: Vec<u32> = std::fs::read_to_string(dir.path().join("pids"))
        .unwrap()
        .lines()
        .map(|line| line.parse().unwrap())
        .collect();
    // Two became workers, and at least the one that failed was started too.
    assert!(pids.len() >= 3, "worker processes were started: {pids:?}");
    let left: Vec<u32> = pids.into_iter().filter(|&pid| process_exists(pid)).collect();
    assert!(left.is_empty(), "processes {left:?} are still there");
}

#[test]
fn workers_started_before_the_component_is_loaded_run_its_tasks() {
    // The test harness runs threads, so these are started anew, not forked.
    let builder = Pool::builder()
        .worker_program(poolhost_bin())
        .workers(2)
        .prestart();
    let pool = builder.component(guest("test_calls")).build().unwrap();
    assert_eq!(pool.workers(), 2);
    let pids: BTreeSet<u32> = pool.worker_pids().into_iter().collect();
    assert_eq!(pids.len(), 2);
    assert_eq!(
        pool.apply(Call::new("add", [2i32.into(), 40i32.into()])).unwrap(),
        Ok(Some(Value::S32(42)))
    );

    // Fewer workers asked for after the start: the extra process is killed, not kept.
    let fewer = Pool::builder()
        .worker_program(poolhost_bin())
        .workers(3)
        .prestart()
        .workers(1)
        .component(guest("test_calls"))
        .build()
        .unwrap();
    assert_eq!(fewer.worker_pids().len(), 1);
    assert_eq!(fewer.apply(sleep(1)).unwrap(), Ok(Some(Value::U32(1))));

    // Workers that loaded one component ahead of the pool, which is then given another: they
    // run the other.
    let builder = Pool::builder()
        .worker_program(poolhost_bin())
        .workers(2)
        .prestart();
    let early = builder.load(&Program::loader(), guest("test_calls")).unwrap();
    assert!(
        early
            .exports()
            .iter()
            .any(|export| export.starts_with("sleep-ms"))
    );
    let sieve = builder
        .program(Program::load(guest("sieve")).unwrap())
        .build()
        .unwrap();
    for _ in 0..4 {
        let result = sieve.apply(Call::new("primes", [Value::U32(1000)])).unwrap();
        assert_eq!(result, Ok(Some(Value::U32(168))));
    }

    // A component that does not load: the error is the load error, not one about the processes
    // started for it (which the builder kills as it is dropped).
    let bad = Pool::builder()
        .worker_program(poolhost_bin())
        .workers(2)
        .prestart()
        .component("/nonexistent/task.wasm")
        .build();
    assert!(matches!(bad, Err(PoolError::Load(_))), "{:?}", bad.err());
}

/// Short tasks travel in batches, but never in one too large to send: 60 calls of 3 MB each
/// after 200 no-ops (which make the pool batch), submitted together, all run.
#[test]
fn batches_are_never_packed_past_the_frame_limit() {
    let pool = pool(1);
    let text = "y".repeat(3 << 20);
    let noops = (0..200).map(|_| Call::new("noop", []));
    let echoes = (0..60).map(|_| Call::new("echo", [Value::from(text.as_str())]));
    let mut batch = pool.batch(noops.chain(echoes)).unwrap();
    pool.close();
    while let Some(index) = batch.next_finished() {
        let report = batch.take_report(index).unwrap();
        match (index < 200, report.result) {
            (true, Ok(None)) => {}
            (false, Ok(Some(Value::String(echoed)))) => assert_eq!(echoed.len(), text.len()),
            (_, other) => panic!(
                "task {index}: {:?}",
                other.map(|v| v.map(|v| v.to_string().len()))
            ),
        }
    }
    pool.join().unwrap();
}

/// With a budget for results not yet taken, a runner that takes each report keeps the pool
/// going, and reports nobody will take (their batch dropped) do not hold it back.
#[test]
fn results_not_taken_hold_back_new_tasks_until_taken_or_let_go() {
    let pool = Pool::builder()
        .component(guest("test_calls"))
        .worker_program(poolhost_bin())
        .workers(1)
        .hold_results_under(1)
        .build()
        .expect("the pool starts");
    let echo = |text: &str| Call::new("echo", [Value::from(text)]);
    let mut batch = pool.batch((0..3).map(|i| echo(&i.to_string()))).unwrap();
    // The first result is over the budget: the next task waits until it is taken.
    let first = batch.next_finished().unwrap();
    assert_eq!(
        batch.next_finished_timeout(Duration::from_millis(300)),
        None,
        "held back"
    );
    assert_eq!(
        batch.take_report(first).unwrap().result,
        Ok(Some(Value::from("0")))
    );
    let second = batch.next_finished().unwrap();
    assert_eq!(
        batch.take_report(second).unwrap().result,
        Ok(Some(Value::from("1")))
    );
    // Dropped with a result untaken: the pool goes on.
    batch.next_finished().unwrap();
    drop(batch);
    assert_eq!(pool.apply(echo("after")).unwrap(), Ok(Some(Value::from("after"))));
}
