//! `poolhost inspect` on every example guest, and the compile cache: `poolhost compile`, then a
//! run that loads from the cache, as its `-v` log shows.

use serde_json::Value as Json;

use crate::common::{self, guest, poolhost, poolhost_env};

fn inspect(name: &str) -> Json {
    let wasm = guest(name);
    let run = poolhost(&["inspect", wasm.to_str().unwrap(), "--output", "json"], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    serde_json::from_str(&run.stdout).unwrap()
}

fn strings(json: &Json) -> Vec<&str> {
    json.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect()
}

/// A guest, how `run` treats it, some of its exports, and the poolhost interfaces it imports.
type Expected = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    &'static [&'static str],
);

#[test]
fn inspect_lists_each_example_guests_exports_imports_and_kind() {
    let expected: [Expected; 12] = [
        ("hello", &["jobs"], &[], &[]),
        ("sieve", &["calls"], &["primes(limit: u32) -> u32"], &[]),
        (
            "long_time_task",
            &["calls"],
            &["long-time-task(name: u32)"],
            &["process"],
        ),
        (
            "queue_demo",
            &["calls"],
            &["writer()", "reader(n: u32)"],
            &["process", "queue"],
        ),
        (
            "seed-pool",
            &["calls", "driver"],
            &["long-time-task(name: u32)"],
            &["process", "pool"],
        ),
        (
            "seed-queue",
            &["calls", "driver"],
            &["writer()", "reader()"],
            &["process", "queue", "pool"],
        ),
        (
            "test_calls",
            &["calls"],
            &["add(a: s32, b: s32) -> s32", "math.double(x: u64) -> u64"],
            &["process"],
        ),
        ("test-command", &["jobs"], &[], &["process"]),
        (
            "test-driver",
            &["calls", "driver"],
            &["nap(ms: u32) -> u32"],
            &["process", "pool"],
        ),
        ("test_hostile", &["calls"], &["hog(mib: u32) -> u32"], &[]),
        ("test-job", &["jobs"], &[], &[]),
        (
            "test_queue",
            &["calls"],
            &["consume(queue: string, count: u32) -> list<string>"],
            &["process", "queue"],
        ),
    ];
    for (name, kinds, exports, poolhost_imports) in expected {
        let json = inspect(name);
        assert_eq!(strings(&json["kinds"]), kinds, "{name}: {json}");
        assert_eq!(
            json["main"],
            kinds.contains(&"jobs") || kinds.contains(&"driver"),
            "{name}"
        );
        let listed = strings(&json["exports"]);
        for export in exports {
            assert!(listed.contains(export), "{name} lacks `{export}`: {listed:?}");
        }
        let imports = strings(&json["imports"]);
        let ours: Vec<&str> = imports
            .iter()
            .filter_map(|i| i.strip_prefix("poolhost:pool/"))
            .map(|i| i.split('@').next().unwrap())
            .collect();
        assert_eq!(ours, poolhost_imports, "{name}: {imports:?}");
        assert!(
            imports.iter().any(|i| i.starts_with("wasi:cli/")),
            "{name}: {imports:?}"
        );
    }

    // The text form says the same for people.
    let wasm = guest("seed-pool");
    let run = poolhost(&["inspect", wasm.to_str().unwrap()], None);
    assert_eq!(run.code, 0);
    for line in [
        "  long-time-task(name: u32)",
        "  driver: ",
        "  poolhost:pool/pool@0.1.0",
    ] {
        assert!(run.stdout.contains(line), "no {line:?} in {}", run.stdout);
    }

    let run = poolhost(&["inspect", "/no/such.wasm"], None);
    assert_eq!((run.code, run.stderr.lines().count()), (2, 1), "{}", run.stderr);
}

/// A component importing an interface poolhost does not have, and a function newer than its
/// `wasi:cli/environment`.
const MISSING: &str = r#"(component
  (import "wasi:keyvalue/store@0.2.0" (instance (export "ping" (func))))
  (import "wasi:cli/environment@0.2.0" (instance
    (export "get-arguments" (func (result (list string))))
    (export "get-everything" (func))))
  (core module $m (func (export "f")))
  (core instance $i (instantiate $m))
  (func (export "f") (canon lift (core func $i "f")))
)"#;

/// A component that uses a built-in of the component model's async ABI.
const ASYNC: &str = r#"(component
  (core func $cancel (canon task.cancel))
  (core module $m (func (export "f")))
  (core instance $i (instantiate $m))
  (func (export "f") (canon lift (core func $i "f")))
)"#;

#[test]
fn a_component_that_cannot_run_is_refused_before_compiling_and_inspect_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let cache = cache.to_str().unwrap();
    for (name, text, why) in [
        (
            "missing.wat",
            MISSING,
            "imports what poolhost does not provide: wasi:keyvalue/store@0.2.0, \
             wasi:cli/environment@0.2.0#get-everything",
        ),
        (
            "async.wat",
            ASYNC,
            "async ABI, which poolhost does not run; build it with synchronous exports (componentize-qjs: `--sync`",
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let path = path.to_str().unwrap();

        // `run` says why in one line, naming what is missing, and compiles nothing.
        let run = poolhost(
            &["-v", "run", path, "--cache-dir", cache, "--invoke", "f()"],
            None,
        );
        assert_eq!(run.code, 2, "{name}: {}", run.stderr);
        let error = run.stderr.lines().find(|l| l.starts_with("poolhost: ")).unwrap();
        assert!(error.contains(&format!("`{path}` cannot run here: ")), "{error}");
        assert!(error.contains(why), "{name}: {error}");
        assert!(!run.stderr.contains("compiled `"), "{}", run.stderr);

        // `inspect` still shows what it exports and imports, and why it cannot run.
        let run = poolhost(&["inspect", path, "--output", "json"], None);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let json: Json = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(strings(&json["exports"]), ["f()"]);
        assert_eq!(json["kinds"], serde_json::json!([]));
        assert!(json["unrunnable"].as_str().unwrap().contains(why), "{json}");
    }
    assert!(
        std::fs::read_dir(dir.path().join("cache")).map_or(true, |mut d| d.next().is_none()),
        "nothing was compiled into the cache"
    );
}

/// A component whose only import is an interface of plain types: it needs nothing of the host.
const TYPES_ONLY: &str = r#"(component
  (import "my:app/types@1.0.0" (instance $types
    (type $p (record (field "x" s32) (field "y" s32)))
    (export "point" (type (eq $p)))))
  (alias export $types "point" (type $point))
  (core module $m
    (memory (export "memory") 1)
    (func (export "shift") (param i32 i32) (result i32)
      i32.const 0 local.get 0 i32.const 1 i32.add i32.store
      i32.const 4 local.get 1 i32.const 1 i32.add i32.store
      i32.const 0))
  (core instance $i (instantiate $m))
  (type $f (func (param "p" $point) (result $point)))
  (func $shift (type $f) (canon lift (core func $i "shift") (memory (core memory $i "memory"))))
  (export "shift" (func $shift) (func (type $f)))
)"#;

#[test]
fn an_import_of_plain_types_needs_nothing_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("types.wat");
    std::fs::write(&path, TYPES_ONLY).unwrap();
    let run = poolhost(
        &["run", path.to_str().unwrap(), "--invoke", "shift({x: 1, y: 2})"],
        None,
    );
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "shift({x: 1, y: 2}) -> {x: 2, y: 3}\n"),
        "{}",
        run.stderr
    );
}

#[test]
fn inspect_reads_without_compiling_or_caching() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = guest("test_calls");
    let run = poolhost_env(
        &["-v", "inspect", wasm.to_str().unwrap()],
        &[("XDG_CACHE_HOME", dir.path().to_str().unwrap())],
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("  math.double(x: u64) -> u64"),
        "{}",
        run.stdout
    );
    assert!(!run.stderr.contains("compiled `"), "{}", run.stderr);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "the cache was touched"
    );
}

/// `poolhost [-v] run WASM CACHE_ARGS -n 1 --invoke 'add(2, 3)'`, with `env` set.
fn run_add(wasm: &str, verbose: bool, cache_args: &[&str], env: &[(&str, &str)]) -> common::Run {
    let mut args = vec!["run", wasm];
    if verbose {
        args.insert(0, "-v");
    }
    args.extend(cache_args);
    args.extend(["-n", "1", "--invoke", "add(2, 3)"]);
    poolhost_env(&args, env, None)
}

/// `poolhost compile WASM --cache-dir CACHE`, which must compile it now; the entry it names.
fn compile_into(cache: &str, wasm: &str) -> String {
    let run = poolhost(&["compile", wasm, "--cache-dir", cache], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.stdout
        .trim_end()
        .split_once(": compiled into the cache: ")
        .map(|(_, path)| path.to_owned())
        .unwrap_or_else(|| panic!("{}", run.stdout))
}

#[test]
fn compile_fills_the_cache_and_run_loads_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let cache = cache.to_str().unwrap();
    let wasm = guest("test_calls");
    let wasm = wasm.to_str().unwrap();

    let entry = compile_into(cache, wasm);
    assert!(
        entry.starts_with(cache) && std::path::Path::new(&entry).is_file(),
        "{entry}"
    );
    let again = poolhost(&["compile", wasm, "--cache-dir", cache], None);
    assert!(
        again.stdout.contains(": already in the cache: "),
        "{}",
        again.stdout
    );

    let run = run_add(wasm, true, &["--cache-dir", cache], &[]);
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "add(2, 3) -> 5\n"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains(&format!("compile cache hit for `{wasm}`: {entry}")),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("compiled `"), "{}", run.stderr);

    // --no-cache compiles, and the environment variable names the directory too.
    let run = run_add(wasm, true, &["--no-cache"], &[("POOLHOST_CACHE_DIR", cache)]);
    assert!(
        run.stderr.contains(&format!("compiled `{wasm}`")),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("cache hit"), "{}", run.stderr);
    let run = run_add(wasm, true, &[], &[("POOLHOST_CACHE_DIR", cache)]);
    assert!(run.stderr.contains("compile cache hit"), "{}", run.stderr);

    // Without -v the log is quiet.
    let run = run_add(wasm, false, &["--cache-dir", cache], &[]);
    assert_eq!(run.stderr.lines().count(), 1, "only the summary: {}", run.stderr);
}

#[test]
fn a_cache_others_can_write_to_is_not_used() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("shared");
    std::fs::create_dir(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let cache = cache.to_str().unwrap();
    let wasm = guest("test_calls");
    let wasm = wasm.to_str().unwrap();

    let run = poolhost(&["compile", wasm, "--cache-dir", cache], None);
    assert_eq!((run.code, run.stderr.lines().count()), (2, 1), "{}", run.stderr);
    assert!(run.stderr.contains("others can write to it"), "{}", run.stderr);

    // A run given it refuses it too, in one line.
    let run = run_add(wasm, false, &["--cache-dir", cache], &[]);
    assert_eq!((run.code, run.stderr.lines().count()), (2, 1), "{}", run.stderr);
    assert!(run.stderr.contains("others can write to it"), "{}", run.stderr);

    // As the default cache (under XDG_CACHE_HOME), it gets a warning, and the run compiles as
    // if there were no cache; the directory stays empty.
    let default = dir.path().join("xdg").join("poolhost");
    std::fs::create_dir_all(&default).unwrap();
    std::fs::set_permissions(&default, std::fs::Permissions::from_mode(0o777)).unwrap();
    let xdg = dir.path().join("xdg");
    let run = poolhost_env(
        &["run", wasm, "--invoke", "add(1, 2)"],
        &[("XDG_CACHE_HOME", xdg.to_str().unwrap())],
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("compiling without it"), "{}", run.stderr);
    assert_eq!(std::fs::read_dir(cache).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(&default).unwrap().count(), 0);
}

#[test]
fn an_unusable_cache_entry_is_compiled_again_even_for_workers_that_started_loading_it() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let cache = cache.to_str().unwrap();
    let wasm = guest("test_calls");
    let wasm = wasm.to_str().unwrap();
    let entry = compile_into(cache, wasm);
    std::fs::write(&entry, b"not compiled code").unwrap();

    // The workers are told to load the entry before the host finds it unusable, then told of
    // the code compiled again; every task runs on it.
    let run = poolhost(
        &[
            "run",
            wasm,
            "--cache-dir",
            cache,
            "-n",
            "2",
            "--invoke",
            "add(1, 2)",
            "add(3, 4)",
            "add(5, 6)",
        ],
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("is unusable"), "{}", run.stderr);
    assert_eq!(run.stdout, "add(1, 2) -> 3\nadd(3, 4) -> 7\nadd(5, 6) -> 11\n");
}

/// Compiled code is run unchecked, so its files are private whatever the umask: under umask 000,
/// the run's temporary directory is 0700 and its code 0600, and so are the compile cache and
/// its entries.
#[test]
fn compiled_code_is_private_under_a_permissive_umask() {
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    let cache = dir.path().join("cache");
    std::fs::create_dir(&tmp).unwrap();
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let wasm = guest("test_hostile");
    // The task sleeps until the test kills the run, so its temporary directory can be looked at.
    let mut child = Command::new("sh")
        .args([
            "-c",
            "umask 000; exec \"$@\"",
            "sh",
            common::poolhost_bin(),
            "run",
        ])
        .arg(&wasm)
        .args(["-n", "1", "--cache-dir"])
        .arg(&cache)
        .args(["--invoke", "nap(600000)"])
        .env("TMPDIR", &tmp)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + common::RUN_LIMIT;
    let code = loop {
        let found = std::fs::read_dir(&tmp)
            .unwrap()
            .filter_map(Result::ok)
            .map(|entry| entry.path().join("task.cwasm"))
            .find(|code| code.is_file());
        // The code is written to the run's directory first, then stored in the cache.
        let stored = std::fs::read_dir(&cache).is_ok_and(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|entry| entry.path().extension().is_some_and(|ext| ext == "cwasm"))
        });
        if let Some(code) = found.filter(|_| stored) {
            break code;
        }
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            child.wait().unwrap();
            panic!(
                "no compiled code appeared in {} and {}",
                tmp.display(),
                cache.display()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let modes = (mode(code.parent().unwrap()), mode(&code));
    let _ = child.kill();
    child.wait().unwrap();
    assert_eq!(modes, (0o700, 0o600), "temporary directory and code");
    assert_eq!(mode(&cache), 0o700, "the compile cache");
    let entries: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(mode(&entries[0]), 0o600, "{}", entries[0].display());
}
