//! Property tests of what a user types: WAVE calls, random and mutated, parsed against a real
//! component's signatures give a call or a typed error, never a panic; a call that parses prints
//! back as text that parses to the same call. (`fuzz/` has the coverage-guided targets for long
//! runs, see the README.)

use std::sync::OnceLock;

use poolhost::Program;
use proptest::prelude::*;

use crate::common;

/// The test guest with a function of each shape the tests need, loaded once.
fn program() -> &'static Program {
    static PROGRAM: OnceLock<Program> = OnceLock::new();
    PROGRAM.get_or_init(|| Program::load(common::guest("test_calls")).expect("test_calls loads"))
}

/// Calls that fit test_calls' exports, to mutate.
const VALID: [&str; 6] = [
    "add(1, -2)",
    "echo(\"a \\\"quoted\\\" \\u{1f600} text\")",
    "sleep-ms(4294967295)",
    "math.double(18446744073709551615)",
    "shout(\"x\", 3)",
    "noop()",
];

fn check(text: &str) {
    if let Ok(call) = program().parse_call(text) {
        let again = program()
            .parse_call(&call.to_string())
            .unwrap_or_else(|e| panic!("{text:?} parsed, but its text {call} does not: {e}"));
        assert_eq!(again, call, "{text:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn random_text_is_a_call_or_a_typed_error(text in "\\PC{0,60}") {
        check(&text);
    }

    #[test]
    fn call_shaped_text_is_a_call_or_a_typed_error(
        name in "(add|echo|noop|sleep-ms|math\\.double|shout|[a-z.-]{1,8})",
        args in "[-0-9a-z\"\\\\{}\\[\\](), .'%:]{0,40}",
    ) {
        check(&format!("{name}({args})"));
    }

    #[test]
    fn mutated_calls_are_a_call_or_a_typed_error(
        which in 0usize..VALID.len(),
        edits in proptest::collection::vec((any::<usize>(), any::<char>(), 0u8..3), 1..5),
    ) {
        let mut text: Vec<char> = VALID[which].chars().collect();
        for (at, c, how) in edits {
            let at = at % (text.len() + 1);
            match how {
                0 => text.insert(at, c),
                1 if at < text.len() => { text.remove(at); }
                _ if at < text.len() => text[at] = c,
                _ => text.push(c),
            }
        }
        check(&text.into_iter().collect::<String>());
    }
}
