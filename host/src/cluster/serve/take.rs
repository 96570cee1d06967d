//! The taker: reads the entries of the pool's stream while the host has room, first taking over
//! those of dead hosts (and setting aside a task whose hosts keep dying), and starts each on the
//! local pool of its component, made on first use from the component fetched from Redis.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use redis::{Connection, Value};

use crate::cluster::wire::{self, Entry, Finished, Spec};
use crate::cluster::{GROUP, RESULT_TTL_SECS, complete_script};
use crate::pool::{Notify, Pool};
use crate::task::{TaskError, TaskId, TaskOptions};

use super::{Held, Host, LocalPool, OutputBuffers, PoolKey, READ_BLOCK, ServeStop};

/// Local pools kept at once, one per component (and metering); an idle one goes for a new one.
const MAX_POOLS: usize = 4;

/// Every this many heartbeat periods the taker looks for dead hosts to reap, besides when it
/// takes over their tasks (a reap that failed then is done now).
const REAP_EVERY: u64 = 10;

/// A task taken from the stream, decoded: its entry, the hosts that died running it before, its
/// id in its run, and what to run.
struct Taken {
    entry: Entry,
    prior: u32,
    task: TaskId,
    spec: Spec,
}

impl Host {
    /// The taker's loop: takes entries while there is room, until told to drain.
    pub(super) fn take(&self, mut connection: Connection, stop: &ServeStop) {
        let (heartbeat, visibility) = self.serve.cluster.timing();
        let mut cursor = "0-0".to_owned();
        let mut last_claim: Option<Instant> = None;
        let mut claims: u64 = 0;
        while !stop.draining() && !self.lock().failed {
            let room = {
                let mut state = self.lock();
                while state.holding() >= state.limit(self.workers) && !stop.draining() && !state.failed {
                    state = self
                        .room
                        .wait_timeout(state, READ_BLOCK)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                state.limit(self.workers).saturating_sub(state.holding())
            };
            if stop.draining() || room == 0 {
                continue;
            }
            let taken = match last_claim.is_none_or(|at| at.elapsed() >= heartbeat) {
                true => {
                    last_claim = Some(Instant::now());
                    claims += 1;
                    // Now and then, dead hosts whose tasks someone else took over.
                    if claims.is_multiple_of(REAP_EVERY) {
                        self.reap_dead_hosts(&mut connection);
                    }
                    self.claim_stale(&mut connection, &mut cursor, visibility, room)
                }
                false => Ok(Vec::new()),
            };
            let taken = match taken {
                Ok(claimed) if !claimed.is_empty() => Ok(claimed),
                Ok(_) => self.read_new(&mut connection, room),
                Err(e) => Err(e),
            };
            match taken {
                Ok(entries) => {
                    // Renewed by the heartbeat while their pool is made (a component fetched,
                    // compiled, its workers started), which may take longer than the
                    // visibility time; from their submission on, as held tasks.
                    let ids: Vec<String> = entries.iter().map(|(entry, _)| entry.id.clone()).collect();
                    self.lock().starting.extend(ids.iter().cloned());
                    self.start(&mut connection, entries);
                    let mut state = self.lock();
                    for id in &ids {
                        state.starting.remove(id);
                    }
                }
                Err(e) => {
                    tracing::warn!("{}; trying again", self.serve.cluster.error(e));
                    thread::sleep(Duration::from_millis(200));
                    if let Ok(made) = self.serve.cluster.connect(READ_BLOCK + Duration::from_secs(10)) {
                        connection = made;
                    }
                }
            }
        }
    }

    /// Takes over entries idle past the visibility time: their host died or stopped answering.
    /// Each counts a death; one whose hosts died too often is set aside.
    fn claim_stale(
        &self,
        connection: &mut Connection,
        cursor: &mut String,
        visibility: Duration,
        room: usize,
    ) -> redis::RedisResult<Vec<(Entry, u32)>> {
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(self.keys.tasks())
            .arg(GROUP)
            .arg(&self.serve.id)
            .arg(visibility.as_millis() as u64)
            .arg(cursor.as_str())
            .arg("COUNT")
            .arg(room)
            .query(connection)?;
        let (next, entries) = wire::claimed_entries(reply);
        *cursor = next;
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        // Their host is dead (its heartbeat key, with the same life, is gone before its entries
        // can be claimed): what its tasks took from queues goes back first.
        self.reap_dead_hosts(connection);
        let mut pipe = redis::pipe();
        for entry in &entries {
            pipe.cmd("HINCRBY").arg(self.keys.deaths()).arg(&entry.id).arg(1);
        }
        let deaths: Vec<u32> = pipe.query(connection)?;
        let mut claimed = Vec::new();
        for (entry, deaths) in entries.into_iter().zip(deaths) {
            tracing::warn!(
                "took over task entry {} after its host died ({deaths} so far)",
                entry.id
            );
            if deaths >= self.serve.cluster.max_attempts {
                self.set_aside(connection, &entry, deaths)?;
            } else {
                claimed.push((entry, deaths));
            }
        }
        Ok(claimed)
    }

    /// Gives back what the tasks of hosts whose heartbeat is gone held, each dead host by one
    /// survivor (a lock per dead host), and forgets those hosts.
    fn reap_dead_hosts(&self, connection: &mut Connection) {
        let mut reaped = || -> redis::RedisResult<()> {
            let hosts: Vec<String> = redis::cmd("ZRANGE")
                .arg(self.keys.hosts())
                .arg(0)
                .arg(-1)
                .query(connection)?;
            for host in hosts.into_iter().filter(|host| *host != self.serve.id) {
                let alive: bool = redis::cmd("EXISTS")
                    .arg(self.keys.host(&host))
                    .query(connection)?;
                if alive {
                    continue;
                }
                let locked: Option<String> = redis::cmd("SET")
                    .arg(self.keys.key(format_args!("reap:{host}")))
                    .arg(&self.serve.id)
                    .arg("NX")
                    .arg("PX")
                    .arg(30_000)
                    .query(connection)?;
                if locked.is_none() {
                    continue;
                }
                match self.queues.reap(&host) {
                    Ok(0) => {}
                    Ok(count) => {
                        tracing::warn!("gave back {count} queue items that tasks of dead host {host} held")
                    }
                    Err(e) => {
                        tracing::warn!("cannot give back what dead host {host} held: {e}");
                        continue;
                    }
                }
                redis::cmd("ZREM")
                    .arg(self.keys.hosts())
                    .arg(&host)
                    .exec(connection)?;
            }
            Ok(())
        };
        if let Err(e) = reaped() {
            tracing::warn!("cannot look for dead hosts: {}", self.serve.cluster.error(e));
        }
    }

    /// Fails a task whose hosts died too often, and keeps it in the dead-letter stream.
    fn set_aside(&self, connection: &mut Connection, entry: &Entry, deaths: u32) -> redis::RedisResult<()> {
        let (Some(run), Some(task)) = (entry.text("run"), entry.text("task").and_then(|t| t.parse().ok()))
        else {
            return self.discard(connection, entry);
        };
        let finished = Finished::unrun(
            task,
            &self.serve.id,
            Err(TaskError::HostDied { attempts: deaths }),
            deaths,
        );
        self.complete_now(connection, entry, run, finished)?;
        redis::cmd("XADD")
            .arg(self.keys.dead())
            .arg("MAXLEN")
            .arg("~")
            .arg(10_000)
            .arg("*")
            .arg("run")
            .arg(run)
            .arg("task")
            .arg(task)
            .arg("entry")
            .arg(&entry.id)
            .arg("attempts")
            .arg(deaths)
            .exec(connection)?;
        redis::cmd("HDEL")
            .arg(self.keys.deaths())
            .arg(&entry.id)
            .exec(connection)
    }

    /// Drops an entry that is no task of this version's.
    fn discard(&self, connection: &mut Connection, entry: &Entry) -> redis::RedisResult<()> {
        tracing::warn!("task entry {} is not one of this version's; dropped", entry.id);
        redis::pipe()
            .cmd("XACK")
            .arg(self.keys.tasks())
            .arg(GROUP)
            .arg(&entry.id)
            .cmd("XDEL")
            .arg(self.keys.tasks())
            .arg(&entry.id)
            .exec(connection)
    }

    /// Reads new entries, at most `room`, blocking a while for them.
    fn read_new(&self, connection: &mut Connection, room: usize) -> redis::RedisResult<Vec<(Entry, u32)>> {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.serve.id)
            .arg("COUNT")
            .arg(room)
            .arg("BLOCK")
            .arg(READ_BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(self.keys.tasks())
            .arg(">")
            .query(connection)?;
        Ok(wire::read_entries(reply)
            .into_iter()
            .map(|entry| (entry, 0))
            .collect())
    }

    /// Starts the entries taken on the local pools of their components.
    fn start(&self, connection: &mut Connection, entries: Vec<(Entry, u32)>) {
        if entries.is_empty() {
            return;
        }
        let stopped = match self.stopped_runs(connection, &entries) {
            Ok(stopped) => stopped,
            Err(e) => {
                // Unknown: they run; a cancelled run's submitter drops their results.
                tracing::warn!("{}", self.serve.cluster.error(e));
                HashSet::new()
            }
        };
        // Entries of one component and metering go to its pool in one submission.
        let mut groups: HashMap<PoolKey, Vec<Taken>> = HashMap::new();
        for (entry, prior) in entries {
            let decoded = (
                entry.text("run").map(str::to_owned),
                entry.text("task").and_then(|t| t.parse::<TaskId>().ok()),
                entry.text("comp").map(str::to_owned),
                entry
                    .fields
                    .get("spec")
                    .and_then(|spec| postcard::from_bytes::<Spec>(spec).ok()),
            );
            let (run, task, digest, spec) = match decoded {
                (Some(run), Some(task), Some(digest), Some(spec)) => (run, task, digest, spec),
                // A task of another version's: its submitter hears why it did not run.
                (Some(run), Some(task), _, _) => {
                    let failure =
                        TaskError::Failed("the host cannot read the task (another poolhost version?)".into());
                    let finished = Finished::unrun(task, &self.serve.id, Err(failure), prior);
                    self.complete_now_logged(connection, &entry, &run, finished);
                    continue;
                }
                _ => {
                    let _ = self.discard(connection, &entry);
                    continue;
                }
            };
            if stopped.contains(&run) {
                let finished = Finished::unrun(task, &self.serve.id, Err(TaskError::Cancelled), prior);
                self.complete_now_logged(connection, &entry, &run, finished);
                continue;
            }
            let metered = spec.options.fuel.is_some() || self.serve.limits.fuel.is_some();
            groups.entry((digest, metered)).or_default().push(Taken {
                entry,
                prior,
                task,
                spec,
            });
        }
        for ((digest, metered), tasks) in groups {
            if let Err(failure) = self.ensure_pool(connection, &digest, metered) {
                for Taken {
                    entry, prior, task, ..
                } in tasks
                {
                    let run = entry.text("run").unwrap_or_default().to_owned();
                    let finished = Finished::unrun(task, &self.serve.id, Err(failure.clone()), prior);
                    self.complete_now_logged(connection, &entry, &run, finished);
                }
                continue;
            }
            self.submit(&digest, metered, tasks);
        }
    }

    /// The runs among `entries` whose submitters cancelled them.
    fn stopped_runs(
        &self,
        connection: &mut Connection,
        entries: &[(Entry, u32)],
    ) -> redis::RedisResult<HashSet<String>> {
        let runs: HashSet<&str> = entries
            .iter()
            .filter_map(|(entry, _)| entry.text("run"))
            .collect();
        let runs: Vec<&str> = runs.into_iter().collect();
        let mut pipe = redis::pipe();
        for run in &runs {
            pipe.cmd("EXISTS").arg(self.keys.stop(run));
        }
        let exists: Vec<bool> = pipe.query(connection)?;
        Ok(runs
            .into_iter()
            .zip(exists)
            .filter(|(_, stopped)| *stopped)
            .map(|(run, _)| run.to_owned())
            .collect())
    }

    /// Makes sure a local pool of component `digest` runs, fetching and compiling it if need be;
    /// the failure of its tasks otherwise.
    fn ensure_pool(&self, connection: &mut Connection, digest: &str, metered: bool) -> Result<(), TaskError> {
        let key = (digest.to_owned(), metered);
        let evicted: Vec<LocalPool> = {
            let mut state = self.lock();
            if state.pools.contains_key(&key) {
                return Ok(());
            }
            let idle: Vec<PoolKey> = match state.pools.len() >= MAX_POOLS {
                true => state
                    .pools
                    .iter()
                    .filter(|(_, pool)| pool.held == 0)
                    .map(|(key, _)| key.clone())
                    .collect(),
                false => Vec::new(),
            };
            idle.iter().filter_map(|key| state.pools.remove(key)).collect()
        };
        // Their workers are stopped with the lock let go: the other threads go on meanwhile.
        drop(evicted);
        let fetched: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.keys.component(digest))
            .query(connection)
            .map_err(|e| {
                TaskError::Failed(format!(
                    "cannot fetch the component: {}",
                    self.serve.cluster.error(e)
                ))
            })?;
        let bytes = fetched.ok_or_else(|| {
            TaskError::Failed(format!(
                "component {digest} is not stored in the cluster (expired?)"
            ))
        })?;
        if wire::digest(&bytes) != digest {
            return Err(TaskError::Failed(format!(
                "the bytes stored as component {digest} do not have that digest; refused"
            )));
        }
        let name = format!("component {}", &digest[..12]);
        let program = self
            .serve
            .loader
            .clone()
            .metered(metered)
            .from_bytes(&name, &bytes)
            .map_err(|e| TaskError::Failed(format!("cannot load {name}: {e}")))?;
        let output = Arc::new(OutputBuffers::default());
        let sink = output.clone();
        let mut builder = Pool::builder()
            .workers(self.serve.workers)
            .program(program)
            .grants(self.serve.grants.clone())
            .manager(self.manager.clone())
            .on_output(move |task, stream, bytes| sink.write(task, stream, bytes));
        if let Some(path) = &self.serve.worker_program {
            builder = builder.worker_program(path);
        }
        let pool = builder
            .build()
            .map_err(|e| TaskError::Failed(format!("cannot start workers for {name}: {e}")))?;
        tracing::info!("started {} workers for {name}", pool.workers());
        self.lock().pools.insert(
            key,
            LocalPool {
                pool,
                output,
                held: 0,
            },
        );
        Ok(())
    }

    /// Submits tasks to the local pool of `digest`.
    fn submit(&self, digest: &str, metered: bool, tasks: Vec<Taken>) {
        let mut state = self.lock();
        let state = &mut *state;
        let pool = state
            .pools
            .get_mut(&(digest.to_owned(), metered))
            .expect("the pool was made just now");
        // One submission per distinct options (a run's tasks share theirs).
        let mut by_options: Vec<(TaskOptions, Vec<Taken>)> = Vec::new();
        for task in tasks {
            let options = self.capped(task.spec.options);
            match by_options.iter_mut().find(|(o, _)| *o == options) {
                Some((_, list)) => list.push(task),
                None => by_options.push((options, vec![task])),
            }
        }
        for (options, tasks) in by_options {
            let mut keys = Vec::with_capacity(tasks.len());
            let mut calls = Vec::with_capacity(tasks.len());
            for Taken {
                entry,
                prior,
                task,
                spec,
            } in tasks
            {
                let key = state.next_key;
                state.next_key += 1;
                keys.push(key);
                calls.push(spec.call);
                let run = entry.text("run").unwrap_or_default().to_owned();
                state.held.insert(
                    key,
                    Held {
                        entry: entry.id,
                        run,
                        task,
                        prior,
                        pool: (digest.to_owned(), metered),
                        result: Err(TaskError::Failed("not submitted".into())),
                        output: pool.output.clone(),
                        lost: false,
                    },
                );
                pool.held += 1;
            }
            let finished = self.finished.clone();
            let notify_keys = keys.clone();
            let notify: Notify = Arc::new(move |index| {
                let _ = finished.send(notify_keys[index]);
            });
            match pool.pool.submit_each(calls, options, notify) {
                Ok(results) => {
                    for (key, result) in keys.iter().zip(results) {
                        if let Some(held) = state.held.get_mut(key) {
                            held.result = Ok(result);
                        }
                    }
                }
                Err(e) => {
                    // The call does not fit the component, say: each task fails, saying why.
                    let failure = TaskError::Failed(e.to_string());
                    for key in keys {
                        if let Some(held) = state.held.get_mut(&key) {
                            held.result = Err(failure.clone());
                        }
                        let _ = self.finished.send(key);
                    }
                }
            }
        }
    }

    /// A submitter's options within the host's limits.
    fn capped(&self, asked: TaskOptions) -> TaskOptions {
        TaskOptions {
            timeout: cap(asked.timeout, self.serve.limits.timeout),
            max_memory: cap(asked.max_memory, self.serve.limits.max_memory),
            fuel: cap(asked.fuel, self.serve.limits.fuel),
            retries: asked.retries,
        }
    }

    /// Completes a task that did not run here, on the taker's connection.
    fn complete_now(
        &self,
        connection: &mut Connection,
        entry: &Entry,
        run: &str,
        finished: Finished,
    ) -> redis::RedisResult<()> {
        let ok = finished.result.is_ok();
        let payload = postcard::to_allocvec(&finished).expect("a result serialises");
        let outcome: i64 = complete_script()
            .key(self.keys.tasks())
            .key(self.keys.results(run))
            .key(self.keys.done(run))
            .key(self.keys.stats())
            .key(self.keys.deaths())
            .arg(GROUP)
            .arg(&entry.id)
            .arg(&self.serve.id)
            .arg(finished.task)
            .arg(payload)
            .arg(RESULT_TTL_SECS)
            .arg(if ok { "done" } else { "failed" })
            .invoke(connection)?;
        if outcome == 0 {
            tracing::warn!(
                "task entry {} was taken over by another host; its result is dropped",
                entry.id
            );
        }
        Ok(())
    }

    fn complete_now_logged(&self, connection: &mut Connection, entry: &Entry, run: &str, finished: Finished) {
        if let Err(e) = self.complete_now(connection, entry, run, finished) {
            tracing::warn!(
                "cannot complete task entry {}: {}",
                entry.id,
                self.serve.cluster.error(e)
            );
        }
    }
}

/// The lower of what was asked and the host's limit: the limit when nothing was asked.
fn cap<T: Ord>(asked: Option<T>, limit: Option<T>) -> Option<T> {
    match (asked, limit) {
        (Some(asked), Some(limit)) => Some(asked.min(limit)),
        (asked, limit) => asked.or(limit),
    }
}
