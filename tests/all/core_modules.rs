//! WASI preview 1 core modules, as TinyGo, Zig, wasi-sdk and Rust's `wasm32-wasip1` emit them:
//! a `_start` command runs as jobs, an exported function as calls with numbers.

use serde_json::Value as Json;

use crate::common::{self, core_guest, guest, poolhost};

/// The `args:` lines of a run, sorted: what each job printed of its arguments.
fn args_lines(stdout: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("args: ")).collect();
    lines.sort();
    lines
}

#[test]
fn a_wasip1_build_of_a_command_runs_as_jobs_like_the_component_build() {
    let input = "one \"two words\"\nthree fail\nfour 'five six'\n";
    let mut outputs = Vec::new();
    for wasm in [core_guest("test-job"), guest("test-job")] {
        let run = poolhost(
            &[
                "run",
                wasm.to_str().unwrap(),
                "-n",
                "2",
                "--each",
                "-",
                "--output",
                "json",
                "--",
                "common",
            ],
            Some(input),
        );
        assert_eq!(run.code, 1, "one job fails: {}", run.stderr);
        assert_eq!(
            args_lines(&run.task_stdout()),
            [
                "args: four|five six|common",
                "args: one|two words|common",
                "args: three|fail|common"
            ],
            "{}",
            wasm.display()
        );
        let outcome: Vec<(bool, Json)> = run
            .reports()
            .iter()
            .map(|r| (r["ok"].as_bool().unwrap(), r["error"]["code"].clone()))
            .collect();
        assert_eq!(
            outcome,
            [(true, Json::Null), (false, 1.into()), (true, Json::Null)]
        );
        outputs.push(args_lines(&run.task_stdout()).join("\n"));
    }
    assert_eq!(outputs[0], outputs[1]);

    // Limits apply to core modules too.
    let wasm = core_guest("test-job");
    let run = poolhost(
        &[
            "run",
            wasm.to_str().unwrap(),
            "--timeout",
            "200ms",
            "--output",
            "json",
            "--",
            "x",
            "sleep=5000",
        ],
        None,
    );
    assert_eq!(run.code, 1);
    assert!(run.stdout.contains("\"kind\":\"timeout\""), "{}", run.stdout);
}

const CORE_CALLS: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello from core\n")
  (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add)
  (func (export "scale") (param f64 i64) (result f64) local.get 0 local.get 1 f64.convert_i64_s f64.mul)
  (func (export "hello")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 16))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "boom") unreachable)
  (func (export "pair") (result i32 i32) i32.const 1 i32.const 2)
)"#;

#[test]
fn a_core_modules_exported_functions_are_calls_with_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let wat = dir.path().join("calls.wat");
    std::fs::write(&wat, CORE_CALLS).unwrap();
    let wat = wat.to_str().unwrap();
    let run = poolhost(
        &[
            "run",
            wat,
            "-n",
            "2",
            "--invoke",
            "add(2, 40)",
            "add(-5, 3)",
            "scale(1.5, 4)",
            "hello()",
            "boom()",
        ],
        None,
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stdout.contains("hello from core\n"), "{}", run.stdout);
    let results: Vec<&str> = run.stdout.lines().filter(|l| l.contains(" -> ")).collect();
    assert_eq!(
        results,
        [
            "add(2, 40) -> 42",
            "add(-5, 3) -> -2",
            "scale(1.5, 4) -> 6",
            "hello() -> ok",
            "boom() -> error: trap: unreachable"
        ]
    );

    // Calls are checked against the core signature at submission.
    let run = poolhost(&["run", wat, "--invoke", "add(1)"], None);
    assert_eq!((run.code, run.stderr.lines().count()), (2, 1), "{}", run.stderr);
    assert!(run.stderr.contains("add(i32, i32) -> i32"), "{}", run.stderr);
    // A function with two results is not a task.
    let run = poolhost(&["run", wat, "--invoke", "pair()"], None);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("no export named `pair`"), "{}", run.stderr);

    let run = poolhost(&["inspect", wat, "--output", "json"], None);
    let json: Json = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["kinds"], serde_json::json!(["calls"]));
    assert_eq!(
        json["exports"],
        serde_json::json!([
            "add(i32, i32) -> i32",
            "scale(f64, i64) -> f64",
            "hello()",
            "boom()"
        ])
    );
    assert_eq!(
        json["imports"],
        serde_json::json!(["wasi_snapshot_preview1::fd_write"])
    );
}

#[test]
fn a_core_module_importing_poolhost_is_told_to_become_a_component() {
    let dir = tempfile::tempdir().unwrap();
    let wat = dir.path().join("queue.wat");
    std::fs::write(
        &wat,
        r#"(module (import "poolhost:pool/process@0.1.0" "pid" (func (result i32))) (func (export "f")))"#,
    )
    .unwrap();
    let run = poolhost(&["run", wat.to_str().unwrap(), "--invoke", "f()"], None);
    assert_eq!((run.code, run.stderr.lines().count()), (2, 1), "{}", run.stderr);
    for words in [
        "core WebAssembly module",
        "poolhost:pool/process@0.1.0::pid",
        "build a component",
        "wasm32-wasip2",
    ] {
        assert!(run.stderr.contains(words), "no {words:?} in {}", run.stderr);
    }

    let inspect = poolhost(&["inspect", core_guest("test-job").to_str().unwrap()], None);
    assert_eq!(inspect.code, 0, "{}", inspect.stderr);
    assert!(
        inspect
            .stdout
            .contains("a core WebAssembly module (WASI preview 1)"),
        "{}",
        inspect.stdout
    );
    assert!(inspect.stdout.contains("  jobs: "), "{}", inspect.stdout);
    assert!(
        inspect.stdout.contains("wasi_snapshot_preview1::"),
        "{}",
        inspect.stdout
    );
}

#[test]
fn the_hello_example_greets_each_line_as_a_component_and_as_a_core_module() {
    for wasm in [guest("hello"), core_guest("hello")] {
        let run = poolhost(
            &["run", wasm.to_str().unwrap(), "-n", "2", "--each", "-", "--group"],
            Some("world\n\"dear reader\"\n"),
        );
        assert_eq!(run.code, 0, "{}", run.stderr);
        let mut lines: Vec<&str> = run.stdout.lines().collect();
        lines.sort();
        assert_eq!(
            lines,
            ["hello, dear reader!", "hello, world!"],
            "{}",
            wasm.display()
        );
    }
}

#[test]
fn the_sieve_example_counts_primes_on_every_worker() {
    let run = common::invoke(
        "sieve",
        &["-n", "2"],
        &["primes(10)", "primes(1000)", "primes(1000000)", "primes(2)"],
    );
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (
            0,
            "primes(10) -> 4\nprimes(1000) -> 168\nprimes(1000000) -> 78498\nprimes(2) -> 0\n"
        ),
        "{}",
        run.stderr
    );
}
