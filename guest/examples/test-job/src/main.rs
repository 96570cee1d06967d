//! Test-only guest: a command component, run as jobs. Prints `args: ` and its arguments joined
//! by `|`, and exits with a failure if one of them is `fail`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!("args: {}", args.join("|"));
    if args.iter().any(|arg| arg == "fail") {
        std::process::exit(1);
    }
}
