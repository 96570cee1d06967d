//! The reporter: takes the ids of the tasks the local pools finish, and completes them in Redis
//! in batches, each result with its output, in one round trip per batch.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use redis::Connection;

use crate::cluster::wire::Finished;
use crate::cluster::{GROUP, RESULT_TTL_SECS, complete_script};
use crate::pool::AsyncResult;
use crate::task::TaskError;

use super::{Host, READ_BLOCK};

/// Results completed in one round trip.
const REPORT_BATCH: usize = 256;

impl Host {
    /// The reporter's loop: completes the tasks the local pools finish, in batches; ends when
    /// the host takes nothing more and holds nothing. Returns how many it completed.
    pub(super) fn report(&self, mut connection: Connection, results: Receiver<u64>) -> u64 {
        let script = complete_script();
        let mut completed = 0;
        loop {
            let first = match results.recv_timeout(READ_BLOCK) {
                Ok(key) => key,
                Err(RecvTimeoutError::Timeout) => {
                    let state = self.lock();
                    if (!state.taking && state.held.is_empty()) || state.failed {
                        return completed;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return completed,
            };
            let mut keys = vec![first];
            keys.extend(results.try_iter().take(REPORT_BATCH - 1));
            let batch = self.finished_batch(&keys);
            self.room.notify_all();
            if !batch.is_empty() {
                completed += self.send_results(&mut connection, &script, batch);
            }
        }
    }

    /// The results of the held tasks `keys`, which are let go; those lost to another host are
    /// dropped.
    fn finished_batch(&self, keys: &[u64]) -> Vec<(String, String, Finished)> {
        let mut state = self.lock();
        let (mut release, mut give_back) = (Vec::new(), Vec::new());
        let mut batch = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(held) = state.held.remove(key) else {
                continue;
            };
            if let Some(pool) = state.pools.get_mut(&held.pool) {
                pool.held = pool.held.saturating_sub(1);
            }
            if held.lost {
                if let Ok(Some(report)) = held.result.as_ref().map(AsyncResult::report) {
                    held.output.take(report.id);
                    // The host that took it over runs it again, with what it had taken.
                    give_back.extend(report.worker);
                }
                tracing::warn!(
                    "task entry {} finished after another host took it over; its result is dropped",
                    held.entry
                );
                continue;
            }
            let finished = match held.result.map(|result| result.report()) {
                Ok(Some(report)) => {
                    // What the task took from queues is its own now.
                    release.extend(report.worker);
                    let output = held.output.take(report.id);
                    Finished::from_report(held.task, &self.serve.id, report, held.prior, output)
                }
                Ok(None) => Finished::unrun(
                    held.task,
                    &self.serve.id,
                    Err(TaskError::Failed("the host lost the task's result".into())),
                    held.prior,
                ),
                Err(failure) => Finished::unrun(held.task, &self.serve.id, Err(failure), held.prior),
            };
            batch.push((held.entry, held.run, finished));
        }
        // Redis is reached with the lock let go: the other threads go on meanwhile. Until the
        // workers' held items are let go, their places stay taken: a next task on the same
        // worker must not have its items let go with them.
        let releasing = release.len() + give_back.len();
        state.releasing += releasing;
        drop(state);
        for worker in release {
            self.manager.release(worker);
        }
        for worker in give_back {
            self.queues.give_back(worker);
        }
        self.lock().releasing -= releasing;
        batch
    }

    /// Completes `batch` in one round trip, trying again while the server is away (the entries
    /// stay this host's until the visibility time passes). Returns how many were recorded.
    fn send_results(
        &self,
        connection: &mut Connection,
        script: &redis::Script,
        batch: Vec<(String, String, Finished)>,
    ) -> u64 {
        let mut pipe = redis::pipe();
        for (entry, run, finished) in &batch {
            let payload = postcard::to_allocvec(finished).expect("a result serialises");
            pipe.cmd("EVALSHA")
                .arg(script.get_hash())
                .arg(5)
                .arg(self.keys.tasks())
                .arg(self.keys.results(run))
                .arg(self.keys.done(run))
                .arg(self.keys.stats())
                .arg(self.keys.deaths())
                .arg(GROUP)
                .arg(entry)
                .arg(&self.serve.id)
                .arg(finished.task)
                .arg(payload)
                .arg(RESULT_TTL_SECS)
                .arg(if finished.result.is_ok() { "done" } else { "failed" });
        }
        let started = Instant::now();
        let mut retried = false;
        loop {
            match pipe.query::<Vec<i64>>(connection) {
                Ok(outcomes) => {
                    let mut recorded = 0;
                    for ((entry, run, finished), outcome) in batch.iter().zip(&outcomes) {
                        // Tried again after a reply was lost: the first try may have recorded it.
                        let ours = *outcome == 1
                            || (retried
                                && *outcome == 0
                                && redis::cmd("HEXISTS")
                                    .arg(self.keys.results(run))
                                    .arg(finished.task)
                                    .query::<bool>(connection)
                                    .unwrap_or(false));
                        if ours {
                            recorded += 1;
                        } else if *outcome == 0 {
                            tracing::warn!(
                                "task entry {entry} was taken over by another host; its result is dropped"
                            );
                        }
                    }
                    return recorded;
                }
                Err(e) if e.code() == Some("NOSCRIPT") => {
                    if let Err(e) = script.load(connection) {
                        tracing::warn!("{}", self.serve.cluster.error(e));
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        "cannot report results: {}; trying again",
                        self.serve.cluster.error(e)
                    );
                    if started.elapsed() > self.serve.cluster.timing().1 * 2 {
                        // Past the visibility time they are another host's anyway.
                        return 0;
                    }
                    thread::sleep(Duration::from_millis(200));
                    if let Ok(made) = self.serve.cluster.command_connection() {
                        *connection = made;
                    }
                    retried = true;
                }
            }
        }
    }
}
