//! The daemon log: `log/astrid.YYYY-MM-DD.log` (UTC date), a new file each day, the last
//! [`KEEP_FILES`] kept, every line also copied to stderr.
//!
//! Set up before anything else can fail, so a daemon spawned with its stdio on `/dev/null`
//! (as the CLI spawns it) still leaves a trace of why it did not boot. The copy to stderr
//! serves `astrid daemon` in a terminal or a container, where the log belongs on stderr.

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

/// A writer that appends to the current day's file and to stderr.
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
}

impl Write for DailyLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.roll_if_new_day();
        // stderr may be closed or /dev/null; the file is what must not miss a line.
        let _ = io::stderr().write_all(buf);
        self.file.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
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
/// (env_logger filter syntax, for example `astrid::ipc=trace`).
pub fn init(log_dir: &Path, verbose: bool) -> io::Result<()> {
    let writer = DailyLog::open(log_dir)?;
    let level = if verbose { log::LevelFilter::Debug } else { log::LevelFilter::Info };
    env_logger::Builder::new()
        .filter_level(level)
        .parse_env(env_logger::Env::new().filter("ASTRID_LOG"))
        .format_timestamp_micros()
        .write_style(env_logger::WriteStyle::Never)
        .target(env_logger::Target::Pipe(Box::new(writer)))
        .try_init()
        .map_err(io::Error::other)
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
