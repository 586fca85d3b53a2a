//! `request_approval`: a capsule asks a person before doing something consequential.
//!
//! The request goes through the kernel ([`crate::kernel::Kernel::request_approval`]): a
//! standing allowance answers at once, otherwise `ApprovalRequired` goes to the frontends and
//! the answer (or a timeout, which denies) comes back; both the question and the decision
//! are audited. Waiting for the person is not charged to the capsule's CPU deadline.

use std::time::{Duration, Instant};

use serde::Deserialize;
use wasmi::Caller;

use super::sandbox::{HostState, read_guest};
use super::wait::{block_on_timeout, unless_stopped};
use crate::kernel::approval::{ApprovalOutcome, ApprovalRequest};

/// Longest a capsule waits for a person (the kernel's own timeout, 60 s, answers first).
const MAX_WAIT: Duration = Duration::from_secs(120);
const MAX_REQUEST: usize = 16 * 1024;

/// `request_approval` answers: approved.
pub const APPROVED: i32 = 1;
/// Denied (by a person, a timeout, or an unknown answer).
pub const DENIED: i32 = 0;
/// The request is not `{action, resource}` JSON.
pub const INVALID: i32 = -2;

#[derive(Deserialize)]
struct Ask {
    action: String,
    resource: String,
}

/// Reads `{action, resource}` from the guest and blocks until the kernel decides.
pub(super) fn request(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Result<i32, wasmi::Error> {
    let bytes = read_guest(caller, ptr, len, MAX_REQUEST)?;
    let Ok(ask) = serde_json::from_slice::<Ask>(&bytes) else { return Ok(INVALID) };
    if ask.action.is_empty() || ask.action.len() > 256 || ask.resource.len() > 4096 {
        return Ok(INVALID);
    }
    let Some(access) = caller.data().kernel.clone() else { return Ok(DENIED) };
    let request = ApprovalRequest {
        principal: access.principal.clone(),
        capsule: caller.data().capsule().to_owned(),
        action: ask.action,
        resource: ask.resource,
    };
    let started = Instant::now();
    let stopped = caller.data().lifecycle.stopped();
    let outcome = block_on_timeout(unless_stopped(access.kernel.request_approval(request), stopped), MAX_WAIT);
    caller.data_mut().waited += started.elapsed();
    Ok(match outcome {
        Some(Some(ApprovalOutcome::Allowed { .. })) => APPROVED,
        _ => DENIED,
    })
}
