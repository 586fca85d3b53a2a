//! Serving and shutdown: what a booted daemon waits for, and how it stops.
//!
//! Shutdown runs in the reverse order of boot: a running audit verification is cancelled,
//! the bridge stops accepting and flushes each connection's queued replies (the `Shutdown`
//! acknowledgement among them), capsules stop, MCP servers stop, the routine counts and a
//! `daemon.stop` entry are written and the trail flushed, then the socket, token and ready
//! files are removed. The lock is handed back to [`super::main`], which releases it only
//! after the runtime's threads are gone.

use std::sync::Arc;

use super::boot::Running;
use super::idle;
use super::signals::Signals;
use super::singleton::{self, SingletonLock};
use crate::audit::{Actor, Decision};
use crate::home::DEFAULT_PRINCIPAL;
use crate::kernel::ShutdownReason;

impl Running {
    /// Serves until a signal, a `Shutdown` request or (ephemeral) the idle timeout.
    pub(super) async fn until_shutdown(&self, signals: &mut Signals, idle: Option<idle::IdlePolicy>) -> ShutdownReason {
        let idle = async {
            match idle {
                Some(policy) => idle::wait_until_idle(self.kernel.clients().watch(), policy, self.ready_at).await,
                None => std::future::pending().await,
            }
        };
        let mut requested = self.kernel.shutdown_requested();
        tokio::select! {
            name = signals.recv() => ShutdownReason::Signal(name),
            reason = requested.wait_for(Option::is_some) => match reason {
                Ok(reason) => reason.clone().unwrap_or(ShutdownReason::Request(None)),
                Err(_) => ShutdownReason::Request(None),
            },
            () = idle => ShutdownReason::IdleTimeout,
        }
    }

    /// Stops everything boot started, in reverse, and returns the lock still held.
    pub(super) async fn shut_down(self, reason: ShutdownReason) -> SingletonLock {
        let Running {
            home,
            lock,
            kernel,
            router,
            mcp,
            mcp_tasks,
            supervisor,
            capsule_sync,
            bridge,
            stop_bridge,
            watchdog,
            ready_at: _,
        } = self;
        kernel.cancel_audit_verification();
        stop_bridge.send_replace(true);
        if let Err(e) = bridge.await {
            log::error!("socket bridge ended abnormally: {e}");
        }
        capsule_sync.abort();
        let host = Arc::clone(&supervisor);
        if let Err(e) = tokio::task::spawn_blocking(move || host.stop_all()).await {
            log::error!("stopping capsules failed: {e}");
        }
        for task in mcp_tasks {
            task.abort();
        }
        mcp.stop_all().await;
        router.abort();
        watchdog.abort();
        kernel.summarize_routine();
        kernel.record(DEFAULT_PRINCIPAL, Actor::Kernel, "daemon.stop", &reason.to_string(), Decision::Info, "shutdown");
        kernel.flush();
        let removed = singleton::remove_run_files(&home, &lock);
        log::info!("removed {} run file(s); shutdown complete ({reason})", removed.len());
        lock
    }
}
