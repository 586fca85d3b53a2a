//! A daemon for the benchmarks (included by `#[path]`: each bench is its own crate).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use astrid::home::AstridHome;
use astrid::ipc::Client;

/// A real daemon in `root/name` (the default set on unless `env` says otherwise), configured
/// by `env`; stopped with SIGTERM on drop.
pub struct Daemon(std::process::Child);

impl Daemon {
    pub fn start(root: &Path, name: &str, env: &[(&str, String)]) -> (Self, Client) {
        let home = root.join(name);
        let child = Command::new(env!("CARGO_BIN_EXE_astrid"))
            .arg("daemon")
            .env("ASTRID_HOME", &home)
            .env("ASTRID_LOG", "warn")
            .env("ASTRID_DEFAULT_CAPSULES", "1")
            .env_remove("OPENAI_BASE_URL")
            .env_remove("OPENAI_API_KEY")
            .env_remove("ASTRID_MODEL")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .current_dir(root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("daemon");
        let ready = home.join("run/system.ready");
        let waited = Instant::now();
        while !ready.exists() {
            assert!(waited.elapsed() < Duration::from_secs(20), "daemon never became ready");
            std::thread::sleep(Duration::from_millis(1));
        }
        let client = Client::connect(&AstridHome::at(&home)).expect("connect");
        (Self(child), client)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}
