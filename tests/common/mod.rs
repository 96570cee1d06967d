//! Shared helpers of the integration tests: the real `poolhost` binary, the real guests from
//! `make guests`, and runs with a bounded wait.

#![allow(dead_code)] // each test binary uses its own part of this module

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

/// What a finished `poolhost` run printed.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The JSON reports of a run with `--output json`: its stdout lines that are objects.
    pub fn reports(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// Runs `poolhost` with `args` (and `stdin`), failing the test if it runs past [`RUN_LIMIT`].
pub fn poolhost(args: &[&str], stdin: Option<&str>) -> Run {
    poolhost_env(args, &[], stdin)
}

/// As [`poolhost`], with environment variables `env` set for it.
pub fn poolhost_env(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Run {
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
    if let Some(input) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    let err = thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).unwrap();
        s
    });
    let status = match child.wait_timeout(RUN_LIMIT).unwrap() {
        Some(status) => status,
        None => {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("poolhost {args:?} ran past {RUN_LIMIT:?}");
        }
    };
    Run {
        code: status.code().expect("poolhost exits, not killed"),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
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
