//! Shared helpers of the integration tests: the real `poolhost` binary, the real guests from
//! `make guests`, and runs with a bounded wait.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use wait_timeout::ChildExt;

/// The longest any single `poolhost` run in these tests may take before it counts as hung.
pub const RUN_LIMIT: Duration = Duration::from_secs(120);

/// A guest built by `make guests`; a missing one is a loud failure, never a skip.
pub fn guest(name: &str) -> PathBuf {
    let dir = std::env::var_os("POOLHOST_GUESTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release"));
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "missing guest `{}`: build the guests with `make guests`",
        path.display()
    );
    path
}

/// A guest written in another language (`python`, `javascript`), built by `make guests` into
/// `target/<language>/`; a missing one is a loud failure, never a skip.
pub fn language_guest(language: &str, name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join(language)
        .join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "missing {language} guest `{}`: build the guests with `make guests`",
        path.display()
    );
    path
}

/// A guest built by `make guests` as a WASI preview 1 core module (`wasm32-wasip1`).
pub fn core_guest(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip1/release")
        .join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "missing core guest `{}`: build the guests with `make guests`",
        path.display()
    );
    path
}

/// The `poolhost` binary under test.
pub fn poolhost_bin() -> &'static str {
    env!("CARGO_BIN_EXE_poolhost")
}

/// Writes `text` to a new file at `path` and makes it executable, for a test to run.
///
/// A child shell writes it, not this process: the tests are threads of one process, and a
/// process another test forks while this one holds the file open for writing inherits that
/// descriptor until it executes its program; running the file meanwhile fails with ETXTBSY.
pub fn write_executable(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    let written = Command::new("sh")
        .args(["-c", "printf '%s' \"$1\" > \"$2\"", "sh", text])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("sh starts");
    assert!(written.success(), "cannot write {}", path.display());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// What a finished `poolhost` run printed.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The JSON reports of a run with `--output json`: the objects on its stdout that are tasks'
    /// results (those with an `id`), not their output lines.
    pub fn reports(&self) -> Vec<serde_json::Value> {
        let objects = self.stdout.lines().filter(|l| l.starts_with('{'));
        let objects = objects.map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap());
        objects.filter(|object| object.get("id").is_some()).collect()
    }

    /// What the tasks printed on stdout, as text: under `--output json`, each output object's
    /// line (joined with the pieces that follow a `more`); the lines that are not JSON as they
    /// are; results left out.
    pub fn task_stdout(&self) -> String {
        let mut text = String::new();
        for line in self.stdout.lines() {
            match serde_json::from_str::<serde_json::Value>(line) {
                Ok(object) if object.get("task").is_some() => {
                    text.push_str(object["output"].as_str().expect("a UTF-8 line"));
                    if object.get("more").is_none() {
                        text.push('\n');
                    }
                }
                Ok(object) if object.get("id").is_some() => {}
                _ => {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
        text
    }

    /// Every line of the stdout of a run with `--output json`, each a JSON object.
    pub fn json(&self) -> Vec<serde_json::Value> {
        let parse = |line: &str| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"))
        };
        self.stdout.lines().map(parse).collect()
    }
}

/// Runs `poolhost` with `args` (and `stdin`), failing the test if it runs past [`RUN_LIMIT`].
pub fn poolhost(args: &[&str], stdin: Option<&str>) -> Run {
    poolhost_env(args, &[], stdin)
}

/// As [`poolhost`], with environment variables `env` set for it.
pub fn poolhost_env(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Run {
    Background::start_with_input(args, env, stdin).finish(RUN_LIMIT)
}

/// Runs `poolhost run GUEST OPTIONS... --invoke CALLS...` on a guest from `make guests`.
pub fn invoke(guest_name: &str, options: &[&str], calls: &[&str]) -> Run {
    invoke_with_input(guest_name, options, calls, None)
}

/// As [`invoke`], with `stdin` as poolhost's standard input.
pub fn invoke_with_input(guest_name: &str, options: &[&str], calls: &[&str], stdin: Option<&str>) -> Run {
    let wasm = guest(guest_name);
    let mut args = vec!["run", wasm.to_str().unwrap()];
    args.extend(options);
    args.push("--invoke");
    args.extend(calls);
    poolhost(&args, stdin)
}

/// Runs `poolhost ARGS`, discarding its stdout but counting its bytes, and records the host
/// process's peak resident memory (`VmHWM`, in KiB) as it runs. Returns (exit code, stdout bytes,
/// peak KiB).
pub fn poolhost_memory(args: &[&str]) -> (i32, u64, u64) {
    let mut child = Command::new(poolhost_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("poolhost starts");
    let mut stdout = child.stdout.take().unwrap();
    let counter = thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()).unwrap());
    let status_file = format!("/proc/{}/status", child.id());
    let deadline = std::time::Instant::now() + RUN_LIMIT;
    let mut peak = 0;
    // A measurement, not a synchronisation: sample the high-water mark until the process is gone.
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "poolhost {args:?} ran past {RUN_LIMIT:?}"
        );
        if let Ok(status) = std::fs::read_to_string(&status_file) {
            let hwm = status.lines().find_map(|l| l.strip_prefix("VmHWM:"));
            if let Some(kib) = hwm.and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()) {
                peak = peak.max(kib);
            }
        }
        thread::sleep(Duration::from_millis(10));
    }
    let code = child.wait().unwrap().code().expect("poolhost exits");
    (code, counter.join().unwrap(), peak)
}

/// Sends SIGKILL to process `pid`; whether it was there to receive it.
pub fn kill(pid: u32) -> bool {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a pid is positive");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).is_ok()
}

/// Whether process `pid` exists at all (a zombie still does: it has not been reaped).
pub fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Sends `signal` to process `pid`; whether it was there to receive it.
pub fn signal(pid: u32, signal: rustix::process::Signal) -> bool {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a pid is positive");
    rustix::process::kill_process(pid, signal).is_ok()
}

/// The child processes of process `pid` (of any of its threads).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for thread in threads.flatten() {
        if let Ok(list) = std::fs::read_to_string(thread.path().join("children")) {
            pids.extend(list.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    pids
}

/// A `poolhost` process started in the background, its stdout and stderr collected; killed and
/// reaped when dropped, on every path.
pub struct Background {
    args: String,
    pub child: std::process::Child,
    out: Option<thread::JoinHandle<String>>,
    err: Option<thread::JoinHandle<String>>,
}

impl Background {
    /// Starts `poolhost ARGS` with `env`.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Background {
        Background::start_with_input(args, env, None)
    }

    /// As [`Background::start`], with `stdin` as its standard input.
    pub fn start_with_input(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Background {
        let mut child = Command::new(poolhost_bin())
            .args(args)
            .envs(env.iter().copied())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("poolhost starts");
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let out = thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let err = thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        if let Some(input) = stdin {
            use std::io::Write;
            // Written after the readers start, so a run that prints before it reads cannot
            // block on a full pipe while this waits for it to read.
            // A run may stop reading before the end (`--halt`): a closed pipe is its answer.
            let written = child.stdin.take().unwrap().write_all(input.as_bytes());
            if let Err(e) = written {
                assert_eq!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe,
                    "writing the run's input: {e}"
                );
            }
        }
        Background {
            args: format!("{args:?}"),
            child,
            out: Some(out),
            err: Some(err),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// Waits at most `limit` for it to exit, failing the test past that; what it printed.
    pub fn finish(mut self, limit: Duration) -> Run {
        let status = match self.child.wait_timeout(limit).unwrap() {
            Some(status) => status,
            None => panic!("poolhost {} ran past {limit:?}", self.args),
        };
        Run {
            code: status.code().expect("poolhost exits, not killed"),
            stdout: self.out.take().unwrap().join().unwrap(),
            stderr: self.err.take().unwrap().join().unwrap(),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
