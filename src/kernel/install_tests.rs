use super::*;

/// The smallest valid module: magic and version.
const EMPTY_MODULE: &[u8] = b"\0asm\x01\0\0\0";

fn source(root: &Path, version: &str, module: &[u8]) -> PathBuf {
    let dir = root.join(format!("src-{version}"));
    fs::create_dir_all(dir.join("docs")).expect("mkdir");
    fs::write(
        dir.join(MANIFEST_FILE),
        format!(
            "[package]\nname = \"demo\"\nversion = \"{version}\"\n\n[[component]]\nid = \"main\"\nfile = \"demo.wasm\"\n"
        ),
    )
    .expect("manifest");
    fs::write(dir.join("demo.wasm"), module).expect("module");
    fs::write(dir.join("docs/README.md"), "hi").expect("doc");
    fs::create_dir_all(dir.join(".git")).expect("git");
    fs::write(dir.join(".git/HEAD"), "ref").expect("git head");
    dir
}

#[test]
fn install_pins_the_module_and_a_reinstall_replaces_it_atomically() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let capsules = tmp.path().join("capsules");
    let installed = install(&source(tmp.path(), "1.0.0", EMPTY_MODULE), &capsules).expect("install");
    assert_eq!(installed.name, "demo");
    assert_eq!(installed.replaced, None);
    let verified = verify_installed(&installed.dir).expect("verify");
    assert_eq!(verified.wasm.as_deref(), Some(EMPTY_MODULE));
    assert_eq!(verified.meta.wasm_hash, Some(hash_hex(EMPTY_MODULE)));
    assert!(installed.dir.join("docs/README.md").is_file());
    assert!(!installed.dir.join(".git").exists(), "hidden entries are not installed");
    let first = verified.meta.installed_at;

    let again = install(&source(tmp.path(), "1.1.0", EMPTY_MODULE), &capsules).expect("reinstall");
    assert_eq!(again.replaced.as_deref(), Some("1.0.0"));
    let meta = verify_installed(&again.dir).expect("verify").meta;
    assert_eq!((meta.version.as_str(), meta.installed_at), ("1.1.0", first));
    let leftovers: Vec<_> =
        fs::read_dir(&capsules).expect("ls").filter_map(Result::ok).map(|e| e.file_name()).collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("demo")], "no staging or old copies remain");
}

#[test]
fn a_changed_module_or_manifest_is_refused_with_the_reason() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = install(&source(tmp.path(), "1.0.0", EMPTY_MODULE), &tmp.path().join("c")).expect("install").dir;
    fs::write(dir.join("demo.wasm"), b"\0asm\x01\0\0\0\0").expect("tamper");
    let err = verify_installed(&dir).expect_err("tampered module").to_string();
    assert!(err.contains("does not match the BLAKE3"), "{err}");
    fs::write(dir.join("demo.wasm"), EMPTY_MODULE).expect("restore");
    verify_installed(&dir).expect("restored");
    let manifest = fs::read_to_string(dir.join(MANIFEST_FILE)).expect("read");
    fs::write(dir.join(MANIFEST_FILE), format!("{manifest}\n[capabilities]\nnet = [\"*\"]\n")).expect("widen");
    let err = verify_installed(&dir).expect_err("edited manifest").to_string();
    assert!(err.contains("changed since it was installed"), "{err}");
    fs::remove_file(dir.join(META_FILE)).expect("rm meta");
    let err = verify_installed(&dir).expect_err("no meta").to_string();
    assert!(err.contains("astrid capsule install"), "{err}");
}

#[test]
fn a_failed_install_leaves_the_previous_one_untouched() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let capsules = tmp.path().join("c");
    install(&source(tmp.path(), "1.0.0", EMPTY_MODULE), &capsules).expect("install");
    let broken = source(tmp.path(), "2.0.0", b"not wasm at all");
    let err = install(&broken, &capsules).expect_err("not wasm").to_string();
    assert!(err.contains("not a binary WebAssembly module"), "{err}");
    let linked = source(tmp.path(), "3.0.0", EMPTY_MODULE);
    std::os::unix::fs::symlink("/etc/passwd", linked.join("docs/passwd")).expect("symlink");
    let err = install(&linked, &capsules).expect_err("symlink").to_string();
    assert!(err.contains("symlinks"), "{err}");
    assert_eq!(verify_installed(&capsules.join("demo")).expect("old install").meta.version, "1.0.0");
    assert_eq!(fs::read_dir(&capsules).expect("ls").count(), 1, "staging directories are cleaned up");
}

#[test]
fn components_must_stay_inside_the_capsule_and_removal_needs_an_install() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("escape");
    fs::create_dir_all(&dir).expect("mkdir");
    fs::write(
        dir.join(MANIFEST_FILE),
        "[package]\nname = \"escape\"\nversion = \"1.0.0\"\n[[component]]\nid = \"x\"\nfile = \"../x.wasm\"\n",
    )
    .expect("manifest");
    let err = install(&dir, &tmp.path().join("c")).expect_err("escape").to_string();
    assert!(err.contains("relative path inside"), "{err}");

    let capsules = tmp.path().join("c");
    install(&source(tmp.path(), "1.0.0", EMPTY_MODULE), &capsules).expect("install");
    fs::create_dir_all(capsules.join("handmade")).expect("mkdir");
    assert!(matches!(remove("handmade", &capsules), Err(InstallError::NotInstalled { .. })));
    assert!(matches!(remove("../c", &capsules), Err(InstallError::NotInstalled { .. })));
    assert_eq!(remove("demo", &capsules).expect("remove").version, "1.0.0");
    assert!(!capsules.join("demo").exists());
}
