//! Support shared by the fault-injection tests (`tests/faults_*.rs`).
//!
//! On top of the `integration` support library this adds what fault tests need to look at:
//!
//! - the whole process table and every process's descriptors, read through `/proc`: who holds
//!   a listening socket ([`socket_holders`]), who is a zombie ([`zombie_children`],
//!   [`ZombieWatch`]), what a process has open ([`fd_profile`]), which processes belong to a
//!   test ([`processes_mentioning`]);
//! - [`Guarded`], a guard for the processes a test starts itself (not through
//!   `integration::Server`), which SIGKILLs and reaps them even when the test fails;
//! - log parsing and the zero-failure assertions shared by several tests.
//!
//! Each test target uses a different subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use integration::{
    wait_for, wait_until, LoadClient, Mode, Server, TempDir, POLL_INTERVAL, TIMEOUT,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// What the library logs (at error level) when an upgrade fails and the old process serves on.
pub const UPGRADE_FAILED: &str = "upgrade failed";

/// `/proc/net/tcp` state of a listening socket.
const TCP_LISTEN: &str = "0A";

// ---------------------------------------------------------------------------------------------
// Test process hygiene
// ---------------------------------------------------------------------------------------------

/// Makes every descriptor of the test process above 2 close-on-exec, once per test binary.
///
/// The test runner may have been started with stray inheritable descriptors (a harness's
/// pipes, `/dev/null` at fd 10, ...). Rust opens everything close-on-exec, so only such strays
/// would reach the servers the tests start, where they would make the first generation's
/// descriptor table differ from later ones (the library closes strays across its own exec)
/// and could even pose as an inherited socket at fd 3. The test process itself keeps using
/// them unchanged.
pub fn no_stray_fds() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: close_range with CLOSE_RANGE_CLOEXEC closes nothing; it only sets the
        // close-on-exec flag of descriptors 3 and up, which changes what children inherit and
        // nothing else. An error (an old kernel) leaves the table as it was.
        unsafe {
            libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// Every pid in `/proc`.
pub fn all_pids() -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// `(state, ppid)` of `pid` from `/proc/PID/stat`.
pub fn stat_of(pid: i32) -> Option<(char, i32)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`, where comm may hold spaces and parentheses.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether `/proc/PID` exists at all (a zombie exists; a reaped process does not).
pub fn pid_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The zombie children of `pid`: children that exited and that `pid` has not reaped.
pub fn zombie_children(pid: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&child| matches!(stat_of(child), Some(('Z', ppid)) if ppid == pid))
        .collect()
}

/// The command line of `pid`, arguments separated by spaces.
pub fn cmdline(pid: i32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        String::from_utf8_lossy(&raw)
            .split('\0')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Every live (non-zombie) process whose command line contains `marker`, such as a test's
/// temporary directory, which every generation of its server has on its command line.
pub fn processes_mentioning(marker: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    all_pids()
        .into_iter()
        .filter(|&pid| pid != me)
        .filter(|&pid| !matches!(stat_of(pid), Some(('Z' | 'X', _)) | None))
        .filter(|&pid| cmdline(pid).is_some_and(|c| c.contains(marker)))
        .collect()
}

/// Sends `signal` to `pid`, tolerating a process that is already gone.
pub fn try_signal(pid: i32, signal: Signal) -> bool {
    kill(Pid::from_raw(pid), signal).is_ok()
}

/// The pids of every process started as generation `generation`, in a server log, from the
/// line the old process logs when it has started one (`generation 2 started as pid 1234; ...`).
pub fn started_pids(log: &str, generation: u64) -> Vec<i32> {
    let marker = format!("generation {generation} started as pid ");
    log.match_indices(&marker)
        .filter_map(|(at, _)| {
            let rest = &log[at + marker.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

/// The pid of the first process started as generation `generation` (see [`started_pids`]).
pub fn started_pid(log: &str, generation: u64) -> Option<i32> {
    started_pids(log, generation).first().copied()
}

/// Watches the process table in a background thread and records every zombie whose parent
/// is one of the watched pids, for tests that must show none ever appeared.
pub struct ZombieWatch {
    parents: Arc<Mutex<BTreeSet<i32>>>,
    seen: Arc<Mutex<BTreeSet<(i32, i32)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ZombieWatch {
    /// Starts watching (no parent yet).
    pub fn start() -> ZombieWatch {
        let parents = Arc::new(Mutex::new(BTreeSet::new()));
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = thread::spawn({
            let (parents, seen, stop) = (parents.clone(), seen.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    let watched = lock(&parents).clone();
                    for pid in all_pids() {
                        if let Some(('Z', ppid)) = stat_of(pid) {
                            if watched.contains(&ppid) {
                                lock(&seen).insert((pid, ppid));
                            }
                        }
                    }
                    thread::sleep(Duration::from_millis(5));
                }
            }
        });
        ZombieWatch {
            parents,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Adds `pid` to the parents whose zombie children are recorded.
    pub fn watch(&self, pid: i32) {
        lock(&self.parents).insert(pid);
    }

    /// The zombies seen so far, as `(zombie, parent)`.
    pub fn seen(&self) -> BTreeSet<(i32, i32)> {
        lock(&self.seen).clone()
    }
}

impl Drop for ZombieWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Sockets and descriptors
// ---------------------------------------------------------------------------------------------

/// One row of `/proc/net/tcp`: `(local port, state, inode)`.
fn tcp_rows() -> Vec<(u16, String, u64)> {
    let mut rows = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        rows.extend(text.lines().skip(1).filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            let port = u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()?;
            Some((port, (*state).to_owned(), inode.parse().ok()?))
        }));
    }
    rows
}

/// The inodes of the TCP sockets listening on `port` (any local address).
pub fn listening_inodes(port: u16) -> Vec<u64> {
    tcp_rows()
        .into_iter()
        .filter(|(p, state, _)| *p == port && state == TCP_LISTEN)
        .map(|(_, _, inode)| inode)
        .collect()
}

/// The single listening socket on `port`.
///
/// # Panics
///
/// If there is none or more than one.
pub fn listening_inode(port: u16) -> u64 {
    match listening_inodes(port)[..] {
        [inode] => inode,
        ref other => panic!("expected one socket listening on port {port}, found {other:?}"),
    }
}

/// Every process (all of `/proc`) with a descriptor on the socket `inode`.
pub fn socket_holders(inode: u64) -> BTreeSet<i32> {
    let target = format!("socket:[{inode}]");
    all_pids()
        .into_iter()
        .filter(|pid| fd_targets(*pid).values().any(|t| *t == target))
        .collect()
}

/// The descriptors of `pid` and what they point to (`readlink /proc/PID/fd/N`).
pub fn fd_targets(pid: i32) -> BTreeMap<i32, String> {
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let fd = entry.file_name().to_str()?.parse().ok()?;
            let target = fs::read_link(entry.path()).ok()?;
            Some((fd, target.to_string_lossy().into_owned()))
        })
        .collect()
}

/// What kind of thing each descriptor of `pid` is, counted: files by path, sockets by kind
/// (`tcp-listen`, `tcp-connection`, `unix`, `other-socket`), pipes as `pipe`, and anonymous
/// inodes by name (`anon_inode:[eventpoll]`, ...). Inode numbers, which differ between
/// processes by nature, are left out, so the profiles of two generations compare equal when
/// they hold the same kinds of descriptors.
pub fn fd_profile(pid: i32) -> BTreeMap<String, usize> {
    let tcp: BTreeMap<u64, String> = tcp_rows()
        .into_iter()
        .map(|(_, state, inode)| (inode, state))
        .collect();
    let unix: BTreeSet<u64> = fs::read_to_string("/proc/net/unix")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(6)?.parse().ok())
        .collect();
    let mut profile = BTreeMap::new();
    for target in fd_targets(pid).into_values() {
        let kind = if let Some(inode) = inode_in(&target, "socket:[") {
            match tcp.get(&inode) {
                Some(state) if state == TCP_LISTEN => "tcp-listen".to_owned(),
                Some(_) => "tcp-connection".to_owned(),
                None if unix.contains(&inode) => "unix".to_owned(),
                None => "other-socket".to_owned(),
            }
        } else if inode_in(&target, "pipe:[").is_some() {
            "pipe".to_owned()
        } else {
            target
        };
        *profile.entry(kind).or_default() += 1;
    }
    profile
}

fn inode_in(target: &str, prefix: &str) -> Option<u64> {
    target.strip_prefix(prefix)?.strip_suffix(']')?.parse().ok()
}

/// Waits until `pid` holds no TCP connection (every probe connection has been closed on the
/// server side too) and returns its descriptor profile then.
///
/// # Panics
///
/// If connections remain after `timeout`.
pub fn idle_fd_profile(pid: i32, timeout: Duration) -> BTreeMap<String, usize> {
    let mut last = BTreeMap::new();
    wait_for(timeout, || {
        last = fd_profile(pid);
        (!last.contains_key("tcp-connection")).then(|| last.clone())
    })
    .unwrap_or_else(|| panic!("pid {pid} still holds TCP connections: {last:?}"))
}

/// A port that was free a moment ago (bound to port 0, then released).
///
/// Only for tests that must pass a fixed port to a process that fails before serving; the
/// port could in principle be taken again in between.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

// ---------------------------------------------------------------------------------------------
// Processes started by the test itself
// ---------------------------------------------------------------------------------------------

/// A process the test started itself, with its stderr (and stdout) in a file. On drop it is
/// SIGKILLed and reaped if it still runs, and so is every process whose command line holds
/// the marker (its temporary directory), so a failing test leaves nothing behind.
pub struct Guarded {
    child: Child,
    status: Option<ExitStatus>,
    output: PathBuf,
    marker: String,
}

impl Guarded {
    /// Spawns `command` with stdin from `/dev/null` and stdout and stderr appended to
    /// `dir/output.log`. `dir`'s path is the marker of the processes killed on drop; pass it
    /// on the command line (for instance in `--addr-file`) so that every process can be found.
    ///
    /// A spawn failing with `ETXTBSY` is retried: another test thread may have been forking
    /// while a binary was being written (see `integration`'s note on the exec lock).
    ///
    /// # Panics
    ///
    /// If the program cannot be started.
    pub fn spawn(command: &mut Command, dir: &TempDir) -> Guarded {
        Guarded::try_spawn(command, dir).unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"))
    }

    /// [`Guarded::spawn`], returning the spawn error instead of panicking.
    pub fn try_spawn(command: &mut Command, dir: &TempDir) -> io::Result<Guarded> {
        let output = dir.join("output.log");
        let deadline = Instant::now() + Duration::from_secs(10);
        let child = loop {
            let log = File::options().create(true).append(true).open(&output)?;
            let log_err = log.try_clone()?;
            command
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err)
                .env("RUST_LOG", "info");
            match command.spawn() {
                Ok(child) => break child,
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && Instant::now() < deadline => {
                    thread::sleep(POLL_INTERVAL);
                }
                Err(e) => return Err(e),
            }
        };
        Ok(Guarded {
            child,
            status: None,
            output,
            marker: dir.path().to_string_lossy().into_owned(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Everything it wrote to stdout and stderr so far.
    pub fn output(&self) -> String {
        fs::read(&self.output)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// Its exit status if it has exited (it is reaped then).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("waitpid");
        }
        self.status
    }

    /// Waits for it to exit, at most `timeout`.
    ///
    /// # Panics
    ///
    /// If it is still running after `timeout`; the output is in the message.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match wait_for(timeout, || self.try_wait()) {
            Some(status) => status,
            None => panic!(
                "pid {} still runs after {timeout:?}; its output:\n{}",
                self.pid(),
                self.output()
            ),
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for pid in processes_mentioning(&self.marker) {
            try_signal(pid, Signal::SIGKILL);
        }
        if thread::panicking() {
            eprintln!("----- output of pid {} -----", self.pid());
            eprintln!("{}", self.output());
            eprintln!("----- end of output -----");
        }
    }
}

/// Places `src` at `dest` by a hard link and a rename (atomic, and much cheaper than copying a
/// 80 MB debug binary); copies when the two are on different file systems. Never writes into
/// an existing file, so it cannot cause `ETXTBSY`.
pub fn link_binary(dest: &Path, src: &Path) {
    let tmp = dest.with_file_name(format!(
        ".{}.link",
        dest.file_name().unwrap_or_default().to_string_lossy()
    ));
    let _ = fs::remove_file(&tmp);
    match fs::hard_link(src, &tmp) {
        Ok(()) => fs::rename(&tmp, dest)
            .unwrap_or_else(|e| panic!("cannot rename onto {}: {e}", dest.display())),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            integration::replace_with_copy(dest, src);
        }
        Err(e) => panic!("cannot link {} to {}: {e}", src.display(), dest.display()),
    }
}

// ---------------------------------------------------------------------------------------------
// Assertions
// ---------------------------------------------------------------------------------------------

/// Asserts that `output` holds no panic message.
pub fn assert_no_panic(output: &str) {
    assert!(
        !output.contains("panicked"),
        "a process panicked; its output:\n{output}"
    );
}

/// The two strict load clients (keep-alive and connection-per-request) on `server`.
pub fn load_clients(server: &Server) -> [(&'static str, LoadClient); 2] {
    [
        (
            "keep-alive",
            LoadClient::start(server.port(), Mode::KeepAlive),
        ),
        ("close", LoadClient::start(server.port(), Mode::Close)),
    ]
}

/// Waits until every client has made `count` more successful requests.
pub fn let_clients_progress(clients: &[(&str, LoadClient)], count: u64) {
    for (name, client) in clients {
        let before = client.stats().successes;
        assert!(
            wait_until(TIMEOUT, || client.stats().successes >= before + count),
            "{name} client made no progress: {:?}",
            client.stats()
        );
    }
}
