//! Model settings a shell asks for, against the model the daemon runs.
//!
//! `OPENAI_BASE_URL`, `OPENAI_API_KEY` and `ASTRID_MODEL` configure the default agent of a
//! daemon started from a shell that sets them. A daemon already running may run something
//! else (another shell started it, or nothing was set then), and a prompt sent to it would
//! be answered by a model the person did not ask for; the reference then answered "No model
//! endpoint is configured". Before a turn, [`reconcile`] compares the two (`GetStatus`
//! reports the daemon's model, with a fingerprint of its key) and never lets a difference
//! pass in silence:
//!
//! - the home's configuration (`astrid config model`) decides over any environment: a shell
//!   that asks for something else hears so, in one line, and how to change it;
//! - an ephemeral daemon nobody else is using is restarted with this shell's settings;
//! - any other daemon is left alone, and the turn refused with the exact commands that
//!   apply the settings (`astrid config model …`, or `astrid restart` from this shell).

use std::path::Path;

use anyhow::bail;

use super::{daemon_control, request, spawn};
use crate::home::AstridHome;
use crate::ipc::Client;
use crate::kernel::model::{DEFAULT_ENDPOINT, key_fingerprint};
use crate::types::{DaemonStatus, KernelRequest, KernelResponse, ModelStatus};

/// What this shell's environment asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// `OPENAI_BASE_URL`, or the default endpoint when only a key is set.
    pub endpoint: String,
    /// `OPENAI_API_KEY`, if set.
    pub key: Option<String>,
    /// `ASTRID_MODEL`, if set.
    pub model: Option<String>,
}

impl Wanted {
    /// The settings in `lookup` (the environment): `None` when neither an endpoint nor a key
    /// is set (then the shell asks for nothing; `ASTRID_MODEL` alone picks no provider).
    pub fn from(lookup: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let variable = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let endpoint = variable("OPENAI_BASE_URL");
        let key = variable("OPENAI_API_KEY");
        if endpoint.is_none() && key.is_none() {
            return None;
        }
        Some(Self {
            endpoint: endpoint.unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned()),
            key,
            model: variable("ASTRID_MODEL"),
        })
    }

    /// Whether the daemon runs what this asks for.
    pub fn matches(&self, running: &ModelStatus) -> bool {
        running.provider == "openai"
            && running.endpoint.as_deref().map(|e| e.trim_end_matches('/')) == Some(self.endpoint.trim_end_matches('/'))
            && self.key.as_deref().is_none_or(|key| running.key.as_deref() == Some(key_fingerprint(key).as_str()))
            && self.model.as_deref().is_none_or(|model| running.model == model)
    }

    /// The settings in words, without the key.
    pub fn describe(&self) -> String {
        let mut parts = vec![format!("OPENAI_BASE_URL={}", self.endpoint)];
        if let Some(model) = &self.model {
            parts.push(format!("ASTRID_MODEL={model}"));
        }
        if self.key.is_some() {
            parts.push("OPENAI_API_KEY=…".to_owned());
        }
        parts.join(" ")
    }

    /// The `astrid config model` command that stores these settings (the key read from stdin).
    pub fn config_command(&self) -> String {
        let mut command = format!("astrid config model --provider openai --base-url {}", self.endpoint);
        if let Some(model) = &self.model {
            command.push_str(&format!(" --model {model}"));
        }
        if self.key.is_some() {
            command = format!("printenv OPENAI_API_KEY | {command} --api-key-stdin");
        }
        command
    }
}

/// A model as `astrid status` says it.
pub fn describe(model: &ModelStatus) -> String {
    let mut text = if model.provider == "offline" { "the offline model".to_owned() } else { model.provider.clone() };
    if !model.model.is_empty() && model.provider != "offline" {
        text.push_str(&format!(" {}", model.model));
    }
    if let Some(endpoint) = &model.endpoint {
        text.push_str(&format!(" at {endpoint}"));
    }
    if let Some(key) = &model.key {
        text.push_str(&format!(" (key {key})"));
    }
    let source = match model.source.as_str() {
        "home" => "set with astrid config",
        "environment" => "from the daemon's environment",
        _ => "default",
    };
    format!("{text}; {source}")
}

/// Makes the daemon of `home` run the model this shell asks for, or says exactly why not
/// (see the module documentation). `workspace` is where a restarted daemon works.
pub fn reconcile(home: &AstridHome, workspace: &Path) -> anyhow::Result<()> {
    let Some(wanted) = Wanted::from(|name| std::env::var(name).ok()) else { return Ok(()) };
    let status = daemon_status(home)?;
    let Some(running) = &status.model else { return Ok(()) };
    if running.source == "home" {
        if !wanted.matches(running) {
            eprintln!(
                "astrid: this shell sets {}, but the model set with `astrid config` decides: {} \
                 (`astrid config model --clear` lets the environment decide)",
                wanted.describe(),
                describe(running)
            );
        }
        return Ok(());
    }
    if wanted.matches(running) {
        return Ok(());
    }
    if status.ephemeral && idle(home, status.connected_clients)? {
        eprintln!(
            "astrid: restarting the idle daemon (pid {}) to use {}; it ran {}",
            status.pid,
            wanted.describe(),
            describe(running)
        );
        daemon_control::stop_daemon(home, false)?;
        spawn::ensure_daemon_in(home, workspace)?;
        return Ok(());
    }
    bail!(
        "the running daemon (pid {}) answers with {}, not with this shell's {}.\n\
         To use them: `{}` (kept in the home; the daemon applies it at once),\n\
         or `astrid restart` from this shell (the daemon then takes this shell's environment).",
        status.pid,
        describe(running),
        wanted.describe(),
        wanted.config_command()
    )
}

/// Whether nobody but us uses the daemon: our own status connection is one of the clients
/// counted, and a command that just ended may still be counted for a moment.
fn idle(home: &AstridHome, mut clients: u32) -> anyhow::Result<bool> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while clients > 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        clients = daemon_status(home)?.connected_clients;
    }
    Ok(clients <= 1)
}

fn daemon_status(home: &AstridHome) -> anyhow::Result<DaemonStatus> {
    let mut client = Client::connect(home)?;
    match client.request("status", &KernelRequest::GetStatus, request::REQUEST_TIMEOUT)? {
        KernelResponse::Status(status) => Ok(*status),
        other => bail!("unexpected reply to GetStatus: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v).to_owned())
    }

    fn running(endpoint: &str, key: Option<&str>, model: &str) -> ModelStatus {
        ModelStatus {
            provider: "openai".into(),
            model: model.into(),
            endpoint: Some(endpoint.into()),
            key: key.map(key_fingerprint),
            source: "environment".into(),
        }
    }

    #[test]
    fn a_shell_asks_for_a_model_only_with_an_endpoint_or_a_key() {
        assert_eq!(Wanted::from(env(&[])), None);
        assert_eq!(Wanted::from(env(&[("ASTRID_MODEL", "llama")])), None);
        let wanted = Wanted::from(env(&[("OPENAI_API_KEY", "sk-1")])).expect("wanted");
        assert_eq!(wanted.endpoint, DEFAULT_ENDPOINT);
        assert!(!wanted.describe().contains("sk-1"), "the key is never printed");
    }

    #[test]
    fn the_daemons_model_matches_on_endpoint_key_fingerprint_and_model() {
        let wanted = Wanted::from(env(&[
            ("OPENAI_BASE_URL", "http://h:1/v1"),
            ("OPENAI_API_KEY", "sk-1"),
            ("ASTRID_MODEL", "m"),
        ]))
        .expect("wanted");
        assert!(wanted.matches(&running("http://h:1/v1/", Some("sk-1"), "m")));
        assert!(!wanted.matches(&running("http://h:1/v1", Some("sk-2"), "m")), "another key");
        assert!(!wanted.matches(&running("http://h:2/v1", Some("sk-1"), "m")), "another endpoint");
        assert!(!wanted.matches(&running("http://h:1/v1", Some("sk-1"), "n")), "another model");
        let mut offline = running("http://h:1/v1", Some("sk-1"), "m");
        offline.provider = "offline".into();
        assert!(!wanted.matches(&offline));
        assert!(wanted.config_command().contains("--api-key-stdin") && !wanted.config_command().contains("sk-1"));
    }
}
