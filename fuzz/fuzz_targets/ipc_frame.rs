//! Any bytes read as frames from a worker or from the host: a message or a typed error, never a
//! panic, and never an allocation past the frame limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use poolhost::ipc::{self, FromWorker, ToWorker};

fuzz_target!(|bytes: &[u8]| {
    let mut from = bytes;
    while ipc::read::<FromWorker>(&mut from).is_ok() {}
    let mut from = bytes;
    while ipc::read::<ToWorker>(&mut from).is_ok() {}
});
