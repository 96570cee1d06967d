//! Guests written in JavaScript and Python, built by `make guests` with their languages' standard
//! component toolchains (componentize-qjs, componentize-py): the seed's programs run, and a
//! failed task carries the language's own exception.

use crate::common::{language_guest, poolhost};

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
    let got: Vec<&str> = run
        .stdout
        .lines()
        .filter_map(|line| line.strip_prefix("reader got message from Queue: "))
        .collect();
    assert_eq!(got, ["i", "t", "c", "a", "s", "t"], "{}", run.stdout);
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
