//! Test-only guest: a command component, run as jobs. Prints `args: ` and its arguments joined
//! by `|`, then obeys the ones it knows: `sleep=MS` sleeps, `lines=N` prints N numbered lines
//! after its first argument, and `fail` makes it exit with a failure at the end.

use std::io::Write;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!("args: {}", args.join("|"));
    let label = args.first().map_or("", String::as_str);
    for arg in &args {
        if let Some(ms) = arg.strip_prefix("sleep=").and_then(|ms| ms.parse().ok()) {
            std::thread::sleep(Duration::from_millis(ms));
        }
        if let Some(n) = arg.strip_prefix("lines=").and_then(|n| n.parse::<u32>().ok()) {
            let mut out = std::io::stdout().lock();
            for i in 0..n {
                // Flushed line by line, so lines of jobs running at once reach the host mixed.
                let _ = writeln!(out, "{label} line {i}");
                let _ = out.flush();
            }
        }
    }
    if args.iter().any(|arg| arg == "fail") {
        std::process::exit(1);
    }
}
