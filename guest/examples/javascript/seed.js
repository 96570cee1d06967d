// The seed in JavaScript, built with componentize-qjs (QuickJS) against `seed.wit`:
//
//     poolhost run seed.wasm -n 4                                  # the first program, `run`
//     poolhost run seed.wasm -n 2 --invoke 'writer()' 'reader(6)'  # the second one's tasks
//
// WIT imports are ES modules named by their interfaces; WIT names become camelCase, resources
// classes, `option<T>` a value or null, and a `result` the value or an exception.

import pool from "poolhost:pool/pool@0.1.0";
import process from "poolhost:pool/process@0.1.0";
import queue from "poolhost:pool/queue@0.1.0";
import clock from "wasi:clocks/monotonic-clock@0.2.12";
import random from "wasi:random/random@0.2.12";
import stdout from "wasi:cli/stdout@0.2.12";

// The queue both tasks use, as the seed's `q`.
const QUEUE = "q";

export function longTimeTask(name) {
  print(`Run task ${name} (${process.pid()})...`);
  const start = Date.now();
  // Python's random.random() * 3 seconds, from WASI's random source (a u64 is a number).
  const ms = random.getRandomU64() % 3000;
  clock.subscribeDuration(ms * 1_000_000).block();
  print(`Task ${name} runs ${((Date.now() - start) / 1000).toFixed(2)} seconds.`);
}

export function writer() {
  print(`writer started (${process.pid()}), parent is (${process.ppid()})`);
  const q = queue.Queue.open(QUEUE);
  for (const c of "itcast") {
    q.put(utf8(c), null);
  }
}

export function reader(count) {
  print(`reader started (${process.pid()}), parent is (${process.ppid()})`);
  const q = queue.Queue.open(QUEUE);
  for (let i = 0; i < count; i++) {
    // `get(null)` waits as long as it takes, as the seed's `q.get(True)`.
    print(`reader got message from Queue: ${text(q.get(null))}`);
  }
}

export function fail(message) {
  throw new Error(message);
}

export function noop() {}

// The seed's first program, its `if __name__ == '__main__':`, as `wasi:cli/run`'s `run`: a pool
// of `poolhost run -n` workers, five long_time_task calls on it.
export const run = {
  run() {
    print(`Parent process ${process.pid()}.`);
    const tasks = [];
    for (let i = 0; i < 5; i++) {
      // The export's name and its arguments as WAVE text.
      tasks.push(pool.applyAsync("long-time-task", `${i}`));
    }
    print("Waiting for all subprocesses done...");
    pool.close();
    pool.join();
    // Unlike Python's, a failed task does not pass unnoticed: `get` throws its failure.
    for (const task of tasks) {
      task.get(null);
    }
    print("All subprocesses done.");
  },
};

// QuickJS has no `console`: a line goes to WASI's stdout.
function print(line) {
  stdout.getStdout().blockingWriteAndFlush(utf8(`${line}\n`));
}

// Queue items are bytes; QuickJS has no TextEncoder, so text goes through UTF-8 by hand.
function utf8(text) {
  return Uint8Array.from(unescape(encodeURIComponent(text)), (c) => c.charCodeAt(0));
}

function text(bytes) {
  return decodeURIComponent(escape(String.fromCharCode(...bytes)));
}
