//! Example guest: a command that greets its arguments, run as one job per input line with
//! `poolhost run hello.wasm --each FILE`. It uses nothing but WASI, so it builds for
//! `wasm32-wasip2` (a component) and `wasm32-wasip1` (a core module) alike, and runs under
//! `wasmtime run` too.

fn main() {
    let words: Vec<String> = std::env::args().skip(1).collect();
    if words.is_empty() {
        println!("hello, world!");
    } else {
        println!("hello, {}!", words.join(" "));
    }
}
