//! The heartbeat: says the host is alive, renews the entries it holds so that no other host takes
//! them over, and learns of those it lost while paused, whose results are then dropped.

use std::collections::HashSet;
use std::sync::PoisonError;

use redis::Connection;

use crate::cluster::wire;
use crate::cluster::{GROUP, keep_script};

use super::Host;

impl Host {
    /// The heartbeat's loop, until the host has finished.
    pub(super) fn beat(&self, mut connection: Connection) {
        let (period, _) = self.serve.cluster.timing();
        let keep = keep_script();
        loop {
            {
                let state = self.lock();
                let state = self
                    .room
                    .wait_timeout_while(state, period, |state| !state.finished)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                if state.finished {
                    return;
                }
            }
            self.beat_once(&mut connection);
            let entries: Vec<String> = {
                let state = self.lock();
                let held = state.held.values().map(|held| held.entry.clone());
                held.chain(state.starting.iter().cloned()).collect()
            };
            if entries.is_empty() {
                continue;
            }
            let lost: Result<Vec<String>, _> = keep
                .key(self.keys.tasks())
                .arg(GROUP)
                .arg(&self.serve.id)
                .arg(&entries)
                .invoke(&mut connection);
            match lost {
                Ok(lost) if !lost.is_empty() => {
                    let lost: HashSet<String> = lost.into_iter().collect();
                    let mut state = self.lock();
                    let state = &mut *state;
                    for held in state.held.values_mut().filter(|held| lost.contains(&held.entry)) {
                        if held.lost {
                            continue;
                        }
                        held.lost = true;
                        // Its result would be dropped: its worker is freed for other tasks.
                        let pool = state.pools.get(&held.pool);
                        match (pool, &held.result) {
                            (Some(local), Ok(result)) => {
                                local.pool.abandon(result.id());
                                tracing::warn!(
                                    "task entry {} was taken over by another host; stopped its run here",
                                    held.entry
                                );
                            }
                            _ => tracing::warn!("task entry {} was taken over by another host", held.entry),
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("cannot renew the host's tasks: {}", self.serve.cluster.error(e));
                    if let Ok(made) = self.serve.cluster.command_connection() {
                        connection = made;
                    }
                }
            }
        }
    }

    /// Says the host is alive: its key, with a life of the visibility time, and its place in the
    /// pool's set of hosts.
    pub(super) fn beat_once(&self, connection: &mut Connection) {
        let (_, visibility) = self.serve.cluster.timing();
        let running = self.lock().held.len();
        let info = serde_json::json!({
            "workers": self.serve.workers,
            "running": running,
            "pid": std::process::id(),
        });
        let beat = redis::pipe()
            .cmd("SET")
            .arg(self.keys.host(&self.serve.id))
            .arg(info.to_string())
            .arg("PX")
            .arg(visibility.as_millis() as u64)
            .ignore()
            .cmd("ZADD")
            .arg(self.keys.hosts())
            .arg(wire::now_ms())
            .arg(&self.serve.id)
            .ignore()
            .exec(connection);
        if let Err(e) = beat {
            tracing::warn!(
                "cannot send the host's heartbeat: {}",
                self.serve.cluster.error(e)
            );
        }
    }
}
