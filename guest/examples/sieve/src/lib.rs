//! Example guest: a CPU-bound task. `primes(limit)` counts the primes below `limit` with the
//! sieve of Eratosthenes, touching memory as real work does.
//!
//! ```sh
//! poolhost run sieve.wasm -n 2 --invoke 'primes(10000000)' 'primes(20000000)'
//! ```
//!
//! It imports nothing but what Rust's standard library needs, so `wasmtime run --invoke
//! 'primes(1000)' sieve.wasm` runs it as well: `make bench` compares the two.

wit_bindgen::generate!({
    inline: r#"
        package example:sieve;

        world sieve {
            /// The number of primes below `limit`.
            export primes: func(limit: u32) -> u32;
        }
    "#,
});

struct Sieve;

impl Guest for Sieve {
    fn primes(limit: u32) -> u32 {
        let limit = limit as usize;
        if limit < 3 {
            return 0;
        }
        let mut composite = vec![false; limit];
        let mut count = 0;
        for n in 2..limit {
            if composite[n] {
                continue;
            }
            count += 1;
            // Multiples below n² were crossed out by smaller primes; past √limit there are none.
            if let Some(square) = n.checked_mul(n).filter(|&square| square < limit) {
                for multiple in (square..limit).step_by(n) {
                    composite[multiple] = true;
                }
            }
        }
        count
    }
}

export!(Sieve);
