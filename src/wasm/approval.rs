//! `request_approval`: a capsule asks a person before doing something consequential.
//!
//! The request goes through the kernel ([`crate::kernel::Kernel::request_approval`]): a
//! standing allowance answers at once, otherwise `ApprovalRequired` goes to the frontends and
//! the answer (or a timeout, which denies) comes back; both the question and the decision
//! are audited. Waiting for the person is not charged to the capsule's CPU deadline.

use std::time::Duration;

use serde::Deserialize;

use super::context::CapsuleContext;
use super::host_call::HostReply;
use super::wait::{block_on_timeout, unless_stopped};
use crate::kernel::approval::{ApprovalOutcome, ApprovalRequest};

/// Longest a capsule waits for a person (the kernel's own timeout, 60 s, answers first).
const MAX_WAIT: Duration = Duration::from_secs(120);
/// Largest request a guest may pass.
pub(super) const MAX_REQUEST: usize = 16 * 1024;

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

/// Decides `{action, resource}` JSON: blocks until the kernel (a standing allowance, a
/// person, or the timeout) answers.
pub(super) fn request(context: &CapsuleContext, bytes: &[u8]) -> HostReply {
    let Ok(ask) = serde_json::from_slice::<Ask>(bytes) else { return HostReply::value(INVALID) };
    if ask.action.is_empty() || ask.action.len() > 256 || ask.resource.len() > 4096 {
        return HostReply::value(INVALID);
    }
    let Some(access) = &context.kernel else { return HostReply::value(DENIED) };
    let request = ApprovalRequest {
        principal: access.principal.clone(),
        capsule: context.capsule.clone(),
        action: ask.action,
        resource: ask.resource,
    };
    let stopped = context.lifecycle.stopped();
    let outcome = block_on_timeout(unless_stopped(access.kernel.request_approval(request), stopped), MAX_WAIT);
    HostReply::value(match outcome {
        Some(Some(ApprovalOutcome::Allowed { .. })) => APPROVED,
        _ => DENIED,
    })
}
