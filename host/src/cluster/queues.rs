//! The named queues of a cluster's pool, kept in Redis: a [`QueueStore`] that every host's
//! workers and every submitter share. A queue is a list (`ph:{P}:q:<name>`); its bound and its
//! byte total are enforced by Lua scripts against two hashes (`ph:{P}:qmax`, `ph:{P}:qbytes`,
//! whose field `""` is the total over all queues), so every host sees the same limits.
//!
//! A task on a host's worker holds what it takes: its gets move items into a held list of its
//! own (`ph:{P}:held:<host>:<worker pid>:<queue>`), dropped when the task ends
//! ([`QueueStore::release`]). When a host dies, a survivor that takes over its tasks first puts
//! the dead host's held items back at the head of their queues, in the order they were taken
//! ([`RedisQueues::reap`]): they are not lost with it, as they are with `multiprocessing`.
//!
//! An operation that completes at once is one script on a pooled connection. One that must wait
//! is parked on a thread of its own with a connection of its own: a get blocks in `BLPOP`; a put
//! waiting for room blocks on the queue's room signal (a list every get of a bounded queue
//! pushes to), at most 100 ms at a time, and tries again. A cancelled get that took an item
//! anyway puts it back at the head of its queue.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use redis::{Connection, Script, Value};

use super::wire;
use super::{Cluster, Keys};
use crate::manager::{
    BatchReply, GetReply, ITEM_OVERHEAD, Limits, MAX_BATCH_BYTES, MAX_NAME_BYTES, PutReply, QueueError,
    QueueId, QueueStore, Wait, WaiterId,
};

/// The longest a parked operation blocks in Redis before it looks whether it was cancelled or
/// closed.
const BLOCK_SLICE: Duration = Duration::from_millis(500);

/// The longest a put parked for room waits for the room signal before it tries again.
const ROOM_SLICE: Duration = Duration::from_millis(100);

/// Puts an item if the queue has room: under its bound, and under the byte limits (an empty
/// queue takes any item that fits the total). KEYS: queue, bytes hash, bounds hash. ARGV: name,
/// item, its cost, the per-queue byte limit, the total byte limit. Returns 1 if put, 0 if full.
const PUT: &str = r"
local length = redis.call('LLEN', KEYS[1])
local max = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
if max > 0 and length >= max then return 0 end
local cost = tonumber(ARGV[3])
local queue = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local total = tonumber(redis.call('HGET', KEYS[2], '') or '0')
if total + cost > tonumber(ARGV[5]) then return 0 end
if length > 0 and queue + cost > tonumber(ARGV[4]) then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], ARGV[1], cost)
redis.call('HINCRBY', KEYS[2], '', cost)
return 1
";

/// Takes up to ARGV[2] items from the head, at most ARGV[3] bytes (the first always), and
/// accounts for them; with ARGV[5] = 1 they are also kept in the held list. KEYS: queue, bytes
/// hash, bounds hash, room list, held list. ARGV: name, count, byte cap, per-item overhead,
/// hold. Returns the items.
const TAKE: &str = r"
local items = {}
local bytes = 0
local cost = 0
for i = 1, tonumber(ARGV[2]) do
  local head = redis.call('LINDEX', KEYS[1], 0)
  if not head then break end
  if i > 1 and bytes + #head > tonumber(ARGV[3]) then break end
  redis.call('LPOP', KEYS[1])
  if ARGV[5] == '1' then redis.call('RPUSH', KEYS[5], head) end
  bytes = bytes + #head
  cost = cost + #head + tonumber(ARGV[4])
  table.insert(items, head)
end
if #items > 0 then
  redis.call('HINCRBY', KEYS[2], ARGV[1], -cost)
  redis.call('HINCRBY', KEYS[2], '', -cost)
  if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then
    redis.call('RPUSH', KEYS[4], 1)
    redis.call('LTRIM', KEYS[4], -1, -1)
  end
end
return items
";

/// Accounts for an item a blocking pop took: as `TAKE` does, for one item of ARGV[2] cost.
const TOOK: &str = r"
redis.call('HINCRBY', KEYS[2], ARGV[1], -tonumber(ARGV[2]))
redis.call('HINCRBY', KEYS[2], '', -tonumber(ARGV[2]))
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[4], 1)
  redis.call('LTRIM', KEYS[4], -1, -1)
end
return 1
";

/// Puts an item back at the head, where a cancelled get took it from (its bytes were never
/// taken off the count); a held one leaves its held list, and is given back only if it was
/// still there (a reaper may have given it back already). KEYS: queue, held list. ARGV: item,
/// whether it was held.
const GIVE_BACK: &str = r"
if ARGV[2] == '1' and redis.call('LREM', KEYS[2], -1, ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[1], ARGV[1])
return 1
";

/// Puts a dead host's held items back at the head of their queue, in the order they were
/// taken. KEYS: held list, queue, bytes hash. ARGV: name, per-item overhead. Returns how many.
const RESTORE: &str = r"
local count = 0
while true do
  local item = redis.call('RPOP', KEYS[1])
  if not item then break end
  redis.call('LPUSH', KEYS[2], item)
  local cost = #item + tonumber(ARGV[2])
  redis.call('HINCRBY', KEYS[3], ARGV[1], cost)
  redis.call('HINCRBY', KEYS[3], '', cost)
  count = count + 1
end
return count
";

/// The queues of a cluster's pool.
pub(crate) struct RedisQueues {
    shared: Arc<Shared>,
}

struct Shared {
    cluster: Cluster,
    keys: Keys,
    limits: Limits,
    /// Queue names by id, as this process opened them.
    names: Mutex<(Vec<String>, HashMap<String, QueueId>)>,
    /// Connections not in use.
    idle: Mutex<Vec<Connection>>,
    /// Parked operations, by waiter id: their cancellation flags.
    parked: Mutex<HashMap<WaiterId, Arc<AtomicBool>>>,
    next_waiter: AtomicU64,
    closed: AtomicBool,
    /// The serving host whose tasks hold what they take; `None` for a submitter.
    host: Option<String>,
    /// Held lists by worker pid, to drop when its task ends.
    held: Mutex<HashMap<u32, std::collections::HashSet<String>>>,
    put: Script,
    take: Script,
    took: Script,
    give_back: Script,
    restore: Script,
}

impl RedisQueues {
    /// The queues of `cluster`'s pool, with `limits` (made consistent as a local manager's).
    pub(crate) fn new(cluster: Cluster, limits: Limits) -> RedisQueues {
        RedisQueues::with_host(cluster, limits, None)
    }

    /// The queues as serving host `host` uses them: its tasks hold what they take.
    pub(crate) fn for_host(cluster: Cluster, limits: Limits, host: &str) -> RedisQueues {
        RedisQueues::with_host(cluster, limits, Some(host.to_owned()))
    }

    fn with_host(cluster: Cluster, limits: Limits, host: Option<String>) -> RedisQueues {
        let limits = limits.consistent();
        RedisQueues {
            shared: Arc::new(Shared {
                keys: cluster.keys(),
                cluster,
                limits,
                names: Mutex::default(),
                idle: Mutex::default(),
                parked: Mutex::default(),
                next_waiter: AtomicU64::new(0),
                closed: AtomicBool::new(false),
                host,
                held: Mutex::default(),
                put: Script::new(PUT),
                take: Script::new(TAKE),
                took: Script::new(TOOK),
                give_back: Script::new(GIVE_BACK),
                restore: Script::new(RESTORE),
            }),
        }
    }
}

impl Shared {
    fn name(&self, id: QueueId) -> String {
        let names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        names.0.get(id as usize).cloned().unwrap_or_default()
    }

    /// Runs `command` on a pooled connection; a Redis failure is logged and reads as a closed
    /// queue (the WIT has no other word for it).
    fn with<T>(
        &self,
        command: impl FnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, QueueError> {
        let taken = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let mut connection = match taken {
            Some(connection) => connection,
            None => self.cluster.command_connection().map_err(|e| {
                tracing::warn!("queue operation failed: {e}");
                QueueError::Closed
            })?,
        };
        match command(&mut connection) {
            Ok(value) => {
                self.idle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(connection);
                Ok(value)
            }
            Err(e) => {
                tracing::warn!("queue operation failed: {}", self.cluster.error(e));
                Err(QueueError::Closed)
            }
        }
    }

    fn try_put(&self, name: &str, item: &[u8]) -> Result<bool, QueueError> {
        let cost = item.len() + ITEM_OVERHEAD;
        self.with(|connection| {
            self.put
                .key(self.keys.key(format_args!("q:{name}")))
                .key(self.keys.key("qbytes"))
                .key(self.keys.key("qmax"))
                .arg(name)
                .arg(item)
                .arg(cost)
                .arg(self.limits.max_queue_bytes)
                .arg(self.limits.max_total_bytes)
                .invoke::<i64>(connection)
        })
        .map(|put| put == 1)
    }

    /// The held list of worker `holder`'s task for queue `name`, if this is a host and the
    /// get is a task's; recorded for [`QueueStore::release`].
    fn held_list(&self, name: &str, holder: Option<u32>) -> Option<String> {
        let (host, holder) = (self.host.as_ref()?, holder?);
        let key = self.keys.key(format_args!("held:{host}:{holder}:{name}"));
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.entry(holder).or_default().insert(key.clone());
        Some(key)
    }

    fn take(&self, name: &str, max: usize, held: Option<&str>) -> Result<Vec<Vec<u8>>, QueueError> {
        let hold = held.is_some();
        let held = held.map_or_else(|| self.keys.key("unheld"), str::to_owned);
        self.with(|connection| {
            self.take
                .key(self.keys.key(format_args!("q:{name}")))
                .key(self.keys.key("qbytes"))
                .key(self.keys.key("qmax"))
                .key(self.keys.key(format_args!("qroom:{name}")))
                .key(&held)
                .arg(name)
                .arg(max)
                .arg(MAX_BATCH_BYTES)
                .arg(ITEM_OVERHEAD)
                .arg(if hold { "1" } else { "0" })
                .invoke::<Vec<Vec<u8>>>(connection)
        })
    }

    /// Puts the items of held list `list` back at the head of queue `name`, in the order they
    /// were taken; how many.
    fn restore(&self, connection: &mut Connection, list: &str, name: &str) -> redis::RedisResult<u64> {
        self.restore
            .key(list)
            .key(self.keys.key(format_args!("q:{name}")))
            .key(self.keys.key("qbytes"))
            .arg(name)
            .arg(ITEM_OVERHEAD)
            .invoke(connection)
    }

    /// Parks an operation on a thread of its own: `run` gets its cancellation flag. If no
    /// thread can be started, `run` runs here, cancelled, so that it still answers.
    fn park(self: &Arc<Self>, run: impl FnOnce(&Shared, &AtomicBool) + Send + 'static) -> WaiterId {
        let waiter = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        let cancelled = Arc::new(AtomicBool::new(false));
        self.parked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(waiter, cancelled.clone());
        let run = Arc::new(Mutex::new(Some(run)));
        let (shared, to_run, flag) = (self.clone(), run.clone(), cancelled.clone());
        let spawned = thread::Builder::new()
            .name("poolhost-queue-wait".into())
            .spawn(move || {
                if let Some(run) = to_run.lock().unwrap_or_else(PoisonError::into_inner).take() {
                    run(&shared, &flag);
                }
                shared
                    .parked
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&waiter);
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start a thread for a waiting queue operation: {e}");
            self.parked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&waiter);
            if let Some(run) = run.lock().unwrap_or_else(PoisonError::into_inner).take() {
                cancelled.store(true, Ordering::SeqCst);
                run(self, &cancelled);
            }
        }
        waiter
    }

    /// A parked get: blocks in `BLMOVE` in slices until an item, the deadline, a cancel or
    /// close. The item moves into a list of the get's own in the same step: its held list, or a
    /// staging list for a get no task holds. So a reply lost to an interrupted read (after the
    /// process was stopped and continued, say) loses no item: the list says whether it came.
    fn wait_get(
        &self,
        name: &str,
        held: Option<&str>,
        deadline: Option<Instant>,
        cancelled: &AtomicBool,
    ) -> Result<Vec<u8>, QueueError> {
        let connect = || {
            self.cluster
                .connect(BLOCK_SLICE + Duration::from_secs(10))
                .map_err(|e| {
                    tracing::warn!("queue operation failed: {e}");
                    QueueError::Closed
                })
        };
        let failed = |e: redis::RedisError| {
            tracing::warn!("queue operation failed: {}", self.cluster.error(e));
            QueueError::Closed
        };
        let mut connection = connect()?;
        let queue = self.keys.key(format_args!("q:{name}"));
        let staging = self.keys.key(format_args!(
            "stage:{}",
            wire::digest(format!("{:?}{}", Instant::now(), std::process::id()).as_bytes())
        ));
        let list = held.unwrap_or(&staging);
        // The list's length before: one more means the item came.
        let before: u64 = redis::cmd("LLEN")
            .arg(list)
            .query(&mut connection)
            .map_err(failed)?;
        let item = loop {
            if cancelled.load(Ordering::SeqCst) || self.closed.load(Ordering::SeqCst) {
                return Err(QueueError::Closed);
            }
            let slice = slice(deadline, BLOCK_SLICE)?;
            let moved: redis::RedisResult<Option<Vec<u8>>> = redis::cmd("BLMOVE")
                .arg(&queue)
                .arg(list)
                .arg("LEFT")
                .arg("RIGHT")
                .arg(slice.as_secs_f64().max(0.001))
                .query(&mut connection);
            match moved {
                Ok(Some(item)) => break item,
                Ok(None) => continue,
                Err(e) if interrupted(&e) => {
                    // The reply is lost with the connection (which a failed connect ends the get
                    // on); the list says if an item came.
                    connection = connect()?;
                    let now: u64 = redis::cmd("LLEN")
                        .arg(list)
                        .query(&mut connection)
                        .map_err(failed)?;
                    if now > before {
                        let last: Option<Vec<u8>> = redis::cmd("LINDEX")
                            .arg(list)
                            .arg(-1)
                            .query(&mut connection)
                            .map_err(failed)?;
                        if let Some(item) = last {
                            break item;
                        }
                    }
                }
                Err(e) => return Err(failed(e)),
            }
        };
        if held.is_none() {
            let _ = redis::cmd("DEL").arg(&staging).exec(&mut connection);
        }
        let cost = item.len() + ITEM_OVERHEAD;
        if cancelled.load(Ordering::SeqCst) {
            // Its task is gone: the item goes back where it was, at the head (its bytes were
            // never taken off the count).
            let _ = self
                .give_back
                .key(&queue)
                .key(held.unwrap_or(&staging))
                .arg(&item)
                .arg(if held.is_some() { "1" } else { "0" })
                .invoke::<i64>(&mut connection);
            return Err(QueueError::Closed);
        }
        let _ = self
            .took
            .key(&queue)
            .key(self.keys.key("qbytes"))
            .key(self.keys.key("qmax"))
            .key(self.keys.key(format_args!("qroom:{name}")))
            .arg(name)
            .arg(cost)
            .invoke::<i64>(&mut connection);
        Ok(item)
    }

    /// A parked put: tries again each time the queue's room signal comes (or 100 ms passes).
    fn wait_put(
        &self,
        name: &str,
        item: &[u8],
        deadline: Option<Instant>,
        cancelled: &AtomicBool,
    ) -> Result<(), QueueError> {
        let mut connection = self
            .cluster
            .connect(ROOM_SLICE + Duration::from_secs(10))
            .map_err(|_| QueueError::Closed)?;
        let room = self.keys.key(format_args!("qroom:{name}"));
        loop {
            if cancelled.load(Ordering::SeqCst) || self.closed.load(Ordering::SeqCst) {
                return Err(QueueError::Closed);
            }
            if self.try_put(name, item)? {
                return Ok(());
            }
            let slice = slice(deadline, ROOM_SLICE)?;
            let waited = redis::cmd("BLPOP")
                .arg(&room)
                .arg(slice.as_secs_f64().max(0.001))
                .query::<Value>(&mut connection);
            match waited {
                Ok(_) => {}
                // Only a room signal is lost with the reply: it tries again anyway.
                Err(e) if interrupted(&e) => {
                    connection = self
                        .cluster
                        .connect(ROOM_SLICE + Duration::from_secs(10))
                        .map_err(|_| QueueError::Closed)?;
                }
                Err(_) => return Err(QueueError::Closed),
            }
        }
    }
}

impl RedisQueues {
    /// Puts what the task on worker `holder` held back at the head of its queues, in order: the
    /// task was taken over by another host, which runs it again and needs them.
    pub(crate) fn give_back(&self, holder: u32) {
        let shared = &self.shared;
        let lists = shared
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&holder);
        let Some(host) = &shared.host else { return };
        let prefix = shared.keys.key(format_args!("held:{host}:{holder}:"));
        for list in lists.into_iter().flatten() {
            let Some(name) = list.strip_prefix(&prefix) else {
                continue;
            };
            let _ = shared.with(|connection| shared.restore(connection, &list, name));
        }
    }

    /// Puts the items the tasks of dead host `host` held back at the head of their queues, in
    /// the order they were taken; returns how many.
    pub(crate) fn reap(&self, host: &str) -> Result<u64, super::ClusterError> {
        let shared = &self.shared;
        let mut connection = shared.cluster.command_connection()?;
        let prefix = shared.keys.key(format_args!("held:{host}:"));
        let mut cursor = 0u64;
        let mut lists = Vec::new();
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", glob_escape(&prefix)))
                .arg("COUNT")
                .arg(1000)
                .query(&mut connection)
                .map_err(|e| shared.cluster.error(e))?;
            lists.extend(keys);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let mut restored = 0;
        for list in lists {
            // `<pid>:<queue>`: the queue's name is all after the pid.
            let Some((_, name)) = list[prefix.len()..].split_once(':') else {
                continue;
            };
            restored += shared
                .restore(&mut connection, &list, name)
                .map_err(|e| shared.cluster.error(e))?;
        }
        Ok(restored)
    }
}

/// `text` with the characters `SCAN`'s patterns treat specially escaped.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Whether a command failed on the connection rather than in the server: its reply is lost,
/// but a new connection may do. A process stopped and continued (SIGSTOP, SIGCONT) has its
/// socket reads with a timeout fail so, with EINTR.
fn interrupted(error: &redis::RedisError) -> bool {
    error.is_io_error()
}

/// How long the next blocking step may take: at most `most`, and no later than `deadline`
/// (`Timeout` once it has passed).
fn slice(deadline: Option<Instant>, most: Duration) -> Result<Duration, QueueError> {
    match deadline {
        Some(deadline) => match deadline.saturating_duration_since(Instant::now()) {
            left if left.is_zero() => Err(QueueError::Timeout),
            left => Ok(left.min(most)),
        },
        None => Ok(most),
    }
}

fn deadline(wait: Wait) -> Option<Instant> {
    match wait {
        Wait::For(timeout) => Instant::now().checked_add(timeout),
        _ => None,
    }
}

impl QueueStore for RedisQueues {
    fn limits(&self) -> Limits {
        self.shared.limits
    }

    fn open(&self, name: &str) -> Result<QueueId, QueueError> {
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return Err(QueueError::InvalidName);
        }
        let mut names = self.shared.names.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(&id) = names.1.get(name) {
            return Ok(id);
        }
        if names.0.len() >= self.shared.limits.max_queues {
            return Err(QueueError::TooManyQueues);
        }
        let id = names.0.len() as QueueId;
        names.0.push(name.to_owned());
        names.1.insert(name.to_owned(), id);
        Ok(id)
    }

    fn set_maxsize(&self, id: QueueId, maxsize: Option<usize>) {
        let name = self.shared.name(id);
        let bounds = self.shared.keys.key("qmax");
        let _ = self.shared.with(|connection| match maxsize {
            Some(maxsize) => redis::cmd("HSET")
                .arg(&bounds)
                .arg(&name)
                .arg(maxsize)
                .exec(connection),
            None => redis::cmd("HDEL").arg(&bounds).arg(&name).exec(connection),
        });
    }

    fn maxsize(&self, id: QueueId) -> Option<usize> {
        let name = self.shared.name(id);
        let bounds = self.shared.keys.key("qmax");
        self.shared
            .with(|connection| {
                redis::cmd("HGET")
                    .arg(&bounds)
                    .arg(&name)
                    .query::<Option<usize>>(connection)
            })
            .ok()
            .flatten()
    }

    fn names(&self) -> Vec<String> {
        self.shared
            .names
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone()
    }

    /// Closes this process's view of the queues: its parked operations fail with `Closed`
    /// (within half a second), its puts fail from now on. The queues themselves stay, shared by
    /// the cluster.
    fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
    }

    fn put_with(&self, id: QueueId, item: Vec<u8>, wait: Wait, reply: PutReply) -> Option<WaiterId> {
        if self.shared.closed.load(Ordering::SeqCst) {
            reply(Err((QueueError::Closed, item)));
            return None;
        }
        if item.len() > self.shared.limits.max_item_bytes {
            reply(Err((QueueError::TooLarge, item)));
            return None;
        }
        let name = self.shared.name(id);
        match self.shared.try_put(&name, &item) {
            Ok(true) => {
                reply(Ok(()));
                None
            }
            Ok(false) if wait == Wait::No => {
                reply(Err((QueueError::Full, item)));
                None
            }
            Err(error) => {
                reply(Err((error, item)));
                None
            }
            Ok(false) => {
                let deadline = deadline(wait);
                Some(self.shared.park(move |shared, cancelled| {
                    match shared.wait_put(&name, &item, deadline, cancelled) {
                        Ok(()) => reply(Ok(())),
                        Err(error) => reply(Err((error, item))),
                    }
                }))
            }
        }
    }

    fn get_with(&self, id: QueueId, wait: Wait, reply: GetReply) -> Option<WaiterId> {
        self.get(id, 1, wait, None, one(reply))
    }

    fn get_many_with(&self, id: QueueId, max: usize, wait: Wait, reply: BatchReply) -> Option<WaiterId> {
        self.get(id, max, wait, None, reply)
    }

    fn get_held(&self, id: QueueId, wait: Wait, holder: u32, reply: GetReply) -> Option<WaiterId> {
        self.get(id, 1, wait, Some(holder), one(reply))
    }

    fn get_many_held(
        &self,
        id: QueueId,
        max: usize,
        wait: Wait,
        holder: u32,
        reply: BatchReply,
    ) -> Option<WaiterId> {
        self.get(id, max, wait, Some(holder), reply)
    }

    fn release(&self, holder: u32) {
        let lists = self
            .shared
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&holder);
        if let Some(lists) = lists {
            let lists: Vec<String> = lists.into_iter().collect();
            let _ = self
                .shared
                .with(|connection| redis::cmd("DEL").arg(&lists).exec(connection));
        }
    }

    fn cancel(&self, waiter: WaiterId) {
        let parked = self.shared.parked.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cancelled) = parked.get(&waiter) {
            cancelled.store(true, Ordering::SeqCst);
        }
    }

    fn len_of(&self, id: QueueId) -> usize {
        let queue = self.shared.keys.key(format_args!("q:{}", self.shared.name(id)));
        self.shared
            .with(|connection| redis::cmd("LLEN").arg(&queue).query::<usize>(connection))
            .unwrap_or(0)
    }
}

/// A single get's reply as a batch's: the batch has the one item.
fn one(reply: GetReply) -> BatchReply {
    Box::new(move |got| reply(got.map(|mut items| items.swap_remove(0))))
}

impl RedisQueues {
    /// Gets up to `max` items for worker `holder`'s task, if any, waiting as `wait` says.
    fn get(
        &self,
        id: QueueId,
        max: usize,
        wait: Wait,
        holder: Option<u32>,
        reply: BatchReply,
    ) -> Option<WaiterId> {
        if max == 0 {
            reply(Ok(Vec::new()));
            return None;
        }
        let name = self.shared.name(id);
        let held = self.shared.held_list(&name, holder);
        match self.shared.take(&name, max, held.as_deref()) {
            Ok(items) if !items.is_empty() => {
                reply(Ok(items));
                None
            }
            Err(error) => {
                reply(Err(error));
                None
            }
            Ok(_) if self.shared.closed.load(Ordering::SeqCst) => {
                reply(Err(QueueError::Closed));
                None
            }
            Ok(_) if wait == Wait::No => {
                reply(Err(QueueError::Empty));
                None
            }
            Ok(_) => {
                let deadline = deadline(wait);
                Some(self.shared.park(move |shared, cancelled| {
                    let got = shared.wait_get(&name, held.as_deref(), deadline, cancelled);
                    reply(got.map(|item| vec![item]));
                }))
            }
        }
    }
}
