//! Many machines: hosts that share one pool through a Redis server (or Valkey, which speaks the
//! same protocol). This module owns the broker and everything that crosses it: a pool's keys,
//! the Lua scripts that make keeping and completing a task atomic, and the wire form of tasks and
//! results. Its rooms:
//! - `submit`: the [`Dispatch`](crate::pool::Dispatch) of a [`Pool`](crate::Pool) built with
//!   [`Builder::cluster`](crate::Builder::cluster), which sends its tasks to the cluster;
//! - `serve`: a host, which takes tasks while it has free workers, runs them on local pools and
//!   writes their results back;
//! - `status`: what `poolhost status` shows;
//! - `wire`: what a stream entry and a result carry.
//!
//! Nothing else in the crate names Redis, so a second broker would be a second module like this
//! one. It never names wasmtime.
//!
//! # Keys of pool P (one hash tag, so a Redis Cluster keeps them on one node)
//! | key | type | what |
//! |---|---|---|
//! | `ph:{P}:tasks`, group `hosts` | stream | one entry per task: run, task id, component digest, call and options |
//! | `ph:{P}:comp:<sha256>` | string | a component's bytes, stored once by content |
//! | `ph:{P}:res:<run>` | hash | task id → its result, the first to come (`HSETNX`), until its submitter takes it |
//! | `ph:{P}:done:<run>` | list | the run's finished task ids, in the order they came, for its submitter to block on |
//! | `ph:{P}:stop:<run>` | string | the run was cancelled: hosts report its tasks cancelled |
//! | `ph:{P}:host:<H>` | string, TTL | host H's heartbeat: its workers and running tasks |
//! | `ph:{P}:hosts` | sorted set | every host seen, by when it was last seen |
//! | `ph:{P}:deaths` | hash | entry id → how many of the hosts that took it died |
//! | `ph:{P}:dead` | stream | tasks set aside after too many host deaths |
//! | `ph:{P}:stats` | hash | `done` and `failed` counters |
//! | `ph:{P}:q:<name>` | list | a named queue (`queues`) |
//! | `ph:{P}:qmax`, `ph:{P}:qbytes` | hash | queue bounds; queue byte counts, field `""` their total |
//! | `ph:{P}:qroom:<name>` | list | a bounded queue's room signal, for puts waiting for room |
//! | `ph:{P}:held:<H>:<pid>:<name>` | list | what the task on host H's worker pid took from a queue |
//! | `ph:{P}:stage:<id>` | list | where a waiting get no task holds moves its item |
//! | `ph:{P}:reap:<H>` | string, TTL | the lock of the survivor giving back dead host H's held items |
//!
//! # Delivery
//! A task is an entry of the stream, read by one host of the consumer group. The host keeps it
//! by renewing it every heartbeat period B (an owner-checked `XCLAIM`); an entry idle longer than
//! the visibility time T (its host died or was paused) is claimed by another host. Only the
//! entry's owner can complete it, in one script that checks ownership, records the winner
//! (`HSETNX`), pushes the result and acknowledges and deletes the entry: a host paused past T
//! finds its late result dropped. So a task runs at least once, and is reported exactly once.

use std::fmt;
use std::time::Duration;

use redis::{Connection, RedisError, Script, Value};

use crate::manager::{Limits, Manager};

mod queues;
mod serve;
mod status;
mod submit;
mod wire;

pub use serve::{Serve, ServeStop};
pub use status::{HostStatus, Status};
pub(crate) use submit::Submitter;

/// The consumer group every host of a pool reads the task stream in.
const GROUP: &str = "hosts";

/// How long the keys of a run's results live after its last result: a submitter that died
/// leaves nothing behind for longer.
const RESULT_TTL_SECS: u64 = 24 * 3600;

/// How long a component stays stored after its last submission.
const COMPONENT_TTL_SECS: u64 = 7 * 24 * 3600;

/// The largest component a submitter stores: Redis takes strings up to 512 MiB, and every host
/// fetches the whole thing once.
pub const MAX_COMPONENT: usize = 64 << 20;

/// Why the cluster refused or failed an operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The URL is not one of a Redis server.
    #[error("`{url}` is not a Redis URL (redis://[:PASSWORD@]HOST[:PORT][/DB]): {reason}")]
    Url {
        /// The URL, its password hidden.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The pool's name cannot be used in keys.
    #[error("`{0}` cannot name a pool: use letters, digits, `-`, `_` and `.`, at most 64")]
    PoolName(String),
    /// The server could not be reached, or failed a command.
    #[error("Redis at {url}: {reason}")]
    Redis {
        /// The URL, its password hidden.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The component is too large to store.
    #[error("the component is {0} bytes; a cluster stores components up to {MAX_COMPONENT} bytes")]
    ComponentTooLarge(usize),
}

/// A pool shared by the hosts on many machines through one Redis server: its address, its name,
/// and the timing of its hosts' heartbeats.
///
/// # Examples
/// ```no_run
/// use poolhost::{Call, Cluster, Pool, Value};
/// let cluster = Cluster::open("redis://127.0.0.1:6379/", "default")?;
/// let pool = Pool::builder().component("long-time-task.wasm").cluster(cluster).build()?;
/// let task = pool.apply_async(Call::new("long-time-task", [Value::U32(3)]))?;
/// pool.close();
/// pool.join()?;
/// println!("{:?} on {:?}", task.get(), task.report().and_then(|r| r.host));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Cluster {
    client: redis::Client,
    /// The URL with its password hidden, for messages.
    shown: String,
    pool: String,
    heartbeat: Duration,
    visibility: Duration,
    max_attempts: u32,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cluster({} pool {})", self.shown, self.pool)
    }
}

impl Cluster {
    /// Pool `pool` on the Redis server at `url` (`redis://[:PASSWORD@]HOST[:PORT][/DB]`). Checks
    /// the URL and the name; the server is first reached by whoever uses the cluster.
    ///
    /// # Errors
    /// [`ClusterError::Url`] or [`ClusterError::PoolName`].
    pub fn open(url: &str, pool: &str) -> Result<Cluster, ClusterError> {
        let shown = hide_password(url);
        let client = redis::Client::open(url).map_err(|e| ClusterError::Url {
            url: shown.clone(),
            reason: e.to_string(),
        })?;
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if pool.is_empty() || pool.len() > 64 || !pool.chars().all(valid) {
            return Err(ClusterError::PoolName(pool.to_owned()));
        }
        Ok(Cluster {
            client,
            shown,
            pool: pool.to_owned(),
            heartbeat: Duration::from_secs(1),
            visibility: Duration::from_secs(5),
            max_attempts: 3,
        })
    }

    /// The pool's named queues, shared by its hosts' tasks and its submitters, with `limits`
    /// (a queue's bound is the cluster's: [`Manager::bounded`] sets it for everyone).
    pub fn manager(&self, limits: Limits) -> Manager {
        Manager::with_store(std::sync::Arc::new(queues::RedisQueues::new(
            self.clone(),
            limits,
        )))
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.pool
    }

    /// How often a host says it is alive and renews the tasks it runs (default 1 s); at most a
    /// quarter of the visibility time.
    pub fn heartbeat(mut self, period: Duration) -> Self {
        self.heartbeat = period.max(Duration::from_millis(10));
        self
    }

    /// How long a task may go unrenewed before another host takes it over (default 5 s): how
    /// long a dead or paused host's tasks wait. At least four heartbeat periods.
    pub fn visibility(mut self, time: Duration) -> Self {
        self.visibility = time;
        self
    }

    /// How many times hosts may take a task and die before it is set aside as failed with
    /// [`crate::TaskError::HostDied`] (default 3).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The heartbeat period and visibility time in force: the visibility is at least four
    /// periods, so a host that is merely slow to renew is not taken for dead.
    fn timing(&self) -> (Duration, Duration) {
        (self.heartbeat, self.visibility.max(self.heartbeat * 4))
    }

    fn keys(&self) -> Keys {
        Keys::new(&self.pool)
    }

    /// A connection whose replies may take up to `read_timeout` (a blocking command's own time
    /// plus slack).
    fn connect(&self, read_timeout: Duration) -> Result<Connection, ClusterError> {
        let connection = self
            .client
            .get_connection_with_timeout(Duration::from_secs(5))
            .map_err(|e| self.error(e))?;
        connection
            .set_read_timeout(Some(read_timeout))
            .and_then(|()| connection.set_write_timeout(Some(Duration::from_secs(10))))
            .map_err(|e| self.error(e))?;
        Ok(connection)
    }

    /// A connection for commands that do not block.
    fn command_connection(&self) -> Result<Connection, ClusterError> {
        self.connect(Duration::from_secs(10))
    }

    fn error(&self, error: RedisError) -> ClusterError {
        ClusterError::Redis {
            url: self.shown.clone(),
            reason: one_line(&error.to_string()),
        }
    }

    /// Makes the task stream and its consumer group, if they are not there yet.
    fn ensure_group(&self, connection: &mut Connection) -> Result<(), ClusterError> {
        let created = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.keys().tasks())
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query::<Value>(connection);
        match created {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }
}

/// The URL as messages show it: a password replaced by `***`.
fn hide_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split_once(':').map_or("", |(user, _)| user);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The names of a pool's keys, all under one hash tag.
#[derive(Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn new(pool: &str) -> Keys {
        Keys {
            prefix: format!("ph:{{{pool}}}:"),
        }
    }

    fn key(&self, rest: impl fmt::Display) -> String {
        format!("{}{rest}", self.prefix)
    }

    fn tasks(&self) -> String {
        self.key("tasks")
    }

    fn component(&self, digest: &str) -> String {
        self.key(format_args!("comp:{digest}"))
    }

    fn results(&self, run: &str) -> String {
        self.key(format_args!("res:{run}"))
    }

    fn done(&self, run: &str) -> String {
        self.key(format_args!("done:{run}"))
    }

    fn stop(&self, run: &str) -> String {
        self.key(format_args!("stop:{run}"))
    }

    fn host(&self, host: &str) -> String {
        self.key(format_args!("host:{host}"))
    }

    fn hosts(&self) -> String {
        self.key("hosts")
    }

    fn deaths(&self) -> String {
        self.key("deaths")
    }

    fn dead(&self) -> String {
        self.key("dead")
    }

    fn stats(&self) -> String {
        self.key("stats")
    }
}

/// Completes a task, if the caller still owns its entry.
///
/// KEYS: the stream, the run's results hash, the run's done list, the stats hash, the deaths
/// hash. ARGV: group, entry id, host, task id, the result's bytes, the keys' TTL, `done` or
/// `failed`. Returns 1 when the result was recorded, 2 when another result had won already, 0
/// when the entry is no longer the caller's (it was paused past the visibility time): nothing
/// changes then.
///
/// The result waits in the hash under its task id, and the id goes to the done list: a
/// submitter whose connection breaks after popping ids finds the results still there.
const COMPLETE: &str = r"
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #pending == 0 or pending[1][2] ~= ARGV[3] then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('HDEL', KEYS[5], ARGV[2])
if redis.call('HSETNX', KEYS[2], ARGV[4], ARGV[5]) == 0 then return 2 end
redis.call('RPUSH', KEYS[3], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[6])
redis.call('EXPIRE', KEYS[3], ARGV[6])
redis.call('HINCRBY', KEYS[4], ARGV[7], 1)
return 1
";

/// Renews the entries a host runs: each still its own is claimed again (its idle time reset,
/// its delivery count unchanged); the others are returned, lost to another host.
///
/// KEYS: the stream. ARGV: group, host, entry ids.
const KEEP: &str = r"
local lost = {}
for i = 3, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #pending == 1 and pending[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
";

fn complete_script() -> Script {
    Script::new(COMPLETE)
}

fn keep_script() -> Script {
    Script::new(KEEP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_from_messages() {
        assert_eq!(
            hide_password("redis://:s3cret@db:6379/0"),
            "redis://:***@db:6379/0"
        );
        assert_eq!(hide_password("redis://me:s3cret@db/"), "redis://me:***@db/");
        assert_eq!(
            hide_password("redis://127.0.0.1:6379/"),
            "redis://127.0.0.1:6379/"
        );
    }

    #[test]
    fn pool_names_fit_in_keys() {
        assert!(Cluster::open("redis://127.0.0.1/", "ci-jobs.2").is_ok());
        for bad in ["", "a}b", "a b", &"x".repeat(65)] {
            assert!(matches!(
                Cluster::open("redis://127.0.0.1/", bad),
                Err(ClusterError::PoolName(_))
            ));
        }
        assert!(matches!(
            Cluster::open("http://example.com/", "default"),
            Err(ClusterError::Url { .. })
        ));
        assert_eq!(Keys::new("p").tasks(), "ph:{p}:tasks");
    }
}
