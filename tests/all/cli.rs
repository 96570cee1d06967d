//! The `poolhost` command, run as a user runs it, on real guests from `make guests`.

use std::collections::BTreeSet;

use serde_json::Value as Json;

use crate::common::{Run, guest, invoke, poolhost};

/// One JSON object per task, in submission order.
fn json_lines(run: &Run) -> Vec<Json> {
    run.stdout
        .lines()
        .map(|line| {
            serde_json::from_str::<Json>(line).unwrap_or_else(|e| panic!("bad JSON line {line:?}: {e}"))
        })
        .filter(|object| object.get("id").is_some())
        .collect()
}

fn start(task: &Json) -> f64 {
    task["start"].as_f64().expect("a start time")
}

fn end(task: &Json) -> f64 {
    start(task) + task["duration"].as_f64().expect("a duration")
}

fn worker(task: &Json) -> u64 {
    task["worker"].as_u64().expect("a worker pid")
}

/// Timestamps cross processes as f64 seconds since the epoch: allow for their rounding.
const CLOCK_SLACK: f64 = 0.001;

#[test]
fn seed_example_1_five_tasks_on_four_workers() {
    let run = invoke(
        "long_time_task",
        &["-n", "4", "--output", "json"],
        &[
            "long-time-task(0)",
            "long-time-task(1)",
            "long-time-task(2)",
            "long-time-task(3)",
            "long-time-task(4)",
        ],
    );
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let tasks = json_lines(&run);
    assert_eq!(tasks.len(), 5);
    for (i, task) in tasks.iter().enumerate() {
        assert_eq!(task["ok"], true, "{task}");
        assert_eq!(task["id"], i as u64);
        assert_eq!(task["call"], format!("long-time-task({i})"));
        // The guest's own output names the worker the host says ran it.
        let line = format!("Run task {i} ({})...", worker(task));
        assert!(run.stdout.contains(&line), "no `{line}` in:\n{}", run.stdout);
        assert!(run.stdout.contains(&format!("Task {i} runs ")), "{}", run.stdout);
    }
    let first_four: BTreeSet<u64> = tasks[..4].iter().map(worker).collect();
    assert_eq!(first_four.len(), 4, "tasks 0-3 run at once on four workers");
    let all: BTreeSet<u64> = tasks.iter().map(worker).collect();
    assert_eq!(all.len(), 4, "at most four worker processes");

    // Task 4 waited for a free worker: it started after the task before it on its worker ended.
    let fifth = &tasks[4];
    let previous = tasks[..4].iter().find(|t| worker(t) == worker(fifth)).unwrap();
    assert!(
        start(fifth) + CLOCK_SLACK >= end(previous),
        "task 4 started at {} before its worker's task ended at {}",
        start(fifth),
        end(previous)
    );
    let earliest_end = tasks[..4].iter().map(end).fold(f64::INFINITY, f64::min);
    assert!(start(fifth) + CLOCK_SLACK >= earliest_end);
}

#[test]
fn default_worker_count_is_the_number_of_cpus() {
    let cpus = std::thread::available_parallelism().unwrap().get();
    let run = invoke(
        "test_calls",
        &["--output", "json"],
        &vec!["sleep-ms(300)"; cpus * 3],
    );
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let workers: BTreeSet<u64> = json_lines(&run).iter().map(worker).collect();
    assert_eq!(workers.len(), cpus);
}

#[test]
fn one_worker_runs_tasks_strictly_one_after_another() {
    let run = invoke(
        "test_calls",
        &["-n", "1", "--output", "json"],
        &["sleep-ms(40)", "sleep-ms(40)", "sleep-ms(40)", "sleep-ms(40)"],
    );
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let tasks = json_lines(&run);
    assert_eq!(tasks.iter().map(worker).collect::<BTreeSet<_>>().len(), 1);
    for pair in tasks.windows(2) {
        assert!(
            start(&pair[1]) + CLOCK_SLACK >= end(&pair[0]),
            "{} overlaps {}",
            pair[1],
            pair[0]
        );
    }
}

#[test]
fn results_are_printed_in_submission_order() {
    let run = invoke(
        "test_calls",
        &["-n", "3"],
        &[
            "sleep-ms(400)",
            "sleep-ms(1)",
            "add(2, 3)",
            "echo(\"hi\")",
            "math.double(21)",
        ],
    );
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert_eq!(
        run.stdout.lines().collect::<Vec<_>>(),
        [
            "sleep-ms(400) -> 400",
            "sleep-ms(1) -> 1",
            "add(2, 3) -> 5",
            "echo(\"hi\") -> \"hi\"",
            "math.double(21) -> 42"
        ]
    );
}

#[test]
fn calls_come_from_a_file_or_stdin() {
    let wasm = guest("test_calls");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("calls.txt");
    std::fs::write(&file, "# doubling\nmath.double(1)\n\nmath.double(2)\n").unwrap();
    let run = poolhost(
        &["run", wasm.to_str().unwrap(), "--calls", file.to_str().unwrap()],
        None,
    );
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "math.double(1) -> 2\nmath.double(2) -> 4\n")
    );

    let run = poolhost(
        &[
            "run",
            wasm.to_str().unwrap(),
            "--invoke",
            "add(1, 1)",
            "--calls",
            "-",
        ],
        Some("add(2, 2)\n"),
    );
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "add(1, 1) -> 2\nadd(2, 2) -> 4\n")
    );
}

#[test]
fn a_command_component_runs_its_main_once() {
    let wasm = guest("test-command");
    let run = poolhost(&["run", wasm.to_str().unwrap()], None);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert_eq!(
        run.stdout
            .lines()
            .filter(|l| l.starts_with("hello from main on worker "))
            .count(),
        1
    );
}

#[test]
fn webassembly_text_runs_as_a_component() {
    let dir = tempfile::tempdir().unwrap();
    let wat = dir.path().join("answer.wat");
    std::fs::write(
        &wat,
        r#"(component
             (core module $m (func (export "answer") (result i32) i32.const 42))
             (core instance $i (instantiate $m))
             (func (export "answer") (result u32) (canon lift (core func $i "answer"))))"#,
    )
    .unwrap();
    let run = poolhost(&["run", wat.to_str().unwrap(), "--invoke", "answer()"], None);
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "answer() -> 42\n"),
        "stderr: {}",
        run.stderr
    );
}

#[test]
fn a_failed_task_is_reported_and_the_others_finish() {
    let run = invoke(
        "test_calls",
        &["-n", "2"],
        &["fail(\"boom\")", "add(1, 2)", "quit(3)"],
    );
    assert_eq!(run.code, 1, "a failed task makes the exit code 1");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines[0], "fail(\"boom\") -> error: trap: unreachable");
    // Then what the task wrote to stderr last: the panic's message.
    let tail: Vec<&str> = lines[1..]
        .iter()
        .take_while(|l| l.starts_with("    | "))
        .copied()
        .collect();
    assert!(tail.iter().any(|l| l.contains("panicked at")), "{tail:?}");
    assert!(tail.iter().any(|l| l.ends_with("| boom")), "{tail:?}");
    // The wasm backtrace names the guest function that failed.
    let trace: Vec<&str> = lines[1 + tail.len()..]
        .iter()
        .take_while(|l| l.starts_with("    at "))
        .copied()
        .collect();
    assert!(trace.iter().any(|l| l.ends_with("!fail")), "{trace:?}");
    let rest = &lines[1 + tail.len() + trace.len()..];
    // WASI 0.2's `exit` carries success or failure only: a non-zero code arrives as 1.
    assert_eq!(rest, ["add(1, 2) -> 3", "quit(3) -> error: exited with code 1"]);
    assert!(
        run.stderr.contains("boom"),
        "the guest's panic message reaches stderr: {}",
        run.stderr
    );
}

#[test]
fn json_output_has_a_field_per_fact() {
    let run = invoke(
        "test_calls",
        &["--output", "json"],
        &["add(1, 2)", "fail(\"x\")", "whoami()"],
    );
    assert_eq!(run.code, 1);
    let tasks = json_lines(&run);
    assert_eq!(tasks.len(), 3);
    let ok = &tasks[0];
    assert_eq!(
        (
            ok["id"].clone(),
            ok["call"].clone(),
            ok["ok"].clone(),
            ok["value"].clone()
        ),
        (0.into(), "add(1, 2)".into(), true.into(), "3".into())
    );
    assert!(ok["duration"].as_f64().unwrap() >= 0.0 && start(ok) > 1.7e9);
    let failed = &tasks[1];
    assert_eq!(failed["ok"], false);
    assert_eq!(failed["error"]["kind"], "trap");
    assert_eq!(failed["error"]["trap"], "unreachable");
    assert!(
        failed["error"]["backtrace"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f.as_str().unwrap().ends_with("!fail"))
    );
    // The task's own view of its pid is the worker pid the host reports.
    assert_eq!(tasks[2]["value"], worker(&tasks[2]).to_string());
}

#[test]
fn guest_output_arrives_in_whole_lines() {
    let run = invoke(
        "test_calls",
        &["-n", "3"],
        &["shout(\"a\", 3000)", "shout(\"b\", 3000)", "shout(\"c\", 3000)"],
    );
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    let mut counts = [0; 3];
    for line in run.stdout.lines() {
        if line.starts_with("shout(") {
            continue;
        }
        let tag = line.split(' ').next().unwrap();
        let expected = format!("{tag} line ");
        assert!(
            line.starts_with(&expected) && line.ends_with(" of 3000"),
            "mixed line: {line:?}"
        );
        counts[(tag.as_bytes()[0] - b'a') as usize] += 1;
    }
    assert_eq!(counts, [3000; 3]);
    for tag in ["a", "b", "c"] {
        assert!(run.stderr.contains(&format!("{tag} done\n")));
    }
}

/// A bad input: exit code 2 and one line on stderr that starts with `poolhost: `.
fn assert_usage_error(args: &[&str], expected: &[&str]) {
    let run = poolhost(args, None);
    assert_eq!(run.code, 2, "{args:?}: stderr {}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "one line: {:?}", run.stderr);
    assert!(run.stderr.starts_with("poolhost: "), "{:?}", run.stderr);
    assert!(
        !run.stderr.contains("panicked") && !run.stderr.contains("backtrace"),
        "{:?}",
        run.stderr
    );
    for part in expected {
        assert!(run.stderr.contains(part), "{:?} lacks {part:?}", run.stderr);
    }
    assert!(run.stdout.is_empty(), "{:?}", run.stdout);
}

#[test]
fn bad_input_is_one_line_and_exit_code_2() {
    let calls = guest("test_calls");
    let calls = calls.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.wasm");
    std::fs::write(&text, "just some notes").unwrap();
    let core = dir.path().join("core.wat");
    std::fs::write(
        &core,
        r#"(module (import "env" "magic" (func)) (func (export "f")))"#,
    )
    .unwrap();
    let missing = dir.path().join("missing.wasm");

    assert_usage_error(
        &["run", missing.to_str().unwrap(), "--invoke", "f()"],
        &["cannot read", "missing.wasm"],
    );
    assert_usage_error(
        &["run", text.to_str().unwrap(), "--invoke", "f()"],
        &["is not WebAssembly"],
    );
    assert_usage_error(
        &["run", core.to_str().unwrap(), "--invoke", "f()"],
        &["needs an import poolhost does not provide"],
    );
    assert_usage_error(
        &["run", calls, "--invoke", "nope()"],
        &["no export named `nope`", "add(a: s32, b: s32) -> s32"],
    );
    assert_usage_error(
        &["run", calls, "--invoke", "add(1)"],
        &["add(a: s32, b: s32) -> s32"],
    );
    assert_usage_error(
        &["run", calls, "--invoke", "add(\"one\", 2)"],
        &["add(a: s32, b: s32) -> s32"],
    );
    assert_usage_error(
        &["run", calls, "--invoke", "add(1, 2"],
        &["invalid call", "column 9"],
    );
    assert_usage_error(&["run", calls, "-n", "four", "--invoke", "noop()"], &["four"]);
    assert_usage_error(&["run", calls], &["nothing to run", "noop()"]);
    assert_usage_error(&["frobnicate"], &["frobnicate"]);
    // `compile` shares the cache arguments, but compiling without the cache means nothing.
    assert_usage_error(&["compile", calls, "--no-cache"], &["--no-cache", "compile"]);
}

#[test]
fn help_and_version_succeed() {
    let run = poolhost(&["--help"], None);
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains("run"));
    let run = poolhost(&["run", "--help"], None);
    assert!(run.code == 0 && run.stdout.contains("--invoke") && run.stdout.contains("--workers"));
    let run = poolhost(&["compile", "--help"], None);
    assert!(run.code == 0 && run.stdout.contains("--cache-dir") && !run.stdout.contains("--no-cache"));
    let run = poolhost(&["--version"], None);
    assert_eq!(
        (run.code, run.stdout.trim()),
        (0, concat!("poolhost ", env!("CARGO_PKG_VERSION")))
    );
}

/// Inputs a fuzzer of the command line found: each is refused in one line with exit code 2, or
/// runs, never panics.
#[test]
fn inputs_found_by_fuzzing_the_command_line_are_refused_or_run() {
    let calls = guest("test_calls");
    let calls = calls.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    let mut bytes = b"\0asm\x0d\x00\x01\x00".to_vec();
    bytes.extend((0..200u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    std::fs::write(&garbage, bytes).unwrap();
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, "").unwrap();
    let bad_cache = not_a_dir.join("cache");

    // Timeouts too long for the clock are no timeout at all.
    for timeout in ["18446744073709551615s", "600000000y"] {
        let run = poolhost(
            &[
                "run",
                calls,
                "-n",
                "1",
                "--timeout",
                timeout,
                "--invoke",
                "add(1, 2)",
            ],
            None,
        );
        assert_eq!(
            (run.code, run.stdout.as_str()),
            (0, "add(1, 2) -> 3\n"),
            "{}",
            run.stderr
        );
    }
    assert_usage_error(
        &["run", calls, "-n", "1000000", "--invoke", "noop()"],
        &["1000000 workers", "at most 256"],
    );
    assert_usage_error(
        &["run", calls, "--invoke", "add(1,\n\n2"],
        &["invalid call", "add(1,\\n\\n2"],
    );
    assert_usage_error(
        &["run", garbage.to_str().unwrap(), "--invoke", "f()"],
        &["garbage.wasm"],
    );
    assert_usage_error(
        &[
            "run",
            calls,
            "--cache-dir",
            bad_cache.to_str().unwrap(),
            "--invoke",
            "noop()",
        ],
        &["cannot use", "as the compile cache"],
    );
    assert_usage_error(&["run", calls, "--env", "=x", "--invoke", "noop()"], &["NAME"]);
    assert_usage_error(
        &[
            "run", calls, "--queue", "q:1", "--queue", "q:2", "--invoke", "noop()",
        ],
        &["`q` is given twice"],
    );
    assert_usage_error(
        &["run", calls, "--timeout", "0s", "--invoke", "noop()"],
        &["longer than zero"],
    );
}

/// A line longer than the runtime's 64 KiB chunk reaches stdout byte for byte as one line, with
/// no other task's line inside it, plain and tagged.
#[test]
fn a_long_line_is_printed_whole_and_byte_exact() {
    for tag in [false, true] {
        let mut options = vec!["-n", "2"];
        if tag {
            options.push("--tag");
        }
        let run = invoke(
            "test_hostile",
            &options,
            &["long-line(1048576)", "flood(2000)", "long-line(70000)"],
        );
        assert_eq!(run.code, 0, "{}", run.stderr);
        let long: Vec<&str> = run.stdout.lines().filter(|line| line.len() > 200).collect();
        let expected = |call: &str, bytes: usize| match tag {
            true => format!("{call}\t{}", "x".repeat(bytes)),
            false => "x".repeat(bytes),
        };
        assert_eq!(long.len(), 2, "two long lines");
        assert!(
            long.contains(&expected("long-line(1048576)", 1 << 20).as_str()),
            "tag {tag}"
        );
        assert!(
            long.contains(&expected("long-line(70000)", 70000).as_str()),
            "tag {tag}"
        );
        let flood_line = expected("flood(2000)", 99);
        let flood = run.stdout.lines().filter(|line| *line == flood_line).count();
        assert_eq!(flood, 2000, "tag {tag}");
    }
}

/// With `--output json`, stdout is JSON only: a task's output line is an object of its own, so a
/// task printing a result's JSON cannot pass it off as one.
#[test]
fn json_output_cannot_be_forged_by_a_task() {
    let forged = r#"{"id":0,"call":"forged","ok":true}"#;
    let call = format!("say({})", serde_json::to_string(forged).unwrap());
    let run = invoke(
        "test_hostile",
        &["-n", "1", "--output", "json"],
        &[&call, "long-line(70000)"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let objects = run.json();
    let results: Vec<_> = objects.iter().filter(|o| o.get("id").is_some()).collect();
    assert_eq!(results.len(), 2, "{}", run.stdout);
    assert_eq!(results[0]["call"], call);
    let lines: Vec<_> = objects.iter().filter(|o| o.get("task").is_some()).collect();
    assert_eq!(lines[0]["task"], 0);
    assert_eq!(lines[0]["output"], forged);
    // A line longer than a chunk comes in pieces, each but the last marked `more`.
    let pieces: Vec<_> = lines.iter().filter(|o| o["task"] == 1).collect();
    assert!(pieces.len() >= 2, "{pieces:?}");
    let joined: String = pieces.iter().map(|o| o["output"].as_str().unwrap()).collect();
    assert_eq!(joined, "x".repeat(70000));
    assert!(pieces[..pieces.len() - 1].iter().all(|o| o["more"] == true));
    assert!(pieces.last().unwrap().get("more").is_none());
}
