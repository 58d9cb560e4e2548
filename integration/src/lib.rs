//! Test support for the end-to-end tests of `actix-endless`.
//!
//! The tests in `integration/tests/` run the real example binaries (`hello`, `hello_v2`,
//! `reload`) as separate processes, send them real signals and talk to them over real TCP
//! connections. This crate holds what they share:
//!
//! - [`examples`] builds the examples once per test binary and locates them;
//! - [`TempDir`] is a self-removing scratch directory;
//! - [`Server`] starts an example on an ephemeral port and, when dropped, SIGKILLs every
//!   process it ever saw (the first process, every upgraded generation and their children),
//!   so a failing test leaves nothing running; a watchdog does the same for a hung test;
//! - [`wait_until`] and [`wait_for`] poll with a deadline instead of sleeping a fixed time;
//! - [`pid_alive`], [`process_state`] and [`children_of`] inspect processes through `/proc`;
//! - [`get`] is a convenient HTTP client (ureq) for probes that may be retried, while
//!   [`RawRequest`] and [`LoadClient`] are a strict hand-written HTTP/1.1 client for every
//!   check that counts failures.
//!
//! # Limitations
//!
//! Linux only: processes are inspected through `/proc`, and the examples are built in the
//! `debug` profile.
#![warn(missing_docs)]

pub mod hello_args;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Default deadline for anything a test waits for: generous, because the tests run debug
/// binaries, in parallel, on small and loaded machines.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// How often the polling helpers look again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Connect, read and write timeout of every HTTP request the tests make.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// After this long, a [`Server`]'s watchdog SIGKILLs every process the server started, so that
/// a hung test cannot leave processes behind.
pub const WATCHDOG_LIMIT: Duration = Duration::from_secs(120);

/// Read timeout of a [`RawRequest`]: longer than the longest `/sleep` the tests ask for, so
/// that a connection closed by the server shows up as an end of stream, not as a timeout.
pub const RAW_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Example binaries
// ---------------------------------------------------------------------------------------------

/// Paths of the example binaries, built by [`examples`].
#[derive(Debug)]
pub struct Examples {
    /// `examples/hello.rs`: answers `hello from pid {pid}, generation {gen}, release v1`.
    pub hello: PathBuf,
    /// `examples/hello_v2.rs`: the same server, answering `release v2`.
    pub hello_v2: PathBuf,
    /// `examples/reload.rs`: answers the greeting of its `--config` file, re-read on SIGUSR1.
    pub reload: PathBuf,
    /// `examples/hello_tls.rs`: `hello` over HTTPS (`--tls-cert`, `--tls-key`), `release tls`.
    pub hello_tls: PathBuf,
}

/// Builds the examples of `actix-endless` once per test binary and returns their paths.
///
/// Runs `$CARGO build --examples --all-features -p actix-endless` (`cargo` when `CARGO` is unset) from the
/// workspace root and looks for the binaries in `<target dir>/debug/examples/`, where the
/// target directory is `CARGO_TARGET_DIR` if set (relative to the workspace root) and
/// `target/` otherwise.
///
/// # Panics
///
/// If the build fails (the panic message holds cargo's output) or a binary is missing.
pub fn examples() -> &'static Examples {
    static EXAMPLES: OnceLock<Examples> = OnceLock::new();
    EXAMPLES.get_or_init(build_examples)
}

fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .expect("the integration crate lives inside the workspace")
        .to_path_buf()
}

fn build_examples() -> Examples {
    let root = workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut command = Command::new(&cargo);
    command
        .args([
            "build",
            "--examples",
            "--all-features",
            "-p",
            "actix-endless",
        ])
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = spawn(&mut command).unwrap_or_else(|e| panic!("cannot run {cargo:?}: {e}"));
    let output = child
        .wait_with_output()
        .expect("waiting for cargo build failed");
    assert!(
        output.status.success(),
        "`cargo build --examples --all-features -p actix-endless` failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );

    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        // `join` keeps an absolute CARGO_TARGET_DIR as it is.
        Some(dir) => root.join(dir),
        None => root.join("target"),
    };
    let dir = target.join("debug").join("examples");
    let find = |name: &str| {
        let path = dir.join(name);
        assert!(
            path.is_file(),
            "example binary {} not found",
            path.display()
        );
        path
    };
    Examples {
        hello: find("hello"),
        hello_v2: find("hello_v2"),
        reload: find("reload"),
        hello_tls: find("hello_tls"),
    }
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

/// Serialises writing executable files with spawning processes.
///
/// A file this process has open for writing is inherited by any child forked at that moment
/// (until the child's `exec` closes it), and executing a file that some process has open for
/// writing fails with `ETXTBSY`. The tests run in parallel threads, so one thread copying a
/// binary while another spawns a server would make rare, spurious `ETXTBSY` failures, both for
/// our spawns and for a server re-executing a binary we just installed. Holding this lock while
/// writing files and while forking rules that out.
fn exec_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Spawns `command` while holding the [`exec_lock`]. `spawn` returns once the child has
/// executed its program, so the lock covers the whole window between fork and exec.
fn spawn(command: &mut Command) -> io::Result<Child> {
    let _guard = exec_lock();
    command.spawn()
}

fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A uniquely named directory under [`std::env::temp_dir`], removed with its content on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a new, empty directory whose name starts with `actix-endless-{label}-`.
    ///
    /// # Panics
    ///
    /// If the directory cannot be created.
    pub fn new(label: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("actix-endless-{label}-{}", unique_suffix()));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir { path }
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `self.path().join(name)`.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Replaces `dest` with `contents` and permission bits `mode`, atomically: the content is
/// written to a sibling temporary file which is then renamed over `dest`.
///
/// This is the only safe way to replace a binary that is running (writing into it fails with
/// `ETXTBSY`), and it lets a server that re-reads or re-executes `dest` see either the old or
/// the new content, never a partial one.
///
/// # Panics
///
/// On any I/O error.
pub fn replace_file(dest: &Path, contents: &[u8], mode: u32) {
    let tmp = sibling_temp(dest);
    let _guard = exec_lock();
    let write = || -> io::Result<()> {
        let mut file = File::create(&tmp)?;
        file.write_all(contents)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        drop(file);
        fs::rename(&tmp, dest)
    };
    write().unwrap_or_else(|e| panic!("cannot replace {}: {e}", dest.display()));
}

/// Replaces `dest` with a copy of `src` (permissions included), atomically, like
/// [`replace_file`]. `dest` may not exist yet.
///
/// # Panics
///
/// On any I/O error.
pub fn replace_with_copy(dest: &Path, src: &Path) {
    let tmp = sibling_temp(dest);
    let _guard = exec_lock();
    fs::copy(src, &tmp)
        .and_then(|_| fs::rename(&tmp, dest))
        .unwrap_or_else(|e| {
            panic!(
                "cannot replace {} with a copy of {}: {e}",
                dest.display(),
                src.display()
            )
        });
}

/// Replaces `dest` with an executable shell script holding `body` after a `#!/bin/sh` line.
///
/// # Panics
///
/// On any I/O error.
pub fn replace_with_script(dest: &Path, body: &str) {
    replace_file(dest, format!("#!/bin/sh\n{body}\n").as_bytes(), 0o755);
}

fn sibling_temp(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .unwrap_or_else(|| panic!("{} has no file name", dest.display()))
        .to_string_lossy();
    dest.with_file_name(format!(".{name}.tmp-{}", unique_suffix()))
}

// ---------------------------------------------------------------------------------------------
// Polling
// ---------------------------------------------------------------------------------------------

/// Calls `condition` every [`POLL_INTERVAL`] until it returns `true` (then returns `true`) or
/// `timeout` has passed (then returns `false`). `condition` is called at least once, and once
/// more after the deadline has passed.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    wait_for(timeout, || condition().then_some(())).is_some()
}

/// Calls `probe` every [`POLL_INTERVAL`] until it returns `Some` (then returns that) or
/// `timeout` has passed (then returns `None`). `probe` is called at least once, and once more
/// after the deadline has passed.
pub fn wait_for<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let late = Instant::now() >= deadline;
        if let Some(value) = probe() {
            return Some(value);
        }
        if late {
            return None;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// Sends `signal` to `pid`.
///
/// # Panics
///
/// If the signal cannot be sent (for instance because the process is gone).
pub fn send_signal(pid: i32, signal: Signal) {
    kill(Pid::from_raw(pid), signal)
        .unwrap_or_else(|e| panic!("cannot send {signal} to pid {pid}: {e}"));
}

/// Fields of `/proc/PID/stat` the tests care about.
struct Stat {
    state: char,
    ppid: i32,
}

fn read_stat(pid: i32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`, where comm may hold spaces and parentheses.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some(Stat { state, ppid })
}

/// The state letter of `pid` in `/proc/PID/stat` (`R`, `S`, `T`, `Z`, ...), or `None` if
/// there is no such process.
pub fn process_state(pid: i32) -> Option<char> {
    read_stat(pid).map(|stat| stat.state)
}

/// Whether `pid` names a running process: it exists and is neither a zombie nor dead.
pub fn pid_alive(pid: i32) -> bool {
    match kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => {}
        Err(_) => return false,
    }
    !matches!(process_state(pid), None | Some('Z' | 'X' | 'x'))
}

/// Every process as `(pid, ppid, state)`, read from `/proc/*/stat`.
fn all_processes() -> Vec<(i32, Stat)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, read_stat(pid)?)))
        .collect()
}

/// Whether the command line of `pid` contains `marker` (`false` if it cannot be read).
pub fn cmdline_contains(pid: i32, marker: &str) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmdline| String::from_utf8_lossy(&cmdline).contains(marker))
        .unwrap_or(false)
}

/// `roots` and every process descended from one of them, read from `/proc`.
fn with_descendants(mut found: BTreeSet<i32>) -> BTreeSet<i32> {
    let processes = all_processes();
    loop {
        let before = found.len();
        for (pid, stat) in &processes {
            if found.contains(&stat.ppid) {
                found.insert(*pid);
            }
        }
        if found.len() == before {
            return found;
        }
    }
}

/// Every descendant of `root` (children, their children, ...), not `root` itself.
pub fn descendants(root: i32) -> BTreeSet<i32> {
    let mut found = with_descendants(BTreeSet::from([root]));
    found.remove(&root);
    found
}

/// SIGKILLs `targets` and all their descendants, never the test process itself.
fn kill_with_descendants(targets: BTreeSet<i32>) {
    let me = i32::try_from(std::process::id()).expect("pid fits in i32");
    for pid in with_descendants(targets) {
        if pid != me && pid > 1 {
            // ESRCH (already gone) is fine; nothing else can usefully be done here.
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// SIGKILLs `root` (when given), every process whose command line holds `marker` (a test's
/// unique temporary directory), and all their descendants; never the test process itself.
pub fn kill_tree(root: Option<i32>, marker: &str) {
    let me = i32::try_from(std::process::id()).expect("pid fits in i32");
    let mut targets: BTreeSet<i32> = all_processes()
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|&pid| pid != me && cmdline_contains(pid, marker))
        .collect();
    targets.extend(root);
    kill_with_descendants(targets);
}

/// The children of `pid` (processes whose parent is `pid`), each with its state letter.
/// A zombie child (state `Z`) is one its parent has not reaped.
pub fn children_of(pid: i32) -> Vec<(i32, char)> {
    all_processes()
        .into_iter()
        .filter(|(_, stat)| stat.ppid == pid)
        .map(|(child, stat)| (child, stat.state))
        .collect()
}

/// Waits until the direct child `child` exits and returns its status.
///
/// # Panics
///
/// If it has not exited after `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let pid = child.id();
    wait_for(timeout, || {
        child
            .try_wait()
            .unwrap_or_else(|e| panic!("waitpid({pid}) failed: {e}"))
    })
    .unwrap_or_else(|| panic!("pid {pid} did not exit within {timeout:?}"))
}

/// Whether a TCP connection to `127.0.0.1:port` is refused, i.e. nothing listens there.
pub fn port_closed(port: u16) -> bool {
    matches!(
        TcpStream::connect_timeout(&local(port), HTTP_TIMEOUT),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused
    )
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// The pids a [`Server`] has seen, shared with its watchdog.
struct Tracker {
    pids: Mutex<BTreeSet<i32>>,
    /// A string every generation of the server has on its command line (the temporary
    /// directory), so that a recorded pid reused by an unrelated process is never killed.
    marker: String,
}

impl Tracker {
    fn record(&self, pid: i32) {
        self.pids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(pid);
    }

    fn owns(&self, pid: i32) -> bool {
        cmdline_contains(pid, &self.marker)
    }

    /// SIGKILLs every recorded pid that still runs one of our servers, and all their
    /// descendants (such as an upgrade child that was never cleaned up).
    fn kill_all(&self) {
        let recorded = self
            .pids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let targets: BTreeSet<i32> = recorded.into_iter().filter(|&p| self.owns(p)).collect();
        kill_with_descendants(targets);
    }
}

/// Runs a kill action if it is not dropped within a time limit, so that a hung test cannot
/// leave processes behind.
pub struct Watchdog {
    done: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Runs `kill` after `limit` unless the watchdog is dropped first; `what` names it in the
    /// message printed then.
    pub fn start(
        limit: Duration,
        what: impl std::fmt::Display + Send + 'static,
        kill: impl FnOnce() + Send + 'static,
    ) -> Watchdog {
        let done = Arc::new((Mutex::new(false), Condvar::new()));
        let thread = thread::spawn({
            let done = Arc::clone(&done);
            move || {
                let (lock, condvar) = &*done;
                let guard = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let (guard, _) = condvar
                    .wait_timeout_while(guard, limit, |done| !*done)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if !*guard {
                    eprintln!("watchdog: test still running after {limit:?}; killing {what}");
                    kill();
                }
            }
        });
        Watchdog {
            done,
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (lock, condvar) = &*self.done;
        *lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = true;
        condvar.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

/// An example server running as a separate process, and a guard for every process it becomes.
///
/// [`Server::start`] runs the binary with `--bind 127.0.0.1:0 --addr-file DIR/addr
/// --pid-file DIR/pid` followed by the test's own arguments, with `RUST_LOG=info` and stdout
/// and stderr appended to `DIR/server.log` (opened with `O_APPEND`, so that every upgraded
/// generation, which inherits the descriptors, appends to the same file).
///
/// The guard records every pid it observes: the first process, and every pid read from the
/// pid file ([`Server::read_pid_file`]) or from `GET /pid` ([`Server::get_pid`]). On drop it
/// SIGKILLs all of them that still run this server, and their descendants, and reaps the
/// first process; if the test is panicking it also prints the log. A watchdog does the same
/// killing after [`WATCHDOG_LIMIT`] if the guard is still alive then.
pub struct Server {
    child: Child,
    exit_status: Option<ExitStatus>,
    port: u16,
    tracker: Arc<Tracker>,
    watchdog: Option<Watchdog>,
    // Last, so that it is removed after the processes are killed.
    dir: TempDir,
}

impl Server {
    /// Starts `program` with `args` (after the standard ones) in a new [`TempDir`], and waits
    /// until it serves (see [`Server::start_in`]).
    pub fn start(program: &Path, args: &[&str]) -> Server {
        let label = program
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| "server".to_owned());
        Server::start_in(TempDir::new(&label), program, args)
    }

    /// Starts `program` with `args` (after the standard ones) using `dir` for its files, and
    /// waits until it serves: until the address file names a port and the pid file exists.
    /// `dir` may already hold the program itself (tests that replace the binary do that).
    ///
    /// # Panics
    ///
    /// If the program cannot be started, or exits or does not serve within [`TIMEOUT`].
    pub fn start_in(dir: TempDir, program: &Path, args: &[&str]) -> Server {
        let log_path = dir.join("server.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log_path.display()));
        let log_stderr = log
            .try_clone()
            .expect("cannot duplicate the log descriptor");

        let mut command = Command::new(program);
        command
            .arg("--bind")
            .arg("127.0.0.1:0")
            .arg("--addr-file")
            .arg(dir.join("addr"))
            .arg("--pid-file")
            .arg(dir.join("pid"))
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("ACTIX_ENDLESS_READY_FD")
            .env_remove("ACTIX_ENDLESS_GENERATION")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_stderr);
        let child = spawn(&mut command)
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));

        let tracker = Arc::new(Tracker {
            pids: Mutex::new(BTreeSet::new()),
            marker: dir.path().to_string_lossy().into_owned(),
        });
        let pid = i32::try_from(child.id()).expect("pid fits in i32");
        tracker.record(pid);
        let watchdog = Watchdog::start(WATCHDOG_LIMIT, "its servers", {
            let tracker = Arc::clone(&tracker);
            move || tracker.kill_all()
        });
        // Build the guard before waiting, so that a panic below still kills the process.
        let mut server = Server {
            child,
            exit_status: None,
            port: 0,
            tracker,
            watchdog: Some(watchdog),
            dir,
        };
        server.port = server.wait_until_serving();
        server
    }

    fn wait_until_serving(&mut self) -> u16 {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.try_wait() {
                panic!("server exited with {status} before it served");
            }
            let port = fs::read_to_string(self.addr_file()).ok().and_then(|text| {
                let first = text.lines().next()?;
                Some(first.trim().parse::<SocketAddr>().ok()?.port())
            });
            if let (Some(port), Some(_)) = (port, self.read_pid_file()) {
                return port;
            }
            assert!(
                Instant::now() < deadline,
                "server did not write its address file and pid file within {TIMEOUT:?}"
            );
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// The port the server listens on (from the address file).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The pid of the first process, the direct child of the test.
    pub fn first_pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits in i32")
    }

    /// The server's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the pid file (`DIR/pid`).
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("pid")
    }

    /// Path of the address file (`DIR/addr`).
    pub fn addr_file(&self) -> PathBuf {
        self.dir.join("addr")
    }

    /// Path of the log file (`DIR/server.log`), where every generation's stdout and stderr go.
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// Adds `pid` to the pids killed when the guard is dropped.
    pub fn record_pid(&self, pid: i32) {
        self.tracker.record(pid);
    }

    /// The pid in the pid file, or `None` if the file is missing or does not hold a pid.
    /// The pid is recorded for cleanup.
    pub fn read_pid_file(&self) -> Option<i32> {
        let pid = fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        self.record_pid(pid);
        Some(pid)
    }

    /// `GET path` with [`get`].
    pub fn get(&self, path: &str) -> Result<(u16, String), ureq::Error> {
        get(self.port, path)
    }

    /// The pid answering `GET /pid`, recorded for cleanup.
    pub fn get_pid(&self) -> Result<i32, String> {
        match self.get("/pid") {
            Ok((200, body)) => {
                let pid = body
                    .trim()
                    .parse()
                    .map_err(|e| format!("GET /pid answered {body:?}: {e}"))?;
                self.record_pid(pid);
                Ok(pid)
            }
            Ok((status, body)) => Err(format!("GET /pid answered {status}: {body:?}")),
            Err(e) => Err(format!("GET /pid failed: {e}")),
        }
    }

    /// Polls `GET /pid` until it answers a pid other than `old`, and returns that pid.
    /// Failed requests are retried: tests that must not see any use a [`LoadClient`].
    ///
    /// # Panics
    ///
    /// If no other pid answers within `timeout`.
    pub fn wait_for_new_pid(&self, old: i32, timeout: Duration) -> i32 {
        let mut last = Err(String::from("no request made"));
        wait_for(timeout, || {
            last = self.get_pid();
            last.as_ref().ok().copied().filter(|&pid| pid != old)
        })
        .unwrap_or_else(|| {
            panic!(
                "GET /pid did not answer a pid other than {old} within {timeout:?}; last: {last:?}"
            )
        })
    }

    /// The exit status of the first process if it has exited (it is reaped then).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exit_status.is_none() {
            self.exit_status = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("waitpid({}) failed: {e}", self.child.id()));
        }
        self.exit_status
    }

    /// Waits until the first process exits and returns its status.
    ///
    /// # Panics
    ///
    /// If it has not exited after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.exit_status {
            return status;
        }
        let status = wait_exit(&mut self.child, timeout);
        self.exit_status = Some(status);
        status
    }

    /// Everything the server generations have logged so far.
    pub fn log(&self) -> String {
        fs::read(self.log_file())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// How many times `pattern` occurs in the log.
    pub fn log_count(&self, pattern: &str) -> usize {
        self.log().matches(pattern).count()
    }

    /// Whether `pattern` occurs in the log.
    pub fn log_contains(&self, pattern: &str) -> bool {
        self.log().contains(pattern)
    }

    /// Byte offset of the first occurrence of `pattern` in the log.
    pub fn log_position(&self, pattern: &str) -> Option<usize> {
        self.log().find(pattern)
    }

    /// Polls the log until `pattern` occurs at least `count` times; `false` after `timeout`.
    pub fn wait_for_log(&self, pattern: &str, count: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.log_count(pattern) >= count)
    }

    fn print_log(&self) {
        const MAX_LINES: usize = 300;
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let skipped = lines.len().saturating_sub(MAX_LINES);
        eprintln!("----- {} -----", self.log_file().display());
        if skipped > 0 {
            eprintln!("[{skipped} earlier lines omitted]");
        }
        for line in &lines[skipped..] {
            eprintln!("{line}");
        }
        eprintln!("----- end of log -----");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.watchdog.take();
        self.tracker.kill_all();
        if self.exit_status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            self.print_log();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP: lenient client
// ---------------------------------------------------------------------------------------------

/// `GET http://127.0.0.1:{port}{path}` with ureq, on a new connection, with an overall
/// timeout of [`HTTP_TIMEOUT`]. Returns the status and the body; a non-2xx status is not an
/// error.
///
/// Good for probes. Not for counting failures: ureq retries a request that failed on a pooled
/// connection, which would hide exactly the failures a zero-downtime test looks for; use
/// [`LoadClient`] or [`RawRequest`] there.
pub fn get(port: u16, path: &str) -> Result<(u16, String), ureq::Error> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(HTTP_TIMEOUT))
        .http_status_as_error(false)
        .max_idle_connections(0)
        .build()
        .into();
    let mut response = agent.get(format!("http://127.0.0.1:{port}{path}")).call()?;
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string()?;
    Ok((status, body))
}

// ---------------------------------------------------------------------------------------------
// HTTP: strict client
// ---------------------------------------------------------------------------------------------

/// A response read by the strict client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Whether the server announced that it closes the connection after this response
    /// (`Connection: close`, or HTTP/1.0 without keep-alive).
    pub close: bool,
    /// The body (`Content-Length` bytes), decoded lossily as UTF-8.
    pub body: String,
}

fn connect(port: u16, read_timeout: Duration) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&local(port), HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(read_timeout))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Writes `GET path` (with `Connection: close` if `close`) on any stream, TCP or Unix.
pub fn write_request(stream: &mut impl Write, path: &str, close: bool) -> io::Result<()> {
    let connection = if close { "Connection: close\r\n" } else { "" };
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{connection}\r\n");
    stream.write_all(request.as_bytes())
}

fn read_line(reader: &mut impl BufRead, what: &str) -> Result<String, String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => Err(format!("end of stream before the {what}")),
        Ok(_) if !line.ends_with("\r\n") => Err(format!("truncated {what}: {line:?}")),
        Ok(_) => {
            line.truncate(line.len() - 2);
            Ok(line)
        }
        Err(e) => Err(format!("reading the {what}: {e} ({:?})", e.kind())),
    }
}

/// Reads exactly one HTTP/1.1 response with a `Content-Length` body from any stream. Anything
/// else (end of stream, reset, timeout, chunked body, malformed head) is an error.
pub fn read_response(reader: &mut impl BufRead) -> Result<HttpResponse, String> {
    let status_line = read_line(reader, "status line")?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status = parts
        .next()
        .and_then(|code| code.parse::<u16>().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| format!("malformed status line {status_line:?}"))?;
    let mut close = version == "HTTP/1.0";
    let mut content_length = None;
    loop {
        let line = read_line(reader, "headers")?;
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("malformed header {line:?}"))?;
        let value = value.trim().to_ascii_lowercase();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                content_length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| format!("malformed content-length {value:?}"))?,
                );
            }
            "connection" => {
                close = value.split(',').any(|token| token.trim() == "close");
            }
            "transfer-encoding" => return Err(format!("unsupported transfer-encoding {value:?}")),
            _ => {}
        }
    }
    let length = content_length.ok_or("response without content-length")?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body).map_err(|e| {
        format!(
            "reading a {length}-byte body: {e} ({:?}) after status {status}",
            e.kind()
        )
    })?;
    Ok(HttpResponse {
        status,
        close,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// One `GET` request written on its own connection (`Connection: close`), whose response is
/// read later.
///
/// Lets a test know a request is in flight before it signals the server: the request has been
/// written when [`RawRequest::send`] returns, and [`RawRequest::wait_accepted_by`] waits until
/// a given process has accepted the connection.
pub struct RawRequest {
    reader: BufReader<TcpStream>,
    server_port: u16,
    client_port: u16,
}

impl RawRequest {
    /// Connects to `127.0.0.1:port` and writes `GET path` with `Connection: close`.
    ///
    /// # Panics
    ///
    /// If connecting or writing fails.
    pub fn send(port: u16, path: &str) -> RawRequest {
        let mut stream = connect(port, RAW_REQUEST_TIMEOUT)
            .unwrap_or_else(|e| panic!("cannot connect to port {port}: {e}"));
        write_request(&mut stream, path, true)
            .unwrap_or_else(|e| panic!("cannot send GET {path}: {e}"));
        let client_port = stream
            .local_addr()
            .expect("a connected socket has a local address")
            .port();
        RawRequest {
            reader: BufReader::new(stream),
            server_port: port,
            client_port,
        }
    }

    /// Whether process `pid` holds the server side of this connection, i.e. has accepted it.
    ///
    /// Until a process accepts it, a connection waits in the queue of the listening socket,
    /// which every generation shares; once accepted, it belongs to that process alone. Found
    /// through `/proc/net/tcp` (the socket's inode) and `/proc/PID/fd`.
    pub fn accepted_by(&self, pid: i32) -> bool {
        let Some(inode) = server_socket_inode(self.server_port, self.client_port) else {
            return false;
        };
        let target = format!("socket:[{inode}]");
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            return false;
        };
        fds.filter_map(Result::ok).any(|fd| {
            fs::read_link(fd.path())
                .map(|link| link.as_os_str() == target.as_str())
                .unwrap_or(false)
        })
    }

    /// Polls [`RawRequest::accepted_by`] until it holds; `false` after `timeout`.
    pub fn wait_accepted_by(&self, pid: i32, timeout: Duration) -> bool {
        wait_until(timeout, || self.accepted_by(pid))
    }

    /// Reads the response (blocking, up to [`RAW_REQUEST_TIMEOUT`] per read).
    pub fn response(mut self) -> Result<HttpResponse, String> {
        read_response(&mut self.reader)
    }

    /// Reads the response in a new thread.
    pub fn spawn_response(self) -> JoinHandle<Result<HttpResponse, String>> {
        thread::spawn(move || self.response())
    }
}

/// The inode of the socket whose local port is `local_port` and peer port `peer_port`, if it
/// has been accepted (a connection still in an accept queue has inode 0).
fn server_socket_inode(local_port: u16, peer_port: u16) -> Option<u64> {
    let table = fs::read_to_string("/proc/net/tcp").ok()?;
    let port_of = |address: &str| {
        let (_, port) = address.split_once(':')?;
        u16::from_str_radix(port, 16).ok()
    };
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, inode) = (fields.get(1)?, fields.get(2)?, fields.get(9)?);
        if port_of(local)? != local_port || port_of(remote)? != peer_port {
            return None;
        }
        inode.parse::<u64>().ok().filter(|&inode| inode != 0)
    })
}

/// How a [`LoadClient`] uses connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One connection for many requests; a new one only after a response that announced
    /// `Connection: close`.
    KeepAlive,
    /// A new connection for every request, sent with `Connection: close`.
    Close,
}

/// What a [`LoadClient`] has seen so far.
#[derive(Clone, Debug, Default)]
pub struct LoadStats {
    /// Requests answered `200` with a `hello from pid N, ...` body.
    pub successes: u64,
    /// Everything else: connect errors, resets, end of stream or timeout before a complete
    /// response, malformed responses, other statuses or bodies.
    pub failures: u64,
    /// The first [`LoadStats::MAX_ERRORS`] failures, described, with the time since the client
    /// started.
    pub errors: Vec<String>,
    /// The pids that answered.
    pub pids: BTreeSet<i32>,
}

impl LoadStats {
    /// How many failure descriptions are kept in [`LoadStats::errors`].
    pub const MAX_ERRORS: usize = 10;

    /// Asserts that no request failed and that some were made; `name` names the client.
    pub fn assert_no_failure(&self, name: impl std::fmt::Display) {
        assert_eq!(
            self.failures,
            0,
            "{name} client: {} of {} requests failed; first errors:\n{}",
            self.failures,
            self.failures + self.successes,
            self.errors.join("\n")
        );
        assert!(self.successes > 0, "{name} client made no request");
    }

    /// Asserts that no request failed and that `pid` alone answered.
    pub fn assert_all_served_by(&self, name: impl std::fmt::Display, pid: i32) {
        self.assert_no_failure(&name);
        assert_eq!(
            self.pids,
            [pid].into(),
            "{name} client was answered by other processes than {pid}"
        );
    }

    /// Asserts that no request failed and that more than `count` processes answered (one
    /// per generation across `count` upgrades).
    pub fn assert_across_upgrades(&self, name: impl std::fmt::Display, count: usize) {
        self.assert_no_failure(&name);
        assert!(
            self.pids.len() > count,
            "{name} client was answered by {} processes only: {:?}",
            self.pids.len(),
            self.pids
        );
    }
}

/// A strict load generator: a thread sending `GET /` as fast as it can until stopped, with
/// no retry of any kind.
///
/// This is what zero-failure tests count with. HTTP client libraries are built to hide
/// failures: ureq, for one, transparently retries a request that failed on a pooled
/// connection (the server closed it in the meantime), which is exactly the failure a
/// zero-downtime restart must not cause. This client is hand-written over
/// [`std::net::TcpStream`] so that every error is seen and counted: a refused connection, a
/// reset, an end of stream before a complete response, a timeout or a non-200 status. In
/// [`Mode::KeepAlive`] it reconnects only after the server announced `Connection: close`; a
/// keep-alive connection closed without that announcement is a failure too.
pub struct LoadClient {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<LoadStats>>,
    thread: Option<JoinHandle<()>>,
}

impl LoadClient {
    /// Starts sending requests to `127.0.0.1:port` in a new thread.
    pub fn start(port: u16, mode: Mode) -> LoadClient {
        LoadClient::start_with(mode, "", move || connect(port, HTTP_TIMEOUT))
    }

    /// Starts sending requests in a new thread over the connections `connect` opens (a Unix
    /// socket, say); `label` prefixes its error messages.
    pub fn start_with<S, C>(mode: Mode, label: &'static str, connect: C) -> LoadClient
    where
        S: Read + Write + Send + 'static,
        C: FnMut() -> io::Result<S> + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(LoadStats::default()));
        let thread = thread::spawn({
            let stop = Arc::clone(&stop);
            let stats = Arc::clone(&stats);
            move || run_load(connect, mode, label, &stop, &stats)
        });
        LoadClient {
            stop,
            stats,
            thread: Some(thread),
        }
    }

    /// A copy of the statistics so far.
    pub fn stats(&self) -> LoadStats {
        self.stats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Stops the client after its current request and returns the final statistics.
    pub fn stop(mut self) -> LoadStats {
        self.shut_down();
        self.stats()
    }

    fn shut_down(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("load client thread panicked");
        }
    }
}

impl Drop for LoadClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run_load<S: Read + Write>(
    mut connect: impl FnMut() -> io::Result<S>,
    mode: Mode,
    label: &str,
    stop: &AtomicBool,
    stats: &Mutex<LoadStats>,
) {
    let started = Instant::now();
    let close = mode == Mode::Close;
    let mut connection: Option<BufReader<S>> = None;
    let mut requests: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        requests += 1;
        let reused = connection.is_some();
        let outcome = (|| {
            let reader = match &mut connection {
                Some(reader) => reader,
                None => {
                    let stream = connect().map_err(|e| format!("connect: {e} ({:?})", e.kind()))?;
                    connection.insert(BufReader::new(stream))
                }
            };
            write_request(reader.get_mut(), "/", close)
                .map_err(|e| format!("writing the request: {e} ({:?})", e.kind()))?;
            read_response(reader)
        })();
        let result = outcome.and_then(|response| {
            if response.close || close {
                connection = None;
            }
            let pid = response
                .body
                .strip_prefix("hello from pid ")
                .and_then(|rest| rest.split(',').next())
                .and_then(|pid| pid.parse::<i32>().ok());
            match (response.status, pid) {
                (200, Some(pid)) => Ok(pid),
                _ => Err(format!(
                    "unexpected response {}: {:?}",
                    response.status, response.body
                )),
            }
        });
        let mut stats = stats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match result {
            Ok(pid) => {
                stats.successes += 1;
                stats.pids.insert(pid);
            }
            Err(error) => {
                connection = None;
                stats.failures += 1;
                if stats.errors.len() < LoadStats::MAX_ERRORS {
                    stats.errors.push(format!(
                        "{label}{mode:?} request #{requests} at {:.3}s ({} connection): {error}",
                        started.elapsed().as_secs_f64(),
                        if reused { "reused" } else { "new" },
                    ));
                }
            }
        }
    }
}
