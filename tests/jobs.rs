//! Jobs: a command component run once per input line, as `xargs -P` / GNU parallel run
//! commands, each in its own sandbox; the joblog and `--resume`.

mod common;

use std::collections::{BTreeSet, HashMap};

use common::poolhost;
use serde_json::Value as Json;

const JOBS: usize = 50;

/// Job `i`'s input line and the arguments it must arrive with. Every seventh job fails.
fn job(i: usize) -> (String, Vec<String>) {
    let mut line = format!("job{i} \"word {i}\" 'single {i}' tail\\ {i}");
    let mut argv = vec![
        format!("job{i}"),
        format!("word {i}"),
        format!("single {i}"),
        format!("tail {i}"),
    ];
    if i % 7 == 3 {
        line.push_str(" fail");
        argv.push("fail".into());
    }
    (line, argv)
}

fn fails(i: usize) -> bool {
    i % 7 == 3
}

/// Job index by its `args:` output line.
fn ran(stdout: &str) -> Vec<usize> {
    let by_line: HashMap<String, usize> = (0..JOBS)
        .map(|i| (format!("args: {}|common", job(i).1.join("|")), i))
        .collect();
    stdout
        .lines()
        .filter_map(|line| by_line.get(line).copied())
        .collect()
}

fn run_jobs(input: &str, joblog: &str, extra: &[&str]) -> common::Run {
    let wasm = common::guest("test-job");
    let mut args = vec![
        "run",
        wasm.to_str().unwrap(),
        "-n",
        "3",
        "--each",
        "-",
        "--output",
        "json",
        "--joblog",
        joblog,
    ];
    args.extend(extra);
    args.extend(["--", "common"]);
    poolhost(&args, Some(input))
}

#[test]
fn fifty_jobs_run_once_each_with_their_arguments_and_resume_reruns_what_did_not_succeed() {
    let input: String = (0..JOBS).map(|i| job(i).0 + "\n").collect();
    let dir = tempfile::tempdir().unwrap();
    let joblog = dir.path().join("joblog.tsv");
    let joblog_path = joblog.to_str().unwrap();

    let run = run_jobs(&input, joblog_path, &[]);
    assert_eq!(run.code, 1, "some jobs fail: {}", run.stderr);
    // Every job ran exactly once, with its words as its arguments, quotes resolved.
    let mut once = ran(&run.stdout);
    once.sort();
    assert_eq!(once, (0..JOBS).collect::<Vec<_>>());

    // Exit codes per job in the JSON output, in input order.
    let reports: Vec<Json> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), JOBS);
    for (i, report) in reports.iter().enumerate() {
        assert_eq!(report["ok"], !fails(i), "job {i}: {report}");
        if fails(i) {
            assert_eq!(
                (report["error"]["kind"].clone(), report["error"]["code"].clone()),
                ("exit".into(), 1.into())
            );
        }
    }

    // And in the joblog: a header, then a row per job with its sequence and exit value.
    let log = std::fs::read_to_string(&joblog).unwrap();
    let rows: Vec<Vec<&str>> = log.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(
        rows[0],
        ["Seq", "Worker", "Starttime", "JobRuntime", "Exitval", "Command"]
    );
    assert_eq!(rows.len(), JOBS + 1);
    for row in &rows[1..] {
        let seq: usize = row[0].parse().unwrap();
        assert_eq!(row[4], if fails(seq - 1) { "1" } else { "0" }, "{row:?}");
        assert!(row[5].starts_with(&format!("job{} ", seq - 1)), "{row:?}");
    }

    // Lose two successful rows, as a cut-short run would; --resume runs the failed and the
    // missing jobs only, and adds them to the joblog.
    let kept: String = log
        .lines()
        .filter(|l| !l.starts_with("1\t") && !l.starts_with("2\t"))
        .map(|l| l.to_owned() + "\n")
        .collect();
    std::fs::write(&joblog, kept).unwrap();
    let again = run_jobs(&input, joblog_path, &["--resume"]);
    assert_eq!(again.code, 1);
    let rerun: BTreeSet<usize> = ran(&again.stdout).into_iter().collect();
    let expected: BTreeSet<usize> = (0..JOBS).filter(|&i| fails(i) || i < 2).collect();
    assert_eq!(rerun, expected);
    let log = std::fs::read_to_string(&joblog).unwrap();
    assert_eq!(log.lines().count(), JOBS + 1 - 2 + expected.len());
}

#[test]
fn a_component_without_main_cannot_run_jobs_and_bad_lines_are_usage_errors() {
    let calls = common::guest("test_calls");
    let run = poolhost(&["run", calls.to_str().unwrap(), "--each", "-"], Some("a\n"));
    assert_eq!((run.code, run.stderr.lines().count()), (2, 1), "{}", run.stderr);
    assert!(
        run.stderr.contains("--each runs a command component"),
        "{}",
        run.stderr
    );
    let job = common::guest("test-job");
    let run = poolhost(
        &["run", job.to_str().unwrap(), "--each", "-"],
        Some("fine\n\"unclosed\n"),
    );
    assert_eq!((run.code, run.stderr.lines().count()), (2, 1), "{}", run.stderr);
    assert!(run.stderr.contains("line 2"), "{}", run.stderr);
}

#[test]
fn arguments_after_a_double_dash_go_to_main() {
    let job = common::guest("test-job");
    let run = poolhost(&["run", job.to_str().unwrap(), "--", "x", "y z"], None);
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "args: x|y z\n"),
        "{}",
        run.stderr
    );
}

#[test]
fn tag_labels_every_output_line_and_quiet_hides_them() {
    let calls = common::guest("test_calls");
    let calls = calls.to_str().unwrap();
    let run = poolhost(
        &[
            "run",
            calls,
            "-n",
            "2",
            "--tag",
            "--invoke",
            "shout(\"a\", 300)",
            "shout(\"b\", 300)",
        ],
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let guest_lines: Vec<&str> = run.stdout.lines().filter(|l| !l.contains(" -> ")).collect();
    assert_eq!(guest_lines.len(), 600);
    for line in guest_lines {
        let (label, text) = line
            .split_once('\t')
            .unwrap_or_else(|| panic!("untagged line {line:?}"));
        let tag = text.split(' ').next().unwrap();
        assert_eq!(
            label,
            format!("shout(\"{tag}\", 300)"),
            "line {line:?} carries another task's label"
        );
    }
    assert!(
        run.stderr.contains("shout(\"a\", 300)\ta done\n"),
        "stderr is tagged too: {}",
        run.stderr
    );

    let run = poolhost(
        &[
            "run",
            calls,
            "--quiet",
            "--invoke",
            "shout(\"a\", 3)",
            "add(1, 2)",
        ],
        None,
    );
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "shout(\"a\", 3) -> ok\nadd(1, 2) -> 3\n")
    );
    assert!(!run.stderr.contains("a done"), "{}", run.stderr);
}

#[test]
fn every_run_ends_with_a_summary_on_stderr() {
    let calls = common::guest("test_calls");
    let run = poolhost(
        &[
            "run",
            calls.to_str().unwrap(),
            "-n",
            "2",
            "--invoke",
            "add(1, 2)",
            "fail(\"x\")",
            "noop()",
        ],
        None,
    );
    assert_eq!(run.code, 1);
    let last = run.stderr.lines().last().unwrap();
    assert!(
        last.starts_with("poolhost: 3 tasks, 2 ok, 1 failed, 2 workers, "),
        "{last}"
    );
    assert!(last.ends_with(" s"), "{last}");
}
