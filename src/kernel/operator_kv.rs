//! The operator's KV requests (`astrid kv …`): the operator's own namespace, or a capsule's
//! when named. A `KvSet` is acknowledged only after the store flushed it, so an
//! acknowledged write survives a SIGKILL of the daemon.

use super::Kernel;
use crate::store::{KvError, Namespace};
use crate::types::management::{KvDeleted, KvStored, KvValue};
use crate::types::{KernelRequest, KernelResponse};

/// Serves one `Kv*` request for `principal`.
pub fn handle(kernel: &Kernel, request: KernelRequest, principal: &str) -> KernelResponse {
    serve(kernel, request, principal).unwrap_or_else(|e| KernelResponse::Error(e.to_string()))
}

fn namespace(principal: &str, capsule: Option<&str>) -> Result<Namespace, KvError> {
    match capsule {
        Some(capsule) => Namespace::capsule(principal, capsule),
        None => Namespace::operator(principal),
    }
}

fn serve(kernel: &Kernel, request: KernelRequest, principal: &str) -> Result<KernelResponse, KvError> {
    let store = kernel.store();
    Ok(match request {
        KernelRequest::KvGet { capsule, key } => {
            let value = store.get(&namespace(principal, capsule.as_deref())?, &key)?;
            KernelResponse::success(&KvValue { value: value.map(|v| String::from_utf8_lossy(&v).into_owned()) })
        }
        KernelRequest::KvSet { capsule, key, value } => {
            store.set(&namespace(principal, capsule.as_deref())?, &key, value.as_bytes())?;
            store.flush()?;
            KernelResponse::success(&KvStored { stored: key })
        }
        KernelRequest::KvDelete { capsule, key } => {
            let deleted = store.delete(&namespace(principal, capsule.as_deref())?, &key)?;
            store.flush()?;
            KernelResponse::success(&KvDeleted { deleted })
        }
        KernelRequest::KvList { capsule, prefix } => {
            KernelResponse::success(&store.list_keys(&namespace(principal, capsule.as_deref())?, &prefix)?)
        }
        other => KernelResponse::Error(format!("{} is not a KV request", other.method_name())),
    })
}
