//! The manager queue, end to end: guests on different worker processes sharing host-side queues,
//! through the CLI and the library, on real guests from `make guests`.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use poolhost::{Call, Manager, Pool, TaskError, Value};

use crate::common::{guest, invoke, invoke_with_input, kill, poolhost_bin, process_exists, signal};

/// A bound on anything that must happen promptly, generous for a slow machine.
const PROMPT: Duration = Duration::from_secs(10);

fn pool_with(manager: &Manager, workers: usize) -> Pool {
    Pool::builder()
        .component(guest("test_queue"))
        .worker_program(poolhost_bin())
        .manager(manager.clone())
        .workers(workers)
        .build()
        .expect("the pool starts")
}

fn call(function: &str, args: impl IntoIterator<Item = Value>) -> Call {
    Call::new(function, args)
}

fn text(s: &str) -> Value {
    Value::from(s)
}

fn none() -> Value {
    Value::Option(None)
}

fn ok() -> Result<Option<Value>, TaskError> {
    Ok(Some(Value::Result(Ok(None))))
}

fn err(name: &str) -> Result<Option<Value>, TaskError> {
    Ok(Some(Value::Result(Err(Some(Box::new(text(name)))))))
}

#[test]
fn seed_example_2_writer_and_reader_on_different_workers() {
    let run = invoke(
        "queue_demo",
        &["-n", "2", "--output", "json"],
        &["writer()", "reader(6)"],
    );
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let printed = run.task_stdout();
    let got: String = printed
        .lines()
        .filter_map(|line| line.strip_prefix("reader got message from Queue: "))
        .collect();
    assert_eq!(got, "itcast");
    let started = |who: &str| -> (u64, u64) {
        let line = printed
            .lines()
            .find(|l| l.starts_with(&format!("{who} started (")))
            .unwrap();
        let numbers: Vec<u64> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        (numbers[0], numbers[1])
    };
    let (writer, writer_parent) = started("writer");
    let (reader, reader_parent) = started("reader");
    assert_ne!(writer, reader, "writer and reader run on different workers");
    assert_eq!(writer_parent, reader_parent, "both are children of the same pool");
    // The pids the guests print are the workers the host reports.
    let reports = run.reports();
    assert_eq!(reports[0]["worker"], writer);
    assert_eq!(reports[1]["worker"], reader);
}

#[test]
fn many_producers_and_consumers_on_different_workers() {
    const PAIRS: usize = 4;
    const ITEMS: u32 = 500;
    let manager = Manager::new();
    let pool = pool_with(&manager, 2 * PAIRS);
    let producers: Vec<_> = (0..PAIRS)
        .map(|p| {
            pool.apply_async(call(
                "produce",
                [text("mpmc"), text(&format!("p{p}")), Value::U32(ITEMS)],
            ))
            .unwrap()
        })
        .collect();
    let consumers: Vec<_> = (0..PAIRS)
        .map(|_| {
            pool.apply_async(call("consume", [text("mpmc"), Value::U32(ITEMS)]))
                .unwrap()
        })
        .collect();

    let producer_pids: BTreeSet<u32> = producers
        .iter()
        .map(|p| match p.get() {
            Ok(Some(Value::U32(pid))) => pid,
            other => panic!("producer: {other:?}"),
        })
        .collect();
    assert!(producer_pids.len() > 1, "producers ran on several workers");
    let mut seen = HashSet::new();
    let mut consumer_pids = BTreeSet::new();
    for consumer in &consumers {
        let report = consumer.wait_report();
        consumer_pids.insert(report.worker.unwrap());
        let Ok(Some(Value::List(items))) = report.result else {
            panic!("consumer: {:?}", report.result)
        };
        let mut last = [None; PAIRS];
        for item in items {
            let Value::String(item) = item else {
                panic!("not a string")
            };
            let (producer, i) = item.split_once(':').unwrap();
            let (producer, i): (usize, u32) = (producer[1..].parse().unwrap(), i.parse().unwrap());
            assert!(
                last[producer].is_none_or(|l| l < i),
                "{item} after p{producer}:{:?}",
                last[producer]
            );
            last[producer] = Some(i);
            assert!(seen.insert(item), "an item was delivered twice");
        }
    }
    assert!(consumer_pids.len() > 1, "consumers ran on several workers");
    assert_eq!(
        seen.len(),
        PAIRS * ITEMS as usize,
        "every item delivered exactly once"
    );

    // Quiescent: qsize is exact, for the host and for a task.
    let queue = manager.queue("mpmc").unwrap();
    assert_eq!(queue.len(), 0);
    for i in 0..7 {
        queue.put(format!("extra {i}")).unwrap();
    }
    assert_eq!(queue.len(), 7);
    let size = pool.apply(call("size", [text("mpmc")])).unwrap();
    assert_eq!(
        size,
        Ok(Some(Value::Tuple(vec![Value::U64(7), Value::Bool(false)])))
    );
}

#[test]
fn timeouts_and_non_blocking_flavours() {
    let manager = Manager::new();
    manager.bounded("full", 1).unwrap().put("only").unwrap();
    let pool = pool_with(&manager, 1);

    let waited = pool
        .apply_async(call(
            "get",
            [text("empty"), Value::Option(Some(Box::new(Value::U32(300))))],
        ))
        .unwrap();
    let report = waited.wait_report();
    assert_eq!(report.result, err("timeout"));
    assert!(
        report.duration >= Duration::from_millis(300),
        "returned after {:?}",
        report.duration
    );
    assert!(report.duration < PROMPT);

    assert_eq!(
        pool.apply(call("try-get", [text("empty")])).unwrap(),
        err("empty")
    );
    assert_eq!(
        pool.apply(call("try-put", [text("full"), text("x")])).unwrap(),
        err("full")
    );
    let report = pool
        .apply_async(call(
            "put",
            [
                text("full"),
                text("x"),
                Value::Option(Some(Box::new(Value::U32(200)))),
            ],
        ))
        .unwrap()
        .wait_report();
    assert_eq!(report.result, err("timeout"));
    assert!(report.duration >= Duration::from_millis(200));
    let many = pool.apply(call(
        "get-many",
        [
            text("empty"),
            Value::U32(5),
            Value::Option(Some(Box::new(Value::U32(50)))),
        ],
    ));
    assert_eq!(many.unwrap(), err("timeout"));
}

#[test]
fn a_put_to_a_full_queue_blocks_until_there_is_room() {
    let manager = Manager::new();
    let queue = manager.bounded("b", 1).unwrap();
    queue.put("first").unwrap();
    let pool = pool_with(&manager, 1);
    let put = pool
        .apply_async(call("put", [text("b"), text("second"), none()]))
        .unwrap();
    assert!(
        !put.wait_timeout(Duration::from_millis(300)),
        "the put waits while the queue is full"
    );
    assert_eq!(queue.get(), Ok(b"first".to_vec()));
    assert_eq!(put.get(), ok());
    assert_eq!(queue.get(), Ok(b"second".to_vec()));
}

#[test]
fn a_guest_blocked_in_get_does_not_outlive_terminate() {
    let manager = Manager::new();
    let pool = pool_with(&manager, 2);
    let pids = pool.worker_pids();
    let getter = pool.apply_async(call("get", [text("never"), none()])).unwrap();
    // A put that must wait (bounded, full) holds up its worker's supervisor: terminate frees it too.
    manager.bounded("full", 1).unwrap().put("x").unwrap();
    let putter = pool
        .apply_async(call("put", [text("full"), text("y"), none()]))
        .unwrap();
    assert!(!getter.wait_timeout(Duration::from_millis(200)));
    let clock = Instant::now();
    pool.terminate();
    assert!(clock.elapsed() < PROMPT);
    assert_eq!(getter.get(), Err(TaskError::Terminated));
    assert_eq!(putter.get(), Err(TaskError::Terminated));
    assert!(pids.iter().all(|&pid| !process_exists(pid)));
    // The dead task's get was withdrawn: an item put now stays in the queue.
    let never = manager.queue("never").unwrap();
    never.put("kept").unwrap();
    assert_eq!(never.try_get(), Ok(b"kept".to_vec()));
}

#[test]
fn an_item_of_a_killed_getter_is_not_lost() {
    let manager = Manager::new();
    let pool = pool_with(&manager, 1);
    let getter = pool.apply_async(call("get", [text("q"), none()])).unwrap();
    assert!(!getter.wait_timeout(Duration::from_millis(200)));
    let victim = pool.worker_pids()[0];
    assert!(kill(victim));
    assert!(matches!(getter.get(), Err(TaskError::WorkerDied { .. })));
    let queue = manager.queue("q").unwrap();
    queue.put("kept").unwrap();
    assert_eq!(queue.try_get(), Ok(b"kept".to_vec()));
    // The replacement worker uses the queue as before.
    assert_eq!(
        pool.apply(call("try-put", [text("q"), text("again")])).unwrap(),
        ok()
    );
    assert_eq!(queue.len(), 1);
}

#[test]
fn items_over_the_size_limit_are_refused_and_the_host_stays_healthy() {
    let run = invoke(
        "test_queue",
        &["-n", "1", "--max-item", "1KiB"],
        &[
            "put-size(\"q\", 1025)",
            "put-size(\"q\", 1024)",
            "try-get(\"q\")",
            "size(\"q\")",
        ],
    );
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines[0], "put-size(\"q\", 1025) -> err(\"too-large\")");
    assert_eq!(lines[1], "put-size(\"q\", 1024) -> ok");
    assert!(lines[2].starts_with("try-get(\"q\") -> ok(\"xxxx"));
    assert_eq!(lines[3], "size(\"q\") -> (0, true)");

    // The default limit is 1 MiB, and it holds whatever the guest tries.
    let manager = Manager::new();
    let pool = pool_with(&manager, 1);
    assert_eq!(
        pool.apply(call("put-size", [text("q"), Value::U32((1 << 20) + 1)]))
            .unwrap(),
        err("too-large")
    );
    assert_eq!(
        pool.apply(call("put-size", [text("q"), Value::U32(1 << 20)]))
            .unwrap(),
        ok()
    );
    assert_eq!(manager.queue("q").unwrap().len(), 1);
}

#[test]
fn queue_names_and_counts_are_checked() {
    let manager = Manager::new();
    let pool = pool_with(&manager, 1);
    assert_eq!(
        pool.apply(call("open-queue", [text("")])).unwrap(),
        err("invalid-name")
    );
    assert_eq!(
        pool.apply(call("open-queue", [text(&"n".repeat(256))])).unwrap(),
        err("invalid-name")
    );
    assert_eq!(
        pool.apply(call("open-queue", [text(&"n".repeat(255))])).unwrap(),
        ok()
    );
}

#[test]
fn feed_and_drain_round_trip_exact_bytes() {
    let wasm = guest("test_queue");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("items");
    // Spaces, an empty line, a carriage return and bytes that are not UTF-8 all survive.
    let items: &[&[u8]] = &[
        b"first item",
        b"",
        b"  spaced  ",
        b"crlf\r",
        b"\xff\xfe bytes",
        b"last",
    ];
    let mut content = items.join(&b'\n');
    content.push(b'\n');
    std::fs::write(&file, &content).unwrap();
    let feed = format!("jobs={}", file.display());
    let out = std::process::Command::new(poolhost_bin())
        .args([
            "run",
            wasm.to_str().unwrap(),
            "--feed",
            &feed,
            "--drain",
            "jobs",
            "--invoke",
            "size(\"jobs\")",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut expected = b"size(\"jobs\") -> (6, false)\n".to_vec();
    expected.extend(&content);
    assert_eq!(out.stdout, expected);

    // From stdin, with a task taking the first item: the rest drain in order.
    let run = invoke_with_input(
        "test_queue",
        &["--feed", "q=-", "--drain", "q"],
        &["get(\"q\", none)"],
        Some("a\nb\nc"),
    );
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "get(\"q\", none) -> ok(\"a\")\nb\nc\n")
    );
}

#[test]
fn queue_arguments_that_cannot_work_are_usage_errors() {
    let run = invoke_with_input(
        "test_queue",
        &["--queue", "q:2", "--feed", "q=-"],
        &["size(\"q\")"],
        Some("1\n2\n3\n"),
    );
    assert_eq!(run.code, 2);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(run.stderr.contains("full after 2 items"), "{}", run.stderr);
    let run = invoke("test_queue", &["--queue", "q"], &["size(\"q\")"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("NAME:MAXSIZE"), "{}", run.stderr);
    // An item must fit one message between host and worker.
    let run = invoke("test_queue", &["--max-item", "40MiB"], &["size(\"q\")"]);
    assert_eq!((run.code, run.stderr.lines().count()), (2, 1), "{}", run.stderr);
    assert!(run.stderr.contains("highest per-item limit"), "{}", run.stderr);
}

/// Waits for a task's report, which must come promptly.
fn finished(result: &poolhost::AsyncResult) -> poolhost::TaskReport {
    assert!(result.wait_timeout(PROMPT), "task {} did not finish", result.id());
    result.wait_report()
}

/// A worker whose tasks are short is sent its next task while it still runs one. If that one
/// then waits on a queue for a task sent ahead behind it, the task sent ahead must not wait for
/// it: the pool asks for it back when another worker goes idle, and runs it there.
#[test]
fn a_task_sent_ahead_behind_a_waiting_reader_comes_back_and_runs_elsewhere() {
    let manager = Manager::new();
    let pool = pool_with(&manager, 2);
    // One worker learns its tasks are short, the other that they are not; the short one goes
    // idle first, so it is the first given a task next.
    let quick = pool.apply_async(call("whoami", [])).unwrap();
    let slow = pool
        .apply_async(call(
            "get",
            [text("empty"), Value::Option(Some(Box::new(Value::U32(100))))],
        ))
        .unwrap();
    finished(&quick);
    finished(&slow);

    let reader = pool.apply_async(call("get", [text("handoff"), none()])).unwrap();
    let busy = pool
        .apply_async(call(
            "get",
            [text("empty"), Value::Option(Some(Box::new(Value::U32(500))))],
        ))
        .unwrap();
    // No worker is free: this goes ahead to the reader's worker, whose last task was short.
    let writer = pool
        .apply_async(call("put", [text("handoff"), text("item"), none()]))
        .unwrap();

    let reader = finished(&reader);
    assert_eq!(
        reader.result,
        Ok(Some(Value::Result(Ok(Some(Box::new(text("item")))))))
    );
    let writer = finished(&writer);
    assert_eq!(writer.result, ok());
    assert_ne!(writer.worker, reader.worker, "the writer ran beside the reader");
    assert_eq!(writer.worker, finished(&busy).worker);
    assert_eq!(writer.attempts, 1, "a task given back did not run there");
}

/// `cancel_pending` also takes back the tasks sent ahead to a worker that has not started them.
#[test]
fn cancel_pending_takes_back_tasks_sent_ahead() {
    let manager = Manager::new();
    let pool = pool_with(&manager, 1);
    finished(&pool.apply_async(call("whoami", [])).unwrap());
    let reader = pool.apply_async(call("get", [text("later"), none()])).unwrap();
    let queued: Vec<_> = (0..3)
        .map(|_| pool.apply_async(call("whoami", [])).unwrap())
        .collect();
    // The first waits in the worker, sent ahead; the other two in the pool.
    assert_eq!(pool.cancel_pending(), 2);
    for task in &queued {
        let report = finished(task);
        assert_eq!(report.result, Err(TaskError::Cancelled));
        assert_eq!(report.attempts, 0);
    }
    manager.queue("later").unwrap().put(b"now".to_vec()).unwrap();
    assert_eq!(
        finished(&reader).result,
        Ok(Some(Value::Result(Ok(Some(Box::new(text("now")))))))
    );
    pool.join().unwrap();
}

/// When a worker dies, the task sent ahead to it runs on its replacement, once.
#[test]
fn a_task_sent_ahead_to_a_worker_that_dies_runs_on_its_replacement() {
    let manager = Manager::new();
    let pool = pool_with(&manager, 1);
    let Ok(Some(Value::U32(pid))) = finished(&pool.apply_async(call("whoami", [])).unwrap()).result else {
        panic!("whoami answers a pid");
    };
    let reader = pool.apply_async(call("get", [text("never"), none()])).unwrap();
    let ahead = pool.apply_async(call("whoami", [])).unwrap();
    // Whether or not the reader has started, it is the task the worker is on.
    assert!(kill(pid));
    assert!(matches!(
        finished(&reader).result,
        Err(TaskError::WorkerDied { pid: died, .. }) if died == pid
    ));
    let ahead = finished(&ahead);
    assert!(
        matches!(ahead.result, Ok(Some(Value::U32(other))) if other != pid),
        "{:?}",
        ahead.result
    );
    assert_eq!(ahead.attempts, 1);
}

/// The number an item of these tests carries.
fn number(item: Vec<u8>) -> u32 {
    String::from_utf8(item)
        .ok()
        .and_then(|text| text.parse().ok())
        .expect("a numbered item")
}

/// What `queue` holds now, in order.
fn drain(queue: &poolhost::Queue) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| queue.try_get().ok()).collect()
}

fn relay(count: u32, spin: bool) -> Call {
    call(
        "relay",
        [text("from"), text("to"), Value::U32(count), Value::Bool(spin)],
    )
}

/// A reader is leased runs of the items behind those it gets; killed while it holds a lease, the
/// items it had not taken go back, in order, and none it took comes back.
#[test]
fn a_killed_reader_s_lease_goes_back_exactly() {
    const ITEMS: u32 = 1_000;
    // Far enough into the reader's run that it holds a lease of 64 items, partly claimed.
    const RELAYED: u32 = 300;
    let manager = Manager::new();
    let pool = pool_with(&manager, 1);
    let (from, to) = (manager.queue("from").unwrap(), manager.queue("to").unwrap());
    for i in 0..ITEMS {
        from.put(i.to_string()).unwrap();
    }
    let reader = pool.apply_async(relay(RELAYED, true)).unwrap();
    let relayed: Vec<u32> = (0..RELAYED)
        .map(|_| number(to.get_timeout(PROMPT).expect("relayed")))
        .collect();
    assert_eq!(relayed, (0..RELAYED).collect::<Vec<_>>());
    // What is leased and not taken still counts as in the queue.
    assert_eq!(from.len(), (ITEMS - RELAYED) as usize);
    assert!(kill(pool.worker_pids()[0]));
    assert!(matches!(reader.get(), Err(TaskError::WorkerDied { .. })));
    let rest: Vec<u32> = drain(&from).into_iter().map(number).collect();
    assert_eq!(rest, (RELAYED..ITEMS).collect::<Vec<_>>());
}

/// A frozen reader cannot answer; what it has not taken of its lease is taken back without it,
/// and once thawed it goes on with the items after, each item reaching one reader once.
#[test]
fn a_frozen_reader_s_lease_is_taken_back_without_it() {
    const ITEMS: u32 = 200_000;
    let manager = Manager::new();
    let pool = pool_with(&manager, 1);
    let (from, to) = (manager.queue("from").unwrap(), manager.queue("to").unwrap());
    for i in 0..ITEMS {
        from.put(i.to_string()).unwrap();
    }
    let reader = pool.apply_async(relay(ITEMS, false)).unwrap();
    let mut relayed: Vec<Vec<u8>> = (0..1_000)
        .map(|_| to.get_timeout(PROMPT).expect("relayed"))
        .collect();
    let pid = pool.worker_pids()[0];
    assert!(signal(pid, rustix::process::Signal::STOP));
    let taken_back: Vec<u32> = drain(&from).into_iter().map(number).collect();
    assert!(signal(pid, rustix::process::Signal::CONT));
    // The reader relays ITEMS items in all: it gets one stand-in for each item taken back.
    for _ in &taken_back {
        from.put("stand-in").unwrap();
    }
    assert!(reader.wait_timeout(PROMPT * 3), "the thawed reader finishes");
    assert_eq!(reader.get(), Ok(None));
    relayed.extend(drain(&to));
    let stand_ins = relayed.iter().filter(|item| *item == b"stand-in").count();
    assert_eq!(stand_ins, taken_back.len());
    let got: Vec<u32> = relayed
        .into_iter()
        .filter(|item| item != b"stand-in")
        .map(number)
        .collect();
    // Each side saw its items in the order they were put, and between them every item once.
    assert!(got.windows(2).all(|w| w[0] < w[1]), "the reader's items in order");
    assert!(
        taken_back.windows(2).all(|w| w[0] < w[1]),
        "the items taken back in order"
    );
    let mut all: Vec<u32> = got.into_iter().chain(taken_back).collect();
    all.sort_unstable();
    assert_eq!(all, (0..ITEMS).collect::<Vec<_>>());
}

/// Two readers on two workers, each leased runs in turn: each sees its items in the order they
/// were put, and every item reaches one of them once.
#[test]
fn two_leasing_readers_each_see_the_writer_s_order() {
    const ITEMS: u32 = 20_000;
    let manager = Manager::new();
    let pool = pool_with(&manager, 2);
    let from = manager.queue("from").unwrap();
    let readers: Vec<_> = (0..2)
        .map(|_| {
            pool.apply_async(call("consume", [text("from"), Value::U32(ITEMS / 2)]))
                .unwrap()
        })
        .collect();
    for i in 0..ITEMS {
        from.put(i.to_string()).unwrap();
    }
    let mut all = Vec::new();
    for reader in readers {
        let Ok(Some(Value::List(items))) = reader.get() else {
            panic!("a reader failed")
        };
        let got: Vec<u32> = items
            .into_iter()
            .map(|item| match item {
                Value::String(text) => text.parse().expect("a numbered item"),
                other => panic!("not text: {other:?}"),
            })
            .collect();
        assert!(got.windows(2).all(|w| w[0] < w[1]), "a reader's items in order");
        all.extend(got);
    }
    all.sort_unstable();
    assert_eq!(all, (0..ITEMS).collect::<Vec<_>>());
}
