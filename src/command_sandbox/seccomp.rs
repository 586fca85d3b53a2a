//! The system calls a command may not make, whatever its capabilities (it has none; this is
//! the second wall, and it covers what capabilities do not: new user namespaces, in which a
//! process would be root again, and kernel surfaces with a long record of bugs).
//!
//! Denied with `EPERM`: user namespaces (`unshare`/`clone` with `CLONE_NEWUSER`), the mount
//! family, `pivot_root`, `chroot`, `ptrace` and `process_vm_*`, the keyring, `bpf`,
//! `perf_event_open`, `userfaultfd`, `io_uring`, module and kexec loading, `reboot`, swap,
//! `acct`, `open_by_handle_at`, `syslog`, and the terminal injection ioctls `TIOCSTI` and
//! `TIOCLINUX`. `clone3` answers `ENOSYS` (its flags are behind a pointer a filter cannot
//! read), so the C library falls back to `clone`, whose flags it can.

use std::collections::BTreeMap;

use nix::libc;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

const DENIED: &[libc::c_long] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_open_by_handle_at,
    libc::SYS_syslog,
];

/// The kernel's `TIOCSTI` (push bytes into a terminal's input) and `TIOCLINUX`.
const TIOCSTI: u64 = 0x5412;
const TIOCLINUX: u64 = 0x541C;

fn arch() -> Result<TargetArch, String> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| format!("no seccomp filter for this architecture: {e}"))
}

fn condition(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value).map_err(|e| e.to_string())
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, String> {
    SeccompRule::new(conditions).map_err(|e| e.to_string())
}

/// The two filters (EPERM for the denied calls, ENOSYS for `clone3`), compiled.
pub fn filters() -> Result<Vec<BpfProgram>, String> {
    let arch = arch()?;
    let new_user = libc::CLONE_NEWUSER as u64;
    let mut denied: BTreeMap<i64, Vec<SeccompRule>> = DENIED.iter().map(|&nr| (nr, Vec::new())).collect();
    for call in [libc::SYS_unshare, libc::SYS_clone] {
        denied.insert(call, vec![rule(vec![condition(0, SeccompCmpOp::MaskedEq(new_user), new_user)?])?]);
    }
    let ioctl_arg = |value| -> Result<SeccompRule, String> {
        rule(vec![
            SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value).map_err(|e| e.to_string())?,
        ])
    };
    denied.insert(libc::SYS_ioctl, vec![ioctl_arg(TIOCSTI)?, ioctl_arg(TIOCLINUX)?]);
    let eperm = SeccompFilter::new(denied, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), arch)
        .map_err(|e| e.to_string())?;
    let no_clone3 = SeccompFilter::new(
        [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(|e| e.to_string())?;
    let mut programs = Vec::new();
    for filter in [eperm, no_clone3] {
        programs.push(BpfProgram::try_from(filter).map_err(|e| format!("cannot compile the seccomp filter: {e}"))?);
    }
    Ok(programs)
}

/// Installs the filters on this thread (init is single-threaded here; its children inherit
/// them). Needs `no_new_privs` first.
pub fn apply() -> Result<(), String> {
    for program in filters()? {
        seccompiler::apply_filter(&program).map_err(|e| format!("cannot install the seccomp filter: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_compile_for_this_machine() {
        let programs = filters().expect("filters");
        assert_eq!(programs.len(), 2);
        assert!(programs.iter().all(|p| !p.is_empty()));
    }
}
