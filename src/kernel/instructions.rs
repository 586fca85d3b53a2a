//! The agent's instruction files (`AGENTS.md`): read by the kernel, handed over as text.
//!
//! Two files apply to a turn: the user's own in the Astrid home, then the project's at the
//! root of the turn's workspace (see [`crate::types::instructions`]). The kernel reads both
//! and answers two askers with the same [`InstructionFiles`]: the agent, on
//! [`INSTRUCTIONS_REQUEST_TOPIC`] (the reply addressed to the asking instance alone), and a
//! frontend, with the `GetInstructions` management request.
//!
//! Why the kernel and not the agent: the orchestrator holds no file grant at all, and a grant
//! of this one topic gives it exactly these two files. A management topic would have given it
//! every read-only request (another capsule's KV, the workspace diff); an `fs_read` grant on
//! the home does not exist (capsules only ever see the workspace). How each file is read:
//! - the project's **through the workspace VFS**, as the agent's own tools see it (pending
//!   changes included): its links are followed only inside the workspace, so an `AGENTS.md`
//!   that links to `~/.ssh/id_ed25519` is refused, not sent to a model provider;
//! - the user's from the home, which Astrid checked is the user's and private, opened
//!   without following a link (`O_NOFOLLOW`) or blocking on a FIFO (`O_NONBLOCK`), and used
//!   only if it is a regular file;
//! - each at most [`MAX_INSTRUCTIONS_BYTES`], the cut marked; a file that is not there is
//!   simply absent, one that cannot be used is named in `refused` with the reason.
//!
//! Every answer is audited (`instructions.read`, routine: the first per instance and set of
//! files is an entry, repeats are counted).

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use super::Kernel;
use super::bus::{BusMessage, Origin};
use super::routine::Kind;
use crate::home::DEFAULT_PRINCIPAL;
use crate::types::instructions::{INSTRUCTIONS_FILE, MAX_INSTRUCTIONS_BYTES};
use crate::types::topics::{INSTRUCTIONS_REQUEST_TOPIC, INSTRUCTIONS_RESPONSE_TOPIC};
use crate::types::{InstructionFile, InstructionFiles, InstructionScope, IpcMessage, IpcPayload};
use crate::vfs::{Vfs, VfsError, VfsPath};

/// The rule of the audit entry: the asker's grant let it publish the request.
const RULE: &str = "the capsule's grant covers ipc_publish on astrid.v1.instructions.request";

/// The instruction files for `workspace` (`None`: the daemon's), user's first.
pub fn load(kernel: &Kernel, workspace: Option<&Path>) -> InstructionFiles {
    let mut found = InstructionFiles::default();
    match read_user_file(kernel.config().home.root()) {
        Ok(Some(file)) => found.files.push(file),
        Ok(None) => {}
        Err(reason) => found.refused.push(reason),
    }
    match kernel.workspace(workspace) {
        Ok(vfs) => match read_project_file(&vfs) {
            Ok(Some(file)) => found.files.push(file),
            Ok(None) => {}
            Err(reason) => found.refused.push(reason),
        },
        Err(e) => found.refused.push(format!("the workspace's {INSTRUCTIONS_FILE}: cannot open the workspace: {e}")),
    }
    found
}

/// `$ASTRID_HOME/AGENTS.md`, if it is there.
fn read_user_file(home: &Path) -> Result<Option<InstructionFile>, String> {
    let path = home.join(INSTRUCTIONS_FILE);
    let refused = |why: String| format!("{}: {why}", path.display());
    let file =
        std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK).open(&path);
    let mut file = match file {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(refused("a symbolic link, which is not followed in the Astrid home".to_owned()));
        }
        Err(e) => return Err(refused(format!("cannot open it: {e}"))),
    };
    let meta = file.metadata().map_err(|e| refused(format!("cannot stat it: {e}")))?;
    if !meta.is_file() {
        return Err(refused("not a regular file".to_owned()));
    }
    let mut bytes = Vec::new();
    (&mut file)
        .take(MAX_INSTRUCTIONS_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| refused(format!("cannot read it: {e}")))?;
    Ok(Some(instruction_file(InstructionScope::User, &path, &bytes, meta.len())))
}

/// `AGENTS.md` at the root of `vfs`, as the agent sees it (overlay first), if it is there.
fn read_project_file(vfs: &Vfs) -> Result<Option<InstructionFile>, String> {
    let shown = vfs.root().join(INSTRUCTIONS_FILE);
    let refused = |e: VfsError| format!("{}: {e}", shown.display());
    let name = VfsPath::parse(INSTRUCTIONS_FILE).map_err(refused)?;
    let path = match vfs.resolve(&name) {
        Ok(path) => path,
        Err(VfsError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(refused(e)),
    };
    let meta = match vfs.stat(&path) {
        Ok(meta) => meta,
        Err(VfsError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(refused(e)),
    };
    // A FIFO or a device would block the read or never end: only a regular file is read.
    if !meta.is_file {
        return Err(format!("{}: not a regular file", shown.display()));
    }
    let bytes = vfs.read(&path).map_err(refused)?;
    Ok(Some(instruction_file(InstructionScope::Project, &vfs.root().join(path.as_str()), &bytes, meta.size)))
}

/// The file's text, cut to [`MAX_INSTRUCTIONS_BYTES`] at a character boundary with the cut
/// marked (invalid UTF-8 replaced).
fn instruction_file(scope: InstructionScope, path: &Path, bytes: &[u8], size: u64) -> InstructionFile {
    let truncated = bytes.len() > MAX_INSTRUCTIONS_BYTES;
    let text = if truncated {
        let mut end = MAX_INSTRUCTIONS_BYTES;
        // Back to the first byte of a character (continuation bytes are 0b10xxxxxx).
        while end > 0 && bytes.get(end).is_some_and(|b| b & 0xC0 == 0x80) {
            end -= 1;
        }
        let kept = bytes.get(..end).unwrap_or_default();
        format!(
            "{}\n\n[… cut here: {} is {size} bytes, and only the first {} KiB of it are used]",
            String::from_utf8_lossy(kept),
            path.display(),
            MAX_INSTRUCTIONS_BYTES / 1024
        )
    } else {
        String::from_utf8_lossy(bytes).into_owned()
    };
    InstructionFile { scope, path: path.display().to_string(), text, bytes: size, truncated }
}

/// What the audit entry names: the files handed over, or that there were none.
fn described(files: &InstructionFiles) -> String {
    if files.files.is_empty() {
        return "no AGENTS.md".to_owned();
    }
    files.files.iter().map(|f| format!("{} ({})", f.path, f.scope.as_str())).collect::<Vec<_>>().join(", ")
}

/// Answers agents' requests for their instructions, on a task of its own, until the bus goes
/// away. Subscribed before the task exists, as the router is (see `router::start`).
pub(super) fn start(kernel: &Arc<Kernel>) {
    let requests = kernel.bus().subscribe("instructions", &[INSTRUCTIONS_REQUEST_TOPIC]);
    tokio::spawn(serve(Arc::clone(kernel), requests));
}

async fn serve(kernel: Arc<Kernel>, mut requests: super::bus::Subscription) {
    while let Some(incoming) = requests.recv().await {
        // Only a capsule instance waits for the answer (clients cannot publish here; they ask
        // with `GetInstructions`).
        let Origin::Capsule { instance, .. } = &incoming.origin else { continue };
        let workspace = incoming.cause.as_ref().and_then(|cause| cause.workspace.clone());
        let files = load(&kernel, workspace.as_deref().map(|p| p.as_path()));
        kernel.record_routine(Kind {
            instance: Some(*instance),
            turn: None,
            principal: incoming.message.principal.clone().unwrap_or_else(|| DEFAULT_PRINCIPAL.to_owned()),
            actor: incoming.origin.actor(),
            action: "instructions.read",
            resource: described(&files),
            rule: RULE.into(),
        });
        let payload = match serde_json::to_value(&files) {
            Ok(data) => IpcPayload::Custom { data },
            Err(e) => {
                log::error!("cannot encode the instruction files: {e}");
                continue;
            }
        };
        let reply = IpcMessage::new(INSTRUCTIONS_RESPONSE_TOPIC, payload, kernel.session());
        kernel.bus().publish(
            BusMessage::from_kernel(reply).to(incoming.origin.reply_address()).caused_by(incoming.cause.clone()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_file_is_cut_at_a_character_boundary_and_says_so() {
        // 'é' is two bytes; put one across the limit.
        let mut text = "a".repeat(MAX_INSTRUCTIONS_BYTES - 1);
        text.push('é');
        text.push_str("tail");
        let file = instruction_file(InstructionScope::Project, Path::new("/w/AGENTS.md"), text.as_bytes(), 99);
        assert!(file.truncated);
        assert!(file.text.starts_with(&"a".repeat(MAX_INSTRUCTIONS_BYTES - 1)));
        assert!(!file.text.contains('\u{fffd}'), "no half character");
        assert!(
            file.text.ends_with("[… cut here: /w/AGENTS.md is 99 bytes, and only the first 32 KiB of it are used]")
        );
        let short = instruction_file(InstructionScope::User, Path::new("/h/AGENTS.md"), b"be brief", 8);
        assert_eq!((short.text.as_str(), short.truncated), ("be brief", false));
    }

    #[test]
    fn a_link_or_a_fifo_in_the_home_is_refused_and_a_missing_file_is_absent() {
        let home = tempfile::tempdir().expect("home");
        assert_eq!(read_user_file(home.path()), Ok(None));
        let secret = home.path().join("secret");
        std::fs::write(&secret, "key").expect("secret");
        std::os::unix::fs::symlink(&secret, home.path().join(INSTRUCTIONS_FILE)).expect("link");
        let refused = read_user_file(home.path()).expect_err("a link");
        assert!(refused.contains("symbolic link"), "{refused}");
        std::fs::remove_file(home.path().join(INSTRUCTIONS_FILE)).expect("rm");
        nix::unistd::mkfifo(&home.path().join(INSTRUCTIONS_FILE), nix::sys::stat::Mode::S_IRWXU).expect("fifo");
        assert_eq!(
            read_user_file(home.path()),
            Err(format!("{}: not a regular file", home.path().join(INSTRUCTIONS_FILE).display()))
        );
    }
}
