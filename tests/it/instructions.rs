//! Project instructions: the user's `AGENTS.md` (in the Astrid home) and the project's (at the
//! workspace root) join the system prompt the model receives, and the chat says so at the
//! start; one that links out of the workspace is refused, never sent.

use astrid::types::InstructionFiles;

use crate::agent::agent;
use crate::harness::{PipedChat, TestHome};
use crate::openai_server::{Script, Server};

/// The system prompt of the last request the server received.
fn last_system_prompt(server: &Server) -> String {
    let requests = server.received();
    let first = &requests.last().expect("a request").body["messages"][0];
    assert_eq!(first["role"], "system", "{first}");
    first["content"].as_str().expect("text").to_owned()
}

#[test]
fn agents_md_of_the_home_and_the_workspace_join_the_system_prompt_and_the_chat_says_so() {
    let t = TestHome::new();
    let server = Server::start(vec![Script::Text(vec!["Bonjour."])]);
    let _daemon = agent(&t, &server, &[], &[]);
    std::fs::write(t.home.join("AGENTS.md"), "Always answer in French.\n").expect("home AGENTS.md");
    std::fs::write(t.workspace.join("AGENTS.md"), "Run cargo test before you say done.\n").expect("AGENTS.md");
    let (code, shown) = PipedChat::script(&t, &[], &["hello"]);
    assert_eq!(code, Some(0), "{shown}\n{}", t.log());
    let said = format!(
        "(instructions loaded: {}/AGENTS.md (user, 25 bytes); {}/AGENTS.md (project, 36 bytes))",
        t.home.display(),
        t.workspace.display()
    );
    assert_eq!(shown.matches(&said).count(), 1, "said once, at the start: {shown}");
    assert!(shown.find(&said) < shown.find("Bonjour."), "before the first answer: {shown}");
    let system = last_system_prompt(&server);
    let (user, project) = (system.find("Always answer in French."), system.find("Run cargo test before you say done."));
    assert!(user.is_some() && project.is_some() && user < project, "the user's, then the project's: {system}");
    assert!(system.starts_with("You are the agent of Astrid"), "Astrid's own prompt stays first: {system}");

    // A change applies to the next turn; the project file the agent wrote (pending) counts.
    std::fs::remove_file(t.home.join("AGENTS.md")).expect("rm");
    let output = t.cli(&["run", "again"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let system = last_system_prompt(&server);
    assert!(!system.contains("French") && system.contains("Run cargo test"), "{system}");
}

#[test]
fn a_long_file_is_cut_and_one_linking_out_of_the_workspace_is_refused() {
    let t = TestHome::new();
    let server = Server::start(vec![Script::Text(vec!["ok"])]);
    let _daemon = agent(&t, &server, &[], &[]);
    // A project that points its instructions at a secret outside it.
    let secret = t.home.with_extension("secret");
    std::fs::write(&secret, "PRIVATE KEY MATERIAL").expect("secret");
    std::os::unix::fs::symlink(&secret, t.workspace.join("AGENTS.md")).expect("link");
    std::fs::write(t.home.join("AGENTS.md"), format!("{}TAIL", "be careful. ".repeat(4000))).expect("long");
    let output = t.cli(&["run", "hi"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let system = last_system_prompt(&server);
    assert!(!system.contains("PRIVATE KEY MATERIAL"), "a link out of the workspace is never followed");
    assert!(!system.contains("TAIL") && system.contains("[… cut here:"), "cut at 32 KiB, and marked");

    // The operator sees the same thing the agent got, and why the project's file was left out.
    let mut client = t.client();
    let files: InstructionFiles =
        crate::harness::reply_data(&client.request("instructions", serde_json::json!({"method": "GetInstructions"})));
    assert_eq!(files.files.len(), 1, "{files:?}");
    assert!(files.files[0].truncated && files.files[0].bytes == 48_004, "{files:?}");
    assert!(files.refused.iter().any(|r| r.contains("leads outside the workspace")), "{files:?}");
}
