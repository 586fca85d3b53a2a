//! The README's examples, run exactly as written: what a new user types first must work.
//! If the README changes an example, this test fails until it runs the new one.

use crate::harness::{PipedChat, TestHome};

fn readme() -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).expect("README.md")
}

/// The lines typed into the chat, in the README's order (each is in its table, in backticks).
const CHAT: &[&str] = &["list", "read README.md", "write notes.txt: hello", "run ls", "/diff", "/commit"];
/// The one-turn examples (each in the README as `astrid <args>` or `cargo run --release -- <args>`).
const RUNS: &[&[&str]] = &[
    &["run", "What can you do?"],
    &["run", "list"],
    &["run", "read README.md"],
    &["run", "write notes.txt: hello", "--yes"],
];

/// `run "PROMPT" [flags]`, as the README writes it (the prompt in quotes).
fn quoted(args: &[&str]) -> String {
    args.iter()
        .enumerate()
        .map(|(i, a)| if i == 1 { format!("\"{a}\"") } else { (*a).to_owned() })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn the_readme_examples_are_the_ones_tested() {
    let readme = readme();
    for line in CHAT {
        assert!(readme.contains(&format!("| `{line}` |")), "the README's chat table lost {line:?}");
    }
    for args in RUNS {
        let written = quoted(args);
        assert!(
            readme.contains(&format!("astrid {written}"))
                || readme.contains(&format!("cargo run --release -- {written}")),
            "the README no longer shows {written}"
        );
    }
}

#[test]
fn the_readme_chat_examples_work_as_written() {
    let t = TestHome::new();
    let readme = readme();
    std::fs::write(t.workspace.join("README.md"), &readme).expect("README");
    let _daemon = t.daemon_with(&[], &[("ASTRID_DEFAULT_CAPSULES", "1")]);
    let mut typed: Vec<&str> = Vec::new();
    for line in CHAT {
        typed.push(line);
        // The write and the command ask first: the answer follows them.
        if line.starts_with("write ") || line.starts_with("run ") {
            typed.push("y");
        }
    }
    let (code, shown) = PipedChat::script(&t, &[], &typed);
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("list_dir answered: README.md"), "{shown}");
    assert!(shown.contains(&format!("read_file answered: {readme}")), "the whole README, once:\n{shown}");
    assert!(shown.contains("requests approval: write_file on notes.txt") && shown.contains("+hello"), "{shown}");
    // The command sees the pending write; its output is shown as it comes, then answered.
    assert!(shown.contains("$ ls"), "the approval shows the line: {shown}");
    assert!(shown.contains("│ notes.txt"), "the live output: {shown}");
    assert!(shown.contains("run_command answered: exit status 0"), "{shown}");
    assert!(shown.contains("+++ b/notes.txt") && shown.contains("1 change(s) committed"), "{shown}");
    assert_eq!(std::fs::read_to_string(t.workspace.join("notes.txt")).expect("committed"), "hello");
}

#[test]
fn the_readme_one_turn_examples_work_as_written() {
    let t = TestHome::new();
    let readme = readme();
    std::fs::write(t.workspace.join("README.md"), &readme).expect("README");
    let _daemon = t.daemon_with(&[], &[("ASTRID_DEFAULT_CAPSULES", "1")]);
    for args in RUNS {
        let output = t.cli(args);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
        assert!(stdout.starts_with("[offline model]"), "{args:?}: {stdout}");
    }
    let read = t.cli(&["run", "read README.md"]);
    assert_eq!(String::from_utf8_lossy(&read.stdout), format!("[offline model] read_file answered: {readme}"));
    let diff = String::from_utf8_lossy(&t.cli(&["workspace", "diff"]).stdout).into_owned();
    assert!(diff.contains("+hello"), "{diff}");
}
