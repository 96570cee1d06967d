//! Test-only guest: each export misbehaves in one way a limit or the sandbox must contain.

use std::hint::black_box;
use std::time::Duration;

wit_bindgen::generate!({
    inline: r#"
        package test:hostile;

        world hostile {
            /// Loops forever.
            export spin: func();
            /// Allocates 1 MiB blocks, touching each, until it is stopped.
            export bomb: func();
            /// Allocates and touches `mib` MiB, then returns how many it holds.
            export hog: func(mib: u32) -> u32;
            /// Recurses without end.
            export recurse: func(depth: u64) -> u64;
            /// Sleeps `ms` milliseconds in a host call (a WASI poll, which cannot be interrupted).
            export nap: func(ms: u32);
            /// Adds 1 `n` times: a CPU-bound loop of known length.
            export count: func(n: u64) -> u64;
            /// Writes `lines` lines of 100 bytes to stdout.
            export flood: func(lines: u32);
            /// Tries to read /etc/passwd; returns what happened.
            export passwd: func() -> result<string, string>;
            /// Reads a file.
            export read-file: func(path: string) -> result<string, string>;
            /// Writes a file.
            export write-file: func(path: string, text: string) -> result<_, string>;
            /// An environment variable, if the task has it.
            export env-var: func(name: string) -> option<string>;
            /// A string of `mib` MiB: a result too large to send to the host.
            export huge-result: func(mib: u32) -> string;
            /// Writes `bytes` bytes of `x` to stdout with no newline: one long line.
            export long-line: func(bytes: u32);
            /// Prints `text` and a newline to stdout.
            export say: func(text: string);
            /// Sends `GET http://{authority}/` through `wasi:http`; the response's status, or
            /// the error the request failed with.
            export fetch: func(authority: string) -> result<u16, string>;
        }
    "#,
});

struct Hostile;

impl Guest for Hostile {
    fn spin() {
        let mut x = 0u64;
        loop {
            x = black_box(x.wrapping_add(1));
        }
    }

    fn bomb() {
        let mut blocks = Vec::new();
        loop {
            blocks.push(black_box(vec![1u8; 1 << 20]));
        }
    }

    fn hog(mib: u32) -> u32 {
        let blocks: Vec<Vec<u8>> = (0..mib).map(|_| black_box(vec![1u8; 1 << 20])).collect();
        blocks.len() as u32
    }

    #[allow(unconditional_recursion)] // the point: it ends in a stack overflow
    fn recurse(depth: u64) -> u64 {
        // Not a tail call: the addition after the call keeps every frame alive.
        1 + Self::recurse(black_box(depth + 1))
    }

    fn nap(ms: u32) {
        std::thread::sleep(Duration::from_millis(ms.into()));
    }

    fn count(n: u64) -> u64 {
        let mut x = 0u64;
        for _ in 0..n {
            x = black_box(x + 1);
        }
        x
    }

    fn flood(lines: u32) {
        let line = "x".repeat(99);
        for _ in 0..lines {
            println!("{line}");
        }
    }

    fn passwd() -> Result<String, String> {
        std::fs::read_to_string("/etc/passwd").map_err(|e| e.to_string())
    }

    fn read_file(path: String) -> Result<String, String> {
        std::fs::read_to_string(path).map_err(|e| e.to_string())
    }

    fn write_file(path: String, text: String) -> Result<(), String> {
        std::fs::write(path, text).map_err(|e| e.to_string())
    }

    fn env_var(name: String) -> Option<String> {
        std::env::var(name).ok()
    }

    fn huge_result(mib: u32) -> String {
        "x".repeat((mib as usize) << 20)
    }

    fn say(text: String) {
        println!("{text}");
    }

    fn fetch(authority: String) -> Result<u16, String> {
        use wasip2::http::outgoing_handler::handle;
        use wasip2::http::types::{Fields, OutgoingRequest, Scheme};

        let request = OutgoingRequest::new(Fields::new());
        request
            .set_scheme(Some(&Scheme::Http))
            .map_err(|()| "bad scheme")?;
        request
            .set_authority(Some(&authority))
            .map_err(|()| "bad authority")?;
        request.set_path_with_query(Some("/")).map_err(|()| "bad path")?;
        let response = handle(request, None).map_err(|e| format!("{e:?}"))?;
        response.subscribe().block();
        match response.get() {
            Some(Ok(Ok(response))) => Ok(response.status()),
            Some(Ok(Err(e))) => Err(format!("{e:?}")),
            Some(Err(())) | None => Err("no response".into()),
        }
    }

    fn long_line(bytes: u32) {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&vec![b'x'; bytes as usize]);
        let _ = out.flush();
    }
}

export!(Hostile);
