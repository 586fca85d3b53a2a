//! Workspace paths as capsules give them, against a workspace full of links (inside, out of
//! the root, absolute, looping): whatever a path resolves to stays inside the workspace, and
//! no read through it ever returns the file outside.
#![no_main]

use std::sync::OnceLock;

use astrid::vfs::{Vfs, VfsPath};
use libfuzzer_sys::fuzz_target;

struct Workspace {
    _dir: tempfile::TempDir,
    vfs: Vfs,
}

fn workspace() -> &'static Workspace {
    static WORKSPACE: OnceLock<Workspace> = OnceLock::new();
    WORKSPACE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ws, outside) = (dir.path().join("ws"), dir.path().join("outside"));
        for path in [ws.join("notes/deep"), outside.clone(), dir.path().join("overlay")] {
            std::fs::create_dir_all(path).expect("mkdir");
        }
        std::fs::write(outside.join("secret"), "OUTSIDE").expect("secret");
        std::fs::write(ws.join("notes/a.txt"), "a").expect("a");
        for (link, target) in [
            ("notes/up", ".."),
            ("notes/out", "../.."),
            ("notes/loop", "loop"),
            ("notes/deep/back", "../../notes"),
            ("abs", outside.to_str().expect("utf8")),
        ] {
            std::os::unix::fs::symlink(target, ws.join(link)).expect("link");
        }
        let vfs = Vfs::open(&ws, &dir.path().join("overlay")).expect("vfs");
        Workspace { _dir: dir, vfs }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let Ok(path) = VfsPath::parse(raw) else { return };
    let vfs = &workspace().vfs;
    if let Ok(real) = vfs.resolve(&path) {
        assert!(!real.as_str().split('/').any(|c| c == ".." || c == "."), "{real}");
        assert_eq!(vfs.resolve(&real).ok().as_ref(), Some(&real), "a resolved path resolves to itself");
    }
    if let Ok(bytes) = vfs.read(&path) {
        assert_ne!(bytes, b"OUTSIDE", "read outside the workspace through {raw:?}");
    }
    if let Ok(entries) = vfs.readdir(&path) {
        assert!(entries.iter().all(|e| e.name != "secret"), "listed outside through {raw:?}");
    }
});
