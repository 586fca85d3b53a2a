//! The capsule-host role: `astrid capsule-host`, or the `astrid-capsule-host` link.
//!
//! The daemon starts this process for a capsule whose manifest (or operator) asks for
//! `isolation = "process"`, with a one-time ticket in its environment. The process attaches
//! to the daemon over the socket, receives the module, its limits and its plan, and runs the
//! capsule on the wasmi interpreter; every host call goes back over the socket and is
//! decided by the kernel. The process holds no secret, no store handle and no file of the
//! home: a crash or an interpreter bug ends this process, never the daemon.
//!
//! A failure is reported to the daemon over the session, typed ([`CapsuleLink::report_failure`]),
//! before the process exits; the daemon copies stderr into its log but reads no meaning into
//! it. Exit codes: 0 when the capsule ended on its own or the daemon went away cleanly, 1 when
//! it failed (the last stderr line, `capsule failed: …`, says why, for a person), 2 on a
//! usage error.

use std::process::ExitCode;

use argh::FromArgs;

use crate::home::AstridHome;
use crate::ipc::capsule_link::{AttachError, CapsuleLink};
use crate::types::CapsuleAttach;
use crate::types::capsule_session::Attached;
use crate::wasm::process::TICKET_ENV;
use crate::wasm::runner::{self, RunError};

/// How the last line this process prints begins when its capsule failed: for a person
/// reading it (the daemon learns why from the session, see [`run_attached`]).
const FAILURE_PREFIX: &str = "capsule failed: ";

/// run one capsule in this process, attached to the daemon (started by the daemon for
/// capsules with isolation = "process"; authors use `astrid capsule run DIR`)
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "capsule-host")]
pub struct CapsuleHostArgs {
    /// the capsule this process serves (shown in process listings and logs)
    #[argh(option)]
    pub capsule: Option<String>,
}

/// Runs the role.
pub fn main(args: &CapsuleHostArgs) -> ExitCode {
    init_logging(false);
    let Ok(ticket) = std::env::var(TICKET_ENV) else {
        eprintln!(
            "astrid capsule-host: no {TICKET_ENV}; this role is started by the daemon for capsules with \
             isolation = \"process\". To run a capsule directory yourself, use `astrid capsule run DIR`."
        );
        return ExitCode::from(2);
    };
    if let Err(reason) = crate::lifeline::die_with_parent() {
        eprintln!("{FAILURE_PREFIX}{reason}");
        return ExitCode::FAILURE;
    }
    let home = match AstridHome::from_env() {
        Ok(home) => home,
        Err(e) => {
            eprintln!("{FAILURE_PREFIX}cannot resolve the Astrid home: {e}");
            return ExitCode::FAILURE;
        }
    };
    let attach = CapsuleAttach { ticket: Some(ticket), ..CapsuleAttach::default() };
    let name = args.capsule.as_deref().unwrap_or("?");
    match serve(&home, attach) {
        Ok(()) => {
            log::info!("capsule {name}: ended");
            ExitCode::SUCCESS
        }
        Err(reason) => {
            eprintln!("{FAILURE_PREFIX}{reason}");
            ExitCode::FAILURE
        }
    }
}

/// Why a capsule host's capsule ended.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The daemon did not attach this process (or could not be reached).
    #[error("cannot attach: {0}")]
    Attach(#[from] AttachError),
    /// The capsule failed.
    #[error(transparent)]
    Run(#[from] RunError),
}

/// Attaches as `attach` says and runs the capsule the daemon hands over until it ends.
pub fn serve(home: &AstridHome, attach: CapsuleAttach) -> Result<(), ServeError> {
    let (link, attached) = CapsuleLink::attach(home, attach)?;
    run_attached(link, attached)
}

/// Runs the capsule of an attached link until it ends. A failure is reported to the daemon
/// over the link (typed, and recorded before this returns) as well as returned. The module's
/// bytes are freed once it is compiled (taken by value for that).
pub fn run_attached(link: CapsuleLink, attached: Attached) -> Result<(), ServeError> {
    let Attached { capsule, module, limits, plan } = attached;
    log::info!("capsule {capsule}: attached; {} bytes of module", module.0.len());
    let reporter = link.clone();
    let outcome = runner::run_remote(Box::new(link), &capsule, module.0, limits, &plan);
    if let Err(error) = &outcome
        && let Err(e) = reporter.report_failure(error.failure())
    {
        log::warn!("capsule {capsule}: cannot tell the daemon why it failed: {e}");
    }
    Ok(outcome?)
}

/// Logs to stderr (which the daemon reads into its own log): `info`, or `ASTRID_LOG`. The
/// guest's own lines (target `astrid::capsule`) are shown too with `guest_lines`: the daemon
/// logs them already, but an author running a capsule wants them in the terminal.
pub fn init_logging(guest_lines: bool) {
    let guest = if guest_lines { log::LevelFilter::Debug } else { log::LevelFilter::Info };
    let _ = env_logger::Builder::new()
        .filter_level(log::LevelFilter::Info)
        .filter_module("astrid::capsule", guest)
        .parse_env(env_logger::Env::new().filter("ASTRID_LOG"))
        .format_timestamp(None)
        .format_target(false)
        .try_init();
}
