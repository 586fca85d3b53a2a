//! `astrid kv …`: the operator's view of the KV store, through the daemon (which alone
//! holds the database). `set` returns only after the write is durable.

use std::process::ExitCode;

use argh::FromArgs;
use serde_json::Value;

use super::request;
use crate::home::AstridHome;
use crate::types::KernelRequest;

/// read and write the KV store (the operator's namespace, or a capsule's with --capsule)
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "kv")]
pub struct KvArgs {
    #[argh(subcommand)]
    command: KvCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum KvCommand {
    Get(GetArgs),
    Set(SetArgs),
    Delete(DeleteArgs),
    List(ListArgs),
}

/// print a value (exit 1 when absent)
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "get")]
struct GetArgs {
    /// the capsule whose namespace to read
    #[argh(option)]
    capsule: Option<String>,
    /// the key
    #[argh(positional)]
    key: String,
}

/// store a value; returns once it is durable
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "set")]
struct SetArgs {
    /// the capsule whose namespace to write
    #[argh(option)]
    capsule: Option<String>,
    /// the key
    #[argh(positional)]
    key: String,
    /// the value
    #[argh(positional)]
    value: String,
}

/// delete a value
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "delete")]
struct DeleteArgs {
    /// the capsule whose namespace to change
    #[argh(option)]
    capsule: Option<String>,
    /// the key
    #[argh(positional)]
    key: String,
}

/// list keys
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
struct ListArgs {
    /// the capsule whose namespace to list
    #[argh(option)]
    capsule: Option<String>,
    /// only keys with this prefix
    #[argh(option, default = "String::new()")]
    prefix: String,
}

/// Runs a `kv` subcommand.
pub fn run(home: &AstridHome, args: &KvArgs) -> anyhow::Result<ExitCode> {
    let (suffix, kernel_request) = match &args.command {
        KvCommand::Get(a) => ("kv_get", KernelRequest::KvGet { capsule: a.capsule.clone(), key: a.key.clone() }),
        KvCommand::Set(a) => {
            ("kv_set", KernelRequest::KvSet { capsule: a.capsule.clone(), key: a.key.clone(), value: a.value.clone() })
        }
        KvCommand::Delete(a) => {
            ("kv_delete", KernelRequest::KvDelete { capsule: a.capsule.clone(), key: a.key.clone() })
        }
        KvCommand::List(a) => {
            ("kv_list", KernelRequest::KvList { capsule: a.capsule.clone(), prefix: a.prefix.clone() })
        }
    };
    let data = request::success(request::send(home, suffix, &kernel_request)?)?;
    match &args.command {
        KvCommand::Get(_) => match data.get("value") {
            Some(Value::String(value)) => println!("{value}"),
            _ => return Ok(ExitCode::FAILURE),
        },
        KvCommand::Set(_) => {}
        KvCommand::Delete(_) => {
            if data.get("deleted") != Some(&Value::Bool(true)) {
                return Ok(ExitCode::FAILURE);
            }
        }
        KvCommand::List(_) => {
            for key in data.as_array().into_iter().flatten().filter_map(Value::as_str) {
                println!("{key}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
