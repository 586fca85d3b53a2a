//! The home is Astrid's alone: what is refused (another user's, a foreign directory, links,
//! directories others may write to) and what every path under it looks like, whatever the
//! umask.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::harness::{HANG, TestHome, mode};

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Runs the daemon role to its end (it is expected to refuse to boot).
fn daemon_refuses(t: &TestHome) -> String {
    let output = t.command("astrid-daemon").output().expect("run");
    assert_eq!(output.status.code(), Some(1), "the daemon booted: {}", stderr(&output));
    stderr(&output)
}

/// Boots a daemon once and stops it, so the home has its layout.
fn made_home(t: &TestHome) {
    let mut daemon = t.daemon(&[]);
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    daemon.wait_exit(HANG).expect("daemon exit");
}

#[test]
fn a_directory_astrid_did_not_make_is_refused_untouched() {
    let t = TestHome::new();
    std::fs::create_dir_all(t.home.join("src")).expect("mkdir");
    std::fs::write(t.home.join("notes.txt"), "mine").expect("write");
    chmod(&t.home, 0o755);
    let err = daemon_refuses(&t);
    assert!(err.contains(&format!("refusing {} as the Astrid home", t.home.display())), "{err}");
    assert!(err.contains("notes.txt") && err.contains("new or empty directory"), "{err}");
    assert_eq!(mode(&t.home), 0o755, "a refused home must not be changed");
    assert!(!t.home.join("run").exists() && !t.home.join("etc").exists(), "nothing may be created in it");
    // The CLI says why before it starts anything, instead of a daemon dying in the dark.
    let started = t.cli(&["start"]);
    assert_eq!(started.status.code(), Some(1));
    assert!(stderr(&started).contains("refusing"), "{}", stderr(&started));
    assert!(!t.home.join("run").exists());
    // Nor does the CLI write settings (a key) into it.
    let config = t.cli(&["config", "model", "--provider", "offline"]);
    assert_eq!(config.status.code(), Some(1));
    assert!(stderr(&config).contains("refusing"), "{}", stderr(&config));
    assert!(!t.home.join("home").exists());
}

#[test]
fn an_empty_directory_or_one_with_only_astrid_names_becomes_a_home() {
    let t = TestHome::new();
    std::fs::create_dir_all(t.home.join("etc")).expect("mkdir");
    std::fs::write(t.home.join("etc/servers.toml"), "").expect("servers.toml");
    let _daemon = t.daemon(&[]);
    assert_eq!(std::fs::read_to_string(t.home.join("etc/layout-version")).expect("marker"), "1");
    // Once marked, the home may hold other things too (a person's notes).
    drop(_daemon);
    std::fs::write(t.home.join("README"), "my astrid home").expect("write");
    let _again = t.daemon(&[]);
}

#[test]
fn the_file_system_root_is_not_a_home() {
    // Only looked at, never prepared: `check` changes nothing, whoever runs it.
    let err = astrid::home::AstridHome::at("/").check().expect_err("/ accepted");
    let text = err.to_string();
    assert!(text.contains("refusing /"), "{text}");
}

#[test]
fn another_users_home_is_refused() {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        println!("skipped: running as root, every path is root's own; judge() covers this in unit tests");
        return;
    }
    // `/` belongs to root: refused for its owner before anything else is looked at.
    let t = TestHome::new();
    let output = t.command("astrid-daemon").env("ASTRID_HOME", "/").output().expect("run");
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(err.contains(&format!("it belongs to uid 0, not to you (uid {uid})")), "{err}");
    let status = t.cli_with(&["status"], &[("ASTRID_HOME", "/")]);
    assert_eq!(status.status.code(), Some(1), "{}", stdout(&status));
    assert!(stderr(&status).contains("belongs to uid 0"), "{}", stderr(&status));
}

#[test]
fn symlinked_layout_directories_are_refused_and_their_targets_untouched() {
    for name in ["run", "bin", "log", "keys", "home"] {
        let t = TestHome::new();
        std::fs::create_dir_all(&t.home).expect("home");
        let target = t.workspace.join(format!("elsewhere-{name}"));
        std::fs::create_dir_all(&target).expect("target");
        chmod(&target, 0o755);
        std::os::unix::fs::symlink(&target, t.home.join(name)).expect("symlink");
        let err = daemon_refuses(&t);
        let link = t.home.join(name);
        assert!(err.contains(&format!("refusing {}: it is a symbolic link", link.display())), "{name}: {err}");
        assert_eq!(mode(&target), 0o755, "{name}: the link's target was changed");
        assert_eq!(
            std::fs::read_dir(&target).expect("ls").count(),
            0,
            "{name}: something was written through the link"
        );
    }
}

#[test]
fn a_symlinked_lock_file_is_refused_and_its_target_untouched() {
    let t = TestHome::new();
    made_home(&t);
    let precious = t.workspace.join("precious");
    std::fs::write(&precious, "keep").expect("write");
    let lock = t.run_dir().join("system.lock");
    std::fs::remove_file(&lock).expect("rm lock");
    std::os::unix::fs::symlink(&precious, &lock).expect("symlink");
    let err = daemon_refuses(&t);
    assert!(err.contains("symbolic link") && err.contains(&lock.display().to_string()), "{err}");
    assert_eq!(std::fs::read_to_string(&precious).expect("read"), "keep");
    // The CLI will not read a pid through it either.
    let status = t.cli(&["status"]);
    assert_eq!(status.status.code(), Some(1));
    assert!(stderr(&status).contains("symbolic link"), "{}", stderr(&status));
}

#[test]
fn directories_others_may_write_to_are_refused_by_daemon_and_cli() {
    let t = TestHome::new();
    made_home(&t);
    for (path, loose) in [(t.home.clone(), 0o770), (t.run_dir(), 0o703)] {
        chmod(&path, loose);
        let err = daemon_refuses(&t);
        assert!(err.contains(&format!("refusing {}: its mode {loose:04o}", path.display())), "{err}");
        assert!(err.contains(&format!("chmod go-w {}", path.display())), "{err}");
        assert_eq!(mode(&path), loose, "a refused path must not be changed");
        chmod(&path, 0o700);
    }
    // A running daemon whose run/ becomes writable by others: the CLI no longer hands it
    // the token (someone else could have swapped in their own socket).
    let _daemon = t.daemon(&[]);
    assert_eq!(t.cli(&["status"]).status.code(), Some(0));
    chmod(&t.run_dir(), 0o777);
    let status = t.cli(&["status"]);
    assert_eq!(status.status.code(), Some(1), "{}", stdout(&status));
    assert!(stderr(&status).contains(&format!("refusing {}", t.run_dir().display())), "{}", stderr(&status));
    chmod(&t.run_dir(), 0o700);
    // A merely readable directory is Astrid's to tighten, and it says so.
    chmod(&t.home.join("bin"), 0o755);
    drop(_daemon);
    let _daemon = t.daemon(&[]);
    assert_eq!(mode(&t.home.join("bin")), 0o700);
    assert!(t.logged("bin was mode 0755, tightened to 0700"), "{}", t.log());
}

/// Every path under `root`, links not followed.
fn walk(root: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).expect("ls").map(|e| e.expect("entry")) {
            let meta = std::fs::symlink_metadata(entry.path()).expect("lstat");
            if meta.is_dir() {
                todo.push(entry.path());
            }
            out.push((entry.path(), meta));
        }
    }
    out
}

/// The paths under the home that are not 0700 (directories) or 0600 (everything else; 0700
/// for a file a capsule ships as executable).
fn loose_paths(home: &Path) -> Vec<String> {
    let private = |meta: &std::fs::Metadata| match meta.mode() & 0o7777 {
        0o700 => meta.is_dir() || meta.is_file(),
        0o600 => !meta.is_dir(),
        _ => false,
    };
    let mut loose: Vec<String> = walk(home)
        .into_iter()
        .filter(|(_, meta)| !private(meta))
        .map(|(path, meta)| format!("{} {:04o}", path.display(), meta.mode() & 0o7777))
        .collect();
    loose.sort();
    loose
}

#[test]
fn every_path_in_the_home_is_private_whatever_the_umask() {
    let t = TestHome::new();
    let astrid = t.bin.join("astrid");
    // The CLI, and so the daemon it starts, run with umask 000.
    let run = |args: &[&str]| {
        let mut sh = std::process::Command::new("sh");
        sh.arg("-c").arg("umask 000; exec \"$0\" \"$@\"").arg(&astrid).args(args).current_dir(&t.workspace);
        // The harness's environment for the role, on the shell that execs it.
        for (key, value) in t.command("astrid").get_envs() {
            match value {
                Some(value) => sh.env(key, value),
                None => sh.env_remove(key),
            };
        }
        let output = sh.output().expect("sh");
        assert_eq!(output.status.code(), Some(0), "astrid {args:?}: {}", stderr(&output));
        output
    };
    run(&["start"]);
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("capsules-examples/kv-counter");
    run(&["capsule", "install", example.to_str().expect("utf8"), "--yes"]);
    run(&["kv", "set", "greeting", "hello"]);
    run(&["config", "model", "--provider", "offline"]);
    run(&["workspace", "discard"]);
    run(&["status"]);
    let expected_dirs = ["var/overlay", "var/state.db", "home/default/.local/capsules/kv-counter", "keys"];
    for dir in expected_dirs {
        assert!(t.home.join(dir).is_dir(), "{dir} missing: the test no longer covers it");
    }
    assert_eq!(loose_paths(&t.home), Vec::<String>::new(), "paths open to others while the daemon runs");
    run(&["stop"]);
    assert_eq!(loose_paths(&t.home), Vec::<String>::new(), "paths open to others after a stop");

    // A key loosened by hand is tightened at the next boot, loudly.
    let key = t.home.join("keys/runtime.key");
    chmod(&key, 0o644);
    run(&["start"]);
    assert_eq!(mode(&key), 0o600);
    let tightened = format!("{} was mode 0644, tightened to 0600", key.display());
    assert!(t.logged(&tightened), "{}", t.log());
    run(&["stop"]);
}
