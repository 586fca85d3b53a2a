//! The `astrid` binary: picks a role from the name it was started under (busybox-style) and
//! hands over. Nothing else lives here.
//!
//! | argv[0] basename      | role                                   |
//! |-----------------------|----------------------------------------|
//! | `astrid-daemon`       | the kernel ([`astrid::daemon`])        |
//! | `astrid-capsule-host` | the capsule host ([`astrid::capsule_host`]) |
//! | `astrid-mcp-exec`     | the start of an MCP server's process ([`astrid::mcp::exec`]); the daemon's own |
//! | `astrid-sandbox`      | a command's sandbox helper and init ([`astrid::command_sandbox`]); the daemon's own |
//! | anything else         | the CLI ([`astrid::cli`])              |

use std::path::Path;
use std::process::ExitCode;

use astrid::capsule_host::{self, CapsuleHostArgs};
use astrid::cli;
use astrid::command_sandbox;
use astrid::daemon::{self, DaemonArgs};
use astrid::mcp;

fn main() -> ExitCode {
    let mut argv = std::env::args_os();
    let argv0 = argv.next().unwrap_or_default();
    let args: Vec<String> = match argv.map(|a| a.into_string()).collect() {
        Ok(args) => args,
        Err(bad) => {
            eprintln!("astrid: arguments must be UTF-8, got {bad:?}");
            return ExitCode::from(2);
        }
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match role(Path::new(&argv0)) {
        Role::Daemon => match cli::parse_args::<DaemonArgs>("astrid-daemon", &args) {
            Ok(daemon_args) => daemon::main(&daemon_args),
            Err(code) => code,
        },
        Role::CapsuleSupervisor => match cli::parse_args::<CapsuleHostArgs>("astrid-capsule-host", &args) {
            Ok(host_args) => capsule_host::main(&host_args),
            Err(code) => code,
        },
        Role::McpExec => mcp::exec::main(&args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>()),
        Role::Sandbox => command_sandbox::main(&args),
        Role::Cli => cli::main(&args),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Role {
    Daemon,
    CapsuleSupervisor,
    McpExec,
    Sandbox,
    Cli,
}

fn role(argv0: &Path) -> Role {
    match argv0.file_name().and_then(|name| name.to_str()) {
        Some("astrid-daemon") => Role::Daemon,
        Some("astrid-capsule-host") => Role::CapsuleSupervisor,
        Some(mcp::exec::ROLE) => Role::McpExec,
        Some(command_sandbox::ROLE) => Role::Sandbox,
        _ => Role::Cli,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_comes_from_the_basename() {
        assert_eq!(role(Path::new("/usr/local/bin/astrid-daemon")), Role::Daemon);
        assert_eq!(role(Path::new("astrid-capsule-host")), Role::CapsuleSupervisor);
        assert_eq!(role(Path::new("/proc/self/exe/astrid-sandbox")), Role::Sandbox);
        assert_eq!(role(Path::new("/opt/astrid")), Role::Cli);
        assert_eq!(role(Path::new("")), Role::Cli);
        assert_eq!(role(Path::new("/")), Role::Cli);
        assert_eq!(role(Path::new("astrid-daemon.old")), Role::Cli);
    }
}
