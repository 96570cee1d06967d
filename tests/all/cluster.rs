//! Many machines through Redis, on one machine: each test starts its own `redis-server` on a free
//! loopback port (a test fails, never skips, when it cannot) and its hosts as separate
//! `poolhost serve` processes, so they can be killed with SIGKILL and paused with SIGSTOP. Short
//! heartbeats (100 ms) and visibility times (600 ms) keep the suite fast.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use poolhost::{Call, Cluster, Limits, Pool, Status, TaskError, Value};
use rustix::process::Signal;
use serde_json::Value as Json;

use crate::common::{Background, RUN_LIMIT, guest, kill, poolhost, signal};

/// A `redis-server` of the test's own, killed and reaped when dropped.
struct Redis {
    child: Child,
    url: String,
}

impl Redis {
    /// Starts a server on a free loopback port, with no persistence, and waits until it answers.
    fn start() -> Redis {
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let spawned = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let child = match spawned {
                Ok(child) => child,
                Err(e) => panic!("cannot start redis-server ({e}): `make test` installs it"),
            };
            let mut server = Redis {
                child,
                url: format!("redis://127.0.0.1:{port}/"),
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if server.child.try_wait().unwrap().is_some() {
                    break; // The port was taken meanwhile: another one.
                }
                if Cluster::open(&server.url, "default").unwrap().status().is_ok() {
                    return server;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("redis-server did not start on a free loopback port");
    }

    fn cluster(&self) -> Cluster {
        Cluster::open(&self.url, "default").unwrap()
    }

    fn status(&self) -> Status {
        self.cluster().status().expect("the server answers")
    }

    /// Starts a host of pool `default` with `workers` workers and short timing, `extra` args.
    fn host(&self, workers: usize, extra: &[&str]) -> Background {
        let workers = workers.to_string();
        let mut args = vec![
            "serve",
            "--redis",
            &self.url,
            "-n",
            &workers,
            "--heartbeat",
            "100ms",
            "--visibility",
            "600ms",
        ];
        args.extend_from_slice(extra);
        Background::start(&args, &[])
    }

    /// Waits until `count` hosts are alive.
    fn wait_for_hosts(&self, count: usize) {
        self.wait_until(&format!("{count} hosts alive"), |status| {
            status.hosts.iter().filter(|host| host.alive).count() >= count
        });
    }

    /// Waits, at most 30 s, until `condition` holds of the pool's status.
    fn wait_until(&self, what: &str, condition: impl Fn(&Status) -> bool) -> Status {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.status();
            if condition(&status) {
                return status;
            }
            assert!(Instant::now() < deadline, "waited 30 s for {what}: {status:?}");
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The id of the host running in process `pid`, as it names itself.
fn host_id(status: &Status, pid: u32) -> String {
    let part = format!("-{pid}-");
    status
        .hosts
        .iter()
        .find(|host| host.id.contains(&part))
        .map(|host| host.id.clone())
        .unwrap_or_else(|| panic!("no host with pid {pid} in {status:?}"))
}

/// Submits `calls` of test-calls to the cluster in the background, results as JSON.
fn submit(redis: &Redis, calls: &[String], extra: &[&str]) -> Background {
    let test_calls = guest("test_calls");
    let mut args = vec![
        "run",
        test_calls.to_str().unwrap(),
        "--redis",
        &redis.url,
        "--output",
        "json",
    ];
    args.extend_from_slice(extra);
    args.push("--invoke");
    args.extend(calls.iter().map(String::as_str));
    Background::start(&args, &[])
}

/// Each task's report, by id, checking that each id is reported exactly once.
fn reports_once(stdout: &str, count: usize) -> Vec<Json> {
    let mut reports: Vec<Json> = stdout
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).unwrap())
        .filter(|report: &Json| report.get("id").is_some())
        .collect();
    reports.sort_by_key(|report| report["id"].as_u64());
    let ids: Vec<u64> = reports
        .iter()
        .map(|report| report["id"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ids,
        (0..count as u64).collect::<Vec<_>>(),
        "each task reported once: {stdout}"
    );
    reports
}

#[test]
fn three_hosts_share_the_tasks_and_each_result_comes_once() {
    let redis = Redis::start();
    let hosts: Vec<Background> = (0..3).map(|_| redis.host(1, &[])).collect();
    redis.wait_for_hosts(3);
    let calls: Vec<String> = (0..24).map(|i| format!("sleep-ms({})", 100 + i)).collect();
    let run = submit(&redis, &calls, &[]).finish(RUN_LIMIT);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let reports = reports_once(&run.stdout, 24);
    for (i, report) in reports.iter().enumerate() {
        assert_eq!(report["ok"], true, "{report}");
        assert_eq!(report["value"], (100 + i).to_string(), "{report}");
    }
    let status = redis.status();
    for host in &hosts {
        let id = host_id(&status, host.pid());
        let ran = reports
            .iter()
            .filter(|report| report["host"] == id.as_str())
            .count();
        assert!(ran > 0, "host {id} ran no task: {}", run.stdout);
    }
    assert_eq!(status.done, 24);
    assert_eq!((status.waiting, status.running), (0, 0));
}

#[test]
fn a_host_killed_mid_task_has_its_tasks_run_again_elsewhere() {
    let redis = Redis::start();
    let doomed = redis.host(2, &[]);
    redis.wait_for_hosts(1);
    let calls: Vec<String> = (0..6).map(|_| "sleep-ms(1500)".to_owned()).collect();
    let run = submit(&redis, &calls, &[]);
    // Killed while it holds tasks (one per worker: they are long), before any could finish;
    // its workers die with it.
    redis.wait_until("the first host to hold tasks", |status| status.running >= 2);
    assert!(kill(doomed.pid()));
    let survivor = redis.host(2, &[]);
    let run = run.finish(RUN_LIMIT);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let reports = reports_once(&run.stdout, 6);
    let survivor_id = host_id(&redis.status(), survivor.pid());
    for report in &reports {
        assert_eq!(report["ok"], true, "{report}");
        assert_eq!(report["host"], survivor_id.as_str(), "{report}");
    }
    let retried = reports.iter().filter(|report| report["attempts"] == 2).count();
    assert!(
        retried >= 2,
        "the dead host's tasks count its attempt: {}",
        run.stdout
    );
    drop(doomed);
}

#[test]
fn a_paused_host_loses_its_tasks_and_its_late_results_are_dropped() {
    let redis = Redis::start();
    let paused = redis.host(2, &[]);
    redis.wait_for_hosts(1);
    let calls: Vec<String> = (0..2).map(|_| "sleep-ms(1000)".to_owned()).collect();
    let run = submit(&redis, &calls, &[]);
    redis.wait_until("the first host to hold both tasks", |status| status.running == 2);
    // Paused past the visibility time: its workers run on and finish, but the host cannot
    // renew the tasks, and another host takes them over.
    assert!(signal(paused.pid(), Signal::STOP));
    let other = redis.host(2, &[]);
    let run = run.finish(RUN_LIMIT);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let other_id = host_id(&redis.status(), other.pid());
    for report in reports_once(&run.stdout, 2) {
        assert_eq!(report["host"], other_id.as_str(), "{report}");
    }
    // Woken, it learns that the tasks are no longer its own, and its results go nowhere.
    assert!(signal(paused.pid(), Signal::CONT));
    assert!(signal(paused.pid(), Signal::TERM));
    let paused = paused.finish(RUN_LIMIT);
    assert_eq!(paused.code, 0, "{}", paused.stderr);
    assert!(
        paused.stderr.contains("taken over by another host"),
        "{}",
        paused.stderr
    );
    assert_eq!(redis.status().done, 2, "exactly one result per task");
}

#[test]
fn a_task_whose_hosts_keep_dying_is_set_aside_as_failed() {
    let redis = Redis::start();
    let calls = vec!["sleep-ms(60000)".to_owned(), "add(1, 2)".to_owned()];
    let run = submit(&redis, &calls, &[]);
    let mut killed = 0;
    for round in 0..2 {
        // Two workers: the short task runs beside the long one, not behind it.
        let host = redis.host(2, &["--max-attempts", "2"]);
        let id = {
            redis.wait_for_hosts(1);
            host_id(&redis.status(), host.pid())
        };
        redis.wait_until(&format!("host {round} to take the long task"), |status| {
            status
                .hosts
                .iter()
                .any(|h| h.id == id && h.running.unwrap_or(0) >= 1)
                && status.done + status.failed >= round.min(1)
        });
        // The short task may finish on the first host; the long one dies with each.
        if round == 0 {
            redis.wait_until("the short task to finish", |status| status.done >= 1);
        }
        assert!(kill(host.pid()));
        killed += 1;
        drop(host);
        redis.wait_until("the dead host to be gone", |status| {
            status.hosts.iter().all(|h| !h.alive)
        });
    }
    let last = redis.host(2, &["--max-attempts", "2"]);
    let run = run.finish(RUN_LIMIT);
    assert_eq!(killed, 2);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let reports = reports_once(&run.stdout, 2);
    assert_eq!(reports[0]["error"]["kind"], "host-died", "{}", run.stdout);
    assert_eq!(reports[0]["attempts"], 2, "{}", run.stdout);
    assert_eq!(reports[1]["value"], "3", "{}", run.stdout);
    assert_eq!(redis.status().dead, 1);
    drop(last);
}

#[test]
fn jobs_print_their_output_as_a_local_run_does() {
    let redis = Redis::start();
    let _hosts: Vec<Background> = (0..2).map(|_| redis.host(2, &[])).collect();
    redis.wait_for_hosts(2);
    let hello = guest("hello");
    let input = "world\n\"dear reader\"\nand you\n";
    let args = |cluster: bool| {
        let mut args = vec![
            "run",
            hello.to_str().unwrap(),
            "-n",
            "2",
            "--each",
            "-",
            "--tag",
            "--group",
        ];
        if cluster {
            args.extend(["--redis", redis.url.as_str()]);
        }
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let local = crate::common::poolhost(
        &args(false).iter().map(String::as_str).collect::<Vec<_>>(),
        Some(input),
    );
    let remote = crate::common::poolhost(
        &args(true).iter().map(String::as_str).collect::<Vec<_>>(),
        Some(input),
    );
    assert_eq!((local.code, remote.code), (0, 0), "{}", remote.stderr);
    let sorted = |text: &str| {
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort();
        lines.join("\n")
    };
    assert!(!local.stdout.is_empty());
    assert_eq!(sorted(&remote.stdout), sorted(&local.stdout));
}

#[test]
fn failures_and_limits_come_back_and_the_hosts_caps_apply() {
    let redis = Redis::start();
    let _host = redis.host(2, &["--timeout", "300ms"]);
    redis.wait_for_hosts(1);
    let calls = vec![
        "fail(\"no luck\")".to_owned(),
        "sleep-ms(5000)".to_owned(),
        "echo(\"hi\")".to_owned(),
    ];
    // The submitter asks for 10 s; the host allows 300 ms.
    let run = submit(&redis, &calls, &["--timeout", "10s"]).finish(RUN_LIMIT);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let reports = reports_once(&run.stdout, 3);
    assert_eq!(reports[0]["error"]["kind"], "trap", "{}", run.stdout);
    assert_eq!(reports[1]["error"]["kind"], "timeout", "{}", run.stdout);
    assert_eq!(reports[2]["value"], "\"hi\"", "{}", run.stdout);
    assert!(run.stderr.contains("3 tasks, 1 ok, 2 failed"), "{}", run.stderr);
}

#[test]
fn a_submitter_grants_nothing_on_other_machines() {
    let redis = Redis::start();
    let test_calls = guest("test_calls");
    for grant in [["--dir", "/tmp"], ["--env", "A=1"], ["--dir-rw", "/tmp"]] {
        let mut args = vec!["run", test_calls.to_str().unwrap(), "--redis", &redis.url];
        args.extend(grant);
        args.extend(["--invoke", "noop()"]);
        let run = poolhost(&args, None);
        assert_eq!(run.code, 2, "{}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
        assert!(run.stderr.contains("for the hosts to grant"), "{}", run.stderr);
    }
    assert_eq!(redis.status().waiting, 0, "nothing was submitted");
}

#[test]
fn bad_urls_and_absent_servers_are_one_line_errors() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let absent = format!("redis://127.0.0.1:{port}/");
    let test_calls = guest("test_calls");
    for args in [
        vec![
            "run",
            test_calls.to_str().unwrap(),
            "--redis",
            "http://x/",
            "--invoke",
            "noop()",
        ],
        vec![
            "run",
            test_calls.to_str().unwrap(),
            "--redis",
            &absent,
            "--invoke",
            "noop()",
        ],
        vec!["serve", "--redis", &absent],
        vec!["status", "--redis", &absent],
        vec!["serve"],
        vec!["status", "--redis", &absent, "--pool", "a b"],
    ] {
        let run = poolhost(&args, None);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {}", run.stderr);
        assert!(run.stderr.starts_with("poolhost: "), "{args:?}: {}", run.stderr);
    }
}

#[test]
fn a_host_stops_cleanly_on_sigterm_after_finishing_its_tasks() {
    let redis = Redis::start();
    let host = redis.host(2, &[]);
    redis.wait_for_hosts(1);
    let calls: Vec<String> = (0..2).map(|_| "sleep-ms(700)".to_owned()).collect();
    let run = submit(&redis, &calls, &[]);
    redis.wait_until("the host to hold both tasks", |status| status.running == 2);
    assert!(signal(host.pid(), Signal::TERM));
    let host_run = host.finish(RUN_LIMIT);
    assert_eq!(host_run.code, 0, "{}", host_run.stderr);
    assert!(
        host_run.stderr.contains("completed 2 tasks"),
        "{}",
        host_run.stderr
    );
    let run = run.finish(RUN_LIMIT);
    assert_eq!(run.code, 0, "{}", run.stderr);
    reports_once(&run.stdout, 2);
    let status = redis.status();
    assert!(status.hosts.is_empty(), "the host left the pool: {status:?}");
}

#[test]
fn the_status_command_shows_hosts_tasks_and_json() {
    let redis = Redis::start();
    let host = redis.host(3, &[]);
    redis.wait_for_hosts(1);
    let run = submit(&redis, &["add(2, 3)".to_owned()], &[]).finish(RUN_LIMIT);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let text = poolhost(&["status", "--redis", &redis.url], None);
    assert_eq!(text.code, 0, "{}", text.stderr);
    let id = host_id(&redis.status(), host.pid());
    // A heartbeat late on a loaded machine reads as gone for a moment: a bounded wait for it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut text = text;
    while !text.stdout.contains(&format!("{id}  alive  3 workers")) && Instant::now() < deadline {
        text = poolhost(&["status", "--redis", &redis.url], None);
    }
    assert!(
        text.stdout.contains(&format!("{id}  alive  3 workers")),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("1 done, 0 failed"), "{}", text.stdout);
    let json = poolhost(&["status", "--redis", &redis.url, "--output", "json"], None);
    let json: Json = serde_json::from_str(json.stdout.trim()).unwrap();
    assert_eq!(json["hosts"][0]["workers"], 3);
    assert_eq!(json["done"], 1);
}

#[test]
fn the_library_pool_runs_on_the_cluster() {
    let redis = Redis::start();
    let _hosts: Vec<Background> = (0..2).map(|_| redis.host(2, &[])).collect();
    redis.wait_for_hosts(2);
    let pool = Pool::builder()
        .component(guest("test_calls"))
        .workers(4)
        .cluster(redis.cluster())
        .build()
        .unwrap();
    let doubled = pool.map("math.double", (0..40u64).map(Value::U64)).unwrap();
    let expected: Vec<_> = (0..40u64).map(|i| Ok(Some(Value::U64(2 * i)))).collect();
    assert_eq!(doubled, expected);
    let task = pool
        .apply_async(Call::new("add", [Value::S32(20), Value::S32(22)]))
        .unwrap();
    let unordered: Vec<usize> = pool
        .imap_unordered("echo", ["a", "b", "c"].map(|s| Value::String(s.into())))
        .unwrap()
        .map(|(index, result)| {
            assert!(result.is_ok());
            index
        })
        .collect();
    assert_eq!(unordered.len(), 3);
    pool.close();
    pool.join().unwrap();
    assert_eq!(task.get(), Ok(Some(Value::S32(42))));
    assert!(task.report().unwrap().host.is_some());
    // Terminating a pool whose tasks are still out fails them at once.
    let pool = Pool::builder()
        .component(guest("test_calls"))
        .cluster(redis.cluster())
        .build()
        .unwrap();
    let long = pool
        .apply_async(Call::new("sleep-ms", [Value::U32(60_000)]))
        .unwrap();
    pool.terminate();
    assert_eq!(long.get(), Err(TaskError::Terminated));
    assert!(pool.is_finished());

    // The manager's queues are the cluster's: what one process puts, another's gets.
    let here = redis.cluster().manager(Limits::default());
    let there = redis.cluster().manager(Limits::default());
    let bounded = here.bounded("lib", 2).unwrap();
    bounded.put("x").unwrap();
    bounded.try_put("y").unwrap();
    assert!(bounded.try_put("z").is_err(), "the bound holds");
    let theirs = there.queue("lib").unwrap();
    assert_eq!(theirs.capacity(), Some(2), "the bound is the cluster's");
    assert_eq!(theirs.len(), 2);
    assert_eq!(theirs.get().unwrap(), b"x");
    assert_eq!(theirs.get_timeout(Duration::from_secs(5)).unwrap(), b"y");
    assert!(
        theirs.get_timeout(Duration::from_millis(200)).is_err(),
        "empty: it times out"
    );
}

#[test]
fn halt_joblog_and_the_environments_server_work_on_the_cluster() {
    let redis = Redis::start();
    let _host = redis.host(1, &[]);
    redis.wait_for_hosts(1);
    let test_calls = guest("test_calls");
    let scratch = tempfile::tempdir().unwrap();
    let joblog = scratch.path().join("joblog");
    // POOLHOST_REDIS stands for --redis; the first failure cancels what no host has taken.
    let run = crate::common::poolhost_env(
        &[
            "run",
            test_calls.to_str().unwrap(),
            "--halt",
            "soon,fail=1",
            "--joblog",
            joblog.to_str().unwrap(),
            "--output",
            "json",
            "--invoke",
            "fail(\"first\")",
            "sleep-ms(300)",
            "sleep-ms(300)",
            "sleep-ms(300)",
            "sleep-ms(300)",
        ],
        &[("POOLHOST_REDIS", redis.url.as_str())],
        None,
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("poolhost: "), "{}", run.stderr);
    let reports = reports_once(&run.stdout, 5);
    assert_eq!(reports[0]["error"]["kind"], "trap", "{}", run.stdout);
    let cancelled = reports
        .iter()
        .filter(|report| report["error"]["kind"] == "cancelled")
        .count();
    assert!(cancelled >= 2, "what no host took was cancelled: {}", run.stdout);
    let log = std::fs::read_to_string(&joblog).unwrap();
    assert_eq!(log.lines().count(), 6, "a header and a row per task: {log}");
    let status = crate::common::poolhost_env(&["status"], &[("POOLHOST_REDIS", redis.url.as_str())], None);
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert!(status.stdout.contains("1 alive"), "{}", status.stdout);
}

#[test]
fn a_host_refuses_component_bytes_that_do_not_match_their_digest() {
    let redis = Redis::start();
    let port = redis
        .url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let run = submit(&redis, &["add(1, 2)".to_owned()], &[]);
    // No host yet: the component waits in Redis, where someone swaps its bytes.
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-p", &port])
            .args(args)
            .output()
            .expect("redis-cli runs (it comes with redis-server)");
        String::from_utf8(out.stdout).unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let key = loop {
        let keys = cli(&["--scan", "--pattern", "ph:{default}:comp:*"]);
        if let Some(key) = keys.lines().next() {
            break key.to_owned();
        }
        assert!(Instant::now() < deadline, "the component was never stored");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(cli(&["SET", &key, "(component)", "KEEPTTL"]).trim(), "OK");
    let _host = redis.host(1, &[]);
    let run = run.finish(RUN_LIMIT);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let reports = reports_once(&run.stdout, 1);
    let message = reports[0]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("do not have that digest; refused"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_queue_item_crosses_from_a_task_on_one_host_to_a_task_on_another() {
    let redis = Redis::start();
    let hosts: Vec<Background> = (0..2).map(|_| redis.host(1, &[])).collect();
    redis.wait_for_hosts(2);
    let test_queue = guest("test_queue");
    // Short tasks first: a host that held more tasks than it has workers while its tasks are
    // short would take the put below behind the get, on the same worker, and wait forever.
    let sizes: Vec<String> = (0..200).map(|_| "size(\"z\")".to_owned()).collect();
    let mut args = vec![
        "run",
        test_queue.to_str().unwrap(),
        "--redis",
        &redis.url,
        "-q",
        "--invoke",
    ];
    args.extend(sizes.iter().map(String::as_str));
    let warm = poolhost(&args, None);
    assert_eq!(warm.code, 0, "{}", warm.stderr);
    // The get blocks one host's only worker until the put, which only the other host can run.
    let run = poolhost(
        &[
            "run",
            test_queue.to_str().unwrap(),
            "--redis",
            &redis.url,
            "--output",
            "json",
            "--invoke",
            "get(\"w\", some(30000))",
            "put(\"w\", \"hello\", none)",
        ],
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let reports = reports_once(&run.stdout, 2);
    assert_eq!(reports[0]["value"], "ok(\"hello\")", "{}", run.stdout);
    assert_ne!(reports[0]["host"], reports[1]["host"], "{}", run.stdout);
    drop(hosts);
}

#[test]
fn the_submitter_feeds_bounds_and_drains_the_clusters_queues() {
    let redis = Redis::start();
    let _host = redis.host(1, &[]);
    redis.wait_for_hosts(1);
    let test_queue = guest("test_queue");
    let run = poolhost(
        &[
            "run",
            test_queue.to_str().unwrap(),
            "--redis",
            &redis.url,
            "--feed",
            "q=-",
            "--queue",
            "b:2",
            "--invoke",
            "consume(\"q\", 2)",
            "try-put(\"b\", \"1\")",
            "try-put(\"b\", \"2\")",
            "try-put(\"b\", \"3\")",
            "get(\"empty\", some(300))",
            "--drain",
            "q",
            "--drain",
            "b",
        ],
        Some("a\nb\nc\nd\n"),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let expected = [
        "consume(\"q\", 2) -> [\"a\", \"b\"]",
        "try-put(\"b\", \"1\") -> ok",
        "try-put(\"b\", \"2\") -> ok",
        "try-put(\"b\", \"3\") -> err(\"full\")",
        "get(\"empty\", some(300)) -> err(\"timeout\")",
        "c",
        "d",
        "1",
        "2",
    ];
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines, expected, "{}", run.stdout);
    let status = redis.status();
    assert!(
        status.queues.iter().all(|(_, length)| *length == 0),
        "drained: {status:?}"
    );
}

#[test]
fn the_seeds_driver_programs_run_on_the_cluster() {
    let redis = Redis::start();
    let _hosts: Vec<Background> = (0..2).map(|_| redis.host(1, &[])).collect();
    redis.wait_for_hosts(2);
    let seed = guest("seed-queue");
    let run = poolhost(&["run", seed.to_str().unwrap(), "--redis", &redis.url], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let got: String = run
        .stdout
        .lines()
        .filter_map(|line| line.strip_prefix("reader got message from Queue: "))
        .collect();
    assert_eq!(got, "itcast", "{}", run.stdout);
    assert!(
        run.stdout.lines().last().unwrap().ends_with(") End"),
        "{}",
        run.stdout
    );

    let seed = guest("seed-pool");
    let run = poolhost(&["run", seed.to_str().unwrap(), "--redis", &redis.url], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for task in 0..5 {
        assert!(
            run.stdout.contains(&format!("Run task {task} (")),
            "{}",
            run.stdout
        );
        assert!(
            run.stdout.contains(&format!("Task {task} runs ")),
            "{}",
            run.stdout
        );
    }
    assert_eq!(run.stdout.lines().last(), Some("All subprocesses done."));
}

#[test]
fn items_a_dead_hosts_task_held_go_back_to_the_head_of_their_queue_in_order() {
    let redis = Redis::start();
    let doomed = redis.host(1, &[]);
    redis.wait_for_hosts(1);
    let test_queue = guest("test_queue");
    let run = Background::start_with_input(
        &[
            "run",
            test_queue.to_str().unwrap(),
            "--redis",
            &redis.url,
            "--feed",
            "q=-",
            "--drain",
            "q",
            "--invoke",
            "consume(\"q\", 5)",
        ],
        &[],
        Some("a\nb\nc\nd\n"),
    );
    // The task holds the four items and waits for a fifth when its host is killed.
    redis.wait_until("the task to take the four items", |status| {
        status.running == 1
            && status
                .queues
                .iter()
                .all(|(name, length)| name != "q" || *length == 0)
    });
    assert!(kill(doomed.pid()));
    // The survivor gives the items back before it sets the task aside (one attempt allowed).
    let _survivor = redis.host(1, &["--max-attempts", "1"]);
    let run = run.finish(RUN_LIMIT);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{}", run.stdout);
    assert!(
        lines[0].starts_with("consume(\"q\", 5) -> error: host died"),
        "{}",
        run.stdout
    );
    assert_eq!(lines[1..], ["a", "b", "c", "d"], "{}", run.stdout);
    drop(doomed);
}

#[test]
fn a_host_that_wakes_to_find_its_task_taken_over_stops_running_it() {
    let redis = Redis::start();
    let paused = redis.host(1, &[]);
    redis.wait_for_hosts(1);
    let test_queue = guest("test_queue");
    // A task that waits for an item the test gives only at the end: it runs as long as needed.
    let run = Background::start(
        &[
            "run",
            test_queue.to_str().unwrap(),
            "--redis",
            &redis.url,
            "--output",
            "json",
            "--invoke",
            "get(\"hold\", some(120000))",
        ],
        &[],
    );
    let paused_id = host_id(&redis.status(), paused.pid());
    redis.wait_until("the first host to hold the task", |status| {
        status
            .hosts
            .iter()
            .any(|h| h.id == paused_id && h.running == Some(1))
    });
    assert!(signal(paused.pid(), Signal::STOP));
    let other = redis.host(1, &[]);
    let part = format!("-{}-", other.pid());
    let other_id = host_id(
        &redis.wait_until("the other host to come up", |status| {
            status.hosts.iter().any(|h| h.id.contains(&part))
        }),
        other.pid(),
    );
    redis.wait_until("the other host to take the task over", |status| {
        status
            .hosts
            .iter()
            .any(|h| h.id == other_id && h.running == Some(1))
    });
    // Woken while its worker still runs the task, it learns that the task is another's and
    // kills that worker, rather than keep it busy for a result nobody wants.
    assert!(signal(paused.pid(), Signal::CONT));
    assert!(signal(paused.pid(), Signal::TERM));
    let paused = paused.finish(RUN_LIMIT);
    assert_eq!(paused.code, 0, "{}", paused.stderr);
    assert!(
        paused.stderr.contains("stopped its run here"),
        "{}",
        paused.stderr
    );
    // The item goes to the task's run on the other host.
    let queue = redis.cluster().manager(Limits::default()).queue("hold").unwrap();
    queue.put("x").unwrap();
    let run = run.finish(RUN_LIMIT);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let reports = reports_once(&run.stdout, 1);
    assert_eq!(reports[0]["value"], "ok(\"x\")", "{}", run.stdout);
    assert_eq!(reports[0]["host"], other_id.as_str(), "{}", run.stdout);
}

#[test]
fn retries_and_resume_work_on_the_cluster() {
    let redis = Redis::start();
    let _host = redis.host(2, &[]);
    redis.wait_for_hosts(1);
    let test_calls = guest("test_calls");
    let scratch = tempfile::tempdir().unwrap();
    let joblog = scratch.path().join("joblog");
    let args = |resume: bool| {
        let mut args = vec![
            "run".to_owned(),
            test_calls.to_str().unwrap().to_owned(),
            "--redis".to_owned(),
            redis.url.clone(),
            "--retries".to_owned(),
            "2".to_owned(),
            "--joblog".to_owned(),
            joblog.to_str().unwrap().to_owned(),
            "--output".to_owned(),
            "json".to_owned(),
        ];
        if resume {
            args.push("--resume".to_owned());
        }
        args.extend(["--invoke", "add(1, 2)", "fail(\"always\")"].map(str::to_owned));
        args
    };
    let first = args(false);
    let run = poolhost(&first.iter().map(String::as_str).collect::<Vec<_>>(), None);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let reports = reports_once(&run.stdout, 2);
    assert_eq!(reports[0]["attempts"], 1, "{}", run.stdout);
    // A trap is worth retrying: the host ran it three times.
    assert_eq!(reports[1]["attempts"], 3, "{}", run.stdout);
    assert_eq!(reports[1]["error"]["kind"], "trap", "{}", run.stdout);
    // Resumed, only the task that failed runs again.
    let again = args(true);
    let run = poolhost(&again.iter().map(String::as_str).collect::<Vec<_>>(), None);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let reports: Vec<Json> = run
        .stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Json>(line).ok())
        .collect();
    assert_eq!(reports.len(), 1, "{}", run.stdout);
    assert_eq!(reports[0]["call"], "fail(\"always\")", "{}", run.stdout);
}

#[test]
fn a_task_nested_a_million_deep_fails_without_crashing_its_host() {
    use sha2::Digest;
    let redis = Redis::start();
    let host = redis.host(1, &[]);
    redis.wait_for_hosts(1);
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut connection = client.get_connection().unwrap();
    // The component, stored as a submitter stores it.
    let wasm = std::fs::read(guest("test_calls")).unwrap();
    let digest: String = sha2::Sha256::digest(&wasm)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    redis::cmd("SET")
        .arg(format!("ph:{{default}}:comp:{digest}"))
        .arg(&wasm)
        .exec(&mut connection)
        .unwrap();
    // A task whose argument is a value nested a million deep, as no submitter of ours writes.
    let nested =
        |depth: usize| (0..depth).fold(Value::Bool(true), |inner, _| Value::Option(Some(Box::new(inner))));
    let spec = |value: Value| {
        postcard::to_allocvec(&(Call::new("echo", [value]), poolhost::TaskOptions::default())).unwrap()
    };
    let (shallow, deep_one) = (spec(Value::Bool(true)), spec(nested(1)));
    let level = deep_one.len() - shallow.len();
    // The argument starts where the two encodings first differ.
    let at = shallow.iter().zip(&deep_one).position(|(a, b)| a != b).unwrap();
    let mut crafted = deep_one[..at].to_vec();
    crafted.extend(deep_one[at..at + level].repeat(1_000_000));
    crafted.extend_from_slice(&shallow[at..]);
    redis::cmd("XADD")
        .arg("ph:{default}:tasks")
        .arg("*")
        .arg("run")
        .arg("crafted")
        .arg("task")
        .arg(0)
        .arg("comp")
        .arg(&digest)
        .arg("spec")
        .arg(crafted)
        .exec(&mut connection)
        .unwrap();
    // The host reports the task failed, and lives on to run the next run's tasks.
    redis.wait_until("the crafted task to be failed", |status| status.failed >= 1);
    let run = submit(&redis, &["add(1, 2)".to_owned()], &[]).finish(RUN_LIMIT);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(reports_once(&run.stdout, 1)[0]["value"], "3");
    assert!(crate::common::process_exists(host.pid()));
    drop(host);
}
