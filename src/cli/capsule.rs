//! `astrid capsule …`: install, remove, list and show capsules, and run a capsule directory
//! for its author. Every subcommand goes through the daemon (starting an ephemeral one when
//! none runs): it owns the capsule directories, the grants and the audit trail, and starts
//! what is installed.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use argh::FromArgs;
use serde_json::Value;

use std::collections::BTreeMap;

use super::{caps, request, spawn};
use crate::capsule_host;
use crate::home::{AstridHome, DEFAULT_PRINCIPAL};
use crate::ipc::Client;
use crate::ipc::capsule_link::{AttachError, CapsuleLink};
use crate::kernel::capsule_config as config;
use crate::kernel::capsules::MANIFEST_FILE;
use crate::kernel::manifest::Manifest;
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
            let reply = request::send(
                home,
                "remove_capsule",
                &KernelRequest::RemoveCapsule { name: remove.name.clone(), workspace: remove.workspace },
            )?;
            let removed = request::success(reply)?;
            println!("removed {} {}", remove.name, removed["version"].as_str().unwrap_or("?"));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn describe(home: &AstridHome) -> anyhow::Result<Vec<Value>> {
    let reply = request::send(home, "describe_capsules", &KernelRequest::DescribeCapsules)?;
    Ok(serde_json::from_value(request::success(reply)?)?)
}

fn list(home: &AstridHome, args: &ListArgs) -> anyhow::Result<ExitCode> {
    let mut capsules = describe(home)?;
    if args.json {
        for capsule in &mut capsules {
            capsule["running"] = Value::Bool(capsule["state"] == "running");
        }
        println!("{}", Value::Array(capsules));
        return Ok(ExitCode::SUCCESS);
    }
    let width = capsules.iter().filter_map(|c| c["name"].as_str()).map(str::len).max().unwrap_or(0);
    for capsule in &capsules {
        let name = capsule["name"].as_str().unwrap_or("?");
        let state = capsule["state"].as_str().unwrap_or("?");
        let detail = match (capsule["reason"].as_str(), capsule["grant"]["status"].as_str()) {
            (Some(reason), _) => format!("  ({reason})"),
            (None, Some("pending")) => {
                format!(
                    "  (awaiting approval: astrid caps approve {})",
                    capsule["grant"]["request_id"].as_str().unwrap_or("?")
                )
            }
            _ => String::new(),
        };
        println!("{name:width$}  {state}{detail}");
    }
    Ok(ExitCode::SUCCESS)
}

fn show(home: &AstridHome, args: &ShowArgs) -> anyhow::Result<ExitCode> {
    let capsules = describe(home)?;
    let Some(capsule) = capsules.iter().find(|c| c["name"] == args.name.as_str()) else {
        bail!("no capsule named {}", args.name);
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(capsule)?);
        return Ok(ExitCode::SUCCESS);
    }
    let text = |key: &str| capsule[key].as_str().map(str::to_owned).unwrap_or_else(|| "-".to_owned());
    let list = |key: &str| {
        let items: Vec<String> = capsule[key]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().or_else(|| v["name"].as_str()).map(str::to_owned)).collect())
            .unwrap_or_default();
        if items.is_empty() { "none".to_owned() } else { items.join(", ") }
    };
    println!("name:          {}", text("name"));
    println!("version:       {}", text("version"));
    println!("origin:        {}  {}", text("origin"), text("dir"));
    println!(
        "state:         {}{}",
        text("state"),
        capsule["reason"].as_str().map(|r| format!(" ({r})")).unwrap_or_default()
    );
    println!("grant:         {}", capsule["grant"]["status"].as_str().unwrap_or("?"));
    println!("capabilities:  {}", list("capabilities"));
    println!("commands:      {}", list("commands"));
    println!("interceptors:  {}", list("interceptors"));
    println!("module BLAKE3: {}", text("wasm_blake3"));
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
        KernelResponse::Success(done) => {
            print_installed(&done);
            report(done["name"].as_str().unwrap_or_default())
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
            let name = approved["capsule"].as_str().unwrap_or_default();
            println!("approved {name} ({})", short(&approved["fingerprint"]));
            report(name)
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
    println!("running {name} from {} (Ctrl-C stops it)", dir.display());
    match capsule_host::run_attached(link, &attached) {
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
        let capsule = describe(home)?.into_iter().find(|c| c["name"] == name);
        let state = capsule.as_ref().and_then(|c| c["state"].as_str()).unwrap_or("missing").to_owned();
        let reason = capsule.as_ref().and_then(|c| c["reason"].as_str()).unwrap_or_default().to_owned();
        match state.as_str() {
            "running" => {
                println!("{name} is running");
                return Ok(ExitCode::SUCCESS);
            }
            "failed" | "restarting" => bail!("{name} does not start: {reason}"),
            _ if std::time::Instant::now() >= deadline => {
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

fn print_installed(done: &Value) {
    let name = done["name"].as_str().unwrap_or("?");
    let version = done["version"].as_str().unwrap_or("?");
    match done["replaced"].as_str() {
        Some(old) => println!("installed {name} {version} (replacing {old})"),
        None => println!("installed {name} {version}"),
    }
}

fn short(fingerprint: &Value) -> String {
    fingerprint.as_str().unwrap_or("?").chars().take(16).collect()
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
