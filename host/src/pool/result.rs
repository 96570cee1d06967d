//! Results: the [`AsyncResult`] of each task, the iterators of `imap` and `imap_unordered`, and
//! the [`Batch`] of a runner that reports each task as it ends. Each task's report is left in a
//! [`ResultCell`] for whoever waits on it.

use std::mem;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use super::Dispatch;
use super::scheduler::ResultHandle;
use crate::task::{TaskId, TaskReport, TaskResult};

/// The result of a task submitted with [`super::Pool::apply_async`].
pub struct AsyncResult {
    id: TaskId,
    cell: Arc<ResultCell>,
}

impl AsyncResult {
    pub(crate) fn new(id: TaskId, cell: Arc<ResultCell>) -> AsyncResult {
        AsyncResult { id, cell }
    }

    /// The task's submission sequence number.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// Waits for the task to finish and returns its result.
    ///
    /// # Panics
    /// If its report was taken with [`Batch::take_report`].
    pub fn get(&self) -> TaskResult {
        self.cell
            .wait(None, |report| report.result.clone())
            .expect("an untimed wait returns a report, unless it was taken")
    }

    /// Waits at most `timeout` for the result; `None` if the task has not finished by then.
    pub fn get_timeout(&self, timeout: Duration) -> Option<TaskResult> {
        self.cell.wait(Some(timeout), |report| report.result.clone())
    }

    /// Waits for the task to finish.
    pub fn wait(&self) {
        self.cell.wait(None, |_| ());
    }

    /// Waits at most `timeout`; returns whether the task has finished.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.cell.wait(Some(timeout), |_| ()).is_some()
    }

    /// Whether the task has finished.
    pub fn ready(&self) -> bool {
        let state = self.cell.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.report.is_some() || state.taken
    }

    /// Whether the task finished with a result: `None` while it has not finished (where Python
    /// raises `ValueError`).
    pub fn successful(&self) -> Option<bool> {
        self.cell.peek(|report| report.result.is_ok())
    }

    /// Everything known about the finished task (worker pid, start, duration), or `None` while
    /// it has not finished.
    pub fn report(&self) -> Option<TaskReport> {
        self.cell.peek(TaskReport::clone)
    }

    /// Waits for the task to finish and returns everything known about it.
    ///
    /// # Panics
    /// If its report was taken with [`Batch::take_report`].
    pub fn wait_report(&self) -> TaskReport {
        self.cell
            .wait(None, TaskReport::clone)
            .expect("an untimed wait returns a report, unless it was taken")
    }
}

/// The iterator [`super::Pool::imap`] returns.
pub struct Imap(pub(super) std::vec::IntoIter<AsyncResult>);

impl Iterator for Imap {
    type Item = TaskResult;

    fn next(&mut self) -> Option<TaskResult> {
        self.0.next().map(|result| result.get())
    }
}

/// The iterator [`super::Pool::imap_unordered`] returns.
pub struct ImapUnordered(pub(super) Batch);

impl Iterator for ImapUnordered {
    type Item = (usize, TaskResult);

    fn next(&mut self) -> Option<(usize, TaskResult)> {
        let index = self.0.next_finished()?;
        let report = self.0.take_report(index).expect("a finished task has its report");
        Some((index, report.result))
    }
}

/// Tasks submitted together with [`super::Pool::batch`].
pub struct Batch {
    pub(super) dispatch: Arc<dyn Dispatch>,
    pub(super) results: Vec<AsyncResult>,
    pub(super) remaining: usize,
    pub(super) finished: mpsc::Receiver<usize>,
}

impl Batch {
    /// The tasks' handles, in submission order.
    pub fn results(&self) -> &[AsyncResult] {
        &self.results
    }

    /// How many tasks have not been returned by [`Batch::next_finished`] yet.
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    /// Waits for the next task to finish and returns its index in [`Batch::results`]; `None`
    /// once every task has been returned. Each task is returned exactly once.
    pub fn next_finished(&mut self) -> Option<usize> {
        if self.remaining == 0 {
            return None;
        }
        // Every task ends with a report (a result, a failure, `Terminated` or `Cancelled`), and
        // each sends its index exactly once, so this cannot wait for a task that never finishes.
        let index = self.finished.recv().ok()?;
        self.remaining -= 1;
        Some(index)
    }

    /// Takes the report of finished task `index` out of the batch, for a runner that reports
    /// each task once and then lets it go: a large result is not held for the whole run.
    /// `None` if the task has not finished or its report was taken; its handle in
    /// [`Batch::results`] is then ready, but has no report or result (`get` panics).
    pub fn take_report(&mut self, index: usize) -> Option<TaskReport> {
        let cell = &self.results.get(index)?.cell;
        let mut state = cell.state.lock().unwrap_or_else(PoisonError::into_inner);
        let report = *state.report.take()?;
        state.taken = true;
        let weight = mem::take(&mut state.weight);
        drop(state);
        if weight > 0 {
            self.dispatch.release(weight);
        }
        Some(report)
    }

    /// As [`Batch::next_finished`], waiting at most `timeout`: `None` also when it runs out.
    pub fn next_finished_timeout(&mut self, timeout: Duration) -> Option<usize> {
        if self.remaining == 0 {
            return None;
        }
        let index = self.finished.recv_timeout(timeout).ok()?;
        self.remaining -= 1;
        Some(index)
    }
}

impl Drop for Batch {
    /// The reports nobody took no longer hold back the pool's tasks.
    fn drop(&mut self) {
        let mut weight = 0;
        for result in &self.results {
            let mut state = result.cell.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.released = true;
            weight += mem::take(&mut state.weight);
        }
        if weight > 0 {
            self.dispatch.release(weight);
        }
    }
}

/// Where a task's report is left for whoever waits on it.
pub(crate) struct ResultCell {
    index: usize,
    state: Mutex<CellState>,
    done: Condvar,
    notify: Option<Notify>,
}

/// What hears the index of each task of a submission as it ends.
pub(crate) type Notify = Arc<dyn Fn(usize) + Send + Sync>;

#[derive(Default)]
struct CellState {
    /// Boxed, as the scheduler hands it over: a cell is made for every task at its submission,
    /// and without the report inline it is a fifth of the size (submitting 20 000 calls at
    /// once spent most of its time making cells).
    report: Option<Box<TaskReport>>,
    /// Threads waiting for the report: without any, completing it wakes no one (a wake-up is a
    /// system call even with no one to wake).
    waiters: usize,
    /// The report was taken ([`Batch::take_report`]).
    taken: bool,
    /// What the report counts against [`super::Builder::hold_results_under`] until taken.
    weight: usize,
    /// Its batch was dropped: nobody will take the report, so it counts for nothing.
    released: bool,
}

impl ResultCell {
    /// The cell of the task at `index` in its submission; `notify` hears that index when the
    /// task ends.
    pub(crate) fn new(index: usize, notify: Option<Notify>) -> ResultCell {
        ResultCell {
            index,
            state: Mutex::default(),
            done: Condvar::new(),
            notify,
        }
    }

    /// Leaves `report`, which counts `weight` against the pool's budget of held results until
    /// it is taken (nothing if its batch is gone); returns what it counts.
    pub(crate) fn complete(&self, weight: usize, report: Box<TaskReport>) -> usize {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let weight = if state.released { 0 } else { weight };
        state.report = Some(report);
        state.weight = weight;
        if state.waiters > 0 {
            self.done.notify_all();
        }
        drop(state);
        if let Some(notify) = &self.notify {
            notify(self.index);
        }
        weight
    }

    /// Whether its batch was dropped, so that nobody will take the report.
    fn abandoned(&self) -> bool {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).released
    }

    /// `read` of the report, if the task has finished.
    fn peek<R>(&self, read: impl FnOnce(&TaskReport) -> R) -> Option<R> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .report
            .as_deref()
            .map(read)
    }

    /// `read` of the report once the task has finished, waiting at most `timeout` for it.
    fn wait<R>(&self, timeout: Option<Duration>, read: impl FnOnce(&TaskReport) -> R) -> Option<R> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.report.is_none() {
            state.waiters += 1;
            state = match timeout {
                None => self
                    .done
                    .wait_while(state, |s| s.report.is_none() && !s.taken)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(timeout) => {
                    self.done
                        .wait_timeout_while(state, timeout, |s| s.report.is_none() && !s.taken)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
            state.waiters -= 1;
        }
        state.report.as_deref().map(read)
    }
}

impl ResultHandle for Arc<ResultCell> {
    fn abandoned(&self) -> bool {
        ResultCell::abandoned(self)
    }
}
