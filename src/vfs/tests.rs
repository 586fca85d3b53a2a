//! The VFS against real directories: overlay semantics, and hostile paths and links.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

struct Fixture {
    tmp: tempfile::TempDir,
    vfs: Vfs,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        for dir in ["ws", "outside", "overlay"] {
            fs::create_dir_all(tmp.path().join(dir)).expect("mkdir");
        }
        fs::write(tmp.path().join("outside/canary"), "secret").expect("canary");
        let vfs = Vfs::open(&tmp.path().join("ws"), &tmp.path().join("overlay")).expect("open");
        Self { tmp, vfs }
    }
    fn ws(&self) -> std::path::PathBuf {
        self.tmp.path().join("ws")
    }
    fn outside(&self) -> std::path::PathBuf {
        self.tmp.path().join("outside")
    }
    fn outside_untouched(&self) -> bool {
        let names: Vec<_> =
            fs::read_dir(self.outside()).expect("ls").filter_map(Result::ok).map(|e| e.file_name()).collect();
        names.len() == 1 && fs::read_to_string(self.outside().join("canary")).expect("canary") == "secret"
    }
}

fn p(path: &str) -> VfsPath {
    VfsPath::parse(path).expect("valid path")
}

#[test]
fn writes_stay_in_the_overlay_until_commit() {
    let f = Fixture::new();
    fs::write(f.ws().join("keep.txt"), "one\ntwo\n").expect("write");
    fs::write(f.ws().join("gone.txt"), "bye\n").expect("write");
    f.vfs.write(&p("keep.txt"), b"one\nTWO\n").expect("modify");
    f.vfs.write(&p("new/dir/file.txt"), b"hello\n").expect("add");
    f.vfs.unlink(&p("gone.txt")).expect("delete");
    assert_eq!(f.vfs.read(&p("keep.txt")).expect("read"), b"one\nTWO\n");
    assert!(!f.vfs.exists(&p("gone.txt")).expect("exists"));
    assert_eq!(fs::read_to_string(f.ws().join("keep.txt")).expect("ws"), "one\ntwo\n", "workspace untouched");
    let names: Vec<String> = f.vfs.readdir(&p("")).expect("ls").into_iter().map(|e| e.name).collect();
    assert_eq!(names, vec!["keep.txt", "new"]);
    let kinds: Vec<(String, ChangeKind)> =
        f.vfs.changes().expect("changes").into_iter().map(|c| (c.path, c.kind)).collect();
    assert_eq!(
        kinds,
        vec![
            ("gone.txt".into(), ChangeKind::Deleted),
            ("keep.txt".into(), ChangeKind::Modified),
            ("new/dir/file.txt".into(), ChangeKind::Added)
        ]
    );
    let diff = f.vfs.diff().expect("diff");
    assert!(diff.contains("--- a/keep.txt\n+++ b/keep.txt") && diff.contains("-two\n+TWO"), "{diff}");
    assert!(diff.contains("+++ b/new/dir/file.txt") && diff.contains("--- a/gone.txt"), "{diff}");
    // A second Vfs on the same overlay sees the same pending changes (daemon restart).
    let reopened = Vfs::open(&f.ws(), &f.tmp.path().join("overlay")).expect("reopen");
    assert_eq!(reopened.changes().expect("changes").len(), 3);
    assert_eq!(f.vfs.commit().expect("commit").len(), 3);
    assert_eq!(fs::read_to_string(f.ws().join("keep.txt")).expect("ws"), "one\nTWO\n");
    assert_eq!(fs::read_to_string(f.ws().join("new/dir/file.txt")).expect("ws"), "hello\n");
    assert!(!f.ws().join("gone.txt").exists());
    assert!(f.vfs.changes().expect("changes").is_empty());
}

#[test]
fn discard_drops_everything_and_identical_rewrites_are_no_change() {
    let f = Fixture::new();
    fs::write(f.ws().join("a.txt"), "same").expect("write");
    f.vfs.write(&p("a.txt"), b"same").expect("rewrite");
    assert!(f.vfs.changes().expect("changes").is_empty());
    f.vfs.write(&p("b.txt"), b"new").expect("add");
    f.vfs.unlink(&p("a.txt")).expect("delete");
    assert_eq!(f.vfs.discard().expect("discard"), 2);
    assert!(f.vfs.exists(&p("a.txt")).expect("exists"));
    assert!(!f.vfs.exists(&p("b.txt")).expect("exists"));
    assert!(matches!(f.vfs.read(&p("")), Err(VfsError::IsADirectory { .. })));
    assert!(matches!(f.vfs.read(&p("missing")), Err(VfsError::NotFound { .. })));
}

#[test]
fn symlinks_out_of_the_root_at_every_depth_are_refused() {
    let f = Fixture::new();
    fs::create_dir_all(f.ws().join("a/b/c/d")).expect("tree");
    let depths = ["", "a", "a/b", "a/b/c", "a/b/c/d"];
    for (i, depth) in depths.iter().enumerate() {
        let base = if depth.is_empty() { f.ws() } else { f.ws().join(depth) };
        let absolute = base.join(format!("abs{i}"));
        std::os::unix::fs::symlink(f.outside(), &absolute).expect("symlink");
        let relative = base.join(format!("rel{i}"));
        let climb = "../".repeat(depth.split('/').filter(|s| !s.is_empty()).count() + 1);
        std::os::unix::fs::symlink(format!("{climb}outside"), &relative).expect("symlink");
        for link in [format!("abs{i}"), format!("rel{i}")] {
            let link = if depth.is_empty() { link } else { format!("{depth}/{link}") };
            let through = p(&format!("{link}/canary"));
            assert!(f.vfs.read(&through).is_err(), "read through {link}");
            assert!(f.vfs.write(&through, b"pwned").is_err(), "write through {link}");
            assert!(f.vfs.write(&p(&link), b"pwned").is_err(), "write onto {link}");
            assert!(f.vfs.mkdir(&p(&format!("{link}/x"))).is_err(), "mkdir through {link}");
            assert!(f.vfs.unlink(&through).is_err(), "unlink through {link}");
            assert!(f.vfs.readdir(&p(&link)).is_err(), "readdir through {link}");
        }
    }
    let _ = f.vfs.commit();
    assert!(f.outside_untouched());
}

#[test]
fn a_directory_swapped_for_a_link_mid_operation_never_leaks() {
    let f = Fixture::new();
    let target = f.ws().join("swap");
    fs::create_dir_all(&target).expect("dir");
    fs::write(target.join("canary"), "inside").expect("file");
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, ws, outside) = (Arc::clone(&stop), f.ws(), f.outside());
        std::thread::spawn(move || {
            let (real, link) = (ws.join("swap-real"), ws.join("swap-link"));
            let _ = std::os::unix::fs::symlink(&outside, &link);
            while !stop.load(Ordering::Relaxed) {
                let _ = fs::rename(ws.join("swap"), &real);
                let _ = fs::rename(&link, ws.join("swap"));
                let _ = fs::rename(ws.join("swap"), &link);
                let _ = fs::rename(&real, ws.join("swap"));
            }
        })
    };
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(800) {
        if let Ok(bytes) = f.vfs.read(&p("swap/canary")) {
            assert_eq!(bytes, b"inside", "read the outside canary through a swapped link");
        }
        let _ = f.vfs.write(&p("swap/planted"), b"x");
        let _ = f.vfs.mkdir(&p("swap/d"));
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().expect("swapper");
    let _ = f.vfs.commit();
    assert!(f.outside_untouched(), "a file reached the outside directory");
}

fn hostile_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("..".to_owned()),
        Just(".".to_owned()),
        Just(String::new()),
        Just("link".to_owned()),
        Just("canary".to_owned()),
        Just("/".to_owned()),
        "[a-z]{1,6}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn no_generated_path_reaches_outside(parts in proptest::collection::vec(hostile_segment(), 1..6), data in any::<bool>()) {
        let f = Fixture::new();
        std::os::unix::fs::symlink(f.outside(), f.ws().join("link")).expect("symlink");
        let raw = parts.join("/");
        if let Ok(path) = VfsPath::parse(&raw) {
            if let Ok(bytes) = f.vfs.read(&path) {
                prop_assert_ne!(bytes, b"secret".to_vec());
            }
            let _ = f.vfs.write(&path, if data { b"x" } else { b"" });
            let _ = f.vfs.mkdir(&path);
            let _ = f.vfs.unlink(&path);
            let _ = f.vfs.commit();
        }
        prop_assert!(f.outside_untouched());
        prop_assert!(!Path::new(&f.tmp.path().join("canary")).exists());
    }
}

#[test]
fn a_path_resolves_to_where_its_links_really_lead() {
    let f = Fixture::new();
    fs::create_dir_all(f.ws().join("notes/real")).expect("mkdir");
    fs::write(f.ws().join("secrets.txt"), "top secret").expect("write");
    std::os::unix::fs::symlink("..", f.ws().join("notes/up")).expect("link");
    std::os::unix::fs::symlink("../secrets.txt", f.ws().join("notes/to_secret")).expect("link");
    std::os::unix::fs::symlink("real", f.ws().join("notes/alias")).expect("link");
    std::os::unix::fs::symlink("../..", f.ws().join("notes/out")).expect("link");
    std::os::unix::fs::symlink(f.outside(), f.ws().join("abs")).expect("link");
    std::os::unix::fs::symlink("loop", f.ws().join("loop")).expect("link");
    let resolved = |path: &str| f.vfs.resolve(&p(path)).map(|r| r.as_str().to_owned());
    assert_eq!(resolved("notes/to_secret").expect("resolves"), "secrets.txt");
    assert_eq!(resolved("notes/up/secrets.txt").expect("resolves"), "secrets.txt");
    assert_eq!(resolved("notes/up").expect("resolves"), "", "the workspace root");
    assert_eq!(resolved("notes/alias/x.txt").expect("resolves"), "notes/real/x.txt");
    assert_eq!(resolved("notes/plain.txt").expect("resolves"), "notes/plain.txt", "no link: as named");
    assert!(matches!(f.vfs.resolve(&p("notes/out/outside/canary")), Err(VfsError::Escape { .. })), "past the root");
    assert!(matches!(f.vfs.resolve(&p("abs/canary")), Err(VfsError::Escape { .. })), "an absolute target");
    assert!(matches!(f.vfs.resolve(&p("loop")), Err(VfsError::TooManyLinks { .. })));
    // A link the capsule deleted is gone for it.
    f.vfs.unlink(&p("notes/to_secret")).ok();
    assert!(f.outside_untouched());
}

#[test]
fn commit_refuses_a_change_whose_path_gained_a_link_since_it_was_written() {
    let f = Fixture::new();
    fs::create_dir_all(f.ws().join("notes")).expect("mkdir");
    fs::create_dir_all(f.ws().join("elsewhere")).expect("mkdir");
    f.vfs.write(&p("notes/todo.txt"), b"pending").expect("write");
    // The person's own tree changes under the pending write: notes now leads elsewhere.
    fs::remove_dir(f.ws().join("notes")).expect("rmdir");
    std::os::unix::fs::symlink("elsewhere", f.ws().join("notes")).expect("link");
    assert!(matches!(f.vfs.commit(), Err(VfsError::SymlinkRefused { .. })));
    assert!(!f.ws().join("elsewhere/todo.txt").exists(), "nothing written through the link");
    assert_eq!(f.vfs.changes().expect("changes").len(), 1, "the change stays pending");
}

mod import {
    use super::*;

    fn p(path: &str) -> VfsPath {
        VfsPath::parse(path).expect("path")
    }

    /// A staging directory inside the overlay's, as the sandbox makes one.
    fn stage(f: &Fixture, files: &[(&str, &str)]) -> std::path::PathBuf {
        let staged = f.vfs.command_dir("test").expect("command dir").join("files");
        for (path, content) in files {
            let target = staged.join(path);
            fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
            fs::write(target, content).expect("stage");
        }
        staged
    }

    #[test]
    fn files_move_in_and_identical_ones_are_no_change() {
        let f = Fixture::new();
        fs::write(f.ws().join("same"), "same").expect("same");
        fs::write(f.ws().join("old"), "old").expect("old");
        let staged = stage(&f, &[("same", "same"), ("old", "new"), ("dir/added", "added")]);
        let items = [Import::File(p("same")), Import::File(p("old")), Import::File(p("dir/added"))];
        let imported = f.vfs.import(&staged, &items).expect("import");
        let kinds: Vec<_> = imported.changes.iter().map(|c| (c.path.as_str(), c.kind)).collect();
        assert_eq!(kinds, [("dir/added", ChangeKind::Added), ("old", ChangeKind::Modified)]);
        assert!(imported.refused.is_empty());
        assert_eq!(f.vfs.read(&p("old")).expect("read"), b"new");
        assert_eq!(fs::read_to_string(f.ws().join("old")).expect("workspace"), "old");
        assert!(!staged.join("old").exists(), "moved, not copied");
    }

    #[test]
    fn deletions_hide_files_and_whole_directories() {
        let f = Fixture::new();
        fs::create_dir_all(f.ws().join("d/e")).expect("dirs");
        fs::write(f.ws().join("d/a"), "a").expect("a");
        fs::write(f.ws().join("d/e/b"), "b").expect("b");
        fs::write(f.ws().join("top"), "t").expect("top");
        f.vfs.write(&p("d/pending"), b"p").expect("pending");
        let staged = stage(&f, &[]);
        let imported = f.vfs.import(&staged, &[Import::Deleted(p("d")), Import::Deleted(p("top"))]).expect("import");
        let paths: Vec<_> = imported.changes.iter().map(|c| (c.path.as_str(), c.kind)).collect();
        assert_eq!(
            paths,
            [
                ("d/a", ChangeKind::Deleted),
                ("d/e/b", ChangeKind::Deleted),
                ("d/pending", ChangeKind::Deleted),
                ("top", ChangeKind::Deleted)
            ]
        );
        assert!(!f.vfs.exists(&p("d/a")).expect("exists") && !f.vfs.exists(&p("d/pending")).expect("exists"));
        assert!(f.ws().join("d/e/b").exists(), "the workspace is untouched until commit");
        // The whiteouts are saved: a reopened VFS sees the same.
        let reopened = Vfs::open(&f.ws(), &f.tmp.path().join("overlay")).expect("reopen");
        assert!(!reopened.exists(&p("top")).expect("exists"));
        f.vfs.commit().expect("commit");
        assert!(!f.ws().join("d/e/b").exists() && !f.ws().join("top").exists());
    }

    #[test]
    fn a_link_in_the_way_is_refused_and_the_rest_imported() {
        let f = Fixture::new();
        std::os::unix::fs::symlink(f.outside(), f.ws().join("out")).expect("link");
        std::os::unix::fs::symlink("canary", f.ws().join("file-link")).expect("link");
        let staged = stage(&f, &[("out/canary", "pwned"), ("file-link", "pwned"), ("fine", "ok")]);
        std::os::unix::fs::symlink("/etc/passwd", staged.join("staged-link")).expect("staged link");
        let items = [
            Import::File(p("out/canary")),
            Import::File(p("file-link")),
            Import::File(p("staged-link")),
            Import::File(p("fine")),
        ];
        let imported = f.vfs.import(&staged, &items).expect("import");
        let refused: Vec<_> = imported.refused.iter().map(|(path, _)| path.as_str()).collect();
        assert_eq!(refused, ["out/canary", "file-link", "staged-link"]);
        assert_eq!(imported.changes.len(), 1);
        assert!(f.outside_untouched());
        // Deleting through a link removes the link only.
        let imported = f.vfs.import(&staged, &[Import::Deleted(p("out"))]).expect("import");
        assert_eq!(imported.changes.len(), 1);
        assert!(f.outside_untouched());
        f.vfs.commit().expect("commit");
        assert!(fs::symlink_metadata(f.ws().join("out")).is_err() && f.outside_untouched());
    }

    #[test]
    fn stale_command_directories_are_cleared_at_open() {
        let f = Fixture::new();
        let dir = f.vfs.command_dir("crashed").expect("dir");
        fs::write(dir.join("leftover"), "x").expect("leftover");
        drop(Vfs::open(&f.ws(), &f.tmp.path().join("overlay")).expect("reopen"));
        assert!(!dir.exists());
    }
}

#[test]
fn a_unified_diff_is_what_patch_and_git_apply_read() {
    // Changes more than twice the context apart make two hunks; a last line without its
    // newline is marked as diff(1) marks it.
    let old: String = (1..=20).map(|n| format!("{n}\n")).collect::<String>() + "last";
    let new = old.replacen("2\n", "two\n", 1) + "\n";
    let diff = super::unified_diff(&old, &new, "a/f.txt".into(), "b/f.txt".into());
    assert_eq!(
        diff,
        "--- a/f.txt\n+++ b/f.txt\n@@ -1,5 +1,5 @@\n 1\n-2\n+two\n 3\n 4\n 5\n\
         @@ -18,4 +18,4 @@\n 18\n 19\n 20\n-last\n\\ No newline at end of file\n+last\n"
    );
    // And `git apply` turns the old text into the new one with it.
    let tmp = tempfile::tempdir().expect("tempdir");
    fs::write(tmp.path().join("f.txt"), &old).expect("old");
    fs::write(tmp.path().join("f.diff"), &diff).expect("diff");
    let applied = std::process::Command::new("git")
        .args(["apply", "f.diff"])
        .current_dir(tmp.path())
        .output()
        .expect("git apply runs");
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    assert_eq!(fs::read_to_string(tmp.path().join("f.txt")).expect("new"), new);
    assert_eq!(
        super::unified_diff("", "new\n", "/dev/null".into(), "b/n.txt".into()),
        "--- /dev/null\n+++ b/n.txt\n@@ -0,0 +1 @@\n+new\n"
    );
    assert_eq!(super::unified_diff("same\n", "same\n", "a/s".into(), "b/s".into()), "", "no change, no header");
}
