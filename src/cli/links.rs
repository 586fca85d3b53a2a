//! `astrid install-links DIR`: the busybox-style role links.

use std::fs;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use argh::FromArgs;

/// Names that select a role when the binary is started through them.
pub const ROLE_LINKS: [&str; 2] = ["astrid-daemon", "astrid-capsule-host"];

/// create the astrid-daemon and astrid-capsule-host symlinks in DIR
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "install-links")]
pub struct InstallLinksArgs {
    /// directory to create the links in (must exist)
    #[argh(positional)]
    pub dir: std::path::PathBuf,
}

/// Creates (or refreshes) each link in `args.dir`, pointing at the running executable.
/// A regular file of the same name is never replaced.
pub fn install(args: &InstallLinksArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot locate the astrid executable")?;
    if !args.dir.is_dir() {
        bail!("{} is not a directory", args.dir.display());
    }
    for name in ROLE_LINKS {
        let link = args.dir.join(name);
        replace_link(&exe, &link)?;
        println!("{} -> {}", link.display(), exe.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn replace_link(target: &Path, link: &Path) -> anyhow::Result<()> {
    if let Ok(meta) = fs::symlink_metadata(link)
        && !meta.file_type().is_symlink()
    {
        bail!("refusing to replace {}: it is not a symlink", link.display());
    }
    // Build the new link beside the old one and rename over it: never a moment without one.
    let temp = link.with_extension(format!("tmp{}", std::process::id()));
    let _ = fs::remove_file(&temp);
    std::os::unix::fs::symlink(target, &temp).with_context(|| format!("cannot create {}", temp.display()))?;
    fs::rename(&temp, link).with_context(|| format!("cannot install {}", link.display()))
}
