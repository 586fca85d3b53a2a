//! `astrid kv …`: the operator's view of the KV store, through the daemon (which alone
//! holds the database). `set` returns only after the write is durable.

use std::process::ExitCode;

use argh::FromArgs;

use super::request;
use crate::home::AstridHome;
use crate::types::KernelRequest;
use crate::types::management::{KvDeleted, KvStored, KvValue};

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
    let reply = request::send(home, suffix, &kernel_request)?;
    match &args.command {
        KvCommand::Get(_) => match reply.into_data::<KvValue>()?.value {
            Some(value) => println!("{value}"),
            None => return Ok(ExitCode::FAILURE),
        },
        KvCommand::Set(_) => {
            reply.into_data::<KvStored>()?;
        }
        KvCommand::Delete(_) => {
            if !reply.into_data::<KvDeleted>()?.deleted {
                return Ok(ExitCode::FAILURE);
            }
        }
        KvCommand::List(_) => {
            for key in reply.into_data::<Vec<String>>()? {
                println!("{key}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
