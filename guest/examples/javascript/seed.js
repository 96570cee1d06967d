// The seed's tasks in JavaScript, built with componentize-qjs (QuickJS) against `seed.wit`:
//
//     poolhost run seed.wasm -n 4 --invoke 'long-time-task(0)' 'long-time-task(1)'
//     poolhost run seed.wasm -n 2 --invoke 'writer()' 'reader(6)'
//
// WIT imports are ES modules named by their interfaces; WIT names become camelCase, resources
// classes, `option<T>` a value or null, and a `result` the value or an exception.

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
