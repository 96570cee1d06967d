//! Jobs: a command component run once per input line, as `xargs -P` / GNU parallel run
//! commands, each in its own sandbox; the joblog and `--resume`.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value as Json;

use crate::common::{self, guest, poolhost};

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
    let mut once = ran(&run.task_stdout());
    once.sort();
    assert_eq!(once, (0..JOBS).collect::<Vec<_>>());

    // Exit codes per job in the JSON output, in input order.
    let reports = run.reports();
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
    let rerun: BTreeSet<usize> = ran(&again.task_stdout()).into_iter().collect();
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
    assert!(run.stderr.contains("--each runs a command ("), "{}", run.stderr);
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

/// The JSON reports of a run, by the job's first argument.
fn reports_by_label(run: &common::Run) -> HashMap<String, Json> {
    run.reports()
        .into_iter()
        .map(|report| {
            let label = report["call"]
                .as_str()
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .to_owned();
            (label, report)
        })
        .collect()
}

const LATER: usize = 200;

fn halt_run(halt: &str, slow: &str) -> (common::Run, HashMap<String, Json>) {
    // Two workers: `slow` and `bad` start first, the `later` jobs wait for a free worker. There
    // are enough of them that the pool takes them in more than one part (all of them queued,
    // in practice, before `bad` fails: a part that comes after a cancellation has a unit test
    // in the scheduler).
    let mut input = format!("slow {slow}\nbad fail\n");
    for i in 0..LATER {
        input.push_str(&format!("later{i}\n"));
    }
    let job = common::guest("test-job");
    let run = poolhost(
        &[
            "run",
            job.to_str().unwrap(),
            "-n",
            "2",
            "--each",
            "-",
            "--output",
            "json",
            "--halt",
            halt,
        ],
        Some(&input),
    );
    let reports = reports_by_label(&run);
    (run, reports)
}

#[test]
fn halt_now_kills_the_running_jobs_and_starts_no_more_at_the_first_failure() {
    let (run, reports) = halt_run("now,fail=1", "sleep=60000");
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(reports.len(), LATER + 2, "every job is reported: {}", run.stdout);
    assert_eq!(reports["bad"]["error"]["kind"], "exit");
    assert_eq!(
        reports["slow"]["error"]["kind"], "terminated",
        "{}",
        reports["slow"]
    );
    for i in 0..LATER {
        assert_eq!(reports[&format!("later{i}")]["error"]["kind"], "cancelled");
    }
    assert!(
        !run.task_stdout().contains("args: later"),
        "a later job started: {}",
        run.stdout
    );
    assert!(
        run.stderr
            .contains("halting after 1 failed task (--halt now,fail=1)"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("poolhost: 202 tasks, 0 ok, 202 failed, 2 workers"),
        "{}",
        run.stderr
    );
}

#[test]
fn halt_soon_lets_the_running_jobs_finish_and_starts_no_more() {
    let (run, reports) = halt_run("soon,fail=1", "sleep=1500");
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(reports.len(), LATER + 2, "every job is reported: {}", run.stdout);
    assert_eq!(reports["bad"]["error"]["kind"], "exit");
    assert_eq!(
        reports["slow"]["ok"], true,
        "the running job finishes: {}",
        reports["slow"]
    );
    assert!(
        run.task_stdout().contains("args: slow|sleep=1500\n"),
        "{}",
        run.stdout
    );
    for i in 0..LATER {
        assert_eq!(reports[&format!("later{i}")]["error"]["kind"], "cancelled");
    }
    assert!(
        !run.task_stdout().contains("args: later"),
        "a later job started: {}",
        run.stdout
    );

    // A percentage of the jobs: 2 of 4 is 50%, so the run halts at the second failure.
    let job = common::guest("test-job");
    let run = poolhost(
        &[
            "run",
            job.to_str().unwrap(),
            "-n",
            "1",
            "--each",
            "-",
            "--halt",
            "soon,fail=50%",
        ],
        Some("a fail\nb fail\nc\nd\n"),
    );
    assert_eq!(run.code, 1);
    assert_eq!(ran_labels(&run.task_stdout()), ["a", "b"], "{}", run.stdout);
    assert!(
        run.stderr.contains("halting after 2 failed tasks"),
        "{}",
        run.stderr
    );

    for bad in ["later,fail=1", "now,fail=0", "soon,fail=200%", "now"] {
        let run = poolhost(
            &["run", job.to_str().unwrap(), "--each", "-", "--halt", bad],
            Some("a\n"),
        );
        assert_eq!(
            (run.code, run.stderr.lines().count()),
            (2, 1),
            "{bad}: {}",
            run.stderr
        );
    }
}

/// The first argument of each job that ran, in output order, from its `args:` line.
fn ran_labels(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("args: "))
        .map(|args| args.split('|').next().unwrap())
        .collect()
}

#[test]
fn group_prints_each_jobs_output_in_one_piece_even_past_its_memory_bound() {
    // 30 000 lines of about 20 bytes is past the 256 KiB a job's output is held in memory.
    let input = "alpha lines=30000\nbravo lines=30000\ncharlie lines=50\n";
    let job = common::guest("test-job");
    for tag in [false, true] {
        let mut args = vec!["run", job.to_str().unwrap(), "-n", "3", "--each", "-", "--group"];
        if tag {
            args.push("--tag");
        }
        let run = poolhost(&args, Some(input));
        assert_eq!(run.code, 0, "{}", run.stderr);
        // Each job's lines form one unbroken run: the label changes only twice.
        let labels: Vec<&str> = run
            .stdout
            .lines()
            .map(|line| {
                let text = if tag {
                    let (label, text) = line.split_once('\t').expect("a tagged line");
                    let job = text.trim_start_matches("args: ").split([' ', '|']).next();
                    assert_eq!(label.split(' ').next(), job, "{line:?} carries another job's tag");
                    text
                } else {
                    line
                };
                text.trim_start_matches("args: ")
                    .split([' ', '|'])
                    .next()
                    .unwrap()
            })
            .collect();
        let mut runs = labels.clone();
        runs.dedup();
        runs.sort();
        assert_eq!(runs, ["alpha", "bravo", "charlie"], "tag: {tag}");
        assert_eq!(labels.len(), 3 + 30_000 + 30_000 + 50);
    }
}

#[test]
fn no_progress_bar_is_drawn_when_stderr_is_not_a_terminal() {
    // Long enough for the bar to appear on a terminal.
    let job = common::guest("test-job");
    let run = poolhost(
        &["run", job.to_str().unwrap(), "-n", "2", "--each", "-"],
        Some("a sleep=1300\nb sleep=1300\nc\n"),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stderr.lines().count(),
        1,
        "only the summary: {:?}",
        run.stderr
    );
    assert!(!run.stderr.contains(['\r', '\x1b']), "{:?}", run.stderr);
    assert!(!run.stderr.contains("ETA"), "{:?}", run.stderr);
}

/// SIGINT or SIGTERM mid-run: every task reported (the unfinished as terminated), the summary
/// line, the workers killed and reaped, the temporary directory removed, exit code 128 + signal,
/// and only whole rows in the joblog.
#[test]
fn an_interrupted_run_reports_reaps_cleans_up_and_exits_as_the_signal_says() {
    use rustix::process::Signal;
    for (signal, code, name) in [(Signal::INT, 130, "SIGINT"), (Signal::TERM, 143, "SIGTERM")] {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        let joblog = dir.path().join("jobs.tsv");
        let calls = dir.path().join("calls");
        std::fs::write(&calls, "sleep-ms(20)\n".repeat(400)).unwrap();
        let wasm = guest("test_calls");
        let args = [
            "run",
            wasm.to_str().unwrap(),
            "-n",
            "2",
            "--calls",
            calls.to_str().unwrap(),
            "--joblog",
            joblog.to_str().unwrap(),
        ];
        let mut run = common::Background::start(&args, &[("TMPDIR", tmp.to_str().unwrap())]);
        // Interrupted once some tasks are done.
        let deadline = std::time::Instant::now() + common::RUN_LIMIT;
        while std::fs::read_to_string(&joblog).map_or(0, |log| log.lines().count()) < 5 {
            assert!(
                std::time::Instant::now() < deadline && !run.exited(),
                "no task finished"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let workers = common::children(run.pid());
        assert!(common::signal(run.pid(), signal));
        let run = run.finish(common::RUN_LIMIT);
        assert_eq!(run.code, code, "{name}: {}", run.stderr);
        let summary = run.stderr.lines().last().unwrap();
        assert!(
            summary.starts_with("poolhost: 400 tasks, ")
                && summary.ends_with(&format!(", interrupted by {name}")),
            "{summary}"
        );
        let reported = run
            .stdout
            .lines()
            .filter(|line| line.starts_with("sleep-ms(20) -> "))
            .count();
        assert_eq!(reported, 400, "every task reported");
        assert!(run.stdout.contains("-> error: terminated"), "{}", run.stdout);
        assert_eq!(
            std::fs::read_dir(&tmp).unwrap().count(),
            0,
            "the temporary directory is left"
        );
        for pid in workers {
            assert!(!common::process_exists(pid), "worker {pid} left behind");
        }
        let log = std::fs::read_to_string(&joblog).unwrap();
        assert!(log.ends_with('\n'));
        for row in log.lines().skip(1) {
            assert_eq!(row.split('\t').count(), 6, "a torn row: {row:?}");
        }
    }
}
