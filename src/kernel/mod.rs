//! The kernel: routing, registry and accounting, with no sockets, signals or terminal.
//!
//! The kernel owns the [`Bus`], the [`CapsuleRegistry`] and the [`ClientTracker`], and runs
//! the management router as a task. It is driven from outside: the IPC bridge publishes what
//! clients send, and the daemon decides when the process ends. The kernel only *asks* for a
//! shutdown ([`Kernel::request_shutdown`]); the daemon carries it out.

pub mod bus;
pub mod capsules;
pub mod clients;
pub mod rate_limit;
pub mod router;
pub mod topic;

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde_json::json;
use tokio::sync::watch;
use uuid::Uuid;

pub use bus::{Bus, BusMessage, Origin, Subscription};
pub use capsules::{CapsuleDirs, CapsuleRegistry};
pub use clients::{ClientLease, ClientTracker};

use crate::home::{AstridHome, DEFAULT_PRINCIPAL};
use crate::types::{DaemonStatus, IpcMessage, IpcPayload};

/// Topic on which the kernel announces that capsule loading finished (boot and reload).
pub const CAPSULES_LOADED_TOPIC: &str = "astrid.v1.capsules_loaded";

/// What the kernel needs to know to start.
#[derive(Debug, Clone)]
pub struct KernelConfig {
    /// Session id: the `source_id` of kernel replies.
    pub session: Uuid,
    /// The workspace root (canonical).
    pub workspace: PathBuf,
    /// The Astrid home.
    pub home: AstridHome,
    /// Whether the daemon exits when idle (reported by `GetStatus`).
    pub ephemeral: bool,
}

/// Why the daemon is shutting down. Logged as the real reason, unlike the reference which
/// logs "signal" whatever happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShutdownReason {
    /// A signal (`SIGTERM`, `SIGINT`, `SIGHUP`).
    Signal(&'static str),
    /// A `Shutdown` management request, with the reason the client gave.
    Request(Option<String>),
    /// Ephemeral mode: no client for the idle period.
    IdleTimeout,
}

impl fmt::Display for ShutdownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Signal(name) => write!(f, "signal {name}"),
            Self::Request(Some(reason)) => write!(f, "Shutdown request ({reason})"),
            Self::Request(None) => f.write_str("Shutdown request"),
            Self::IdleTimeout => f.write_str("idle timeout (ephemeral mode)"),
        }
    }
}

/// The running kernel.
#[derive(Debug)]
pub struct Kernel {
    config: KernelConfig,
    started: Instant,
    bus: Bus,
    capsules: Mutex<CapsuleRegistry>,
    clients: ClientTracker,
    shutdown: watch::Sender<Option<ShutdownReason>>,
}

impl Kernel {
    /// Creates the kernel with only the built-in capsules registered.
    pub fn new(config: KernelConfig) -> Arc<Self> {
        let (shutdown, _) = watch::channel(None);
        Arc::new(Self {
            config,
            started: Instant::now(),
            bus: Bus::new(),
            capsules: Mutex::new(CapsuleRegistry::with_builtins()),
            clients: ClientTracker::new(),
            shutdown,
        })
    }

    /// Starts the management router. Must be called from within a tokio runtime.
    pub fn start(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(router::run(Arc::clone(self)))
    }

    /// The session id (`source_id` of kernel-originated messages).
    pub fn session(&self) -> Uuid {
        self.config.session
    }

    /// The kernel's configuration.
    pub fn config(&self) -> &KernelConfig {
        &self.config
    }

    /// The event bus.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Connected clients.
    pub fn clients(&self) -> &ClientTracker {
        &self.clients
    }

    /// The capsule registry, locked for reading or replacing.
    pub fn capsules(&self) -> MutexGuard<'_, CapsuleRegistry> {
        self.capsules.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The two capsule directories, principal first.
    pub fn capsule_dirs(&self) -> CapsuleDirs {
        CapsuleDirs {
            principal: self.config.home.principal_capsules_dir(DEFAULT_PRINCIPAL),
            workspace: self.config.workspace.join(".astrid").join("capsules"),
        }
    }

    /// Scans both capsule directories, replaces the registry and announces
    /// `astrid.v1.capsules_loaded`. Returns the number of capsules registered.
    pub fn reload_capsules(&self) -> usize {
        let registry = CapsuleRegistry::discover(&self.capsule_dirs());
        let count = registry.capsules().len();
        *self.capsules() = registry;
        let payload = IpcPayload::RawJson(json!({"status": "ready"}));
        self.bus.publish(BusMessage {
            message: IpcMessage::new(CAPSULES_LOADED_TOPIC, payload, self.session()),
            origin: Origin::Kernel,
            reply_to: None,
        });
        count
    }

    /// The answer to `GetStatus`.
    pub fn status(&self) -> DaemonStatus {
        DaemonStatus {
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            version: crate::VERSION.to_owned(),
            ephemeral: self.config.ephemeral,
            connected_clients: self.clients.total(),
            connections_by_principal: self.clients.by_principal(),
            loaded_capsules: self.capsules().ready_names(),
        }
    }

    /// Asks the daemon to shut down. The first reason wins; later requests are ignored.
    pub fn request_shutdown(&self, reason: ShutdownReason) {
        self.shutdown.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(reason);
            true
        });
    }

    /// A receiver that turns `Some(reason)` when a shutdown was requested.
    pub fn shutdown_requested(&self) -> watch::Receiver<Option<ShutdownReason>> {
        self.shutdown.subscribe()
    }
}
