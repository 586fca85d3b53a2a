//! hello: the smallest run-loop capsule. It waits for prompts and answers each one.

use std::time::Duration;

use astrid_sdk::types::{IpcPayload, UserInputFields};
use astrid_sdk::{Error, Subscription, ipc};

fn run() {
    let prompts = match Subscription::new("user.v1.prompt") {
        Ok(subscription) => subscription,
        Err(e) => return astrid_sdk::log(&format!("cannot subscribe to prompts: {e}")),
    };
    astrid_sdk::signal_ready();
    loop {
        match prompts.recv(Duration::from_secs(60)) {
            Ok(Some(message)) => {
                let Some(UserInputFields { text, session_id, .. }) = UserInputFields::from_payload(&message.payload)
                else {
                    continue;
                };
                let reply = IpcPayload::AgentResponse {
                    text: format!("hello, {text}"),
                    is_final: true,
                    session_id,
                    outcome: None,
                };
                if let Err(e) = ipc::publish("agent.v1.response", &reply) {
                    astrid_sdk::log(&format!("cannot answer: {e}"));
                }
            }
            Ok(None) => {}
            Err(Error::Closed) => return,
            Err(e) => astrid_sdk::log(&format!("recv failed: {e}")),
        }
    }
}

astrid_sdk::capsule!(run = run);
