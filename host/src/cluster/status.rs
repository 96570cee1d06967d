//! What `poolhost status` shows of a pool: its hosts, its tasks and its queues.

use redis::Value;
use serde::Serialize;

use super::wire;
use super::{Cluster, ClusterError, GROUP};

/// A pool's state as its server holds it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The pool's name.
    pub pool: String,
    /// Every host seen, alive or not, most recently seen first.
    pub hosts: Vec<HostStatus>,
    /// Tasks no host has taken yet.
    pub waiting: u64,
    /// Tasks a host has taken and not finished.
    pub running: u64,
    /// Tasks that finished with a result, since the pool began.
    pub done: u64,
    /// Tasks that finished with a failure, since the pool began.
    pub failed: u64,
    /// Tasks set aside because the hosts that took them kept dying.
    pub dead: u64,
    /// Named queues and how many items each holds.
    pub queues: Vec<(String, u64)>,
}

/// One host of a pool.
#[derive(Debug, Clone, Serialize)]
pub struct HostStatus {
    /// Its id: the machine's name and the process's id.
    pub id: String,
    /// Whether its heartbeat is current.
    pub alive: bool,
    /// Its worker processes per component, when alive.
    pub workers: Option<u64>,
    /// The tasks it holds, when alive.
    pub running: Option<u64>,
    /// Milliseconds since it was last seen.
    pub seen_ms_ago: u64,
}

impl Cluster {
    /// The pool's hosts, tasks and queues.
    ///
    /// # Errors
    /// If the server cannot be reached.
    pub fn status(&self) -> Result<Status, ClusterError> {
        let mut connection = self.command_connection()?;
        let keys = self.keys();
        let now = wire::now_ms();
        let seen: Vec<(String, f64)> = redis::cmd("ZREVRANGE")
            .arg(keys.hosts())
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query(&mut connection)
            .map_err(|e| self.error(e))?;
        let mut hosts = Vec::with_capacity(seen.len());
        for (id, at) in seen {
            let info: Option<String> = redis::cmd("GET")
                .arg(keys.host(&id))
                .query(&mut connection)
                .map_err(|e| self.error(e))?;
            let info: Option<serde_json::Value> = info.and_then(|text| serde_json::from_str(&text).ok());
            hosts.push(HostStatus {
                alive: info.is_some(),
                workers: info.as_ref().and_then(|i| i["workers"].as_u64()),
                running: info.as_ref().and_then(|i| i["running"].as_u64()),
                seen_ms_ago: now.saturating_sub(at as u64),
                id,
            });
        }
        let (waiting, running) = self.stream_counts(&mut connection)?;
        let stats: Vec<(String, u64)> = redis::cmd("HGETALL")
            .arg(keys.stats())
            .query(&mut connection)
            .map_err(|e| self.error(e))?;
        let stat = |name: &str| stats.iter().find(|(n, _)| n == name).map_or(0, |(_, v)| *v);
        let dead: u64 = redis::cmd("XLEN")
            .arg(keys.dead())
            .query(&mut connection)
            .map_err(|e| self.error(e))?;
        Ok(Status {
            pool: self.pool.clone(),
            hosts,
            waiting,
            running,
            done: stat("done"),
            failed: stat("failed"),
            dead,
            queues: self.queue_lengths(&mut connection)?,
        })
    }

    /// Live hosts' workers in all: what `poolhost run` counts as the pool's size.
    pub fn live_workers(&self) -> Result<usize, ClusterError> {
        let status = self.status()?;
        let live = status.hosts.iter().filter(|host| host.alive);
        Ok(live.filter_map(|host| host.workers).sum::<u64>() as usize)
    }

    /// Entries not yet delivered and entries delivered, not acknowledged. Completed entries are
    /// deleted, so the stream's length less the pending ones is what waits (the group's `lag`
    /// is unknown in Redis 7.0 once entries are deleted out of order).
    fn stream_counts(&self, connection: &mut redis::Connection) -> Result<(u64, u64), ClusterError> {
        let length: u64 = redis::cmd("XLEN")
            .arg(self.keys().tasks())
            .query(connection)
            .map_err(|e| self.error(e))?;
        let groups: Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(self.keys().tasks())
            .query(connection)
            .or_else(|e| match e.code() {
                // No stream yet: nothing was ever submitted.
                Some("ERR") => Ok(Value::Array(Vec::new())),
                _ => Err(e),
            })
            .map_err(|e| self.error(e))?;
        for group in wire::array(groups) {
            let mut fields = wire::array(group).into_iter();
            let (mut name, mut pending) = (None, 0);
            while let (Some(field), Some(value)) = (fields.next(), fields.next()) {
                match wire::text(field).as_deref() {
                    Some("name") => name = wire::text(value),
                    Some("pending") => pending = wire::int(value).unwrap_or(0).max(0) as u64,
                    _ => {}
                }
            }
            if name.as_deref() == Some(GROUP) {
                return Ok((length.saturating_sub(pending), pending));
            }
        }
        Ok((0, 0))
    }

    fn queue_lengths(&self, connection: &mut redis::Connection) -> Result<Vec<(String, u64)>, ClusterError> {
        let prefix = self.keys().key("q:");
        let names: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query(connection)
            .map_err(|e| self.error(e))?;
        let mut queues = Vec::with_capacity(names.len());
        for key in names {
            let length: u64 = redis::cmd("LLEN")
                .arg(&key)
                .query(connection)
                .map_err(|e| self.error(e))?;
            queues.push((key[prefix.len()..].to_owned(), length));
        }
        queues.sort();
        Ok(queues)
    }
}
