//! The CLI role: `astrid start|stop|restart|status|capsule …` and the `daemon` subcommand.
//!
//! The CLI never holds the singleton lock for longer than a look (or, after it had to
//! SIGKILL a daemon, the cleanup of that daemon's files) and never unlinks a socket that a
//! live daemon holds. It runs no async runtime: each command is a few blocking calls.
//!
//! Exit codes (documented in README.md): 0 success, 1 failure, 2 usage error, 3 consent not
//! given, 53 a headless turn without an answer in time, 130 interrupted (Ctrl-C).

pub mod audit;
pub mod caps;
pub mod capsule;
pub mod chat;
pub mod config;
pub mod headless;
pub mod kv;
pub mod lifecycle;
pub mod links;
pub mod mcp;
pub mod model;
pub mod request;
pub mod spawn;
pub mod turn;
pub mod workspace;

use std::process::ExitCode;

use argh::FromArgs;

use crate::capsule_host::{self, CapsuleHostArgs};
use crate::daemon::{self, DaemonArgs};
use crate::home::AstridHome;

/// Astrid, a secure runtime for AI agents. Roles: `astrid` (this CLI), `astrid daemon` or
/// the `astrid-daemon` link (the kernel), `astrid capsule-host` or the `astrid-capsule-host`
/// link (one capsule in a process of its own, started by the daemon). Exit codes:
/// 0 success, 1 failure, 2 usage error, 3 consent not given, 53 no answer in time (run/-p),
/// 130 interrupted.
#[derive(FromArgs, Debug)]
pub struct Cli {
    /// print the version and exit
    #[argh(switch)]
    pub version: bool,
    /// run this prompt headless and print the answer (as `astrid run PROMPT`)
    #[argh(option, short = 'p')]
    pub prompt: Option<String>,
    /// with -p: approve approval requests instead of denying them
    #[argh(switch, short = 'y')]
    pub yes: bool,
    /// with -p: pretty (default) or json
    #[argh(option, default = "headless::Format::Pretty")]
    pub format: headless::Format,
    /// with -p: the conversation (a UUID, or a name)
    #[argh(option)]
    pub session: Option<String>,
    #[argh(subcommand)]
    command: Option<Command>,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum Command {
    Daemon(DaemonArgs),
    Start(lifecycle::StartArgs),
    Stop(lifecycle::StopArgs),
    Restart(lifecycle::RestartArgs),
    Status(lifecycle::StatusArgs),
    Capsule(capsule::CapsuleArgs),
    Caps(caps::CapsArgs),
    Mcp(mcp::McpArgs),
    Kv(kv::KvArgs),
    Workspace(workspace::WorkspaceArgs),
    Run(headless::RunArgs),
    Chat(chat::ChatArgs),
    Config(config::ConfigArgs),
    Audit(audit::AuditArgs),
    CapsuleHost(CapsuleHostArgs),
    InstallLinks(links::InstallLinksArgs),
}

/// Parses `args` as `T`; `--help` prints to stdout (exit 0), usage errors to stderr (exit 2).
pub fn parse_args<T: FromArgs>(command: &str, args: &[&str]) -> Result<T, ExitCode> {
    T::from_args(&[command], args).map_err(|early| match early.status {
        Ok(()) => {
            println!("{}", early.output);
            ExitCode::SUCCESS
        }
        Err(()) => {
            eprintln!("{}", early.output);
            ExitCode::from(2)
        }
    })
}

/// Runs the CLI with `args` (argv without argv[0]).
pub fn main(args: &[&str]) -> ExitCode {
    let cli: Cli = match parse_args("astrid", args) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    if cli.version {
        println!("astrid {}", crate::VERSION);
        return ExitCode::SUCCESS;
    }
    if let Some(prompt) = cli.prompt {
        if cli.command.is_some() {
            eprintln!("astrid: -p runs a prompt on its own; it takes no command");
            return ExitCode::from(2);
        }
        let args =
            headless::RunArgs { prompt, session: cli.session, yes: cli.yes, format: cli.format, workspace: None };
        return finish(with_home(|home| headless::run(&home, &args)));
    }
    // Bare `astrid`: a chat on a terminal, a headless turn on piped input (as the reference).
    if cli.command.is_none() {
        use std::io::IsTerminal;
        if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
            return finish(with_home(|home| chat::run(&home, &chat::ChatArgs::default())));
        }
        if let Some(prompt) = piped_prompt() {
            let args =
                headless::RunArgs { prompt, session: cli.session, yes: cli.yes, format: cli.format, workspace: None };
            return finish(with_home(|home| headless::run_prompt(&home, &args)));
        }
    }
    let Some(command) = cli.command else {
        if let Err(help) = Cli::from_args(&["astrid"], &["--help"]) {
            eprintln!("{}", help.output);
        }
        eprintln!("astrid: a command is required");
        return ExitCode::from(2);
    };
    let result = match command {
        Command::Daemon(args) => return daemon::main(&args),
        Command::CapsuleHost(args) => return capsule_host::main(&args),
        Command::InstallLinks(args) => links::install(&args),
        Command::Start(args) => with_home(|home| lifecycle::start(&home, &args)),
        Command::Stop(_) => with_home(|home| lifecycle::stop(&home)),
        Command::Restart(_) => with_home(|home| lifecycle::restart(&home)),
        Command::Status(args) => with_home(|home| lifecycle::status(&home, &args)),
        Command::Capsule(args) => with_home(|home| capsule::run(&home, &args)),
        Command::Caps(args) => with_home(|home| caps::run(&home, &args)),
        Command::Mcp(args) => with_home(|home| mcp::run(&home, &args)),
        Command::Kv(args) => with_home(|home| kv::run(&home, &args)),
        Command::Workspace(args) => with_home(|home| workspace::run(&home, &args)),
        Command::Run(args) => with_home(|home| headless::run(&home, &args)),
        Command::Chat(args) => with_home(|home| chat::run(&home, &args)),
        Command::Config(args) => with_home(|home| config::run(&home, &args)),
        // `audit verify` reserves exit 1 for "tampered": an unusable home is an error (2).
        Command::Audit(args) => match AstridHome::from_env() {
            Ok(home) => return audit::run(&home, &args),
            Err(e) => {
                eprintln!("astrid audit: cannot resolve the Astrid home: {e}");
                return ExitCode::from(2);
            }
        },
    };
    finish(result)
}

/// All of piped stdin, when there is some.
fn piped_prompt() -> Option<String> {
    use std::io::{IsTerminal, Read};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return None;
    }
    let mut text = String::new();
    stdin.lock().read_to_string(&mut text).ok()?;
    let text = text.trim().to_owned();
    (!text.is_empty()).then_some(text)
}

/// The exit code of a command's result; an error is printed first.
fn finish(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("astrid: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn with_home(command: impl FnOnce(AstridHome) -> anyhow::Result<ExitCode>) -> anyhow::Result<ExitCode> {
    let home = AstridHome::from_env().map_err(|e| anyhow::anyhow!("cannot resolve the Astrid home: {e}"))?;
    command(home)
}
