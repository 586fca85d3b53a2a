//! Shared test fixtures: a private `ASTRID_HOME`, the real binary behind role symlinks, a
//! daemon process that is killed if a test panics, and a raw-frame client.

use std::io::{Read, Write};

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use astrid::types::KernelResponse;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tempfile::TempDir;

/// How long a test waits for something that must happen before it calls it hung. Only a
/// guard against hanging forever: generous, so a busy machine (a parallel build, a loaded
/// CI runner) never fails a test that is merely slow. No test asserts how fast anything is
/// (that is what the benchmarks are for).
pub const HANG: Duration = Duration::from_secs(60);

/// A temp directory holding a home, a workspace and the role links.
pub struct TestHome {
    _dir: TempDir,
    pub home: PathBuf,
    pub workspace: PathBuf,
    pub bin: PathBuf,
}

impl TestHome {
    pub fn new() -> Self {
        // Short paths: the socket path must stay under 108 bytes.
        let dir = tempfile::Builder::new().prefix("ast").tempdir_in("/tmp").expect("tempdir");
        let bin = dir.path().join("bin");
        let workspace = dir.path().join("ws");
        std::fs::create_dir_all(&bin).expect("bin");
        std::fs::create_dir_all(&workspace).expect("ws");
        let exe = Path::new(env!("CARGO_BIN_EXE_astrid"));
        for name in ["astrid", "astrid-daemon", "astrid-capsule-host"] {
            std::os::unix::fs::symlink(exe, bin.join(name)).expect("symlink");
        }
        Self { home: dir.path().join("h"), workspace, bin, _dir: dir }
    }

    /// A command for one of the role links, with this home and the workspace as CWD.
    pub fn command(&self, role: &str) -> Command {
        let mut command = Command::new(self.bin.join(role));
        command
            .env("ASTRID_HOME", &self.home)
            .env_remove("ASTRID_IDLE_TIMEOUT_SECS")
            .env_remove("ASTRID_LOG")
            // Tests install what they need; the embedded default set is opted into where wanted.
            .env("ASTRID_DEFAULT_CAPSULES", "0")
            // A developer's own endpoint must not leak into the tests.
            .env_remove("OPENAI_BASE_URL")
            .env_remove("OPENAI_API_KEY")
            .env_remove("ASTRID_MODEL")
            .current_dir(&self.workspace)
            .stdin(Stdio::null());
        command
    }

    /// Runs `astrid ARGS` to completion.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with(args, &[])
    }

    pub fn cli_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = self.command("astrid");
        command.args(args).envs(env.iter().copied());
        command.output().expect("run astrid")
    }

    /// Starts `astrid-daemon ARGS` and waits until it is ready.
    pub fn daemon(&self, args: &[&str]) -> Daemon {
        self.daemon_with(args, &[])
    }

    pub fn daemon_with(&self, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let daemon = self.spawn_daemon(args, env);
        // Ready means: our daemon owns the lock (a dead one may have left a ready file) and
        // has written the sentinel.
        let pid = daemon.pid().to_string();
        let lock = self.run_dir().join("system.lock");
        let ours = || std::fs::read_to_string(&lock).is_ok_and(|owner| owner.trim() == pid);
        assert!(self.wait_for(|| ours() && self.ready().exists(), HANG), "hung: the daemon never became ready");
        daemon
    }

    /// Starts `astrid-daemon ARGS` without waiting.
    pub fn spawn_daemon(&self, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut command = self.command("astrid-daemon");
        // stderr goes to a file, not a pipe: an undrained pipe would block a chatty daemon.
        let stderr_path = self.home.with_extension(format!("stderr.{}", self.next_id()));
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        command.args(args).envs(env.iter().copied()).stdout(Stdio::null()).stderr(stderr);
        Daemon { child: Some(command.spawn().expect("spawn daemon")), stderr_path }
    }

    fn next_id(&self) -> usize {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    pub fn run_dir(&self) -> PathBuf {
        self.home.join("run")
    }
    pub fn socket(&self) -> PathBuf {
        self.run_dir().join("system.sock")
    }
    pub fn token_file(&self) -> PathBuf {
        self.run_dir().join("system.token")
    }
    pub fn ready(&self) -> PathBuf {
        self.run_dir().join("system.ready")
    }
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.token_file()).expect("token")
    }

    /// The whole daemon log (all files, oldest first).
    pub fn log(&self) -> String {
        read_log(&self.home.join("log"))
    }

    /// Whether the log shows `text` (waits up to [`HANG`]: a running daemon's log is written
    /// by a thread of its own, so a line can reach the file after what it reports happened).
    pub fn logged(&self, text: &str) -> bool {
        self.wait_for(|| self.log().contains(text), HANG)
    }

    pub fn run_files_exist(&self) -> [bool; 3] {
        [self.socket().exists(), self.token_file().exists(), self.ready().exists()]
    }

    pub fn wait_for(&self, mut condition: impl FnMut() -> bool, within: Duration) -> bool {
        wait_for(&mut condition, within)
    }

    /// Connects and completes a good handshake.
    pub fn client(&self) -> RawClient {
        let mut client = RawClient::connect(&self.socket());
        let reply = client.handshake(&self.token());
        assert_eq!(reply["status"], "ok", "{reply}");
        client
    }

    /// Installs a capsule made of `manifest` into `dir` with the product's installer (the
    /// code behind `astrid capsule install`), so it carries a valid `meta.json`.
    pub fn write_capsule(dir: &Path, name: &str, manifest: &str) {
        let source = tempfile::tempdir().expect("source dir");
        std::fs::write(source.path().join("Capsule.toml"), manifest).expect("manifest");
        let installed = astrid::kernel::install::install(source.path(), dir).expect("install");
        assert_eq!(installed.dir.file_name().and_then(|n| n.to_str()), Some(name), "package name");
    }

    /// Writes `dir/name/Capsule.toml` by hand, the way an install never would.
    pub fn write_raw_capsule(dir: &Path, name: &str, manifest: &str) {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).expect("capsule dir");
        std::fs::write(dir.join("Capsule.toml"), manifest).expect("manifest");
    }
}

pub fn wait_for(condition: &mut impl FnMut() -> bool, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The state letter of a process or thread from its `stat` file (`R`, `S`, `D`, `T`, `Z`, …);
/// `None` once it is gone. The name in parentheses may hold anything, so split at the last `)`.
fn state_of(stat_path: &str) -> Option<char> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Whether `pid` is running or stopped: a zombie has exited, /proc keeps it until it is reaped.
pub fn alive(pid: i32) -> bool {
    state_of(&format!("/proc/{pid}/stat")).is_some_and(|state| state != 'Z')
}

/// Sends SIGSTOP to `pid` and waits until every one of its threads has stopped. `kill`
/// returns once the signal is queued: the kernel wakes one thread to take it, and that
/// thread stops the others. If it sits in uninterruptible sleep (a disk write on a busy
/// machine) the whole group keeps running until the write returns.
pub fn freeze(pid: i32) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    let mut all_stopped = || {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
        tasks.filter_map(Result::ok).all(|task| {
            state_of(&format!("{}/stat", task.path().display())).is_none_or(|state| matches!(state, 'T' | 't' | 'Z'))
        })
    };
    assert!(wait_for(&mut all_stopped, HANG), "pid {pid} did not stop within {HANG:?}");
}

/// The data of a management reply frame, as the type its request answers with (the CLI
/// decodes it the same way).
pub fn reply_data<T: DeserializeOwned>(frame: &Value) -> T {
    let reply: KernelResponse = serde_json::from_value(frame["payload"].clone()).expect("payload is a KernelResponse");
    reply.into_data().unwrap_or_else(|e| panic!("{e}: {frame}"))
}

pub fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

/// A daemon process; killed (SIGKILL) and reaped on drop if still running.
pub struct Daemon {
    child: Option<Child>,
    stderr_path: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).expect("child")
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).expect("kill");
    }

    /// Waits for the exit; returns the status and what the daemon wrote to stderr.
    pub fn wait_exit(&mut self, within: Duration) -> Option<(ExitStatus, String)> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                let stderr = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
                self.child = None;
                return Some((status, stderr));
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().expect("try_wait").is_none())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A client that speaks raw frames over the real socket.
/// The daemon log files in `dir`, oldest first, joined.
fn read_log(dir: &Path) -> String {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files.iter().map(|f| std::fs::read_to_string(f).unwrap_or_default()).collect()
}

pub struct RawClient {
    pub stream: UnixStream,
    /// The daemon's log directory (`<home>/log`, beside `run/` of the socket): a hang's
    /// panic shows what the daemon logged, which is all there is to go on in a CI run.
    log_dir: Option<PathBuf>,
}

impl RawClient {
    pub fn connect(path: &Path) -> Self {
        let stream = UnixStream::connect(path).expect("connect");
        stream.set_read_timeout(Some(HANG)).expect("timeout");
        Self { stream, log_dir: path.parent().and_then(Path::parent).map(|home| home.join("log")) }
    }

    /// The end of the daemon's log, for a failure message.
    fn log_tail(&self) -> String {
        let Some(dir) = &self.log_dir else { return String::new() };
        let log = read_log(dir);
        let start = log.char_indices().rev().nth(8_000).map_or(0, |(i, _)| i);
        log[start..].to_owned()
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    pub fn send_frame(&mut self, payload: &[u8]) {
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(payload);
        self.send_raw(&frame);
    }

    pub fn send_json(&mut self, value: &Value) {
        self.send_frame(&serde_json::to_vec(value).expect("json"));
    }

    /// The next frame, or `None` when the daemon closed the stream.
    pub fn read_frame(&mut self) -> Option<Vec<u8>> {
        let mut header = [0u8; 4];
        match self.stream.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset) => {
                return None;
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                panic!("hung: no frame and no close within {HANG:?}; the daemon's log ends:\n{}", self.log_tail())
            }
            Err(e) => panic!("read failed: {e}"),
        }
        let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
        self.stream.read_exact(&mut body).expect("body");
        Some(body)
    }

    pub fn read_json(&mut self) -> Option<Value> {
        self.read_frame().map(|f| serde_json::from_slice(&f).expect("frame is JSON"))
    }

    pub fn handshake(&mut self, token: &str) -> Value {
        self.send_json(&json!({"token": token, "protocol_version": 1, "client_version": "0.7.0"}));
        self.read_json().expect("handshake reply")
    }

    /// Sends a management request the way the reference CLI does (a full IpcMessage).
    pub fn send_request(&mut self, suffix: &str, request: Value) {
        let mut payload = request;
        payload["type"] = json!("raw_json");
        self.send_json(&json!({
            "topic": format!("astrid.v1.request.{suffix}"),
            "payload": payload,
            "signature": null,
            "source_id": "00000000-0000-0000-0000-000000000000",
            "timestamp": "2026-05-25T12:00:00.123456789Z",
            "seq": 0
        }));
    }

    /// Sends a request and returns the reply frame for its suffix.
    pub fn request(&mut self, suffix: &str, request: Value) -> Value {
        self.send_request(suffix, request);
        self.reply(suffix)
    }

    /// Reads frames until the one on `astrid.v1.response.<suffix>`.
    pub fn reply(&mut self, suffix: &str) -> Value {
        let topic = format!("astrid.v1.response.{suffix}");
        loop {
            let frame = self.read_json().expect("connection closed before the reply");
            if frame["topic"] == topic {
                return frame;
            }
        }
    }

    /// Whether the daemon closed the stream (EOF) rather than sending a frame (waits up to
    /// [`HANG`]).
    pub fn closed(&mut self) -> bool {
        self.read_frame().is_none()
    }
}

/// A terminal: `astrid chat` in a detached tmux session of its own (a real pty, so Ctrl-C is
/// the terminal's SIGINT, and the line editor runs as it does for a person).
pub struct Terminal {
    socket: std::path::PathBuf,
}

impl Terminal {
    pub fn start(t: &TestHome, program: &str) -> Self {
        Self::start_with(t, "ASTRID_DEFAULT_CAPSULES=0", program)
    }

    /// [`Terminal::start`] with `env` (`NAME=value …`) in the program's environment.
    pub fn start_with(t: &TestHome, env: &str, program: &str) -> Self {
        let socket = t.home.with_extension("tmux");
        let quoted = |s: &std::path::Path| format!("'{}'", s.display());
        // After the program ends, its exit status stays on the screen.
        let command = format!(
            "cd {} && env -u OPENAI_BASE_URL -u OPENAI_API_KEY -u ASTRID_MODEL ASTRID_HOME={} \
             {env} {}; echo \"EXIT=$?\"; sleep 120",
            quoted(&t.workspace),
            quoted(&t.home),
            program
        );
        let status = std::process::Command::new("tmux")
            .arg("-S")
            .arg(&socket)
            .args(["new-session", "-d", "-x", "120", "-y", "50", &command])
            .status()
            .expect("tmux (CI installs it)");
        assert!(status.success(), "tmux new-session");
        Self { socket }
    }

    fn tmux(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("tmux").arg("-S").arg(&self.socket).args(args).output().expect("tmux")
    }

    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "0"];
        args.extend_from_slice(keys);
        assert!(self.tmux(&args).status.success(), "send-keys {keys:?}");
    }

    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.tmux(&["capture-pane", "-p", "-J", "-t", "0", "-S", "-200"]).stdout).into_owned()
    }

    /// Waits until the screen shows `text` `times` times; the screen either way.
    pub fn wait_for(&self, text: &str, times: usize) -> Result<String, String> {
        let deadline = Instant::now() + HANG;
        loop {
            let screen = self.screen();
            if screen.matches(text).count() >= times {
                return Ok(screen);
            }
            if Instant::now() >= deadline {
                return Err(format!("hung: never showed {text:?} ×{times}:\n{screen}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

/// `astrid chat` with its input piped in, its output collected as it comes.
pub struct PipedChat {
    child: Child,
    output: std::sync::Arc<std::sync::Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl PipedChat {
    pub fn start(t: &TestHome, env: &[(&str, &str)]) -> Self {
        Self::start_args(t, &[], env)
    }

    /// [`PipedChat::start`] with `args` after `astrid chat`.
    pub fn start_args(t: &TestHome, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = t
            .command("astrid")
            .arg("chat")
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("astrid chat");
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let readers = [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ]
        .into_iter()
        .map(|stream| {
            let output = std::sync::Arc::clone(&output);
            std::thread::spawn(move || {
                for line in std::io::BufRead::lines(std::io::BufReader::new(stream)).map_while(Result::ok) {
                    output.lock().expect("lock").push_str(&format!("{line}\n"));
                }
            })
        })
        .collect();
        Self { child, output, readers }
    }

    pub fn say(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write");
        stdin.flush().expect("flush");
    }

    pub fn output(&self) -> String {
        self.output.lock().expect("lock").clone()
    }

    /// Types each of `lines`, closes the input and waits for the chat to end.
    pub fn script(t: &TestHome, env: &[(&str, &str)], lines: &[&str]) -> (Option<i32>, String) {
        let mut chat = Self::start(t, env);
        for line in lines {
            chat.say(line);
        }
        chat.finish()
    }

    /// Waits (generously) until the output shows `text` `times` times.
    pub fn wait_for(&self, text: &str, times: usize) -> String {
        let shown = wait_for(&mut || self.output().matches(text).count() >= times, HANG);
        assert!(shown, "hung: never showed {text:?} ×{times}:\n{}", self.output());
        self.output()
    }

    pub fn finish(mut self) -> (Option<i32>, String) {
        drop(self.child.stdin.take());
        let status = self.child.wait().expect("wait");
        // Everything the chat wrote is collected once both readers saw their pipe close.
        let drained = wait_for(&mut || self.readers.iter().all(std::thread::JoinHandle::is_finished), HANG);
        assert!(drained, "hung: the chat's output never closed:\n{}", self.output());
        for reader in self.readers.drain(..) {
            reader.join().expect("reader");
        }
        (status.code(), self.output())
    }
}
