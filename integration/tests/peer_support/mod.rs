//! Support code for the tests that run the real peers an operator deploys with (`peer_*.rs`,
//! included with `mod peer_support;`): Debian's nginx and supervisord.
//!
//! - [`find_tool`] looks a peer's executable up in `PATH`, `/usr/sbin` and `/usr/bin`; a test
//!   prints [`skip`]'s message and returns when it is not installed.
//! - [`Peer`] guards a peer started as a child of the test: on drop (and from a watchdog after
//!   [`WATCHDOG_LIMIT`]) it SIGKILLs, by pid, the peer, every descendant of it (nginx's
//!   workers, supervisord's programs and their workers) and every process whose command line
//!   holds the peer's directory (a program that outlived its parent), then reaps the peer and,
//!   if the test is panicking, prints the peer's logs.
//! - [`run_bounded`] runs a short-lived command (`supervisorctl`) with a deadline.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::Duration;

use integration::{kill_tree, wait_for, TempDir, Watchdog};

/// After this long a [`Peer`]'s watchdog SIGKILLs its processes, so that a hung test leaves
/// nothing running.
pub const WATCHDOG_LIMIT: Duration = Duration::from_secs(120);

/// How many trailing lines of each log a panicking test prints.
const LOG_LINES: usize = 200;

/// The variables of the inheritance and notification protocols, removed from every peer's
/// environment so that the test runner's own (say, a CI job run by systemd) cannot reach the
/// server through the peer.
const PROTOCOL_VARS: [&str; 6] = [
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "ACTIX_ENDLESS_READY_FD",
    "ACTIX_ENDLESS_GENERATION",
    "NOTIFY_SOCKET",
];

/// The executable `name` from `PATH`, `/usr/sbin` or `/usr/bin` (Debian puts `nginx` in
/// `/usr/sbin`, which a non-root `PATH` often lacks), if it is installed.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Prints the skip message of a test whose peer `tool` is not installed (Debian package
/// `package`).
pub fn skip(tool: &str, package: &str) {
    eprintln!(
        "SKIP: {tool} is not installed (looked in PATH, /usr/sbin and /usr/bin; Debian: \
         apt-get install -y {package}, which `make integration` does)"
    );
}

/// Reads `path` lossily; empty if it cannot be read.
pub fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// A peer process (nginx's master, supervisord) started by the test, and a guard for it and
/// everything it starts.
pub struct Peer {
    name: &'static str,
    child: Child,
    status: Option<ExitStatus>,
    /// Printed (their last [`LOG_LINES`] lines) when the test panics.
    logs: Vec<PathBuf>,
    watchdog: Option<Watchdog>,
    // Last, so that the directory is removed after the processes are killed.
    dir: TempDir,
}

impl Peer {
    /// A command running `program` with stdin from `/dev/null`, stdout and stderr written to
    /// `dir/NAME.out`, and none of the protocol variables of the test's environment.
    pub fn command(name: &str, program: impl AsRef<OsStr>, dir: &TempDir) -> Command {
        let out_path = dir.join(format!("{name}.out"));
        let out =
            File::create(&out_path).unwrap_or_else(|e| panic!("cannot create {out_path:?}: {e}"));
        let err = out.try_clone().expect("cannot duplicate a descriptor");
        let mut command = Command::new(program);
        for var in PROTOCOL_VARS {
            command.env_remove(var);
        }
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        command
    }

    /// Spawns `command` (built with [`Peer::command`] on `dir`, whose path must appear on
    /// its command line, as in `-c DIR/CONF`); `logs` (paths in `dir`) are printed if the test panics, after
    /// `dir/NAME.out`.
    ///
    /// # Panics
    ///
    /// If the process cannot be started.
    pub fn spawn(name: &'static str, mut command: Command, dir: TempDir, logs: &[&str]) -> Peer {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        let pid = i32::try_from(child.id()).expect("pid fits in i32");
        let marker = dir.path().to_string_lossy().into_owned();
        // By marker only: the peer's own command line holds the directory too, and the
        // watchdog may fire after the peer was reaped, when its pid could name another process.
        let watchdog = Watchdog::start(WATCHDOG_LIMIT, format!("{name} (pid {pid})"), move || {
            kill_tree(None, &marker)
        });
        let mut paths = vec![dir.join(format!("{name}.out"))];
        paths.extend(logs.iter().map(|log| dir.join(log)));
        Peer {
            name,
            child,
            status: None,
            logs: paths,
            watchdog: Some(watchdog),
            dir,
        }
    }

    /// The peer's pid (nginx's master, supervisord).
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits in i32")
    }

    /// The peer's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The content of `dir/name`; empty if it cannot be read.
    pub fn read(&self, name: &str) -> String {
        read_lossy(&self.dir.join(name))
    }

    /// The peer's exit status if it has exited (it is reaped then).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("waitpid({}) failed: {e}", self.child.id()));
        }
        self.status
    }

    /// Panics with the peer's output if it has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.try_wait() {
            panic!(
                "{} exited with {status}:\n{}",
                self.name,
                self.read(&format!("{}.out", self.name))
            );
        }
    }

    /// Waits until the peer exits and returns its status.
    ///
    /// # Panics
    ///
    /// If it has not exited after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let (name, pid) = (self.name, self.pid());
        wait_for(timeout, || self.try_wait())
            .unwrap_or_else(|| panic!("{name} (pid {pid}) did not exit within {timeout:?}"))
    }

    fn print_logs(&self) {
        for path in &self.logs {
            let text = read_lossy(path);
            let lines: Vec<&str> = text.lines().collect();
            let skipped = lines.len().saturating_sub(LOG_LINES);
            eprintln!("----- {} -----", path.display());
            if skipped > 0 {
                eprintln!("[{skipped} earlier lines omitted]");
            }
            for line in &lines[skipped..] {
                eprintln!("{line}");
            }
        }
        eprintln!("----- end of {} logs -----", self.name);
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.watchdog.take();
        // The peer is our unreaped child (or reaped just now, below), so its pid cannot have
        // been reused; its descendants are read from /proc at this moment.
        if self.status.is_none() {
            kill_tree(Some(self.pid()), &self.dir.path().to_string_lossy());
            let _ = self.child.kill();
            let _ = self.child.wait();
        } else {
            // Exited: only what it left behind (an orphaned program) can still run.
            kill_tree(None, &self.dir.path().to_string_lossy());
        }
        if thread::panicking() {
            self.print_logs();
        }
    }
}

/// Runs `command` (stdout and stderr captured in `dir/NAME.out`, overwritten) and returns its
/// status and output; SIGKILLs it and panics if it has not exited within `timeout`.
pub fn run_bounded(
    name: &str,
    mut command: Command,
    dir: &Path,
    timeout: Duration,
) -> (ExitStatus, String) {
    let out_path = dir.join(format!("{name}.out"));
    let out = File::create(&out_path).unwrap_or_else(|e| panic!("cannot create {out_path:?}: {e}"));
    let err = out.try_clone().expect("cannot duplicate a descriptor");
    command.stdin(Stdio::null()).stdout(out).stderr(err);
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let status = wait_for(timeout, || child.try_wait().ok().flatten());
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{command:?} did not exit within {timeout:?}; output so far:\n{}",
            read_lossy(&out_path)
        );
    };
    (status, read_lossy(&out_path))
}

/// The first fenced block of language `lang` (```` ```nginx ````, ```` ```ini ````) in the
/// section of the workspace's `README.md` headed `heading` (the whole heading line, such as
/// `### supervisord (and runit, s6)`), so that a test runs exactly what the guide says.
///
/// # Panics
///
/// If there is no such section or no such block in it.
pub fn readme_block(heading: &str, lang: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = read_lossy(&path);
    let mut lines = readme
        .lines()
        .skip_while(|line| *line != heading)
        .skip(1)
        .take_while(|line| !line.starts_with("## ") && !line.starts_with("### "));
    let fence = format!("```{lang}");
    assert!(
        lines.any(|line| line == fence),
        "no {fence} block in the README section {heading:?} ({})",
        path.display()
    );
    let block: Vec<&str> = lines.take_while(|line| *line != "```").collect();
    assert!(!block.is_empty(), "empty {fence} block under {heading:?}");
    block.join("\n") + "\n"
}

/// `text` with the single occurrence of `from` replaced by `to`.
///
/// # Panics
///
/// If `from` does not occur exactly once (the README's example changed: the test must follow).
pub fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "expected exactly one {from:?} in:\n{text}"
    );
    text.replacen(from, to, 1)
}
