//! The boot-time verdict: can this machine run commands in the sandbox? First the kernel
//! settings that are known to forbid it (each with the change that allows it), then a real
//! trial command through every stage, in a throwaway workspace: what works once works for
//! every command, and what fails is refused with the reason, never run unconfined.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Availability, CommandEvent, CommandRequest, Outcome, Sandbox};
use crate::home::AstridHome;
use crate::vfs::{ChangeKind, Vfs, VfsPath};

/// What the operator can do whatever the reason.
pub const HOW_TO_ENABLE: &str = "Astrid runs commands in user, mount and pid namespaces with overlayfs and seccomp \
     (Linux 5.11 or later; 6.14 or later when the daemon runs as root). Fix the cause above, or set \
     ASTRID_SANDBOX=off to run commands unconfined in the real workspace, at your own risk";

/// The first Linux whose `pid_max` is per pid namespace.
const NAMESPACE_PID_MAX: (u32, u32) = (6, 14);

fn unavailable(reason: impl Into<String>, how: impl Into<String>) -> Availability {
    Availability::Unavailable { reason: reason.into(), how_to_enable: how.into() }
}

fn sysctl(sysctls: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(sysctls.join(name)).ok().map(|text| text.trim().to_owned())
}

/// `6.18.4-foo` → (6, 18).
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The verdict, and whether processes can be bounded per pid namespace.
pub fn probe(sandbox: &Sandbox, home: &AstridHome) -> (Availability, bool) {
    let sysctls = &sandbox.host.sysctls;
    let root = nix::unistd::geteuid().is_root();
    if sysctl(sysctls, "user/max_user_namespaces").as_deref() == Some("0") {
        return (
            unavailable(
                "user namespaces are disabled (user.max_user_namespaces = 0)",
                "Allow them: `sysctl -w user.max_user_namespaces=15000` (and in /etc/sysctl.d to keep it), \
                 or set ASTRID_SANDBOX=off to run commands unconfined, at your own risk",
            ),
            false,
        );
    }
    if !root && sysctl(sysctls, "kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        return (
            unavailable(
                "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone = 0)",
                "Allow them: `sysctl -w kernel.unprivileged_userns_clone=1` (and in /etc/sysctl.d to keep it), \
                 or set ASTRID_SANDBOX=off to run commands unconfined, at your own risk",
            ),
            false,
        );
    }
    if !root && sysctl(sysctls, "kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1") {
        return (
            unavailable(
                "AppArmor forbids unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns = 1)",
                "Allow them for astrid with an AppArmor profile granting `userns`, or \
                 `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`, or set ASTRID_SANDBOX=off to run \
                 commands unconfined, at your own risk",
            ),
            false,
        );
    }
    let release = sysctl(sysctls, "kernel/osrelease").unwrap_or_default();
    let namespace_pid_max = kernel_version(&release).is_some_and(|version| version >= NAMESPACE_PID_MAX);
    if root && !namespace_pid_max {
        // Root is exempt from RLIMIT_NPROC, and before 6.14 pid_max is global: writing it
        // from the sandbox would even change the host's.
        return (
            unavailable(
                format!(
                    "the daemon runs as root on Linux {release}, which cannot bound a command's processes \
                     (pid_max per pid namespace came in 6.14, and root ignores RLIMIT_NPROC)"
                ),
                "Run the daemon as an ordinary user (RLIMIT_NPROC then bounds processes), or use Linux 6.14 or \
                 later, or set ASTRID_SANDBOX=off to run commands unconfined, at your own risk",
            ),
            false,
        );
    }
    let mut trial = Sandbox {
        config: sandbox.config.clone(),
        availability: Availability::Ready,
        host: sandbox.host.clone(),
        hidden: sandbox.hidden.clone(),
        namespace_pid_max,
    };
    // The trial workspace lies in the Astrid home, which real commands never see.
    trial.config.read_only_paths.clear();
    trial.hidden.clear();
    match trial_run(&trial, home) {
        Ok(()) => (Availability::Ready, namespace_pid_max),
        Err(reason) => (unavailable(format!("a trial command failed: {reason}"), HOW_TO_ENABLE), namespace_pid_max),
    }
}

/// Runs `test -f pending && : > made` where `pending` is a pending VFS write: it must see
/// the overlay, write into it, and end with status 0.
fn trial_run(sandbox: &Sandbox, home: &AstridHome) -> Result<(), String> {
    let base = home.root().join("var").join("sandbox-probe");
    let _ = std::fs::remove_dir_all(&base);
    let result = (|| {
        let workspace = base.join("workspace");
        crate::home::private_dir_all(&workspace).map_err(|e| e.to_string())?;
        let vfs = Arc::new(Vfs::open(&workspace, &base.join("overlay")).map_err(|e| e.to_string())?);
        let path = |p: &str| VfsPath::parse(p).map_err(|e| e.to_string());
        vfs.write(&path("pending")?, b"written by the agent").map_err(|e| e.to_string())?;
        let request = CommandRequest {
            command_line: "test -f pending && : > made".to_owned(),
            cwd: path("")?,
            timeout: Duration::from_secs(30),
            network: false,
        };
        let mut command = sandbox.start(&vfs, &request).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut output = Vec::new();
        let finished = loop {
            match command.next(Duration::from_millis(500)) {
                CommandEvent::Finished(finished) => break finished,
                CommandEvent::Output(bytes) => output.extend(bytes),
                CommandEvent::Pending if Instant::now() > deadline => return Err("it did not end".to_owned()),
                CommandEvent::Pending => {}
            }
        };
        let said = String::from_utf8_lossy(&output);
        if finished.outcome != Outcome::Exited(0) {
            return Err(format!("it ended {:?}: {}", finished.outcome, said.trim()));
        }
        if !finished.changes.iter().any(|c| c.path == "made" && c.kind == ChangeKind::Added) {
            return Err(format!("its write did not reach the overlay ({:?})", finished.problem));
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&base);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_are_read() {
        assert_eq!(kernel_version("6.18.44-fc-v1045"), Some((6, 18)));
        assert_eq!(kernel_version("5.10.0-28-amd64"), Some((5, 10)));
        assert_eq!(kernel_version("6.14"), Some((6, 14)));
        assert_eq!(kernel_version("garbage"), None);
        assert!(Some((6, 13)) < Some(NAMESPACE_PID_MAX));
    }
}
