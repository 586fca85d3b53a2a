//! `astrid capsule …`: install, remove, list and show capsules, and run a capsule directory
//! for its author. Every subcommand goes through the daemon (starting an ephemeral one when
//! none runs): it owns the capsule directories, the grants and the audit trail, and starts
//! what is installed.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use argh::FromArgs;
use serde::Serialize;

use std::collections::BTreeMap;

use super::{caps, request, spawn};
use crate::capsule_host;
use crate::home::{AstridHome, DEFAULT_PRINCIPAL};
use crate::ipc::Client;
use crate::ipc::capsule_link::{AttachError, CapsuleLink};
use crate::kernel::capsule_config as config;
use crate::kernel::capsules::MANIFEST_FILE;
use crate::kernel::manifest::Manifest;
use crate::types::management::{CapsuleDescription, CapsuleInstalled, CapsuleRemoved, GrantStatus, RunState};
use crate::types::topics::{ELICIT_RESPONSE_PREFIX, ELICIT_TOPIC};
use crate::types::{CapsuleAttach, EgressFrame, IpcPayload, KernelRequest, KernelResponse, OnboardingFieldType};

/// manage capsules
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "capsule")]
pub struct CapsuleArgs {
    #[argh(subcommand)]
    command: CapsuleCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum CapsuleCommand {
    List(ListArgs),
    Show(ShowArgs),
    Install(InstallArgs),
    Remove(RemoveArgs),
    Run(RunArgs),
}

/// run a capsule directory in this process against the daemon, until it ends or Ctrl-C
/// (for authors: nothing is installed, and its grant lasts as long as the run)
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "run")]
struct RunArgs {
    /// the capsule directory (its Capsule.toml and built module)
    #[argh(positional)]
    dir: PathBuf,
    /// consent to the capabilities it requests without asking
    #[argh(switch, short = 'y')]
    yes: bool,
}

/// list the capsules the daemon knows, with their state
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
struct ListArgs {
    /// print a JSON array of {name, running, state, …}
    #[argh(switch)]
    json: bool,
}

/// show one capsule: version, origin, state, grant, capabilities, module hash
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "show")]
struct ShowArgs {
    /// the capsule
    #[argh(positional)]
    name: String,
    /// print JSON
    #[argh(switch)]
    json: bool,
}

/// install a capsule from a directory holding Capsule.toml (or that file)
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "install")]
struct InstallArgs {
    /// the capsule directory or its Capsule.toml
    #[argh(positional)]
    source: PathBuf,
    /// install into the workspace (.astrid/capsules) rather than your home
    #[argh(switch)]
    workspace: bool,
    /// approve the requested capabilities without asking
    #[argh(switch, short = 'y')]
    yes: bool,
    /// a value for one of the capsule's [env] keys, KEY=VALUE (repeatable); missing ones
    /// are asked on the terminal (secrets without echo)
    #[argh(option, long = "env")]
    env: Vec<String>,
}

/// uninstall a capsule (its grant is withdrawn; its configuration is kept)
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "remove")]
struct RemoveArgs {
    /// the capsule
    #[argh(positional)]
    name: String,
    /// remove from the workspace rather than your home
    #[argh(switch)]
    workspace: bool,
}

/// Runs a `capsule` subcommand.
pub fn run(home: &AstridHome, args: &CapsuleArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        CapsuleCommand::List(list) => self::list(home, list),
        CapsuleCommand::Show(show) => self::show(home, show),
        CapsuleCommand::Install(install) => self::install(home, install),
        CapsuleCommand::Run(run) => self::run_dir(home, run),
        CapsuleCommand::Remove(remove) => {
            let request = KernelRequest::RemoveCapsule { name: remove.name.clone(), workspace: remove.workspace };
            let removed: CapsuleRemoved = request::call(home, "remove_capsule", &request)?;
            println!("removed {} {}", remove.name, removed.version);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn describe(home: &AstridHome) -> anyhow::Result<Vec<CapsuleDescription>> {
    request::call(home, "describe_capsules", &KernelRequest::DescribeCapsules)
}

/// A capsule as `capsule list --json` prints it: its description and whether it runs.
#[derive(Serialize)]
struct Listed {
    #[serde(flatten)]
    capsule: CapsuleDescription,
    running: bool,
}

fn list(home: &AstridHome, args: &ListArgs) -> anyhow::Result<ExitCode> {
    let capsules = describe(home)?;
    if args.json {
        let listed: Vec<Listed> = capsules
            .into_iter()
            .map(|capsule| Listed { running: capsule.state == RunState::Running, capsule })
            .collect();
        println!("{}", request::json_text(&listed, false)?);
        return Ok(ExitCode::SUCCESS);
    }
    let width = capsules.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for capsule in &capsules {
        let detail = match (&capsule.reason, &capsule.grant) {
            (Some(reason), _) => format!("  ({reason})"),
            (None, GrantStatus::Pending { request_id }) => {
                format!("  (awaiting approval: astrid caps approve {request_id})")
            }
            _ => String::new(),
        };
        println!("{:width$}  {}{detail}", capsule.name, capsule.state.as_str());
    }
    Ok(ExitCode::SUCCESS)
}

fn show(home: &AstridHome, args: &ShowArgs) -> anyhow::Result<ExitCode> {
    let capsules = describe(home)?;
    let Some(capsule) = capsules.iter().find(|c| c.name == args.name) else {
        bail!("no capsule named {}", args.name);
    };
    if args.json {
        println!("{}", request::json_text(capsule, true)?);
        return Ok(ExitCode::SUCCESS);
    }
    let text = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".to_owned());
    let list = |items: Vec<&str>| if items.is_empty() { "none".to_owned() } else { items.join(", ") };
    let grant = match capsule.grant {
        GrantStatus::NothingRequested => "nothing_requested",
        GrantStatus::Approved => "approved",
        GrantStatus::Pending { .. } => "pending",
    };
    println!("name:          {}", capsule.name);
    println!("version:       {}", text(&capsule.version));
    println!("origin:        {}  {}", capsule.origin.as_str(), text(&capsule.dir));
    println!(
        "state:         {}{}",
        capsule.state.as_str(),
        capsule.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default()
    );
    println!("grant:         {grant}");
    println!("capabilities:  {}", list(capsule.capabilities.iter().map(String::as_str).collect()));
    println!("commands:      {}", list(capsule.commands.iter().map(|c| c.name.as_str()).collect()));
    println!("interceptors:  {}", list(capsule.interceptors.iter().map(String::as_str).collect()));
    println!("module BLAKE3: {}", text(&capsule.wasm_blake3));
    Ok(ExitCode::SUCCESS)
}

fn install(home: &AstridHome, args: &InstallArgs) -> anyhow::Result<ExitCode> {
    // The daemon reads the files: give it an absolute path, resolved here where the user is.
    let source = args.source.canonicalize().with_context(|| format!("cannot find {}", args.source.display()))?;
    collect_env(home, &source, &args.env)?;
    // A capsule without a module (only MCP servers, say) has nothing to wait for.
    let runs_a_module =
        Manifest::load(&source.join(crate::kernel::capsules::MANIFEST_FILE)).map_or(true, |m| !m.components.is_empty());
    // Listening before the install: the capsule's install hook may ask a question (elicit).
    spawn::ensure_daemon(home)?;
    let mut questions = Client::connect(home)?;
    let mut report =
        |name: &str| if runs_a_module { report_start(home, name, &mut questions) } else { Ok(ExitCode::SUCCESS) };
    let reply = request::send(
        home,
        "install_capsule",
        &KernelRequest::InstallCapsule { source: source.display().to_string(), workspace: args.workspace },
    )?;
    match reply {
        KernelResponse::Success(_) => {
            let done: CapsuleInstalled = reply.into_data()?;
            print_installed(&done);
            report(&done.name)
        }
        KernelResponse::ApprovalRequired { request_id, description, capabilities } => {
            println!("{description}:");
            for capability in &capabilities {
                println!("  {capability}");
            }
            if !(args.yes || confirm("Approve?")?) {
                println!("installed, not approved: it will not run until `astrid caps approve {request_id}`");
                return Ok(ExitCode::from(3));
            }
            let approved = caps::approve(home, &request_id)?;
            println!("approved {} ({})", approved.capsule, caps::short(&approved.fingerprint));
            report(&approved.capsule)
        }
        KernelResponse::Error(message) => bail!("{message}"),
        other => bail!("unexpected reply to InstallCapsule: {other:?}"),
    }
}

/// `capsule run`: this process becomes the capsule's host, attached to the daemon (see
/// [`crate::wasm::development`]); the daemon decides every host call, as for any capsule.
fn run_dir(home: &AstridHome, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let dir = args.dir.canonicalize().with_context(|| format!("cannot find {}", args.dir.display()))?;
    spawn::ensure_daemon(home)?;
    capsule_host::init_logging(true);
    let mut attach = CapsuleAttach { dir: Some(dir.display().to_string()), approve: args.yes, ticket: None };
    let (link, attached) = loop {
        match CapsuleLink::attach(home, attach.clone()) {
            Ok(attached) => break attached,
            Err(AttachError::ConsentRequired { capsule, capabilities }) if !attach.approve => {
                println!("{capsule} requests these capabilities for this run:");
                for capability in &capabilities {
                    println!("  {capability}");
                }
                if !confirm("Grant them until it stops?")? {
                    println!("not started: run it with --yes to consent without a terminal");
                    return Ok(ExitCode::from(3));
                }
                attach.approve = true;
            }
            Err(e) => bail!("{e}"),
        }
    };
    let name = attached.capsule.clone();
    // Ctrl-C ends the run; the daemon sees the link close and takes the capsule and its
    // consent away. Handled, not left to the default: a shell that starts this in the
    // background without job control (a script, CI) sets SIGINT to be ignored.
    let stopping = name.clone();
    ctrlc::set_handler(move || {
        println!("{stopping} stopped");
        std::process::exit(130);
    })
    .context("cannot handle Ctrl-C")?;
    println!("running {name} from {} (Ctrl-C stops it)", dir.display());
    match capsule_host::run_attached(link, attached) {
        Ok(()) => {
            println!("{name} ended");
            Ok(ExitCode::SUCCESS)
        }
        Err(reason) => bail!("capsule {name} failed: {reason}"),
    }
}

/// How long `install` waits to see the capsule start.
const START_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits until the daemon has started `name` (or failed to) and says which. A question its
/// install hook asks meanwhile (`elicit`, on `questions`) is asked on the terminal; without
/// one, the install says what is waiting and how to give it, and stops waiting (another
/// frontend, `astrid chat`, may still answer it).
fn report_start(home: &AstridHome, name: &str, questions: &mut Client) -> anyhow::Result<ExitCode> {
    let deadline = std::time::Instant::now() + START_WAIT;
    loop {
        while let Ok(frame) = questions.next_frame(std::time::Duration::from_millis(1)) {
            if !answer_question(questions, name, &frame)? {
                return Ok(ExitCode::SUCCESS);
            }
        }
        let capsule = describe(home)?.into_iter().find(|c| c.name == name);
        let state = capsule.as_ref().map(|c| c.state);
        let reason = capsule.and_then(|c| c.reason).unwrap_or_default();
        match state {
            Some(RunState::Running) => {
                println!("{name} is running");
                return Ok(ExitCode::SUCCESS);
            }
            Some(RunState::Failed | RunState::Restarting) => bail!("{name} does not start: {reason}"),
            _ if std::time::Instant::now() >= deadline => {
                let state = state.map_or("missing", RunState::as_str);
                println!("{name} is installed ({state}) but not running yet");
                return Ok(ExitCode::SUCCESS);
            }
            _ => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}

/// Asks the person an `elicit_request` of the capsule `name` (others are not ours) and
/// answers it; `false` when there is no terminal to ask on (said, with what to do instead).
fn answer_question(client: &mut Client, name: &str, frame: &EgressFrame) -> anyhow::Result<bool> {
    if frame.topic != ELICIT_TOPIC {
        return Ok(true);
    }
    let IpcPayload::ElicitRequest { request_id, capsule_id, field } =
        IpcPayload::from_json_value(frame.payload.clone())
    else {
        return Ok(true);
    };
    if capsule_id != name {
        return Ok(true);
    }
    let (key, prompt) = (&field.key, &field.prompt);
    if !std::io::stdin().is_terminal() {
        println!(
            "{name} asks for {key} ({prompt}) and there is no terminal to ask on: answer it in `astrid chat`, \
             or install again with --env {key}=…"
        );
        return Ok(false);
    }
    let value = ask(&format!("{name} asks: {prompt}"), field.field_type == OnboardingFieldType::Secret)?;
    let answer = IpcPayload::ElicitResponse { request_id, value, values: None };
    client.publish(&format!("{ELICIT_RESPONSE_PREFIX}{request_id}"), &answer)?;
    Ok(true)
}

fn print_installed(done: &CapsuleInstalled) {
    let CapsuleInstalled { name, version, replaced, .. } = done;
    match replaced {
        Some(old) => println!("installed {name} {version} (replacing {old})"),
        None => println!("installed {name} {version}"),
    }
}

/// Gathers the capsule's missing `[env]` values (from `--env`, else asked on the terminal)
/// and stores them 0600 in the principal's env file before the capsule first starts.
fn collect_env(home: &AstridHome, source: &std::path::Path, given: &[String]) -> anyhow::Result<()> {
    let manifest_path = if source.is_dir() { source.join(MANIFEST_FILE) } else { source.to_path_buf() };
    let manifest = Manifest::load(&manifest_path)?;
    let name = &manifest.package.name;
    let mut values = BTreeMap::new();
    for pair in given {
        let Some((key, value)) = pair.split_once('=') else { bail!("--env takes KEY=VALUE, not {pair:?}") };
        if !manifest.env.contains_key(key) {
            bail!("{name} declares no [env.{key}]");
        }
        values.insert(key.to_owned(), value.to_owned());
    }
    let (_, missing) = config::resolve(home, DEFAULT_PRINCIPAL, name, &manifest.env, &BTreeMap::new());
    let unanswered: Vec<String> = missing.into_iter().filter(|k| !values.contains_key(k)).collect();
    for key in &unanswered {
        let def = &manifest.env[key];
        let question = def.request.clone().unwrap_or_else(|| format!("{name}: value for {key}"));
        match ask(&question, def.kind == "secret")? {
            Some(value) => {
                values.insert(key.clone(), value);
            }
            None => println!("{name}: {key} has no value yet (give it with --env {key}=…)"),
        }
    }
    if !values.is_empty() {
        let path = config::store_values(home, DEFAULT_PRINCIPAL, name, &values)?;
        println!("stored {} value(s) for {name} in {} (0600)", values.len(), path.display());
    }
    Ok(())
}

/// Asks a question on the terminal (without echo for secrets); `None` without a terminal.
fn ask(question: &str, secret: bool) -> anyhow::Result<Option<String>> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Ok(None);
    }
    print!("{question}: ");
    std::io::stdout().flush()?;
    let restore = if secret {
        let original = nix::sys::termios::tcgetattr(&stdin)?;
        let mut quiet = original.clone();
        quiet.local_flags.remove(nix::sys::termios::LocalFlags::ECHO);
        nix::sys::termios::tcsetattr(&stdin, nix::sys::termios::SetArg::TCSANOW, &quiet)?;
        Some(original)
    } else {
        None
    };
    let mut answer = String::new();
    let read = stdin.lock().read_line(&mut answer);
    if let Some(original) = restore {
        nix::sys::termios::tcsetattr(&stdin, nix::sys::termios::SetArg::TCSANOW, &original)?;
        println!();
    }
    read?;
    let answer = answer.trim_end_matches(['\r', '\n']).to_owned();
    Ok((!answer.is_empty()).then_some(answer))
}

/// Asks on the terminal; without one (a script), the answer is no.
fn confirm(question: &str) -> anyhow::Result<bool> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Ok(false);
    }
    print!("{question} [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}
