//! Waiting on a future from inside a host function.
//!
//! Host functions are synchronous (the interpreter calls them on its own thread), but the
//! bus hands out async receivers. This is the smallest executor that bridges the two: poll
//! the future, park the thread until its waker fires or the deadline passes. It needs no
//! runtime, so it cannot panic the way a nested `block_on` would.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `future` to completion on this thread, or gives up after `timeout` (`None`).
pub fn block_on_timeout<F: Future>(future: F, timeout: Duration) -> Option<F::Output> {
    let deadline = Instant::now() + timeout;
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return Some(output);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        std::thread::park_timeout(left);
    }
}

/// Runs `future` to completion on this thread, however long that takes: for a wait whose
/// deadline is someone else's (a child process ends when it is told to).
pub fn block_on<F: Future>(future: F) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::park();
    }
}

/// `future`'s output, or `None` if `stop` completes first (a capsule being stopped must not
/// stay blocked in a host call).
pub async fn unless_stopped<T>(future: impl Future<Output = T>, stop: impl Future<Output = ()>) -> Option<T> {
    let mut future = pin!(future);
    let mut stop = pin!(stop);
    std::future::poll_fn(|context| {
        if let Poll::Ready(value) = future.as_mut().poll(context) {
            return Poll::Ready(Some(value));
        }
        stop.as_mut().poll(context).map(|()| None)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completes_when_woken_and_gives_up_at_the_timeout() {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u8>(1);
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.blocking_send(7).expect("send");
        });
        // Some: the send woke it (the timeout is only a hang guard).
        assert_eq!(block_on_timeout(rx.recv(), Duration::from_secs(60)), Some(Some(7)));
        sender.join().expect("sender");
        let started = Instant::now();
        let (_tx, mut rx) = tokio::sync::mpsc::channel::<u8>(1);
        assert_eq!(block_on_timeout(rx.recv(), Duration::from_millis(50)), None);
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
