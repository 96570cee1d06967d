//! Any text parsed as a call of the test guest's exports: a call or a typed error, never a
//! panic; a call that parses prints back as text that parses to the same call.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use poolhost::Program;

/// The test guest `make guests` builds, loaded once.
fn program() -> &'static Program {
    static PROGRAM: OnceLock<Program> = OnceLock::new();
    PROGRAM.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/wasm32-wasip2/release/test_calls.wasm");
        Program::load(path).expect("test_calls.wasm loads: build it with `make guests`")
    })
}

fuzz_target!(|text: &str| {
    if let Ok(call) = program().parse_call(text) {
        let again = program().parse_call(&call.to_string()).expect("a parsed call prints as a call");
        assert_eq!(again, call);
    }
});
