//! Microbenchmarks of the two hot paths under every task and queue item: the host's manager and
//! the IPC codec. They run in seconds, without guests or worker processes, so a regression in
//! either shows up without the whole `make bench`. `cargo bench -p poolhost --bench micro`.

use std::hint::black_box;
use std::thread;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use poolhost::ipc::{self, Done, FromWorker, ToWorker};
use poolhost::{Call, Manager, Stream, TaskOptions, Value};

fn manager(c: &mut Criterion) {
    let mut group = c.benchmark_group("manager");
    let manager = Manager::new();
    let queue = manager.queue("bench").expect("the queue opens");
    let item = vec![7u8; 64];
    group.throughput(Throughput::Elements(1));
    group.bench_function("put then get, one 64-byte item", |b| {
        b.iter(|| {
            queue.put(item.clone()).expect("room");
            black_box(queue.get().expect("an item"));
        })
    });
    group.throughput(Throughput::Elements(256));
    group.bench_function("256 puts then get_many(256)", |b| {
        b.iter(|| {
            for _ in 0..256 {
                queue.put(item.clone()).expect("room");
            }
            black_box(queue.get_many(256).expect("items"));
        })
    });
    let bounded = manager.bounded("bounded", 16).expect("the queue opens");
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("10 000 items through a bounded(16) queue, producer thread", |b| {
        b.iter(|| {
            thread::scope(|scope| {
                scope.spawn(|| {
                    for _ in 0..10_000 {
                        bounded.put(item.clone()).expect("room");
                    }
                });
                for _ in 0..10_000 {
                    black_box(bounded.get().expect("an item"));
                }
            })
        })
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("ipc");
    let run = ToWorker::Run {
        options: TaskOptions::default(),
        tasks: vec![(41, Call::new("add", [Value::S32(1), Value::S32(2)]))],
    };
    let done = FromWorker::Done(Done {
        task: 41,
        result: Ok(Some(Value::S32(3))),
        started_unix_nanos: 1_795_557_903_133_829_800,
        duration_nanos: 333_386,
        peak_memory: 1_114_112,
        fuel_used: None,
    });
    let output = FromWorker::Output {
        task: 41,
        stream: Stream::Stdout,
        bytes: b"a line of guest output\n".repeat(170),
    };
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode a one-call Run", |b| {
        b.iter(|| black_box(ipc::encode(black_box(&run)).expect("encodes")))
    });
    group.bench_function("encode a Done", |b| {
        b.iter(|| black_box(ipc::encode(black_box(&done)).expect("encodes")))
    });
    let frame = ipc::encode(&done).expect("encodes");
    group.bench_function("decode a Done", |b| {
        b.iter(|| black_box(ipc::read::<FromWorker>(black_box(&frame[..])).expect("decodes")))
    });
    let frame = ipc::encode(&run).expect("encodes");
    group.bench_function("decode a one-call Run", |b| {
        b.iter(|| black_box(ipc::read::<ToWorker>(black_box(&frame[..])).expect("decodes")))
    });
    let frame = ipc::encode(&output).expect("encodes");
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.bench_function("write and read a 4 KiB Output frame", |b| {
        b.iter_batched(
            || Vec::with_capacity(frame.len()),
            |mut wire| {
                ipc::write(&mut wire, &output).expect("writes");
                black_box(ipc::read::<FromWorker>(&wire[..]).expect("decodes"))
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, manager, codec);
criterion_main!(benches);
