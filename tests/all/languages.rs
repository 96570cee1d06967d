//! Guests written in JavaScript and Python, built by `make guests` with their languages' standard
//! component toolchains (componentize-qjs, componentize-py): the seed's programs run, and a
//! failed task carries the language's own exception.

use std::collections::HashSet;

use crate::common::{language_guest, poolhost};

/// The numbers in `line`, between parentheses or not.
fn numbers(line: &str) -> Vec<u32> {
    line.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// That the seed's reader printed it got the letters of "itcast", in order.
fn assert_reader_got_itcast(stdout: &str) {
    let got: Vec<&str> = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("reader got message from Queue: "))
        .collect();
    assert_eq!(got, ["i", "t", "c", "a", "s", "t"], "{stdout}");
}

/// That `stdout` is the seed's first program's: the parent's pid, five tasks on four workers
/// other than the parent, and the end.
fn assert_first_program(stdout: &str) {
    let lines: Vec<&str> = stdout.lines().collect();
    let parent = numbers(lines[0]);
    assert!(lines[0].starts_with("Parent process "), "{stdout}");
    assert_eq!(lines.last(), Some(&"All subprocesses done."));
    let started: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("Run task "))
        .collect();
    let ended = lines
        .iter()
        .filter(|l| l.starts_with("Task ") && l.ends_with(" seconds."))
        .count();
    assert_eq!((started.len(), ended), (5, 5), "{stdout}");
    // Four workers, none of them the parent: the fifth task reuses a worker.
    let pids: HashSet<u32> = started.iter().map(|l| numbers(l)[1]).collect();
    assert_eq!(pids.len(), 4, "{stdout}");
    assert!(!pids.contains(&parent[0]));
}

/// `poolhost run GUEST --output json --invoke CALLS...`, which must exit `code`; its reports in
/// the order of the calls.
fn run_json(guest: &std::path::Path, calls: &[&str], code: i32) -> Vec<serde_json::Value> {
    let mut args = vec!["run", guest.to_str().unwrap(), "--output", "json", "--invoke"];
    args.extend(calls);
    let run = poolhost(&args, None);
    assert_eq!(run.code, code, "{}", run.stderr);
    let mut reports = run.reports();
    reports.sort_by_key(|report| report["id"].as_u64());
    reports
}

#[test]
fn the_seeds_writer_and_reader_in_javascript_share_a_queue() {
    let seed = language_guest("javascript", "seed");
    let run = poolhost(
        &[
            "run",
            seed.to_str().unwrap(),
            "-n",
            "2",
            "--invoke",
            "writer()",
            "reader(6)",
        ],
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_reader_got_itcast(&run.stdout);
    let pids = |who: &str| {
        let line = run.stdout.lines().find(|l| l.starts_with(who)).unwrap();
        line.split(['(', ')'])
            .filter_map(|n| n.parse::<u32>().ok())
            .collect::<Vec<_>>()
    };
    let (writer, reader) = (pids("writer started"), pids("reader started"));
    assert_ne!(writer[0], reader[0], "two workers");
    assert_eq!(writer[1], reader[1], "one parent");
}

#[test]
fn the_seeds_first_program_in_javascript_drives_its_pool() {
    let seed = language_guest("javascript", "seed");
    let run = poolhost(&["run", seed.to_str().unwrap(), "-n", "4"], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_first_program(&run.stdout);
}

#[test]
fn a_javascript_exception_is_part_of_the_tasks_failure() {
    let seed = language_guest("javascript", "seed");
    let reports = run_json(&seed, &["fail(\"boom\")", "noop()"], 1);
    let error = &reports[0]["error"];
    assert_eq!(error["kind"], "trap", "{error}");
    let stderr = error["stderr"].as_str().unwrap();
    assert!(
        stderr.contains("boom") && stderr.contains("at fail (") && stderr.contains("seed.js:"),
        "{stderr}"
    );
    assert!(error["message"].as_str().unwrap().ends_with(stderr), "{error}");
    assert_eq!(reports[1]["ok"], true);
}

#[test]
fn an_async_abi_build_is_refused_at_once_naming_the_flag_that_avoids_it() {
    // componentize-qjs's default build, without `--sync`.
    let seed = language_guest("javascript", "seed-async");
    let run = poolhost(&["run", seed.to_str().unwrap(), "--invoke", "noop()"], None);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("cannot run here: it uses the component model's async ABI")
            && run.stderr.contains("componentize-qjs: `--sync`"),
        "{}",
        run.stderr
    );
}

#[test]
fn the_seeds_first_program_in_python_runs_as_written() {
    let seed = language_guest("python", "seed_pool");
    let run = poolhost(&["run", seed.to_str().unwrap(), "-n", "4"], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_first_program(&run.stdout);
}

#[test]
fn the_seeds_second_program_in_python_shares_a_manager_queue() {
    let seed = language_guest("python", "seed_queue");
    let run = poolhost(&["run", seed.to_str().unwrap(), "-n", "2"], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_reader_got_itcast(&run.stdout);
    let line = |start: &str| run.stdout.lines().find(|l| l.starts_with(start)).unwrap();
    let (parent, end) = (numbers(line("(")), numbers(line("writer")));
    let reader = numbers(line("reader started"));
    assert_eq!(
        (end[1], reader[1]),
        (parent[0], parent[0]),
        "one parent: {}",
        run.stdout
    );
    assert!(
        run.stdout.ends_with(&format!("({}) End\n", parent[0])),
        "{}",
        run.stdout
    );
}

#[test]
fn python_tasks_take_and_return_typed_values_and_queues() {
    let tasks = language_guest("python", "tasks");
    let reports = run_json(
        &tasks,
        &[
            "add(1, 2)",
            "whoami()",
            "describe([1.5, 2], some(\"x\"), [1, 2])",
            "writer(\"q\", [\"a\", \"é\"])",
            "reader(\"q\", 2)",
        ],
        0,
    );
    let values: Vec<&str> = reports
        .iter()
        .map(|r| r["value"].as_str().unwrap_or("none"))
        .collect();
    assert_eq!(values[0], "3");
    let whoami = numbers(values[1]);
    assert_eq!(
        whoami[0],
        reports[1]["worker"].as_u64().unwrap() as u32,
        "{values:?}"
    );
    assert_eq!(values[2], "\"x: 2 summing to 3.5, 2 raw bytes\"");
    assert_eq!(values[4], "[\"a\", \"é\"]");
}

#[test]
fn a_python_exception_is_part_of_the_tasks_failure() {
    let tasks = language_guest("python", "tasks");
    let reports = run_json(&tasks, &["fail(\"boom\")", "add(2, 2)"], 1);
    let error = &reports[0]["error"];
    let stderr = error["stderr"].as_str().unwrap();
    assert!(
        stderr.starts_with("Traceback (most recent call last):"),
        "{error}"
    );
    assert!(stderr.ends_with("RuntimeError: boom"), "{error}");
    assert!(
        error["message"].as_str().unwrap().ends_with("RuntimeError: boom"),
        "{error}"
    );
    assert_eq!(reports[1]["value"], "4", "the next task on that worker runs");
}

#[test]
fn a_wrong_call_lists_the_exports_with_long_signatures_cut() {
    // componentize-py's build-time `init` takes a record of about a thousand characters.
    let tasks = language_guest("python", "tasks");
    let run = poolhost(&["run", tasks.to_str().unwrap(), "--invoke", "nope()"], None);
    assert_eq!((run.code, run.stderr.lines().count()), (2, 1), "{}", run.stderr);
    assert!(
        run.stderr.contains("add(a: s64, b: s64) -> s64"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("exports.init(app-name: string, symbols: record {"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.trim_end().ends_with('…') && run.stderr.len() < 1000,
        "{}",
        run.stderr
    );
}

#[test]
fn a_python_driver_uses_the_pool_as_pythons_pool_is_used() {
    let driver = language_guest("python", "test_pool");
    let run = poolhost(&["run", driver.to_str().unwrap(), "-n", "2"], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout.lines().collect::<Vec<_>>(),
        [
            "apply: 49",
            "map: [0, 1, 4, 9, 16]",
            // The failed task's traceback reached the driver in its failure.
            "failed: exit RuntimeError: boom",
            "successful: False",
            "timeout: ready False",
            "queue: é",
            "bad call: square(): argument 'x': expected int, got 'seven'",
            "terminated: terminated",
        ],
        "{}",
        run.stderr
    );
}
