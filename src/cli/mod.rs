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
pub mod daemon_control;
pub mod headless;
pub mod kv;
pub mod links;
pub mod mcp;
pub mod mcp_serve;
pub mod model;
pub mod prompt_questions;
pub mod request;
pub mod sessions;
pub mod spawn;
pub mod tools;
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
    Start(daemon_control::StartArgs),
    Stop(daemon_control::StopArgs),
    Restart(daemon_control::RestartArgs),
    Status(daemon_control::StatusArgs),
    Capsule(capsule::CapsuleArgs),
    Caps(caps::CapsArgs),
    Mcp(mcp::McpArgs),
    Kv(kv::KvArgs),
    Workspace(workspace::WorkspaceArgs),
    Run(headless::RunArgs),
    Chat(chat::ChatArgs),
    Sessions(sessions::SessionsArgs),
    Tools(tools::ToolsArgs),
    Config(config::ConfigArgs),
    Audit(audit::AuditArgs),
    CapsuleSupervisor(CapsuleHostArgs),
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
        Command::CapsuleSupervisor(args) => return capsule_host::main(&args),
        Command::InstallLinks(args) => links::install(&args),
        Command::Start(args) => with_home(|home| daemon_control::start(&home, &args)),
        Command::Stop(_) => with_home(|home| daemon_control::stop(&home)),
        Command::Restart(_) => with_home(|home| daemon_control::restart(&home)),
        Command::Status(args) => with_home(|home| daemon_control::status(&home, &args)),
        Command::Capsule(args) => with_home(|home| capsule::run(&home, &args)),
        Command::Caps(args) => with_home(|home| caps::run(&home, &args)),
        Command::Mcp(args) => with_home(|home| mcp::run(&home, &args)),
        Command::Kv(args) => with_home(|home| kv::run(&home, &args)),
        Command::Workspace(args) => with_home(|home| workspace::run(&home, &args)),
        Command::Run(args) => with_home(|home| headless::run(&home, &args)),
        Command::Chat(args) => with_home(|home| chat::run(&home, &args)),
        Command::Sessions(args) => with_home(|home| sessions::run(&home, &args)),
        Command::Tools(args) => with_home(|home| tools::run(&home, &args)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("ls src").map(|e| e.expect("entry")) {
            let path = entry.path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// The `astrid …` commands a line names: between backticks, or in parentheses.
    fn commands_in(line: &str) -> Vec<String> {
        let mut found = Vec::new();
        for (open, close) in [("`astrid ", '`'), ("(astrid ", ')')] {
            let mut rest = line;
            while let Some(start) = rest.find(open) {
                let after = &rest[start + open.len()..];
                let Some(end) = after.find(close) else { break };
                found.push(after[..end].to_owned());
                rest = &after[end..];
            }
        }
        found
    }

    /// Words as a shell would split them (double quotes, `\"` as Rust source writes them);
    /// placeholders (`{request_id}`, `DIR`, `REQUEST_ID`) become a plain value.
    fn words(command: &str) -> Vec<String> {
        let command = command.replace("\\\"", "\"");
        let mut words = Vec::new();
        let mut word = String::new();
        let mut quoted = false;
        for c in command.chars() {
            match c {
                '"' => quoted = !quoted,
                c if c.is_whitespace() && !quoted => {
                    if !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                }
                c => word.push(c),
            }
        }
        if !word.is_empty() {
            words.push(word);
        }
        let placeholder = |w: &str| {
            (w.starts_with('{') && w.ends_with('}'))
                || (w.chars().any(|c| c.is_ascii_uppercase())
                    && w.chars().all(|c| c.is_ascii_uppercase() || c == '_' || c == '='))
        };
        words.into_iter().map(|w| if placeholder(&w) { "x".to_owned() } else { w }).collect()
    }

    /// Whether `astrid <command>` parses. A command named without its arguments (`astrid
    /// run`, `astrid caps approve`) counts: the command exists and says what it needs.
    fn parses(command: &str) -> Result<(), String> {
        let args = words(command);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match Cli::from_args(&["astrid"], &args) {
            Ok(_) => Ok(()),
            // `--help` ends parsing early with success: a valid command too.
            Err(early) if early.status.is_ok() => Ok(()),
            Err(early) if early.output.starts_with("Required positional arguments not provided") => Ok(()),
            Err(early) => Err(early.output),
        }
    }

    /// Every `astrid …` command the code's messages tell people to run parses with the CLI's own parser: no message names a command or flag
    /// that does not exist (`astrid daemon restart` once did).
    #[test]
    fn every_command_the_code_names_parses() {
        let mut files = Vec::new();
        rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
        let mut checked = 0;
        let mut broken = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read");
            for (number, line) in text.lines().enumerate() {
                if line.trim_start().starts_with("#[cfg(test)]") {
                    break; // tests talk to developers
                }
                if line.trim_start().starts_with("//") {
                    continue; // so do comments (help texts are checked by argh's own tests)
                }
                for command in commands_in(line) {
                    checked += 1;
                    if let Err(reason) = parses(&command) {
                        broken.push(format!("{}:{}: `astrid {command}`: {reason}", file.display(), number + 1));
                    }
                }
            }
        }
        assert!(checked >= 15, "only {checked} commands found: is the extraction broken?");
        assert!(broken.is_empty(), "commands that do not parse:\n{}", broken.join("\n"));
    }

    #[test]
    fn the_extraction_sees_commands_and_placeholders() {
        assert_eq!(
            commands_in("x `astrid caps approve {id}` and (astrid caps list)"),
            ["caps approve {id}", "caps list"]
        );
        assert_eq!(words("run \\\"what to do\\\" DIR REQUEST_ID {request_id}"), ["run", "what to do", "x", "x", "x"]);
        assert!(parses("daemon restart").is_err(), "the parser must reject what it should");
        assert!(parses("caps approve").is_ok() && parses("run \\\"prompt\\\"").is_ok());
    }
}
