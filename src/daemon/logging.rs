//! The daemon log: `log/astrid.YYYY-MM-DD.log` (UTC date), a new file each day, the last
//! [`KEEP_FILES`] kept, every line also copied to stderr.
//!
//! Set up before anything else can fail, so a daemon spawned with its stdio on `/dev/null`
//! (as the CLI spawns it) still leaves a trace of why it did not boot. The copy to stderr
//! serves `astrid daemon` in a terminal or a container, where the log belongs on stderr.
//!
//! **Logging never blocks the daemon.** A line is handed over a bounded queue to a writer
//! thread of its own, one for the file and one for stderr; the code that logs only queues
//! it. A stderr nobody reads (a pipe whose reader stopped) then stalls its own thread and
//! loses its own lines, never a tokio worker: the reference's daemon stopped answering, and
//! ignored SIGTERM, once a worker blocked writing a log line. Lines a full queue cannot take
//! are counted, and the file says how many it missed when it can write again.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::{NaiveDate, Utc};

/// Daily log files kept; older ones are deleted when a new day starts.
pub const KEEP_FILES: usize = 7;
const PREFIX: &str = "astrid.";
const SUFFIX: &str = ".log";

/// The log file of `date` in `dir`.
pub fn log_file(dir: &Path, date: NaiveDate) -> PathBuf {
    dir.join(format!("{PREFIX}{}{SUFFIX}", date.format("%Y-%m-%d")))
}

/// The most recent log file in `dir`, if any (what the CLI shows when a boot fails).
pub fn latest_log_file(dir: &Path) -> Option<PathBuf> {
    log_files(dir).pop()
}

fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX))
        })
        .collect();
    files.sort();
    files
}

/// The current day's file, rolled at midnight (UTC).
#[derive(Debug)]
pub struct DailyLog {
    dir: PathBuf,
    date: NaiveDate,
    file: File,
}

impl DailyLog {
    /// Opens today's file in `dir` (created 0600) and prunes old files.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let date = Utc::now().date_naive();
        let file = open_append(&log_file(dir, date))?;
        prune(dir);
        Ok(Self { dir: dir.to_path_buf(), date, file })
    }

    fn roll_if_new_day(&mut self) {
        let today = Utc::now().date_naive();
        if today != self.date
            && let Ok(file) = open_append(&log_file(&self.dir, today))
        {
            self.file = file;
            self.date = today;
            prune(&self.dir);
        }
    }

    fn append(&mut self, line: &[u8]) -> io::Result<()> {
        self.roll_if_new_day();
        self.file.write_all(line)
    }
}

/// Lines a queue holds before further ones are dropped (and counted).
const QUEUE: usize = 4096;

/// What a writer thread is handed.
enum Line {
    Text(Vec<u8>),
    /// Answer on this channel once everything before it is written.
    Flush(std::sync::mpsc::SyncSender<()>),
}

/// One writer thread and the queue in front of it.
struct Lane {
    queue: std::sync::mpsc::SyncSender<Line>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Lane {
    /// Starts a thread that writes what is queued with `write`; the first write after lines
    /// were dropped is preceded by a line saying how many.
    fn start(name: &str, mut write: impl FnMut(&[u8]) -> io::Result<()> + Send + 'static) -> io::Result<Self> {
        let (queue, lines) = std::sync::mpsc::sync_channel::<Line>(QUEUE);
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let missed = std::sync::Arc::clone(&dropped);
        std::thread::Builder::new().name(format!("astrid-log-{name}")).spawn(move || {
            for line in lines {
                match line {
                    Line::Text(text) => {
                        let lost = missed.swap(0, std::sync::atomic::Ordering::Relaxed);
                        if lost > 0 {
                            let _ =
                                write(format!("[{lost} log line(s) dropped: the log could not keep up]\n").as_bytes());
                        }
                        let _ = write(&text);
                    }
                    Line::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        })?;
        Ok(Self { queue, dropped })
    }

    fn send(&self, text: &[u8]) {
        if self.queue.try_send(Line::Text(text.to_vec())).is_err() {
            self.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// The logger's writer: hands each line to the file's and stderr's lanes, never waiting.
struct Sink {
    lanes: Vec<Lane>,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for lane in &self.lanes {
            lane.send(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The lanes' queues, for [`flush`] at exit.
static FLUSH: std::sync::OnceLock<Vec<std::sync::mpsc::SyncSender<Line>>> = std::sync::OnceLock::new();

/// Waits (at most `within`) until what was logged so far is written: the last lines of a
/// daemon that exits must not be lost in a queue.
pub fn flush(within: std::time::Duration) {
    let Some(queues) = FLUSH.get() else { return };
    let deadline = std::time::Instant::now() + within;
    for queue in queues {
        let (done, written) = std::sync::mpsc::sync_channel(1);
        if queue.try_send(Line::Flush(done)).is_ok() {
            let _ = written.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()));
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

fn prune(dir: &Path) {
    let files = log_files(dir);
    for old in files.iter().take(files.len().saturating_sub(KEEP_FILES)) {
        let _ = fs::remove_file(old);
    }
}

/// Installs the logger: `info` (or `debug` with `verbose`), overridable with `ASTRID_LOG`
/// (env_logger filter syntax, for example `astrid::ipc=trace`), writing to today's file in
/// `log_dir` and to stderr through writer threads of their own. Without the file (it cannot
/// be opened), stderr alone, and the error is returned after the logger is up.
pub fn init(log_dir: &Path, verbose: bool) -> io::Result<()> {
    let file = DailyLog::open(log_dir);
    let mut lanes = Vec::new();
    let opened = match file {
        Ok(mut file) => {
            lanes.push(Lane::start("file", move |line| file.append(line))?);
            Ok(())
        }
        Err(e) => Err(e),
    };
    lanes.push(Lane::start("stderr", |line| io::stderr().write_all(line))?);
    let _ = FLUSH.set(lanes.iter().map(|lane| lane.queue.clone()).collect());
    let level = if verbose { log::LevelFilter::Debug } else { log::LevelFilter::Info };
    env_logger::Builder::new()
        .filter_level(level)
        // rmcp (the MCP SDK) logs every message it handles at info and their bodies at debug:
        // only its warnings and errors by default, even when verbose (`ASTRID_LOG=rmcp=debug`
        // shows the rest). `tracing` is the target of its span records.
        .filter_module("rmcp", log::LevelFilter::Warn)
        .filter_module("tracing", log::LevelFilter::Warn)
        .parse_env(env_logger::Env::new().filter("ASTRID_LOG"))
        .format(write_line)
        .write_style(env_logger::WriteStyle::Never)
        .target(env_logger::Target::Pipe(Box::new(Sink { lanes })))
        .try_init()
        .map_err(io::Error::other)?;
    opened
}

/// One log line: `[2026-12-04T19:44:44.914805Z INFO  astrid::daemon] text`, env_logger's own
/// layout with a UTC timestamp in microseconds. Written here with chrono, the daemon's one
/// date library, rather than through env_logger's `humantime` feature, which compiles a
/// second date library (jiff) into the binary for this one field.
fn write_line(out: &mut env_logger::fmt::Formatter, record: &log::Record<'_>) -> io::Result<()> {
    writeln!(
        out,
        "[{} {:<5} {}] {}",
        Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ"),
        record.level(),
        record.target(),
        record.args()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        for day in 1..=9 {
            let date = NaiveDate::from_ymd_opt(2026, 1, day).expect("date");
            fs::write(log_file(tmp.path(), date), "x").expect("write");
        }
        fs::write(tmp.path().join("other.txt"), "x").expect("write");
        let log = DailyLog::open(tmp.path()).expect("open");
        let kept = log_files(tmp.path());
        assert_eq!(kept.len(), KEEP_FILES);
        assert_eq!(latest_log_file(tmp.path()), Some(log_file(tmp.path(), log.date)));
        assert!(tmp.path().join("other.txt").exists());
    }
}
