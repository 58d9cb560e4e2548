//! Support code for the deployment tests (`deploy_*.rs`), included with `mod deploy_support;`.
//!
//! [`integration::Server`] starts an example itself, on a socket of its own, with a fixed
//! environment. The deployment tests need more control, and this module provides it:
//!
//! - [`Proc`] guards a server started from any [`Command`]: a `/bin/sh` wrapper that sets
//!   `LISTEN_PID`, `systemd-socket-activate`, extra variables such as `NOTIFY_SOCKET`,
//!   descriptors placed by `pre_exec`. On drop it SIGKILLs every process whose command line
//!   holds the test's directory, and all their descendants; a watchdog does the same after
//!   [`WATCHDOG_LIMIT`].
//! - [`NotifySocket`] is the receiving end of `sd_notify`, as systemd sees it: every datagram
//!   comes with the pid of the process that sent it (`SCM_CREDENTIALS`).
//! - [`unix_request`] and [`UnixLoadClient`] are a strict HTTP/1.1 client over Unix domain
//!   sockets: no retry, every error counted (the same rules as [`integration::LoadClient`]).
//! - [`tcp_listeners`] and [`socket_inode`] tell which listening sockets exist, so a test can
//!   prove a process adopted a socket instead of binding a new one.
//! - [`start_socket_activated`] runs the server under `systemd-socket-activate`, the way a
//!   `.socket` unit would.
//! - [`install_copy`] and [`install_script`] replace executables under the same lock as
//!   [`Proc::spawn`] (see [`exec_lock`]).
//!
//! Every test binary uses a different part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use integration::{
    kill_tree, read_response, wait_for, wait_until, write_request, HttpResponse, LoadClient, Mode,
    TempDir, Watchdog, HTTP_TIMEOUT,
};

/// After this long a [`Proc`]'s watchdog SIGKILLs its processes, so a hung test leaves nothing
/// running.
pub const WATCHDOG_LIMIT: Duration = Duration::from_secs(120);

/// The variables of the inheritance and notification protocols, removed from every command
/// [`Proc::command`] builds so that the test runner's own environment (say, a CI job run by
/// systemd) cannot leak into a test. Tests set the ones they exercise explicitly.
const PROTOCOL_VARS: [&str; 6] = [
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "ACTIX_ENDLESS_READY_FD",
    "ACTIX_ENDLESS_GENERATION",
    "NOTIFY_SOCKET",
];

// ---------------------------------------------------------------------------------------------
// Executables and spawning
// ---------------------------------------------------------------------------------------------

/// Serialises writing executables with forking, within one test binary.
///
/// A child forked while another thread has a file open for writing holds a copy of that
/// descriptor until its `exec`, and executing a file some process has open for writing fails
/// with `ETXTBSY`. Tests run in parallel threads, so every spawn ([`Proc::spawn`]) and every
/// executable written ([`install_copy`], [`install_script`]) takes this lock. (The support
/// library has the same lock for its own `Server` and `replace_*` functions; a test binary that
/// writes executables uses only one of the two families.)
fn exec_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Writes `contents` with permission bits `mode` to a sibling temporary file and renames it
/// over `dest`: a running binary is never written into, and a process executing `dest` sees
/// the old or the new file, never a partial one.
fn install(dest: &Path, mode: u32, write: impl FnOnce(&mut File) -> io::Result<()>) {
    let name = dest.file_name().expect("a file name").to_string_lossy();
    let tmp = dest.with_file_name(format!(".{name}.tmp-{}", unique_suffix()));
    let _guard = exec_lock();
    let result = (|| {
        let mut file = File::create(&tmp)?;
        write(&mut file)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        drop(file);
        fs::rename(&tmp, dest)
    })();
    result.unwrap_or_else(|e| panic!("cannot install {}: {e}", dest.display()));
}

/// Replaces `dest` with a copy of the executable `src`, atomically.
pub fn install_copy(dest: &Path, src: &Path) {
    let mut source =
        File::open(src).unwrap_or_else(|e| panic!("cannot open {}: {e}", src.display()));
    install(dest, 0o755, |file| io::copy(&mut source, file).map(drop));
}

/// Replaces `dest` with an executable `#!/bin/sh` script running `body`, atomically.
pub fn install_script(dest: &Path, body: &str) {
    install(dest, 0o755, |file| {
        file.write_all(format!("#!/bin/sh\n{body}\n").as_bytes())
    });
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// A server process started from an arbitrary [`Command`], and a guard for every process it
/// becomes.
///
/// Conventions: the command's arguments include the directory (`--pid-file DIR/pid`,
/// `--addr-file DIR/addr`), which is how the guard recognises the server's generations; its
/// stdout and stderr are appended to `DIR/server.log`. On drop every process whose command line
/// holds `DIR` is SIGKILLed with its descendants, the first process is reaped, and the log is
/// printed if the test is panicking.
pub struct Proc {
    child: Child,
    status: Option<ExitStatus>,
    watchdog: Option<Watchdog>,
    // Last, so that the directory is removed after the processes are killed.
    dir: TempDir,
}

impl Proc {
    /// A command running `program` with stdin from `/dev/null`, stdout and stderr appended to
    /// `dir/server.log` (`O_APPEND`, so every generation appends to the same file),
    /// `RUST_LOG=info`, and none of the protocol variables of the test's own environment.
    pub fn command(program: impl AsRef<OsStr>, dir: &TempDir) -> Command {
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
        for var in PROTOCOL_VARS {
            command.env_remove(var);
        }
        command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_stderr);
        command
    }

    /// Spawns `command` (built with [`Proc::command`] on `dir`) under the [`exec_lock`].
    ///
    /// # Panics
    ///
    /// If the process cannot be started.
    pub fn spawn(mut command: Command, dir: TempDir) -> Proc {
        let marker = dir.path().to_string_lossy().into_owned();
        let child = {
            let _guard = exec_lock();
            command.spawn()
        }
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        Proc {
            child,
            status: None,
            watchdog: Some(Watchdog::start(WATCHDOG_LIMIT, marker.clone(), move || {
                kill_tree(None, &marker)
            })),
            dir,
        }
    }

    /// The pid of the process the test started.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits in i32")
    }

    /// The server's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `DIR/pid`, for `--pid-file`.
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("pid")
    }

    /// `DIR/addr`, for `--addr-file`.
    pub fn addr_file(&self) -> PathBuf {
        self.dir.join("addr")
    }

    /// The pid in the pid file, if it holds one.
    pub fn read_pid_file(&self) -> Option<i32> {
        fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The addresses in the address file, if it exists and holds only addresses.
    pub fn read_addrs(&self) -> Option<Vec<SocketAddr>> {
        let text = fs::read_to_string(self.addr_file()).ok()?;
        text.lines().map(|line| line.trim().parse().ok()).collect()
    }

    /// Waits until the address file and the pid file have been written by `pid`'s generation
    /// (the pid file names `pid`), and returns the addresses.
    ///
    /// # Panics
    ///
    /// If the first process exits first, or after `timeout`.
    pub fn wait_until_serving(&mut self, pid: i32, timeout: Duration) -> Vec<SocketAddr> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                panic!("the server exited with {status} before it served");
            }
            if self.read_pid_file() == Some(pid) {
                if let Some(addrs) = self.read_addrs().filter(|a| !a.is_empty()) {
                    return addrs;
                }
            }
            assert!(
                Instant::now() < deadline,
                "pid {pid} did not write its address file and pid file within {timeout:?}"
            );
            thread::sleep(integration::POLL_INTERVAL);
        }
    }

    /// Everything the server's processes have written so far.
    pub fn log(&self) -> String {
        fs::read(self.dir.join("server.log"))
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// How many times `pattern` occurs in the log.
    pub fn log_count(&self, pattern: &str) -> usize {
        self.log().matches(pattern).count()
    }

    /// Polls the log until `pattern` occurs at least `count` times; `false` after `timeout`.
    pub fn wait_for_log(&self, pattern: &str, count: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.log_count(pattern) >= count)
    }

    /// The exit status of the first process if it has exited (it is reaped then).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("waitpid({}) failed: {e}", self.child.id()));
        }
        self.status
    }

    /// Waits until the first process exits and returns its status.
    ///
    /// # Panics
    ///
    /// If it has not exited after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let pid = self.pid();
        wait_for(timeout, || self.try_wait())
            .unwrap_or_else(|| panic!("pid {pid} did not exit within {timeout:?}"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.watchdog.take();
        kill_tree(None, &self.dir.path().to_string_lossy());
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!("----- {}/server.log -----", self.dir().display());
            eprintln!("{}", self.log());
            eprintln!("----- end of log -----");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sockets
// ---------------------------------------------------------------------------------------------

/// The inodes of the TCP sockets listening on `port` (any local address), from
/// `/proc/net/tcp` and `/proc/net/tcp6`. A listening socket appears once, however many
/// processes hold a descriptor for it, so the length is the number of sockets, not of holders.
pub fn tcp_listeners(port: u16) -> Vec<u64> {
    const LISTEN: &str = "0A";
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) && *state == LISTEN {
                inodes.extend(inode.parse::<u64>().ok());
            }
        }
    }
    inodes
}

/// The inode of the socket behind `fd` in this process.
pub fn socket_inode(fd: BorrowedFd<'_>) -> u64 {
    let link =
        fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("the descriptor is open");
    link.to_str()
        .and_then(|l| l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
        .unwrap_or_else(|| panic!("fd {} is {link:?}, not a socket", fd.as_raw_fd()))
}

/// Whether process `pid` has a descriptor for the socket with inode `inode`.
pub fn holds_socket(pid: i32, inode: u64) -> bool {
    let target = format!("socket:[{inode}]");
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok)
        .any(|fd| fs::read_link(fd.path()).is_ok_and(|link| link.as_os_str() == target.as_str()))
}

// ---------------------------------------------------------------------------------------------
// Socket activation
// ---------------------------------------------------------------------------------------------

/// The name the library gives to `--bind addr` in `LISTEN_FDNAMES` (and the value a `.socket`
/// unit's `FileDescriptorName=` needs): `tcp-` and the address, `:` replaced by `_`.
pub fn fd_name(addr: SocketAddr) -> String {
    format!("tcp-{addr}").replace(':', "_")
}

/// `systemd-socket-activate` (Debian package `systemd`) from `PATH` or `/usr/bin`, if
/// installed.
pub fn socket_activate_tool() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("systemd-socket-activate"))
        .find(|candidate| candidate.is_file())
}

/// The message a test prints when it skips for want of `systemd-socket-activate`.
pub const SKIP_NO_SOCKET_ACTIVATE: &str =
    "SKIP: systemd-socket-activate is not installed (Debian: apt-get install -y systemd)";

/// A port that was free a moment ago. `systemd-socket-activate` needs a fixed port (it binds
/// `-l ADDR` itself, and the server must be told the same address), so the usual "bind port 0
/// and read it back" is not possible; callers retry on a collision.
fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    probe.local_addr().expect("local address").port()
}

/// Starts `hello` the way a `.socket` unit would: `systemd-socket-activate -l 127.0.0.1:PORT`
/// (with `--fdname=tcp-127.0.0.1_PORT` when `named`) running `hello --bind 127.0.0.1:PORT`,
/// with `env` passed on by `-E` (the tool passes only `PATH`, `HOME` and `TERM` otherwise).
/// Returns once the tool listens; retries with another port if the one picked was taken in
/// the meantime.
///
/// The tool execs the server in its own process at the first connection, so
/// [`Proc::pid`] is the server's pid from then on.
pub fn start_socket_activated(
    tool: &Path,
    named: bool,
    env: &[(&str, &str)],
) -> (Proc, SocketAddr) {
    const ATTEMPTS: usize = 5;
    for _ in 0..ATTEMPTS {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let dir = TempDir::new("deploy-socket-activate");
        let mut command = Proc::command(tool, &dir);
        command.arg("-l").arg(addr.to_string());
        if named {
            command.arg(format!("--fdname={}", fd_name(addr)));
        }
        command.args(["-E", "RUST_LOG=info"]);
        for (key, value) in env {
            command.arg("-E").arg(format!("{key}={value}"));
        }
        command
            .arg(&integration::examples().hello)
            .arg("--bind")
            .arg(addr.to_string())
            .arg("--pid-file")
            .arg(dir.join("pid"))
            .arg("--addr-file")
            .arg(dir.join("addr"));
        let mut server = Proc::spawn(command, dir);
        let listening = format!("Listening on {addr}");
        let up = wait_for(integration::TIMEOUT, || {
            if server.log().contains(&listening) {
                Some(true)
            } else {
                server.try_wait().map(|_| false)
            }
        });
        match up {
            Some(true) => return (server, addr),
            Some(false) if server.log().contains("Address already in use") => continue,
            _ => panic!(
                "systemd-socket-activate did not listen on {addr}:\n{}",
                server.log()
            ),
        }
    }
    panic!("no free port after {ATTEMPTS} attempts");
}

// ---------------------------------------------------------------------------------------------
// sd_notify
// ---------------------------------------------------------------------------------------------

/// One `sd_notify` datagram and the pid of its sender.
#[derive(Clone, Debug)]
pub struct Notification {
    /// The sending process, from the kernel (`SCM_CREDENTIALS`), not from the message.
    pub pid: i32,
    /// The `KEY=VALUE` lines, in order.
    pub fields: Vec<(String, String)>,
}

impl Notification {
    fn parse(pid: i32, bytes: &[u8]) -> Notification {
        let text = String::from_utf8_lossy(bytes);
        let fields = text
            .split('\n')
            .filter(|line| !line.is_empty())
            .map(|line| match line.split_once('=') {
                Some((key, value)) => (key.to_owned(), value.to_owned()),
                None => (line.to_owned(), String::new()),
            })
            .collect();
        Notification { pid, fields }
    }

    /// The value of the first `key=` line.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The keys, in order (`["MAINPID", "READY", "STATUS"]`).
    pub fn keys(&self) -> Vec<&str> {
        self.fields.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// The receiving end of `sd_notify`: a Unix datagram socket that asks the kernel for each
/// sender's credentials, as systemd's own notification socket does.
pub struct NotifySocket {
    socket: UnixDatagram,
    /// What to put in `NOTIFY_SOCKET`.
    env_value: String,
}

impl NotifySocket {
    /// Binds at the filesystem path `path`.
    pub fn bind_path(path: &Path) -> NotifySocket {
        let socket = UnixDatagram::bind(path)
            .unwrap_or_else(|e| panic!("cannot bind {}: {e}", path.display()));
        NotifySocket::new(socket, path.to_str().expect("a UTF-8 path").to_owned())
    }

    /// Binds at `name` in the abstract namespace (`NOTIFY_SOCKET=@name`).
    pub fn bind_abstract(name: &str) -> NotifySocket {
        let addr = UnixAddr::from_abstract_name(name.as_bytes()).expect("a valid abstract name");
        let socket =
            UnixDatagram::bind_addr(&addr).unwrap_or_else(|e| panic!("cannot bind @{name}: {e}"));
        NotifySocket::new(socket, format!("@{name}"))
    }

    fn new(socket: UnixDatagram, env_value: String) -> NotifySocket {
        let on: libc::c_int = 1;
        // SAFETY: SO_PASSCRED takes an int; the pointer and length describe `on`, which
        // outlives the call, and the descriptor is open (owned by `socket`).
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PASSCRED,
                std::ptr::from_ref(&on).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_PASSCRED: {}", io::Error::last_os_error());
        NotifySocket { socket, env_value }
    }

    /// The value for `NOTIFY_SOCKET`.
    pub fn env_value(&self) -> &str {
        &self.env_value
    }

    /// The next datagram, waiting at most `timeout`; `None` if none came.
    pub fn recv(&self, timeout: Duration) -> Option<Notification> {
        self.socket
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .expect("setting the read timeout");
        self.recv_creds()
    }

    /// A datagram already queued, without waiting.
    pub fn try_recv(&self) -> Option<Notification> {
        self.socket.set_nonblocking(true).expect("O_NONBLOCK");
        let received = self.recv_creds();
        self.socket.set_nonblocking(false).expect("O_NONBLOCK");
        received
    }

    /// The next notification, which must come within `timeout`.
    ///
    /// # Panics
    ///
    /// If none comes.
    pub fn expect(&self, timeout: Duration, what: &str) -> Notification {
        self.recv(timeout)
            .unwrap_or_else(|| panic!("no sd_notify message within {timeout:?}: {what}"))
    }

    /// `recvmsg` with room for one `SCM_CREDENTIALS` message. `None` on timeout (`EAGAIN`).
    fn recv_creds(&self) -> Option<Notification> {
        // systemd accepts notifications of up to a few KiB; ours are far smaller.
        let mut data = [0u8; 4096];
        // A `u64` array keeps the control buffer aligned for `cmsghdr`; 64 bytes hold
        // CMSG_SPACE(sizeof(struct ucred)) (32 on 64-bit Linux) with room to spare.
        let mut control = [0u64; 8];
        loop {
            let mut iov = libc::iovec {
                iov_base: data.as_mut_ptr().cast(),
                iov_len: data.len(),
            };
            // SAFETY: an all-zero msghdr is a valid "no name, no iov, no control" value.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&control) as _;
            // SAFETY: `msg` points to `iov` and `control`, which outlive the call and whose
            // lengths are given; the descriptor is open.
            let n = unsafe { libc::recvmsg(self.socket.as_raw_fd(), &mut msg, 0) };
            if n < 0 {
                let error = io::Error::last_os_error();
                match error.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => return None,
                    _ => panic!("recvmsg on the notification socket: {error}"),
                }
            }
            assert_eq!(
                msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC),
                0,
                "truncated sd_notify datagram"
            );
            let mut pid = None;
            // SAFETY: `msg` was filled in by recvmsg; the CMSG_* macros walk the control
            // buffer within `msg_controllen`, and a SCM_CREDENTIALS message holds a `ucred`
            // (read unaligned, as CMSG_DATA promises no alignment for it).
            unsafe {
                let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
                while !cmsg.is_null() {
                    if (*cmsg).cmsg_level == libc::SOL_SOCKET
                        && (*cmsg).cmsg_type == libc::SCM_CREDENTIALS
                    {
                        let cred: libc::ucred =
                            std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                        pid = Some(cred.pid);
                    }
                    cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
                }
            }
            let pid = pid.expect("SO_PASSCRED is on, so every datagram carries credentials");
            let len = usize::try_from(n).expect("checked non-negative");
            return Some(Notification::parse(pid, &data[..len]));
        }
    }
}

/// `CLOCK_MONOTONIC` in microseconds, the clock of `MONOTONIC_USEC=`.
pub fn monotonic_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    assert_eq!(rc, 0, "clock_gettime: {}", io::Error::last_os_error());
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

// ---------------------------------------------------------------------------------------------
// HTTP over Unix domain sockets: a strict client
// ---------------------------------------------------------------------------------------------

fn unix_connect(path: &Path) -> io::Result<UnixStream> {
    let stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    Ok(stream)
}

/// `GET target` over a new connection to the Unix socket at `path`, with `Connection: close`.
/// Every failure is an `Err` describing it; nothing is retried.
pub fn unix_request(path: &Path, target: &str) -> Result<HttpResponse, String> {
    let mut stream = unix_connect(path)
        .map_err(|e| format!("connect {}: {e} ({:?})", path.display(), e.kind()))?;
    write_request(&mut stream, target, true).map_err(|e| format!("writing the request: {e}"))?;
    read_response(&mut BufReader::new(stream))
}

/// The pid answering `GET /pid` over the Unix socket at `path`.
pub fn unix_pid(path: &Path) -> Result<i32, String> {
    let response = unix_request(path, "/pid")?;
    match response.status {
        200 => response
            .body
            .parse()
            .map_err(|e| format!("GET /pid answered {:?}: {e}", response.body)),
        status => Err(format!("GET /pid answered {status}: {:?}", response.body)),
    }
}

/// A strict load client (see [`integration::LoadClient`]) over the Unix socket at `path`.
pub fn unix_load(path: &Path, mode: Mode) -> LoadClient {
    let path = path.to_owned();
    LoadClient::start_with(mode, "unix ", move || unix_connect(&path))
}

// ---------------------------------------------------------------------------------------------
// Passing descriptors by hand
// ---------------------------------------------------------------------------------------------

/// Makes `command` start with `fds` at descriptors 3, 4, ... (close-on-exec cleared), as
/// systemd and `systemfd` place the sockets they pass. Sets no variable: the caller sets
/// `LISTEN_FDS` (and `LISTEN_PID`, or not) itself.
///
/// Returns the close-on-exec copies the child's `dup2` reads from; keep them until the
/// command has been spawned, then drop them.
pub fn pass_fds(command: &mut Command, fds: &[BorrowedFd<'_>]) -> Vec<std::os::fd::OwnedFd> {
    use std::os::fd::{FromRawFd, OwnedFd, RawFd};
    use std::os::unix::process::CommandExt;

    let count = RawFd::try_from(fds.len()).expect("a few fds");
    // Copies numbered above the target range, so that no dup2 overwrites a source a later one
    // still needs.
    let sources: Vec<OwnedFd> = fds
        .iter()
        .map(|fd| {
            // SAFETY: F_DUPFD_CLOEXEC on an open descriptor returns a new descriptor (or -1),
            // which nothing else owns.
            let copy = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3 + count) };
            assert!(copy >= 0, "F_DUPFD_CLOEXEC: {}", io::Error::last_os_error());
            // SAFETY: `copy` was just returned by fcntl and is owned by nobody else.
            unsafe { OwnedFd::from_raw_fd(copy) }
        })
        .collect();
    let raw: Vec<RawFd> = sources.iter().map(AsRawFd::as_raw_fd).collect();
    // SAFETY: the closure runs between fork and exec and only calls dup2, which is
    // async-signal-safe; it allocates nothing and reads `raw`, allocated before the fork.
    unsafe {
        command.pre_exec(move || {
            for (target, &source) in (3..).zip(&raw) {
                if libc::dup2(source, target) == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    sources
}

/// The inode of the socket at descriptor `fd` of process `pid`, if that is a socket.
pub fn socket_inode_of(pid: i32, fd: i32) -> Option<u64> {
    let link = fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    link.to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}
