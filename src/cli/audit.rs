//! `astrid audit verify|tail`: reads the audit files directly, no daemon needed, so a
//! stopped (or compromised) daemon cannot stand between the operator and the evidence.

use std::process::ExitCode;

use argh::FromArgs;

use crate::audit::{self, ChainStatus, RuntimeKey};
use crate::home::{AstridHome, DEFAULT_PRINCIPAL};

/// verify or show the audit log
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "audit")]
pub struct AuditArgs {
    #[argh(subcommand)]
    command: AuditCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum AuditCommand {
    Verify(VerifyArgs),
    Tail(TailArgs),
}

/// check every principal's chain; exit 0 intact, 1 tampered, 2 error
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "verify")]
struct VerifyArgs {}

/// show the most recent entries
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "tail")]
struct TailArgs {
    /// how many entries (default 20)
    #[argh(option, short = 'n', default = "20")]
    n: usize,
    /// one JSON object per line
    #[argh(switch)]
    json: bool,
    /// whose log (default: default)
    #[argh(option, default = "DEFAULT_PRINCIPAL.to_owned()")]
    principal: String,
}

/// Runs an `audit` subcommand; the exit code carries the verdict.
pub fn run(home: &AstridHome, args: &AuditArgs) -> ExitCode {
    let result = match &args.command {
        AuditCommand::Verify(_) => verify(home),
        AuditCommand::Tail(tail) => show_tail(home, tail).map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|e| {
        eprintln!("astrid audit: {e:#}");
        ExitCode::from(2)
    })
}

fn verify(home: &AstridHome) -> anyhow::Result<ExitCode> {
    let principals = audit::principals_with_logs(home)?;
    if principals.is_empty() {
        println!("no audit log yet");
        return Ok(ExitCode::SUCCESS);
    }
    let key = RuntimeKey::load(&home.root().join("keys").join("runtime.key"))?.verifying_key();
    let mut tampered = false;
    for principal in principals {
        let report = audit::verify_log(&audit::audit_dir(home, &principal), &key)?;
        match report.status {
            ChainStatus::Intact => println!("{principal}: intact ({} entries)", report.entries),
            ChainStatus::Tampered { first_bad_seq, reason } => {
                tampered = true;
                println!("{principal}: TAMPERED at entry {first_bad_seq}: {reason}");
            }
        }
    }
    Ok(if tampered { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn show_tail(home: &AstridHome, args: &TailArgs) -> anyhow::Result<()> {
    for entry in audit::tail(&audit::audit_dir(home, &args.principal), args.n)? {
        if args.json {
            println!("{}", serde_json::to_string(&entry)?);
            continue;
        }
        let actor = match &entry.actor {
            audit::Actor::Kernel => "kernel".to_owned(),
            audit::Actor::Operator => "operator".to_owned(),
            audit::Actor::Client { id } => id.clone(),
            audit::Actor::Capsule { name } => format!("capsule:{name}"),
        };
        println!(
            "{:>6} {} {actor} {} {} {:?} ({})",
            entry.seq,
            entry.timestamp.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            entry.action,
            entry.resource,
            entry.decision,
            entry.rule
        );
    }
    Ok(())
}
