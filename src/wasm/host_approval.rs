//! `request_approval`: a capsule asks a person before doing something consequential.
//!
//! The request goes through the kernel ([`crate::kernel::Kernel::request_approval`]): a
//! standing allowance answers at once, otherwise the question goes to the frontend whose turn
//! the capsule is working for (the cause of the event it handles) and the answer (or a no:
//! see [`crate::kernel::ask`] for when and within which limits) comes back; both the
//! question and the decision are audited. This thread blocks on the kernel's async wait;
//! waiting for the person is not charged to the capsule's CPU deadline.
//!
//! `{"action", "resource"}`, plus, so the person sees what will happen, either `"write"`
//! (the full new content of the workspace path `resource`: the kernel shows the diff against
//! what the capsule would overwrite, and "session"/"always" then cover that path's directory)
//! or `"details"` (text shown as is, capped). The preview is computed here, on the kernel
//! side, from the workspace itself, not taken from the capsule's description of it.

use serde::Deserialize;

use super::context::CapsuleContext;
use super::host_call::HostReply;
use super::wait::{block_on_timeout, unless_stopped};
use crate::kernel::approval::{ApprovalOutcome, ApprovalRequest, Scope};
use crate::kernel::ask;
use crate::vfs::VfsPath;

/// Largest request a guest may pass (a write's whole new content travels in it).
pub(super) const MAX_REQUEST: usize = 10 * 1024 * 1024 + 64 * 1024;
/// Diff lines shown for a write.
const PREVIEW_LINES: usize = 120;

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
    #[serde(default)]
    write: Option<String>,
    #[serde(default)]
    details: Option<String>,
}

/// Decides `{action, resource}` JSON: blocks until the kernel (a standing allowance, a
/// person, or the timeout) answers.
pub(super) fn request(context: &CapsuleContext, bytes: &[u8]) -> HostReply {
    let Ok(ask) = serde_json::from_slice::<Ask>(bytes) else { return HostReply::value(INVALID) };
    if ask.action.is_empty() || ask.action.len() > ask::MAX_ACTION || ask.resource.len() > crate::vfs::MAX_PATH {
        return HostReply::value(INVALID);
    }
    let Some(access) = &context.kernel else { return HostReply::value(DENIED) };
    let mut request = ApprovalRequest::new(&access.principal, context.origin(), &ask.action, &ask.resource);
    request.cause = context.cause.clone();
    request.details = ask.details;
    if let Some(content) = ask.write {
        let Ok(named) = VfsPath::parse(&ask.resource) else { return HostReply::value(INVALID) };
        let Some(vfs) = context.workspace() else { return HostReply::value(DENIED) };
        // The person approves the file that would really change, not the name a link gives it.
        let Ok(path) = vfs.resolve(&named) else { return HostReply::value(DENIED) };
        request.resource = path.as_str().to_owned();
        request.scope = Scope::directory_of(path.as_str());
        request.details = Some(vfs.preview_write(&path, content.as_bytes(), PREVIEW_LINES));
    }
    let stopped = context.lifecycle.stopped();
    let longest = access.kernel.questions().longest_wait();
    let outcome = block_on_timeout(unless_stopped(access.kernel.request_approval(request), stopped), longest);
    HostReply::value(match outcome {
        Some(Some(ApprovalOutcome::Allowed { .. })) => APPROVED,
        _ => DENIED,
    })
}
