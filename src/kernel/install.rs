//! Installing, removing and checking capsules on disk.
//!
//! An installed capsule is a directory `<capsules>/<name>/` holding its `Capsule.toml`, its
//! WebAssembly module and a `meta.json` written at install (layout as in the reference, with
//! one addition: `manifest_hash`). The module's BLAKE3 is pinned in `meta.json`; a capsule
//! whose module or manifest no longer matches is refused at load with the reason. The same
//! hash is part of what the operator approves (see [`super::grants`]), so swapping the code
//! of an approved capsule needs a new approval even if `meta.json` is rewritten with it.
//!
//! Installing is atomic: everything is copied into a staging directory beside the target,
//! checked, and renamed into place; a failure at any step leaves the previous install as it
//! was. User configuration (`home/<p>/.config/env/<name>.env.json`, secrets) lives outside the
//! capsule directory, so a reinstall keeps it.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component as PathComponent, Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::capsules::MANIFEST_FILE;
use super::manifest::{Manifest, ManifestError};

/// The install record beside each installed manifest.
pub const META_FILE: &str = "meta.json";
/// Largest module accepted (the sandbox bounds what it builds from it; see
/// `crate::wasm::limits`). A module stays in memory, compiled, as long as its capsule is
/// installed; the examples are under 256 KiB.
pub const MAX_MODULE_BYTES: u64 = 16 * 1024 * 1024;
/// Most files a capsule directory may hold, and the largest one: installs copy, so a source
/// directory that is really a home directory is refused instead of copied.
const MAX_FILES: usize = 256;
const MAX_FILE_BYTES: u64 = MAX_MODULE_BYTES;

/// `meta.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapsuleMeta {
    /// The package version installed.
    pub version: String,
    /// First install.
    pub installed_at: DateTime<Utc>,
    /// This install.
    pub updated_at: DateTime<Utc>,
    /// Where it was installed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// BLAKE3 (hex) of the WebAssembly module, when the capsule has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasm_hash: Option<String>,
    /// BLAKE3 (hex) of `Capsule.toml` as installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_hash: Option<String>,
}

/// Why an install, a removal or an integrity check failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The manifest does not parse.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The source is neither a capsule directory nor a `Capsule.toml`.
    #[error("{}: not a capsule (expected a directory holding {MANIFEST_FILE}, or the file itself)", .0.display())]
    NotACapsule(PathBuf),
    /// The component file named by the manifest is missing or unusable.
    #[error("component {file:?} of {capsule}: {reason}")]
    Component {
        capsule: String,
        /// The file as named in the manifest.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The source directory holds something an install refuses (a symlink, too many files).
    #[error("{}: {reason}", path.display())]
    Refused {
        /// The offending path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Not installed, or installed without a `meta.json`.
    #[error("{name} is not installed in {}", dir.display())]
    NotInstalled {
        /// The capsule.
        name: String,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// `meta.json` is missing, unreadable or does not match the files.
    #[error("{capsule}: {reason}")]
    Integrity {
        capsule: String,
        /// What does not match.
        reason: String,
    },
    /// A file operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What we were doing.
        action: &'static str,
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> InstallError + use<> {
    let path = path.to_path_buf();
    move |source| InstallError::Io { action, path, source }
}

/// BLAKE3 of `bytes`, hex.
pub fn hash_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// A capsule as installed and checked: its manifest and the module bytes that match the pin.
#[derive(Debug, Clone)]
pub struct VerifiedCapsule {
    /// The parsed manifest.
    pub manifest: Manifest,
    /// The install record.
    pub meta: CapsuleMeta,
    /// The module, if the capsule has a component.
    pub wasm: Option<Vec<u8>>,
}

/// The module file of `manifest` in `dir`, if it declares a component. Only a plain relative
/// path inside the capsule directory is accepted.
pub fn component_path(dir: &Path, manifest: &Manifest) -> Result<Option<PathBuf>, InstallError> {
    let Some(component) = manifest.components.first() else { return Ok(None) };
    let relative = Path::new(&component.file);
    if relative.as_os_str().is_empty() || !relative.components().all(|c| matches!(c, PathComponent::Normal(_))) {
        return Err(InstallError::Component {
            capsule: manifest.package.name.clone(),
            file: component.file.clone(),
            reason: "must be a relative path inside the capsule directory".to_owned(),
        });
    }
    Ok(Some(dir.join(relative)))
}

fn read_module(path: &Path, manifest: &Manifest) -> Result<Vec<u8>, InstallError> {
    let component = |reason: String| InstallError::Component {
        capsule: manifest.package.name.clone(),
        file: manifest.components.first().map(|c| c.file.clone()).unwrap_or_default(),
        reason,
    };
    let metadata = fs::symlink_metadata(path).map_err(|e| component(format!("cannot read {}: {e}", path.display())))?;
    if !metadata.is_file() {
        return Err(component("is not a regular file".to_owned()));
    }
    if metadata.len() > MAX_MODULE_BYTES {
        return Err(component(format!("{} bytes is over the {MAX_MODULE_BYTES}-byte limit", metadata.len())));
    }
    let bytes = fs::read(path).map_err(|e| component(format!("cannot read {}: {e}", path.display())))?;
    if !bytes.starts_with(b"\0asm") {
        return Err(component("is not a binary WebAssembly module".to_owned()));
    }
    Ok(bytes)
}

/// Loads a capsule directory that is not installed (`astrid capsule run DIR`): its manifest
/// and module, checked like an install would check them, but with no pins to compare.
pub fn load_unpinned(dir: &Path) -> Result<(Manifest, Option<Vec<u8>>), InstallError> {
    let manifest = Manifest::load(&dir.join(MANIFEST_FILE))?;
    let wasm = match component_path(dir, &manifest)? {
        Some(path) => Some(read_module(&path, &manifest)?),
        None => None,
    };
    Ok((manifest, wasm))
}

/// Loads and checks an installed capsule: `meta.json` present, manifest and module matching
/// their pinned hashes. Called at discovery and again right before a capsule starts.
pub fn verify_installed(dir: &Path) -> Result<VerifiedCapsule, InstallError> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let manifest_text = super::manifest::read(&manifest_path)?;
    let text = String::from_utf8(manifest_text.clone()).map_err(|_| ManifestError {
        file: manifest_path.clone(),
        line: 1,
        column: 1,
        message: "not UTF-8".to_owned(),
    })?;
    let manifest = Manifest::parse(&manifest_path, &text)?;
    let name = manifest.package.name.clone();
    let integrity = |reason: String| InstallError::Integrity { capsule: name.clone(), reason };
    let meta_path = dir.join(META_FILE);
    let meta: CapsuleMeta = match fs::read(&meta_path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| integrity(format!("{} is unreadable: {e}", meta_path.display())))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(integrity(format!(
                "no {META_FILE}: capsules must be installed with `astrid capsule install {}`",
                dir.display()
            )));
        }
        Err(e) => return Err(io_err("read", &meta_path)(e)),
    };
    if meta.manifest_hash.as_deref() != Some(hash_hex(&manifest_text).as_str()) {
        return Err(integrity(format!("{MANIFEST_FILE} changed since it was installed; install it again")));
    }
    let wasm = match component_path(dir, &manifest)? {
        Some(path) => {
            let bytes = read_module(&path, &manifest)?;
            if meta.wasm_hash.as_deref() != Some(hash_hex(&bytes).as_str()) {
                return Err(integrity(format!(
                    "the module {} does not match the BLAKE3 pinned at install; refusing to load it",
                    path.display()
                )));
            }
            Some(bytes)
        }
        None => None,
    };
    Ok(VerifiedCapsule { manifest, meta, wasm })
}

/// What an install did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The capsule name.
    pub name: String,
    pub version: String,
    /// Where it now lives.
    pub dir: PathBuf,
    /// The version it replaced, if any.
    pub replaced: Option<String>,
}

/// Installs the capsule at `source` (a directory holding `Capsule.toml`, or that file) into
/// `capsules_dir/<name>/`, atomically.
pub fn install(source: &Path, capsules_dir: &Path) -> Result<Installed, InstallError> {
    let source_dir = if source.is_dir() {
        source.to_path_buf()
    } else if source.file_name().is_some_and(|n| n == MANIFEST_FILE) && source.is_file() {
        source.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    } else {
        return Err(InstallError::NotACapsule(source.to_path_buf()));
    };
    let manifest_path = source_dir.join(MANIFEST_FILE);
    if !manifest_path.is_file() {
        return Err(InstallError::NotACapsule(source.to_path_buf()));
    }
    // Refused over its size before it is read whole, and over any other limit before anything
    // is copied: a refused install leaves nothing behind.
    let manifest_text = super::manifest::read(&manifest_path)?;
    let manifest = Manifest::parse(
        &manifest_path,
        std::str::from_utf8(&manifest_text).map_err(|_| ManifestError {
            file: manifest_path.clone(),
            line: 1,
            column: 1,
            message: "not UTF-8".to_owned(),
        })?,
    )?;
    let wasm_hash = match component_path(&source_dir, &manifest)? {
        Some(path) => Some(hash_hex(&read_module(&path, &manifest)?)),
        None => None,
    };
    let name = manifest.package.name.clone();
    fs::create_dir_all(capsules_dir).map_err(io_err("create", capsules_dir))?;
    let target = capsules_dir.join(&name);
    let previous: Option<CapsuleMeta> =
        fs::read(target.join(META_FILE)).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok());

    let staging = capsules_dir.join(format!(".{name}.installing-{}", Uuid::new_v4().simple()));
    let result = (|| {
        copy_tree(&source_dir, &staging)?;
        let now = Utc::now();
        let meta = CapsuleMeta {
            version: manifest.package.version.clone(),
            installed_at: previous.as_ref().map_or(now, |p| p.installed_at),
            updated_at: now,
            source: Some(source.display().to_string()),
            wasm_hash: wasm_hash.clone(),
            manifest_hash: Some(hash_hex(&manifest_text)),
        };
        let bytes = serde_json::to_vec_pretty(&meta).map_err(|e| InstallError::Integrity {
            capsule: name.clone(),
            reason: format!("cannot encode {META_FILE}: {e}"),
        })?;
        let meta_path = staging.join(META_FILE);
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&meta_path)
            .and_then(|mut file| io::Write::write_all(&mut file, &bytes))
            .map_err(io_err("write", &meta_path))?;
        // What was copied must be what was hashed (the source could change under us).
        verify_installed(&staging)?;
        swap_into_place(&staging, &target)
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result?;
    Ok(Installed { name, version: manifest.package.version, dir: target, replaced: previous.map(|p| p.version) })
}

/// Renames `staging` to `target`, moving an existing `target` aside first and deleting it
/// after; if the second rename fails the old install is put back.
fn swap_into_place(staging: &Path, target: &Path) -> Result<(), InstallError> {
    if !target.exists() {
        return fs::rename(staging, target).map_err(io_err("move into place", target));
    }
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let old = target.with_file_name(format!(".{name}.old-{}", Uuid::new_v4().simple()));
    fs::rename(target, &old).map_err(io_err("move aside", target))?;
    if let Err(e) = fs::rename(staging, target) {
        let _ = fs::rename(&old, target);
        return Err(io_err("move into place", target)(e));
    }
    if let Err(e) = fs::remove_dir_all(&old) {
        log::warn!("installed, but cannot remove the previous copy {}: {e}", old.display());
    }
    Ok(())
}

/// Copies the regular files and directories of `from` into a new `to`. Symlinks, devices
/// and oversized trees are refused, not followed or skipped: an install copies exactly what
/// the author shipped or nothing. Hidden entries (`.git`, editor files) are left out.
fn copy_tree(from: &Path, to: &Path) -> Result<(), InstallError> {
    let mut files = 0usize;
    copy_dir(from, to, &mut files)
}

fn copy_dir(from: &Path, to: &Path, files: &mut usize) -> Result<(), InstallError> {
    // Private whatever the umask: an installed capsule is part of the home (0700 / 0600).
    fs::DirBuilder::new().mode(0o700).create(to).map_err(io_err("create", to))?;
    fs::set_permissions(to, fs::Permissions::from_mode(0o700)).map_err(io_err("chmod", to))?;
    let mut entries: Vec<_> =
        fs::read_dir(from).map_err(io_err("read", from))?.collect::<Result<_, _>>().map_err(io_err("read", from))?;
    entries.sort_by_key(fs::DirEntry::file_name);
    for entry in entries {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') || name == META_FILE {
            continue;
        }
        let path = entry.path();
        let kind = entry.file_type().map_err(io_err("inspect", &path))?;
        let refused = |reason: &str| InstallError::Refused { path: path.clone(), reason: reason.to_owned() };
        if kind.is_dir() {
            if name == "target" {
                continue; // a cargo build directory beside the manifest is not part of the capsule
            }
            copy_dir(&path, &to.join(&name), files)?;
        } else if kind.is_file() {
            *files += 1;
            if *files > MAX_FILES {
                return Err(refused(&format!("more than {MAX_FILES} files; is this really a capsule directory?")));
            }
            let len = entry.metadata().map_err(io_err("inspect", &path))?.len();
            if len > MAX_FILE_BYTES {
                return Err(refused(&format!("{len} bytes is over the {MAX_FILE_BYTES}-byte limit")));
            }
            let copy = to.join(&name);
            let mode =
                fs::copy(&path, &copy).map(|_| ()).and_then(|()| fs::metadata(&copy)).map_err(io_err("copy", &path))?;
            // fs::copy kept the source's mode: keep only the owner's execute bit of it.
            let private = 0o600 | (mode.permissions().mode() & 0o100);
            fs::set_permissions(&copy, fs::Permissions::from_mode(private)).map_err(io_err("chmod", &copy))?;
        } else {
            return Err(refused("symlinks and special files are not installed"));
        }
    }
    Ok(())
}

/// Removes the installed capsule `name` from `capsules_dir`. Only directories with a
/// `meta.json` are removed: this never deletes something `install` did not create.
pub fn remove(name: &str, capsules_dir: &Path) -> Result<CapsuleMeta, InstallError> {
    let dir = capsules_dir.join(name);
    let not_installed = || InstallError::NotInstalled { name: name.to_owned(), dir: capsules_dir.to_path_buf() };
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(not_installed());
    }
    let meta: CapsuleMeta = fs::read(dir.join(META_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(not_installed)?;
    // Rename first so a half-finished delete never looks like an installed capsule.
    let doomed = capsules_dir.join(format!(".{name}.removing-{}", Uuid::new_v4().simple()));
    fs::rename(&dir, &doomed).map_err(io_err("remove", &dir))?;
    fs::remove_dir_all(&doomed).map_err(io_err("remove", &doomed))?;
    Ok(meta)
}

/// Installs a capsule made of `manifest` (and `module`, as `capsule.wasm`, when given) into
/// `capsules_dir`, for tests that need an installed capsule.
#[cfg(test)]
pub(crate) fn install_for_test(capsules_dir: &Path, manifest: &str, module: Option<&[u8]>) -> PathBuf {
    let source = tempfile::tempdir().expect("source");
    let mut text = manifest.to_owned();
    if let Some(module) = module {
        fs::write(source.path().join("capsule.wasm"), module).expect("module");
        text.push_str("\n[[component]]\nid = \"main\"\nfile = \"capsule.wasm\"\n");
    }
    fs::write(source.path().join(MANIFEST_FILE), text).expect("manifest");
    install(source.path(), capsules_dir).expect("install").dir
}

#[cfg(test)]
#[path = "install_tests.rs"]
mod tests;
