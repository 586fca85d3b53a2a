//! Blocking work reached from async code: a flush's fsync, an install's copies and
//! compilation, a chain verification. The daemon's async side has one worker thread by
//! default (`ASTRID_ASYNC_WORKERS`, see `daemon::args::DEFAULT_ASYNC_WORKERS`), so such work
//! must not sit on it: every connection, every stream's deltas and the router would wait
//! behind it.

use tokio::runtime::{Handle, RuntimeFlavor};

/// Runs `work`, which may block, without holding up an async worker: on a multi-threaded
/// runtime's worker, tokio hands the worker's other tasks to another thread for the duration
/// (`block_in_place`). Anywhere else (a capsule's thread, the blocking pool, a current-thread
/// runtime in a test, no runtime at all) it simply runs `work`, which is then blocking no
/// worker.
pub fn off_the_worker<T>(work: impl FnOnce() -> T) -> T {
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(work),
        _ => work(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::off_the_worker;

    /// On one worker (the case where nothing else could run): a task waiting in
    /// `off_the_worker` for another task gets its answer, because that other task still runs.
    /// Had the wait stayed on the worker, nothing else could run until it gave up.
    #[test]
    fn the_workers_other_tasks_run_while_one_task_blocks() {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let waited = runtime.block_on(async {
            let (tell, told) = mpsc::channel();
            let (blocking, blocks) = mpsc::channel();
            let waiter = tokio::spawn(async move {
                let _ = blocking.send(());
                off_the_worker(|| told.recv_timeout(Duration::from_secs(30)))
            });
            // This thread is not the worker: waiting here holds nothing up.
            blocks.recv().expect("the waiter started");
            tokio::spawn(async move { tell.send("answered") });
            waiter.await.expect("waiter")
        });
        assert_eq!(waited, Ok("answered"));
    }

    #[test]
    fn outside_a_multi_threaded_runtime_the_work_just_runs() {
        assert_eq!(off_the_worker(|| 7), 7);
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        assert_eq!(runtime.block_on(async { off_the_worker(|| 8) }), 8);
    }
}
