//! `astrid audit verify|tail|acknowledge`. `verify` and `tail` read the audit files
//! directly, no daemon needed, so a stopped (or compromised) daemon cannot stand between the
//! operator and the evidence; `verify` also asks a running daemon whether it can write the
//! trail (a failing trail is not visible in the files). `acknowledge` goes through the
//! daemon, the trail's only writer, and is itself audited.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use argh::FromArgs;

use super::request;
use crate::audit::{self, Break, ChainStatus, RuntimeKey, VerifyReport};
use crate::daemon::singleton::{self, Liveness};
use crate::home::{AstridHome, DEFAULT_PRINCIPAL};
use crate::ipc::Client;
use crate::types::management::AuditAcknowledged;
use crate::types::{KernelRequest, KernelResponse, ReplyError};

/// verify, show or acknowledge the audit log
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
    Acknowledge(AcknowledgeArgs),
}

/// check every principal's chain; exit 0 intact, 1 tampered (a break not acknowledged), 2 error
/// (including a daemon that cannot write the trail)
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

/// record that you have seen the breaks `astrid audit verify` reports (each acknowledgement is
/// an audit entry); they no longer fail `verify` and `status`
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "acknowledge")]
struct AcknowledgeArgs {
    /// why, recorded with the acknowledgement (for example what you found)
    #[argh(option)]
    note: Option<String>,
}

/// Runs an `audit` subcommand; the exit code carries the verdict.
pub fn run(home: &AstridHome, args: &AuditArgs) -> ExitCode {
    let result = match &args.command {
        AuditCommand::Verify(_) => verify(home),
        AuditCommand::Tail(tail) => show_tail(home, tail).map(|()| ExitCode::SUCCESS),
        AuditCommand::Acknowledge(acknowledge) => acknowledge_breaks(home, acknowledge),
    };
    result.unwrap_or_else(|e| {
        eprintln!("astrid audit: {e:#}");
        ExitCode::from(2)
    })
}

fn verify(home: &AstridHome) -> anyhow::Result<ExitCode> {
    let mut principals = audit::principals_with_logs(home)?;
    let key_path = audit::key_path(home);
    // The key is made when the first entry is written: with it, the default log must exist.
    let key_exists = key_path.exists();
    if key_exists && !principals.iter().any(|p| p == DEFAULT_PRINCIPAL) {
        principals.insert(0, DEFAULT_PRINCIPAL.to_owned());
    }
    if principals.is_empty() {
        println!("no audit log yet");
        return Ok(ExitCode::SUCCESS);
    }
    let key = RuntimeKey::load(&key_path)?.verifying_key();
    let (mut tampered, mut failed) = (false, false);
    for principal in principals {
        let dir = audit::audit_dir(home, &principal);
        match audit::verify_log(&dir, &key, key_exists && principal == DEFAULT_PRINCIPAL) {
            Ok(report) => {
                tampered |= report.status != ChainStatus::Intact;
                print!("{}", render(&principal, &report));
            }
            Err(e) => {
                failed = true;
                eprintln!("astrid audit: {principal}: {e}");
            }
        }
    }
    if let Some(failure) = daemon_failure(home) {
        failed = true;
        eprintln!("astrid audit: the running daemon reports: {failure}");
    }
    Ok(if failed {
        ExitCode::from(2)
    } else if tampered {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn render(principal: &str, report: &VerifyReport) -> String {
    let acknowledged = report.breaks.iter().filter(|b| b.acknowledged()).count();
    let mut out = match (&report.status, acknowledged) {
        (ChainStatus::Intact, 0) => format!("{principal}: intact ({} entries)\n", report.entries),
        (ChainStatus::Intact, n) => {
            format!("{principal}: intact ({} entries; {n} acknowledged break{})\n", report.entries, plural(n))
        }
        (ChainStatus::Tampered { .. }, _) => String::new(),
    };
    for found in report.unacknowledged() {
        out.push_str(&format!(
            "{principal}: TAMPERED at entry {}: {} ({})\n",
            found.first_bad_seq,
            found.reason,
            note(found)
        ));
    }
    if report.more_breaks > 0 {
        out.push_str(&format!("{principal}: TAMPERED: {} more breaks\n", report.more_breaks));
    }
    if report.status != ChainStatus::Intact {
        out.push_str("  (once you have looked, `astrid audit acknowledge --note WHY` records that you did)\n");
    }
    out
}

fn note(found: &Break) -> String {
    match found.recorded_at {
        Some(at) => format!("recorded at entry {at}, not acknowledged"),
        None => "not recorded yet: the next daemon start records it".to_owned(),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// What a running daemon says about its trail when it cannot write it (`None`: no daemon,
/// no answer, or a trail that is written).
fn daemon_failure(home: &AstridHome) -> Option<String> {
    if !matches!(singleton::probe(home), Ok(Liveness::Running { .. })) {
        return None;
    }
    let mut client = Client::connect(home).ok()?;
    match client.request("status", &KernelRequest::GetStatus, Duration::from_secs(5)).ok()? {
        KernelResponse::Status(status) => status.audit.filter(|audit| audit.starts_with("FAILED")),
        _ => None,
    }
}

/// How long `acknowledge` waits for a daemon that is still verifying the trail.
const VERIFYING_WAIT: Duration = Duration::from_secs(120);

fn acknowledge_breaks(home: &AstridHome, args: &AcknowledgeArgs) -> anyhow::Result<ExitCode> {
    let request = KernelRequest::AuditAcknowledge { note: args.note.clone() };
    let started = Instant::now();
    let reply = loop {
        match request::send(home, "audit_acknowledge", &request)? {
            KernelResponse::Error(message)
                if message.contains("still being verified") && started.elapsed() < VERIFYING_WAIT =>
            {
                std::thread::sleep(Duration::from_millis(200));
            }
            reply => break reply,
        }
    };
    let done = match reply.into_data::<AuditAcknowledged>() {
        Ok(done) => done,
        Err(ReplyError::Refused(message)) => {
            eprintln!("astrid audit: {message}");
            return Ok(ExitCode::FAILURE);
        }
        Err(other) => return Err(other.into()),
    };
    if done.acknowledged.is_empty() {
        println!("nothing to acknowledge");
    }
    for found in &done.acknowledged {
        println!(
            "{}: acknowledged the break at entry {} ({}); recorded as entry {}",
            found.principal,
            found.entry,
            found.reason,
            found.acknowledged_at.map_or_else(|| "?".to_owned(), |n| n.to_string())
        );
    }
    Ok(ExitCode::SUCCESS)
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
            audit::Actor::McpServer { name } => format!("mcp:{name}"),
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
