//! Test-only guest: one export per behaviour the tests and the benchmark need.

use std::time::Duration;

use poolhost_guest::process;

wit_bindgen::generate!({
    inline: r#"
        package test:calls;

        world calls {
            /// Does nothing: the benchmark's unit of work.
            export noop: func();
            /// a + b, wrapping.
            export add: func(a: s32, b: s32) -> s32;
            /// Returns its argument.
            export echo: func(text: string) -> string;
            /// Sleeps `ms` milliseconds, then returns `ms`.
            export sleep-ms: func(ms: u32) -> u32;
            /// The worker's pid.
            export whoami: func() -> u32;
            /// The pool's pid, as the task sees it.
            export parent: func() -> u32;
            /// Panics with `message`: an `unreachable` trap.
            export fail: func(message: string);
            /// Exits the task with `code`.
            export quit: func(code: u32);
            /// Prints `count` numbered lines to stdout and one line to stderr.
            export shout: func(tag: string, count: u32);

            /// Exports inside an interface, called as `math.double(21)`.
            export math: interface {
                /// 2 x.
                double: func(x: u64) -> u64;
            }
        }
    "#,
});

struct Calls;

impl Guest for Calls {
    fn noop() {}

    fn add(a: i32, b: i32) -> i32 {
        a.wrapping_add(b)
    }

    fn echo(text: String) -> String {
        text
    }

    fn sleep_ms(ms: u32) -> u32 {
        std::thread::sleep(Duration::from_millis(ms.into()));
        ms
    }

    fn whoami() -> u32 {
        process::pid()
    }

    fn parent() -> u32 {
        process::ppid()
    }

    fn fail(message: String) {
        panic!("{message}");
    }

    fn quit(code: u32) {
        std::process::exit(code as i32);
    }

    fn shout(tag: String, count: u32) {
        for i in 0..count {
            println!("{tag} line {i} of {count}");
        }
        eprintln!("{tag} done");
    }
}

impl exports::math::Guest for Calls {
    fn double(x: u64) -> u64 {
        x.wrapping_mul(2)
    }
}

export!(Calls);
