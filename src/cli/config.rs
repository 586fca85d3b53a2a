//! `astrid config`: the agent's settings, kept in the home.
//!
//! `astrid config model` writes which model the agent asks into the configuration of the
//! capsules that decide it (`orchestrator`, `llm-openai`; 0600 files under
//! `home/default/.config/env/`), so the model no longer depends on which process started the
//! daemon. A running daemon is asked to reload, which restarts the capsules whose
//! configuration changed: the next turn uses the new model. The key is read from stdin,
//! never from the command line (where `ps` and shell history would keep it).

use std::collections::BTreeMap;
use std::io::Read;
use std::process::ExitCode;

use anyhow::{Context, bail};
use argh::FromArgs;

use super::{model, request, spawn};
use crate::daemon::singleton::{self, Liveness};
use crate::home::{AstridHome, DEFAULT_PRINCIPAL};
use crate::kernel::capsule_config;
use crate::kernel::model::{OPENAI, ORCHESTRATOR};
use crate::types::{KernelRequest, KernelResponse};

/// show or change the agent's settings (kept in the home)
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "config")]
pub struct ConfigArgs {
    #[argh(subcommand)]
    command: Option<ConfigCommand>,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum ConfigCommand {
    Model(ModelArgs),
}

/// set the model the agent asks; a running daemon applies it at once
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "model")]
struct ModelArgs {
    /// offline or openai (an endpoint or a key implies openai)
    #[argh(option)]
    provider: Option<String>,
    /// the OpenAI-compatible endpoint, for example http://localhost:11434/v1
    #[argh(option)]
    base_url: Option<String>,
    /// the model name, for example llama3.2
    #[argh(option)]
    model: Option<String>,
    /// read the API key from stdin (never from the command line)
    #[argh(switch)]
    api_key_stdin: bool,
    /// forget the model settings kept in the home (the daemon's environment decides again)
    #[argh(switch)]
    clear: bool,
}

/// Runs `astrid config …`.
pub fn run(home: &AstridHome, args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    if let Some(ConfigCommand::Model(model)) = &args.command {
        set_model(home, model)?;
    }
    show(home)?;
    Ok(ExitCode::SUCCESS)
}

fn set_model(home: &AstridHome, args: &ModelArgs) -> anyhow::Result<()> {
    // The settings (a key among them) are written here, not by the daemon: into a home that
    // passes the daemon's own checks, made as the daemon would make it.
    for tightened in home.ensure()? {
        eprintln!("astrid: {tightened}");
    }
    let nothing = args.provider.is_none() && args.base_url.is_none() && args.model.is_none() && !args.api_key_stdin;
    if args.clear {
        if !nothing {
            bail!("--clear forgets the model settings; give it alone");
        }
        capsule_config::update_values(home, DEFAULT_PRINCIPAL, ORCHESTRATOR, &BTreeMap::new(), &["provider", "model"])?;
        capsule_config::update_values(
            home,
            DEFAULT_PRINCIPAL,
            OPENAI,
            &BTreeMap::new(),
            &["base_url", "model", "api_key"],
        )?;
        return reload(home);
    }
    if nothing {
        bail!("say what to set: --provider, --base-url, --model, --api-key-stdin (or --clear)");
    }
    let mut orchestrator = BTreeMap::new();
    let mut openai = BTreeMap::new();
    let provider = match args.provider.as_deref() {
        Some(provider @ ("offline" | "openai")) => Some(provider),
        Some(other) => bail!("unknown provider {other:?}: offline or openai"),
        None if args.base_url.is_some() || args.api_key_stdin => Some("openai"),
        None => None,
    };
    if let Some(provider) = provider {
        orchestrator.insert("provider".to_owned(), provider.to_owned());
    }
    if let Some(base_url) = &args.base_url {
        let parsed = url::Url::parse(base_url).with_context(|| format!("--base-url {base_url}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            bail!("--base-url must be an http or https URL, not {base_url}");
        }
        openai.insert("base_url".to_owned(), base_url.clone());
    }
    if let Some(model) = &args.model {
        orchestrator.insert("model".to_owned(), model.clone());
        openai.insert("model".to_owned(), model.clone());
    }
    if args.api_key_stdin {
        let mut key = String::new();
        std::io::stdin().read_to_string(&mut key).context("cannot read the key from stdin")?;
        let key = key.trim();
        if key.is_empty() {
            bail!("--api-key-stdin read no key");
        }
        openai.insert("api_key".to_owned(), key.to_owned());
    }
    if !orchestrator.is_empty() {
        capsule_config::store_values(home, DEFAULT_PRINCIPAL, ORCHESTRATOR, &orchestrator)?;
    }
    if !openai.is_empty() {
        capsule_config::store_values(home, DEFAULT_PRINCIPAL, OPENAI, &openai)?;
    }
    reload(home)
}

/// Asks a running daemon to pick up the new configuration (none running: the next one will).
fn reload(home: &AstridHome) -> anyhow::Result<()> {
    if singleton::probe(home)? == Liveness::Stopped {
        return Ok(());
    }
    match request::send(home, "reload", &KernelRequest::ReloadCapsules)? {
        KernelResponse::Success(_) => Ok(()),
        KernelResponse::Error(reason) => bail!("the daemon could not reload its capsules: {reason}"),
        other => bail!("unexpected reply to ReloadCapsules: {other:?}"),
    }
}

fn show(home: &AstridHome) -> anyhow::Result<()> {
    spawn::ensure_daemon(home)?;
    match request::send(home, "status", &KernelRequest::GetStatus)? {
        KernelResponse::Status(status) => {
            match &status.model {
                Some(running) => println!("model      {}", model::describe(running)),
                None => println!("model      none (no agent capsule is installed)"),
            }
            if let Some(workspace) = &status.workspace {
                println!("workspace  {workspace} (the daemon's; each client works in its own directory)");
            }
            Ok(())
        }
        other => bail!("unexpected reply to GetStatus: {other:?}"),
    }
}
