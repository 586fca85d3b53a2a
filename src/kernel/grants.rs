//! Install-time consent: which capability sets the operator has approved, per capsule.
//!
//! A capsule that requests capabilities is *pending* until the operator approves the exact
//! set, identified by its fingerprint. `ApproveCapability { request_id, signature }` carries
//! that fingerprint as its `signature`, so an approval can only ever cover the set the
//! operator was shown: if the manifest changed in between, the fingerprints differ and the
//! approval is refused. The fingerprint also covers the BLAKE3 of the capsule's module:
//! what the operator approves is this code with these capabilities, so new code under an old
//! manifest is asked about again. Grants live in the KV store (`system:grants`), flushed on
//! change.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use chrono::Utc;
use uuid::Uuid;

use super::capability::CapabilitySet;
use crate::store::{KvError, KvStore, Namespace};

const GRANTS: &str = "grants";

/// Grants, pending requests and their status are kept, and listed to the operator, as the
/// wire defines them: one record for the store and for `ListCapabilities`.
pub use crate::types::management::{Grant, GrantStatus, PendingGrant};

/// Why an approval was refused.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// No pending request has this id.
    #[error("no pending capability request {0}")]
    UnknownRequest(String),
    /// The signature is not the fingerprint of the pending set.
    #[error("signature does not match the requested capability set of {capsule} (expected its fingerprint)")]
    SignatureMismatch { capsule: String },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] KvError),
}

/// What an approval covers: the capability set and the module it is granted to.
pub fn fingerprint(requested: &CapabilitySet, code: Option<&str>) -> String {
    match code {
        None => requested.fingerprint(),
        Some(code) => {
            let mut hasher = blake3::Hasher::new();
            hasher.update(b"astrid-grant-v1\n");
            hasher.update(requested.fingerprint().as_bytes());
            hasher.update(b"\n");
            hasher.update(code.as_bytes());
            hasher.finalize().to_hex().to_string()
        }
    }
}

/// Grants and pending requests.
#[derive(Debug)]
pub struct Grants {
    store: KvStore,
    pending: Mutex<BTreeMap<String, PendingGrant>>,
}

impl Grants {
    /// Uses `store` for persisted grants.
    pub fn new(store: KvStore) -> Self {
        Self { store, pending: Mutex::new(BTreeMap::new()) }
    }

    fn pending(&self) -> MutexGuard<'_, BTreeMap<String, PendingGrant>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides the status of `capsule` (running the module with BLAKE3 `code`, if any)
    /// requesting `requested`, registering a pending request (idempotently) when consent is
    /// missing.
    pub fn status(&self, capsule: &str, requested: &CapabilitySet, code: Option<&str>) -> Result<GrantStatus, KvError> {
        if requested.is_empty() {
            return Ok(GrantStatus::NothingRequested);
        }
        let fingerprint = fingerprint(requested, code);
        if self.grant(capsule)?.is_some_and(|g| g.fingerprint == fingerprint) {
            return Ok(GrantStatus::Approved);
        }
        let mut pending = self.pending();
        if let Some(existing) = pending.values().find(|p| p.capsule == capsule && p.fingerprint == fingerprint) {
            return Ok(GrantStatus::Pending { request_id: existing.request_id.clone() });
        }
        pending.retain(|_, p| p.capsule != capsule);
        let request_id = Uuid::new_v4().to_string();
        pending.insert(
            request_id.clone(),
            PendingGrant {
                request_id: request_id.clone(),
                capsule: capsule.to_owned(),
                fingerprint,
                capabilities: requested.entries().map(str::to_owned).collect(),
            },
        );
        Ok(GrantStatus::Pending { request_id })
    }

    /// The stored grant of `capsule`, if any.
    pub fn grant(&self, capsule: &str) -> Result<Option<Grant>, KvError> {
        let Some(bytes) = self.store.get(&Namespace::system(GRANTS), capsule)? else { return Ok(None) };
        Ok(serde_json::from_slice(&bytes).ok())
    }

    /// The operator approves a pending request; `signature` must be its fingerprint.
    pub fn approve(&self, request_id: &str, signature: &str) -> Result<Grant, GrantError> {
        let mut pending = self.pending();
        let request = pending.get(request_id).ok_or_else(|| GrantError::UnknownRequest(request_id.to_owned()))?;
        if !signature.trim().eq_ignore_ascii_case(&request.fingerprint) {
            return Err(GrantError::SignatureMismatch { capsule: request.capsule.clone() });
        }
        let grant = Grant {
            capsule: request.capsule.clone(),
            fingerprint: request.fingerprint.clone(),
            capabilities: request.capabilities.clone(),
            approved_at: Utc::now(),
        };
        let bytes = serde_json::to_vec(&grant).unwrap_or_default();
        self.store.set(&Namespace::system(GRANTS), &grant.capsule, &bytes)?;
        self.store.flush()?;
        pending.remove(request_id);
        Ok(grant)
    }

    /// Withdraws the grant of `capsule`; returns whether there was one.
    pub fn revoke(&self, capsule: &str) -> Result<bool, KvError> {
        let removed = self.store.delete(&Namespace::system(GRANTS), capsule)?;
        self.store.flush()?;
        Ok(removed)
    }

    /// Every stored grant.
    pub fn list(&self) -> Result<Vec<Grant>, KvError> {
        let namespace = Namespace::system(GRANTS);
        let mut grants = Vec::new();
        for key in self.store.list_keys(&namespace, "")? {
            if let Some(grant) = self.store.get(&namespace, &key)?.and_then(|b| serde_json::from_slice(&b).ok()) {
                grants.push(grant);
            }
        }
        Ok(grants)
    }

    /// Every pending request.
    pub fn pending_list(&self) -> Vec<PendingGrant> {
        self.pending().values().cloned().collect()
    }
}
