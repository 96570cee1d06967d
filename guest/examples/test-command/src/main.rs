//! Test-only guest: a command component, run once as `main` when given no calls.

fn main() {
    println!("hello from main on worker {}", poolhost_guest::process::pid());
}
