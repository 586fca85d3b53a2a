//! What the kernel announces on the bus about its capsules, for whoever listens (agents,
//! frontends, capsules built on these types).

use serde::{Deserialize, Serialize};

/// Capsule loading finished (boot, reload, a change of the MCP tools): an agent asks for the
/// tools again. Carried as a `raw_json` payload on
/// [`CAPSULES_LOADED_TOPIC`](super::topics::CAPSULES_LOADED_TOPIC), as the reference does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapsulesLoaded {
    /// Always `ready`.
    pub status: String,
}

impl CapsulesLoaded {
    /// The one announcement there is.
    pub fn ready() -> Self {
        Self { status: "ready".to_owned() }
    }
}

/// A capsule crashed and is being restarted. Carried as a `custom` payload on
/// [`HEALTH_FAILED_TOPIC`](super::topics::HEALTH_FAILED_TOPIC), as the reference does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapsuleHealthFailed {
    /// The capsule's installed name (the reference's field name).
    pub capsule_id: String,
    /// Why it stopped.
    pub reason: String,
    /// Restarts so far in this streak.
    pub attempt: u32,
}
