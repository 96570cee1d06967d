//! The queues in this process's memory, the default [`QueueStore`]: a table of named FIFO
//! queues under one lock, their parked operations, the timer thread that answers those with a
//! deadline, and the leases of the workers' readers ([`super::lease`]).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Instant;

use super::*;

/// The queues in this process's memory: the default [`QueueStore`].
pub(crate) struct MemoryQueues {
    shared: Arc<MemoryShared>,
}

struct MemoryShared {
    table: Mutex<QueueTable>,
    /// Wakes the timer thread when an earlier deadline is registered.
    timer: Condvar,
}

impl MemoryQueues {
    /// Empty queues with `limits`, made consistent (see [`Manager::with_limits`]).
    pub(super) fn new(limits: Limits) -> MemoryQueues {
        let limits = limits.consistent();
        let state = QueueTable {
            limits,
            ..QueueTable::default()
        };
        MemoryQueues {
            shared: Arc::new(MemoryShared {
                table: Mutex::new(state),
                timer: Condvar::new(),
            }),
        }
    }

    fn after(
        &self,
        mut state: MutexGuard<'_, QueueTable>,
        parked: Option<WaiterId>,
        wait: Wait,
        answers: Answers,
    ) -> Option<WaiterId> {
        if parked.is_some() && matches!(wait, Wait::For(_)) {
            if state.timer_running {
                self.shared.timer.notify_all();
            } else {
                state.timer_running = true;
                let shared = self.shared.clone();
                thread::Builder::new()
                    .name("poolhost-queue-timer".into())
                    .spawn(move || timer(&shared))
                    .expect("the queue timer thread starts");
            }
        }
        drop(state);
        answers.run();
        parked
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, QueueTable> {
        self.shared.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl QueueStore for MemoryQueues {
    fn limits(&self) -> Limits {
        self.lock().limits
    }

    fn open(&self, name: &str) -> Result<QueueId, QueueError> {
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return Err(QueueError::InvalidName);
        }
        let mut state = self.lock();
        if let Some(&id) = state.names.get(name) {
            return Ok(id);
        }
        if state.queues.len() >= state.limits.max_queues {
            return Err(QueueError::TooManyQueues);
        }
        let id = state.queues.len() as QueueId;
        state.queues.push(NamedQueue::new(name));
        state.names.insert(name.to_owned(), id);
        Ok(id)
    }
    fn set_maxsize(&self, id: QueueId, maxsize: Option<usize>) {
        let mut state = self.lock();
        state.queues[id as usize].maxsize = maxsize;
        // A larger bound may let parked puts in.
        let mut answers = Answers::default();
        state.admit(&mut answers);
        drop(state);
        answers.run();
    }

    fn maxsize(&self, id: QueueId) -> Option<usize> {
        self.lock().queues[id as usize].maxsize
    }

    fn names(&self) -> Vec<String> {
        self.lock().queues.iter().map(|q| q.name.clone()).collect()
    }

    fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        let mut answers = Answers::default();
        for queue in &mut state.queues {
            for getter in queue.getters.drain(..) {
                answers.got(getter.reply, Err(QueueError::Closed));
            }
            for putter in queue.putters.drain(..) {
                answers.put(putter.reply, Err((QueueError::Closed, putter.item)));
            }
        }
        state.deadlines.clear();
        state.waiting.clear();
        state.parked_putters = 0;
        drop(state);
        self.shared.timer.notify_all();
        answers.run();
    }

    fn put_with(&self, id: QueueId, item: Vec<u8>, wait: Wait, reply: PutReply) -> Option<WaiterId> {
        let mut answers = Answers::default();
        let mut state = self.lock();
        let parked = state.put(id, item, wait, reply, &mut answers);
        self.after(state, parked, wait, answers)
    }
    fn get_with(&self, id: QueueId, wait: Wait, reply: GetReply) -> Option<WaiterId> {
        let mut answers = Answers::default();
        let mut state = self.lock();
        let parked = state.get(id, wait, reply, &mut answers);
        self.after(state, parked, wait, answers)
    }
    fn get_leased(
        &self,
        id: QueueId,
        wait: Wait,
        holder: u32,
        tally: Option<&Arc<dyn Tally>>,
        reply: LeaseReply,
    ) -> Option<WaiterId> {
        let mut answers = Answers::default();
        let mut state = self.lock();
        state.settle_holder(holder, &mut answers);
        if tally.is_none() {
            // A task's first get (or a worker without a tally): the next may lease one item.
            state.runs.insert(holder, 1);
        }
        let parked = match state.take(id, &mut answers) {
            Some(item) => {
                let lease = tally.and_then(|tally| state.lease(id, holder, tally));
                answers.0.push(Reply::Leased(reply, Ok(Got { item, lease })));
                None
            }
            None => state.park_getter(id, wait, without_lease(reply), &mut answers),
        };
        self.after(state, parked, wait, answers)
    }
    fn get_many_held(
        &self,
        id: QueueId,
        max: usize,
        wait: Wait,
        holder: u32,
        reply: BatchReply,
    ) -> Option<WaiterId> {
        // The items leased to the worker are older than any in the queue: they go back first.
        self.settle(holder, false);
        self.get_many_with(id, max, wait, reply)
    }
    fn settle(&self, holder: u32, gone: bool) {
        let mut answers = Answers::default();
        let mut state = self.lock();
        state.settle_holder(holder, &mut answers);
        if gone {
            state.runs.remove(&holder);
        }
        drop(state);
        answers.run();
    }
    fn get_many_with(&self, id: QueueId, max: usize, wait: Wait, reply: BatchReply) -> Option<WaiterId> {
        if max == 0 {
            reply(Ok(Vec::new()));
            return None;
        }
        let mut answers = Answers::default();
        let mut state = self.lock();
        let batch = state.take_batch(id, max, &mut answers);
        if !batch.is_empty() {
            drop(state);
            answers.run();
            reply(Ok(batch));
            return None;
        }
        let single = Box::new(move |got: Result<Vec<u8>, QueueError>| reply(got.map(|item| vec![item])));
        let parked = state.get(id, wait, single, &mut answers);
        self.after(state, parked, wait, answers)
    }
    fn cancel(&self, waiter: WaiterId) {
        let mut answers = Answers::default();
        let mut state = self.lock();
        state.remove(waiter, QueueError::Closed, &mut answers);
        drop(state);
        answers.run();
    }
    fn len_of(&self, id: QueueId) -> usize {
        let state = self.lock();
        let Some(queue) = state.queues.get(id as usize) else {
            return 0;
        };
        let unclaimed: usize = state
            .leases
            .iter()
            .filter(|lease| lease.queue == id)
            .map(|lease| lease.items.len() - lease.claimed())
            .sum();
        queue.items.len() + unclaimed
    }
}

/// Answers parked operations as their deadlines pass; ends when no deadline is left.
fn timer(shared: &MemoryShared) {
    let mut state = shared.table.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let Some(&(deadline, _)) = state.deadlines.first() else {
            state.timer_running = false;
            return;
        };
        let now = Instant::now();
        if deadline > now {
            state = shared
                .timer
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            continue;
        }
        let mut answers = Answers::default();
        while let Some(&(deadline, waiter)) = state.deadlines.first() {
            if deadline > now {
                break;
            }
            state.remove(waiter, QueueError::Timeout, &mut answers);
        }
        drop(state);
        answers.run();
        state = shared.table.lock().unwrap_or_else(PoisonError::into_inner);
    }
}

#[derive(Default)]
pub(super) struct QueueTable {
    limits: Limits,
    names: HashMap<String, QueueId>,
    queues: Vec<NamedQueue>,
    /// Bytes held by all queues.
    total_bytes: usize,
    closed: bool,
    /// Parked operations with a deadline, earliest first.
    deadlines: BTreeSet<(Instant, WaiterId)>,
    /// Which queue each parked operation waits on.
    pub(super) waiting: HashMap<WaiterId, QueueId>,
    /// Parked puts over all queues: when zero, freeing bytes has nobody to let in.
    parked_putters: usize,
    next_waiter: WaiterId,
    pub(super) timer_running: bool,
    /// The workers' leases, oldest first.
    leases: Vec<Lease>,
    /// How many items each worker's next lease may hold: doubled each time it uses one up, so a
    /// reader that keeps getting soon takes [`MAX_LEASE_ITEMS`] a time, and a task that gets
    /// once takes none.
    runs: HashMap<u32, usize>,
    next_generation: u32,
}

/// The most items a lease holds. Each claimed item saves its reader a round trip to the host
/// (about 20 µs); at 64 the round trips are a small share of a reader's time, and a lease given
/// back unused costs at most 64 copies.
const MAX_LEASE_ITEMS: usize = 64;

/// The most bytes a lease holds: the copies a worker keeps, and what a lease given back unused
/// cost to send. An item larger than this is never leased.
const MAX_LEASE_BYTES: usize = 64 << 10;

/// Items leased to a worker ([`super::lease`]). They stay counted in their queue's limits (and
/// `len`) until the lease is settled, so leases change neither the bounds nor the counts.
struct Lease {
    holder: u32,
    queue: QueueId,
    generation: u32,
    items: Vec<Vec<u8>>,
    tally: Arc<dyn Tally>,
}

impl Lease {
    fn len(&self) -> u32 {
        self.items.len() as u32
    }

    /// How many items the worker has claimed so far.
    fn claimed(&self) -> usize {
        lease::claimed(self.tally.as_ref(), self.generation, self.len()) as usize
    }
}

struct NamedQueue {
    name: String,
    items: VecDeque<Vec<u8>>,
    bytes: usize,
    maxsize: Option<usize>,
    /// Parked gets; only while `items` is empty.
    getters: VecDeque<Getter>,
    /// The items of this queue's leases, claimed or not, until the leases are settled.
    leased: usize,
    /// Parked puts; only while their item does not fit (so never with `getters`).
    putters: VecDeque<Putter>,
}

impl NamedQueue {
    fn new(name: &str) -> Self {
        NamedQueue {
            name: name.to_owned(),
            items: VecDeque::new(),
            bytes: 0,
            maxsize: None,
            getters: VecDeque::new(),
            putters: VecDeque::new(),
            leased: 0,
        }
    }
}

struct Getter {
    id: WaiterId,
    deadline: Option<Instant>,
    reply: GetReply,
}

struct Putter {
    id: WaiterId,
    deadline: Option<Instant>,
    item: Vec<u8>,
    reply: PutReply,
}

/// Replies to run once the lock is released.
#[derive(Default)]
struct Answers(Vec<Reply>);

enum Reply {
    Got(GetReply, Result<Vec<u8>, QueueError>),
    Leased(LeaseReply, Result<Got, QueueError>),
    Put(PutReply, Result<(), (QueueError, Vec<u8>)>),
}

impl Answers {
    fn got(&mut self, reply: GetReply, result: Result<Vec<u8>, QueueError>) {
        self.0.push(Reply::Got(reply, result));
    }

    fn put(&mut self, reply: PutReply, result: Result<(), (QueueError, Vec<u8>)>) {
        self.0.push(Reply::Put(reply, result));
    }

    fn run(self) {
        for reply in self.0 {
            match reply {
                Reply::Got(reply, result) => reply(result),
                Reply::Leased(reply, result) => reply(result),
                Reply::Put(reply, result) => reply(result),
            }
        }
    }
}

impl QueueTable {
    fn put(
        &mut self,
        id: QueueId,
        item: Vec<u8>,
        wait: Wait,
        reply: PutReply,
        answers: &mut Answers,
    ) -> Option<WaiterId> {
        let error = if self.closed || self.queues.len() <= id as usize {
            Some(QueueError::Closed)
        } else if item.len() > self.limits.max_item_bytes {
            Some(QueueError::TooLarge)
        } else {
            None
        };
        if let Some(error) = error {
            answers.put(reply, Err((error, item)));
            return None;
        }
        let queue = &mut self.queues[id as usize];
        if let Some(getter) = queue.getters.pop_front() {
            // The queue is empty and someone waits: the item goes straight to them.
            self.forget(getter.id, getter.deadline);
            answers.got(getter.reply, Ok(item));
            answers.put(reply, Ok(()));
            return None;
        }
        if queue.putters.is_empty() && self.fits(id, item.len()) {
            self.push(id, item);
            answers.put(reply, Ok(()));
            return None;
        }
        if !self.leases.is_empty() {
            // Leased items claimed since their lease began still take room: settling the leases
            // frees it, as their gets would have without leases.
            self.settle_all(answers);
            if self.queues[id as usize].putters.is_empty() && self.fits(id, item.len()) {
                self.push(id, item);
                answers.put(reply, Ok(()));
                return None;
            }
        }
        let deadline = match wait {
            Wait::No => {
                answers.put(reply, Err((QueueError::Full, item)));
                return None;
            }
            Wait::Forever => None,
            // A wait too long for the clock to express is a wait forever.
            Wait::For(timeout) => Instant::now().checked_add(timeout),
        };
        let waiter = self.park(id, deadline);
        self.parked_putters += 1;
        self.queues[id as usize].putters.push_back(Putter {
            id: waiter,
            deadline,
            item,
            reply,
        });
        Some(waiter)
    }

    fn get(&mut self, id: QueueId, wait: Wait, reply: GetReply, answers: &mut Answers) -> Option<WaiterId> {
        match self.take(id, answers) {
            Some(item) => {
                answers.got(reply, Ok(item));
                None
            }
            None => self.park_getter(id, wait, reply, answers),
        }
    }

    /// Takes the item at the head of queue `id`, if there is one now.
    fn take(&mut self, id: QueueId, answers: &mut Answers) -> Option<Vec<u8>> {
        self.settle_leases_of(id, answers);
        let queue = self.queues.get_mut(id as usize)?;
        if let Some(item) = queue.items.pop_front() {
            queue.bytes -= cost(item.len());
            self.total_bytes -= cost(item.len());
            self.admit(answers);
            return Some(item);
        }
        let putter = queue.putters.pop_front()?;
        // Empty, yet a put waits (for room in the total): its item goes straight here.
        self.parked_putters -= 1;
        self.forget(putter.id, putter.deadline);
        answers.put(putter.reply, Ok(()));
        Some(putter.item)
    }

    /// Parks a get of queue `id`, which is empty, as `wait` says (or answers it at once).
    fn park_getter(
        &mut self,
        id: QueueId,
        wait: Wait,
        reply: GetReply,
        answers: &mut Answers,
    ) -> Option<WaiterId> {
        if self.queues.len() <= id as usize {
            answers.got(reply, Err(QueueError::Closed));
            return None;
        }
        let deadline = match wait {
            _ if self.closed => {
                answers.got(reply, Err(QueueError::Closed));
                return None;
            }
            Wait::No => {
                answers.got(reply, Err(QueueError::Empty));
                return None;
            }
            Wait::Forever => None,
            // A wait too long for the clock to express is a wait forever.
            Wait::For(timeout) => Instant::now().checked_add(timeout),
        };
        let waiter = self.park(id, deadline);
        self.queues[id as usize].getters.push_back(Getter {
            id: waiter,
            deadline,
            reply,
        });
        Some(waiter)
    }

    /// Takes up to `max` items there are now from the front of queue `id`, within
    /// [`MAX_BATCH_BYTES`] (at least one if there is one).
    fn take_batch(&mut self, id: QueueId, max: usize, answers: &mut Answers) -> Vec<Vec<u8>> {
        self.settle_leases_of(id, answers);
        let Some(queue) = self.queues.get_mut(id as usize) else {
            return Vec::new();
        };
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut freed = 0;
        while batch.len() < max {
            let Some(front) = queue.items.front() else { break };
            if !batch.is_empty() && bytes + front.len() > MAX_BATCH_BYTES {
                break;
            }
            let item = queue.items.pop_front().expect("checked above");
            bytes += item.len();
            freed += cost(item.len());
            batch.push(item);
        }
        queue.bytes -= freed;
        self.total_bytes -= freed;
        if !batch.is_empty() {
            self.admit(answers);
        }
        batch
    }

    /// Whether an item of `len` bytes fits queue `id` and the total now.
    fn fits(&self, id: QueueId, len: usize) -> bool {
        let queue = &self.queues[id as usize];
        queue
            .maxsize
            .is_none_or(|max| queue.items.len() + queue.leased < max)
            && queue.bytes + cost(len) <= self.limits.max_queue_bytes
            && self.total_bytes + cost(len) <= self.limits.max_total_bytes
    }

    fn push(&mut self, id: QueueId, item: Vec<u8>) {
        let queue = &mut self.queues[id as usize];
        queue.bytes += cost(item.len());
        self.total_bytes += cost(item.len());
        queue.items.push_back(item);
    }

    /// Lets parked puts in, oldest first on each queue, wherever they now fit.
    fn admit(&mut self, answers: &mut Answers) {
        if self.parked_putters == 0 {
            return;
        }
        for id in 0..self.queues.len() as QueueId {
            while let Some(putter) = self.queues[id as usize].putters.front() {
                if !self.fits(id, putter.item.len()) {
                    break;
                }
                let putter = self.queues[id as usize]
                    .putters
                    .pop_front()
                    .expect("checked above");
                self.parked_putters -= 1;
                self.forget(putter.id, putter.deadline);
                self.push(id, putter.item);
                answers.put(putter.reply, Ok(()));
            }
        }
    }

    /// Leases worker `holder` a run of the items now at the head of queue `id` (which it has
    /// just got from), as long as its runs say, if the queue has any and no put waits for room
    /// anywhere (the leased items' room is not freed until the lease is settled).
    fn lease(&mut self, id: QueueId, holder: u32, tally: &Arc<dyn Tally>) -> Option<Granted> {
        let run = self.runs.entry(holder).or_insert(0);
        let most = *run;
        // The first get of a run leases nothing; the next may lease one.
        *run = (*run).max(1);
        let queue = &mut self.queues[id as usize];
        if most == 0 || self.parked_putters > 0 {
            return None;
        }
        let mut bytes = 0;
        let mut count = 0;
        // Every leased item counts against the bound, the first too: the answer carrying the
        // lease must stay well under the frame limit, whatever the items' sizes.
        for item in queue.items.iter().take(most) {
            if bytes + item.len() > MAX_LEASE_BYTES {
                break;
            }
            bytes += item.len();
            count += 1;
        }
        if count == 0 {
            return None;
        }
        let items: Vec<Vec<u8>> = queue.items.drain(..count).collect();
        queue.leased += count;
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        lease::grant(tally.as_ref(), generation);
        self.leases.push(Lease {
            holder,
            queue: id,
            generation,
            items: items.clone(),
            tally: tally.clone(),
        });
        Some(Granted { generation, items })
    }

    /// Settles lease `at` of [`QueueTable::leases`]: revokes it, frees what its worker claimed,
    /// and puts the rest back at the head of its queue, in order. A worker that used its lease
    /// up may have a longer one next time; one that did not, one as long as it used.
    fn settle(&mut self, at: usize, answers: &mut Answers) {
        let lease = self.leases.remove(at);
        let taken = lease::revoke(lease.tally.as_ref(), lease.generation, lease.len()) as usize;
        let run = self.runs.entry(lease.holder).or_insert(0);
        *run = if taken == lease.items.len() {
            (taken * 2).clamp(1, MAX_LEASE_ITEMS)
        } else {
            taken
        };
        let queue = &mut self.queues[lease.queue as usize];
        queue.leased -= lease.items.len();
        let mut items = lease.items;
        let freed: usize = items.drain(..taken).map(|item| cost(item.len())).sum();
        queue.bytes -= freed;
        self.total_bytes -= freed;
        for item in items.into_iter().rev() {
            queue.items.push_front(item);
        }
        // Nobody waits to get from the queue: a getter parks only once `take` has settled the
        // queue's leases and found it empty, and while one waits every put goes straight to it,
        // so no lease of the queue can begin.
        debug_assert!(
            queue.getters.is_empty(),
            "a getter parked while a lease held items"
        );
        if freed > 0 {
            self.admit(answers);
        }
    }

    /// Settles worker `holder`'s lease, if it has one.
    fn settle_holder(&mut self, holder: u32, answers: &mut Answers) {
        if let Some(at) = self.leases.iter().position(|lease| lease.holder == holder) {
            self.settle(at, answers);
        }
    }

    /// Before a get of queue `id`: settles the queue's leases. A lease holds the head of its
    /// queue, so every get, by whomever, takes the queue's true head, and each reader sees its
    /// items in the order they were put, as with no leases at all. The holder's own get has
    /// settled its lease already; another getter's takes back what the holder has not claimed.
    fn settle_leases_of(&mut self, id: QueueId, answers: &mut Answers) {
        if self.queues.get(id as usize).is_none_or(|queue| queue.leased == 0) {
            return;
        }
        // Newest first, so that older leases' items end up ahead of newer ones'.
        for at in (0..self.leases.len()).rev() {
            if self.leases[at].queue == id {
                self.settle(at, answers);
            }
        }
    }

    /// Settles every lease (before a put is refused or parked for want of room).
    fn settle_all(&mut self, answers: &mut Answers) {
        for at in (0..self.leases.len()).rev() {
            self.settle(at, answers);
        }
    }

    fn park(&mut self, id: QueueId, deadline: Option<Instant>) -> WaiterId {
        let waiter = self.next_waiter;
        self.next_waiter += 1;
        self.waiting.insert(waiter, id);
        if let Some(deadline) = deadline {
            self.deadlines.insert((deadline, waiter));
        }
        waiter
    }

    fn forget(&mut self, waiter: WaiterId, deadline: Option<Instant>) {
        self.waiting.remove(&waiter);
        if let Some(deadline) = deadline {
            self.deadlines.remove(&(deadline, waiter));
        }
    }

    /// Takes a parked operation out of its queue and answers it with `error`.
    fn remove(&mut self, waiter: WaiterId, error: QueueError, answers: &mut Answers) {
        let Some(id) = self.waiting.get(&waiter).copied() else {
            return;
        };
        let queue = &mut self.queues[id as usize];
        if let Some(at) = queue.getters.iter().position(|g| g.id == waiter) {
            let getter = queue.getters.remove(at).expect("found above");
            self.forget(waiter, getter.deadline);
            answers.got(getter.reply, Err(error));
        } else if let Some(at) = queue.putters.iter().position(|p| p.id == waiter) {
            let putter = queue.putters.remove(at).expect("found above");
            self.parked_putters -= 1;
            self.forget(waiter, putter.deadline);
            answers.put(putter.reply, Err((error, putter.item)));
            // The put that left may have blocked those behind it.
            self.admit(answers);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;

    fn item(i: usize) -> Vec<u8> {
        format!("item {i}").into_bytes()
    }

    /// A worker as the queue table sees one: it gets through [`QueueStore::get_leased`] and
    /// claims leased items in its tally, as `worker::RemoteQueues` does over the wire.
    struct Reader {
        holder: u32,
        tally: Arc<dyn Tally>,
        lease: Option<(u32, VecDeque<Vec<u8>>, u32)>,
        /// How many of the items it got came from a lease.
        from_leases: usize,
    }

    impl Reader {
        fn new(holder: u32) -> Reader {
            Reader {
                holder,
                tally: Arc::new(AtomicU64::new(0)),
                lease: None,
                from_leases: 0,
            }
        }

        fn get(&mut self, store: &MemoryQueues, id: QueueId, wait: Wait) -> Result<Vec<u8>, QueueError> {
            if let Some((generation, items, taken)) = &mut self.lease
                && !items.is_empty()
                && lease::claim(self.tally.as_ref(), *generation, *taken)
            {
                *taken += 1;
                self.from_leases += 1;
                return Ok(items.pop_front().unwrap());
            }
            self.lease = None;
            let (reply, answer) = oneshot();
            assert!(
                store
                    .get_leased(id, wait, self.holder, Some(&self.tally), reply)
                    .is_none(),
                "the tests' gets do not park"
            );
            let got = answer.wait()?;
            if let Some(granted) = got.lease {
                self.lease = Some((granted.generation, granted.items.into(), 0));
            }
            Ok(got.item)
        }

        /// The task ends: the worker gives back what it has not claimed.
        fn end_task(&mut self) {
            if let Some((generation, items, taken)) = self.lease.take() {
                lease::revoke(self.tally.as_ref(), generation, taken + items.len() as u32);
            }
        }
    }

    fn filled(count: usize) -> (MemoryQueues, QueueId) {
        let store = MemoryQueues::new(Limits::default());
        let id = store.open("q").unwrap();
        for i in 0..count {
            let (reply, answer) = oneshot();
            store.put_with(id, item(i), Wait::No, reply);
            answer.wait().unwrap();
        }
        (store, id)
    }

    fn host_get(store: &MemoryQueues, id: QueueId) -> Result<Vec<u8>, QueueError> {
        let (reply, answer) = oneshot();
        store.get_with(id, Wait::No, reply);
        answer.wait()
    }

    #[test]
    fn a_reader_that_keeps_getting_takes_ever_longer_leases_in_order() {
        let (store, id) = filled(500);
        let mut reader = Reader::new(1);
        for i in 0..500 {
            assert_eq!(reader.get(&store, id, Wait::No), Ok(item(i)));
            assert_eq!(
                store.len_of(id),
                499 - i,
                "len counts what is leased and not claimed"
            );
        }
        assert!(
            reader.from_leases > 400,
            "{} of 500 from leases",
            reader.from_leases
        );
        assert_eq!(reader.get(&store, id, Wait::No), Err(QueueError::Empty));
        let state = store.lock();
        assert!(state.leases.is_empty());
        assert_eq!((state.total_bytes, state.queues[id as usize].bytes), (0, 0));
    }

    #[test]
    fn a_getter_finding_the_queue_empty_takes_back_what_a_lease_holds() {
        let (store, id) = filled(40);
        let mut reader = Reader::new(1);
        let mut seen = Vec::new();
        // Until the lease holds the rest of the queue.
        while !store.lock().queues[id as usize].items.is_empty() {
            seen.push(reader.get(&store, id, Wait::No).unwrap());
        }
        assert!(
            reader
                .lease
                .as_ref()
                .is_some_and(|(_, items, _)| !items.is_empty())
        );
        // The host's own get finds the queue empty: it takes the lease back, oldest first.
        let mut taken_back = Vec::new();
        while let Ok(next) = host_get(&store, id) {
            taken_back.push(next);
        }
        // The reader's claims now fail, and it asks the host, which has nothing left.
        assert_eq!(reader.get(&store, id, Wait::No), Err(QueueError::Empty));
        seen.extend(taken_back);
        assert_eq!(
            seen,
            (0..40).map(item).collect::<Vec<_>>(),
            "each item once, in order"
        );
    }

    #[test]
    fn what_a_finished_task_gave_back_comes_before_newer_items() {
        let (store, id) = filled(100);
        let mut first = Reader::new(1);
        // Leases of 1, 2, 4 and 8 used up, then one of 16 begun.
        for i in 0..21 {
            assert_eq!(first.get(&store, id, Wait::No), Ok(item(i)));
        }
        let unclaimed = first.lease.as_ref().map_or(0, |(_, items, _)| items.len());
        assert!(unclaimed > 0, "the reader holds a lease");
        first.end_task();
        // Another reader, though the queue is not empty, gets item 20 next.
        let mut second = Reader::new(2);
        for i in 21..100 {
            assert_eq!(second.get(&store, id, Wait::No), Ok(item(i)));
        }
    }

    #[test]
    fn a_gone_worker_s_unclaimed_items_go_back_to_the_head() {
        let (store, id) = filled(100);
        let mut reader = Reader::new(1);
        for i in 0..30 {
            assert_eq!(reader.get(&store, id, Wait::No), Ok(item(i)));
        }
        // It claims one more on its own, then dies (no `end_task`).
        assert_eq!(reader.get(&store, id, Wait::No), Ok(item(30)));
        store.settle(1, true);
        assert!(store.lock().runs.is_empty(), "a gone worker's run is forgotten");
        for i in 31..100 {
            assert_eq!(host_get(&store, id), Ok(item(i)));
        }
        assert_eq!(host_get(&store, id), Err(QueueError::Empty));
    }

    #[test]
    fn leased_items_count_against_a_bound_until_claimed() {
        let store = MemoryQueues::new(Limits::default());
        let id = store.open("q").unwrap();
        store.set_maxsize(id, Some(10));
        let put = |i| {
            let (reply, answer) = oneshot();
            store.put_with(id, item(i), Wait::No, reply);
            answer.wait().map_err(|(e, _)| e)
        };
        for i in 0..10 {
            put(i).unwrap();
        }
        let mut reader = Reader::new(1);
        // Enough gets for a lease to hold most of the queue.
        for i in 0..4 {
            assert_eq!(reader.get(&store, id, Wait::No), Ok(item(i)));
        }
        assert!(reader.lease.is_some());
        assert_eq!(store.len_of(id), 6);
        // Room for exactly the four taken, leased or not.
        for i in 10..14 {
            assert_eq!(put(i), Ok(()), "put {i}");
        }
        assert_eq!(put(14), Err(QueueError::Full));
        // The refused put took the lease back: what was leased is at the head again.
        for i in 4..14 {
            assert_eq!(host_get(&store, id), Ok(item(i)));
        }
    }

    #[test]
    fn no_lease_is_taken_while_a_put_waits_for_room() {
        let store = MemoryQueues::new(Limits {
            max_total_bytes: 40 * cost(8),
            ..Limits::default()
        });
        let (a, b) = (store.open("a").unwrap(), store.open("b").unwrap());
        for i in 0..40 {
            let (reply, answer) = oneshot();
            store.put_with(a, format!("item {i:03}").into_bytes(), Wait::No, reply);
            answer.wait().unwrap();
        }
        // A larger item waits for room on another queue.
        let (reply, put) = oneshot();
        assert!(
            store
                .put_with(b, vec![0; 3 * cost(8)], Wait::Forever, reply)
                .is_some()
        );
        let mut reader = Reader::new(1);
        for _ in 0..10 {
            reader.get(&store, a, Wait::No).unwrap();
            if put.is_ready() {
                break;
            }
            assert!(store.lock().leases.is_empty(), "no lease while the put waits");
        }
        // Without leases, every get freed room: the put went in once there was enough.
        assert_eq!(put.wait(), Ok(()));
    }

    #[test]
    fn no_lease_holds_more_than_its_bytes_whatever_the_items() {
        let store = MemoryQueues::new(Limits::default());
        let id = store.open("q").unwrap();
        for size in [10, 40 << 10, 40 << 10, 100 << 10, 10, 10] {
            let (reply, answer) = oneshot();
            store.put_with(id, vec![b'x'; size], Wait::No, reply);
            answer.wait().unwrap();
        }
        let mut reader = Reader::new(1);
        while reader.get(&store, id, Wait::No).is_ok() {
            let state = store.lock();
            for lease in &state.leases {
                let bytes: usize = lease.items.iter().map(Vec::len).sum();
                assert!(bytes <= MAX_LEASE_BYTES, "a lease of {bytes} bytes");
            }
        }
        assert_eq!(store.len_of(id), 0);
    }

    /// Readers claiming on threads while the host takes leases back: every item reaches exactly
    /// one of them, and each sees its items in order.
    #[test]
    fn readers_and_a_host_getter_racing_share_the_items_exactly_once() {
        const ITEMS: usize = 20_000;
        let (store, id) = filled(ITEMS);
        let store = Arc::new(store);
        let readers: Vec<_> = (1..=2)
            .map(|holder| {
                let store = store.clone();
                thread::spawn(move || {
                    let mut reader = Reader::new(holder);
                    let mut got = Vec::new();
                    while let Ok(next) = reader.get(&store, id, Wait::No) {
                        got.push(next);
                    }
                    got
                })
            })
            .collect();
        let mut host = Vec::new();
        loop {
            match host_get(&store, id) {
                Ok(next) => host.push(next),
                Err(_) if readers.iter().all(|r| r.is_finished()) => break,
                Err(_) => thread::yield_now(),
            }
        }
        let mut all = host.clone();
        let position = |i: &Vec<u8>| -> usize { String::from_utf8_lossy(&i[5..]).parse().unwrap() };
        for reader in readers {
            let got = reader.join().unwrap();
            assert!(
                got.windows(2).all(|w| position(&w[0]) < position(&w[1])),
                "a reader's items in order"
            );
            all.extend(got);
        }
        all.sort_by_key(position);
        assert_eq!(all, (0..ITEMS).map(item).collect::<Vec<_>>());
    }
}
