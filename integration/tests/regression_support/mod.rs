//! Support for the regression tests of issue 10 (`tests/regressions.rs`), on top of the
//! `integration` library and `fault_support`:
//!
//! - [`hello_command`] and [`own_listen_pid`] build the command lines of processes a test
//!   starts itself (run them with `fault_support::Guarded`), [`pass_fd_3`] hands one socket
//!   over at descriptor 3, and [`assert_refused_to_start`] checks a process that must not
//!   start;
//! - [`upgrade`] SIGHUPs a generation and waits until the next one is ready;
//! - [`descendants`], [`KillOnDrop`] and [`KillMentioning`] find and guard processes that left
//!   the tree of the server (a grandchild re-parented to init is no longer killed by `Server`,
//!   nor a generation whose pid it never read);
//! - [`next_pids`] and [`plant_links_as_nobody`] plant links in a shared directory as another
//!   user, at the names a pid file's temporary file could predictably get;
//! - [`PidFileWatch`] samples a pid file in the background.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub use integration::descendants;
use integration::{send_signal, wait_for, Server, TempDir, TIMEOUT};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::fault_support::{assert_no_panic, cmdline, no_stray_fds, processes_mentioning, Guarded};

/// How long a process that cannot start may take to exit (a debug binary, a loaded machine).
pub const QUICK: Duration = Duration::from_secs(15);

/// Every variable of the inheritance protocol, removed from what the test's processes inherit.
pub const INHERIT_VARS: [&str; 6] = [
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "ACTIX_ENDLESS_READY_FD",
    "ACTIX_ENDLESS_GENERATION",
    "ACTIX_ENDLESS_MASTER_PID",
];

/// `program --addr-file DIR/addr ARGS`, with no inheritance variable. `DIR` on the command line
/// is what `Guarded` finds the process (and every generation) by.
pub fn hello_command(program: &Path, dir: &TempDir, args: &[&str]) -> Command {
    no_stray_fds();
    let mut command = Command::new(program);
    command.arg("--addr-file").arg(dir.join("addr")).args(args);
    for var in INHERIT_VARS {
        command.env_remove(var);
    }
    command
}

/// `program --addr-file DIR/addr ARGS` run through `sh -c 'export LISTEN_PID=$$; exec ...'`, so
/// that `LISTEN_PID` names the program itself and the inheritance variables in `env` are meant
/// for it (as `faults_startup.rs` does).
pub fn own_listen_pid(
    program: &Path,
    dir: &TempDir,
    args: &[&str],
    env: &[(&str, &str)],
) -> Command {
    no_stray_fds();
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(r#"export LISTEN_PID=$$; exec "$0" "$@""#)
        .arg(program)
        .arg("--addr-file")
        .arg(dir.join("addr"))
        .args(args);
    for var in INHERIT_VARS {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    command
}

/// Makes `command` receive `fd` as descriptor 3 (inheritable), as a master or systemd passes a
/// listening socket. `fd` must stay open until the command has been spawned.
pub fn pass_fd_3(command: &mut Command, fd: &impl AsRawFd) {
    let source: RawFd = fd.as_raw_fd();
    let pre_exec = move || {
        // SAFETY: dup2 and fcntl are async-signal-safe and only change this (forked) child's
        // descriptor table. dup2 onto 3 clears close-on-exec; when the source already is 3,
        // the flag is cleared by fcntl instead.
        let ok = unsafe {
            if source == 3 {
                libc::fcntl(3, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(source, 3) == 3
            }
        };
        if ok {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: the closure only calls async-signal-safe functions and does not allocate.
    unsafe {
        command.pre_exec(pre_exec);
    }
}

/// The port in `DIR/addr` (the first address the process serves), once it is written.
pub fn served_port(dir: &TempDir) -> Option<u16> {
    let text = fs::read_to_string(dir.join("addr")).ok()?;
    Some(
        text.lines()
            .next()?
            .parse::<std::net::SocketAddr>()
            .ok()?
            .port(),
    )
}

/// Waits until the process started in `dir` serves and returns its port.
pub fn wait_served(process: &Guarded, dir: &TempDir) -> u16 {
    wait_for(TIMEOUT, || served_port(dir))
        .unwrap_or_else(|| panic!("it did not serve; output:\n{}", process.output()))
}

/// Waits for a process that must not start: it exits non-zero within [`QUICK`], without a
/// panic, with every part of `expected` in its output, having never served (no address file)
/// and leaving no process behind. Returns its output.
pub fn assert_refused_to_start(mut process: Guarded, dir: &TempDir, expected: &[&str]) -> String {
    let started = Instant::now();
    let status = wait_for(QUICK, || process.try_wait()).unwrap_or_else(|| {
        panic!(
            "it did not refuse to start: still running after {QUICK:?}, serving: {}; output:\n{}",
            served_port(dir).is_some(),
            process.output()
        )
    });
    let output = process.output();
    assert!(
        !status.success(),
        "it exited with {status} after {:?}; output:\n{output}",
        started.elapsed()
    );
    assert_no_panic(&output);
    assert!(
        !dir.join("addr").exists(),
        "it served before it failed; output:\n{output}"
    );
    assert_eq!(
        processes_mentioning(&dir.path().to_string_lossy()),
        Vec::<i32>::new(),
        "processes left behind"
    );
    for part in expected {
        assert!(
            output.contains(part),
            "the error does not say `{part}`; output:\n{output}"
        );
    }
    output
}

/// SIGHUPs `old` (generation `generation - 1`) and waits until generation `generation` names
/// itself in the pid file and `old` has logged that it is ready. Returns the new pid.
pub fn upgrade(server: &Server, old: i32, generation: u64) -> i32 {
    send_signal(old, Signal::SIGHUP);
    let new = wait_for(TIMEOUT, || server.read_pid_file().filter(|&p| p != old))
        .unwrap_or_else(|| panic!("generation {generation} did not write the pid file"));
    let ready = format!("generation {generation} (pid {new}) is ready after");
    assert!(
        server.wait_for_log(&ready, 1, TIMEOUT),
        "no `{ready}` in the log"
    );
    new
}

/// Processes to SIGKILL when the test ends, however it ends: each pid with the command line it
/// had, so that a pid reused by an unrelated process is never killed.
#[derive(Default)]
pub struct KillOnDrop {
    pids: Vec<(i32, String)>,
}

impl KillOnDrop {
    /// Guards `pid`, whose command line is `command_line` now.
    pub fn add(&mut self, pid: i32, command_line: String) {
        self.pids.push((pid, command_line));
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for (pid, command_line) in &self.pids {
            if cmdline(*pid).as_ref() == Some(command_line) {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
        }
    }
}

/// SIGKILLs, when dropped, every process whose command line holds a server's directory: every
/// generation has it there (`--addr-file DIR/addr`), including one `Server` never recorded
/// (a generation that became ready while the test was failing) or one orphaned by its parent.
pub struct KillMentioning(String);

impl KillMentioning {
    /// Guards every process of `server`.
    pub fn server(server: &Server) -> KillMentioning {
        KillMentioning(server.dir().to_string_lossy().into_owned())
    }
}

impl Drop for KillMentioning {
    fn drop(&mut self) {
        for pid in processes_mentioning(&self.0) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// The `count` pids the kernel will most likely hand out next: those after the last one
/// given (`/proc/sys/kernel/ns_last_pid`), wrapping at `pid_max` to 301 as Linux does.
pub fn next_pids(count: i32) -> Vec<i32> {
    let read = |path: &str| -> i32 {
        fs::read_to_string(path)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or_else(|| panic!("cannot read {path}"))
    };
    let last = read("/proc/sys/kernel/ns_last_pid");
    let max = read("/proc/sys/kernel/pid_max");
    (1..=count)
        .map(|i| {
            let pid = last + i;
            if pid >= max {
                301 + (pid - max)
            } else {
                pid
            }
        })
        .collect()
}

/// Creates a symbolic link to `target` at every path of `links`, as user `nobody`
/// (`setpriv --reuid=nobody --regid=nogroup --clear-groups`), in one process: one process per
/// link (`ln -s`) would use up the very pids the links are named after.
///
/// # Panics
///
/// If `setpriv` (util-linux) or `perl` is missing, or a link cannot be made.
pub fn plant_links_as_nobody(target: &Path, links: &[PathBuf]) {
    const SCRIPT: &str =
        r#"my $t = shift; for (@ARGV) { symlink($t, $_) or die "symlink $_: $!\n" }"#;
    let output = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .args(["perl", "-e", SCRIPT])
        .arg(target)
        .args(links)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `setpriv` to plant links as another user: {e}; this test needs \
                 setpriv (Debian package util-linux) and perl, and must run as root"
            )
        });
    assert!(
        output.status.success(),
        "planting {} links as nobody failed ({}): {}",
        links.len(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Samples a pid file every millisecond in a background thread and records every pid it names.
pub struct PidFileWatch {
    seen: Arc<Mutex<BTreeSet<i32>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl PidFileWatch {
    /// Starts sampling `path`.
    pub fn start(path: PathBuf) -> PidFileWatch {
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = thread::spawn({
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            move || {
                let mut samples = 0;
                while !stop.load(Ordering::Relaxed) {
                    if let Some(pid) = fs::read_to_string(&path)
                        .ok()
                        .and_then(|text| text.trim().parse().ok())
                    {
                        seen.lock().unwrap_or_else(|p| p.into_inner()).insert(pid);
                    }
                    samples += 1;
                    thread::sleep(Duration::from_millis(1));
                }
                samples
            }
        });
        PidFileWatch {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling; returns every pid seen and the number of samples.
    pub fn stop(mut self) -> (BTreeSet<i32>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self
            .thread
            .take()
            .map(|t| t.join().expect("pid file watch panicked"))
            .unwrap_or(0);
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (seen, samples)
    }
}

impl Drop for PidFileWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
