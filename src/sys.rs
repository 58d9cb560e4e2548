//! Every raw operating-system call of the crate, and every `unsafe` block.
//!
//! The rest of the crate sees safe functions over `OwnedFd`/`BorrowedFd`. The one piece of code
//! that runs between `fork` and `exec` ([`ExecPlan::install`]) only calls async-signal-safe
//! functions (`dup2`, `setpgid`, `prctl`, `getpid`, `syscall(close_range)`, `execve`) and
//! writes into memory that was allocated before the fork. Process control lives in
//! `sys/process.rs`, the fork-to-exec step in `sys/exec.rs`.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrLike};
use nix::sys::stat::{fstat, SFlag};

mod exec;
mod process;

pub(crate) use exec::ExecPlan;
pub(crate) use process::{
    become_child_subreaper, has_ended, parent_pid, reap, reap_any, send_group_signal, send_signal,
    Exit, OsSignal,
};

/// What an inherited descriptor turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListenerFamily {
    /// A TCP socket over IPv4 or IPv6.
    Tcp,
    /// A Unix domain stream socket.
    Unix,
}

/// Borrows a descriptor number that was handed to us by our parent, after checking it is open.
///
/// Returns `Err` with `EBADF` if no such descriptor exists.
pub(crate) fn borrow_inherited(fd: RawFd) -> io::Result<BorrowedFd<'static>> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: `F_GETFD` only reads the descriptor table; an invalid number yields EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is open (checked above) and was handed to this process at exec by
    // the inheritance protocol; nothing else in the process claims numbers from that range
    // before the runtime does. It is only borrowed here; ownership is taken by
    // `own_inherited` after validation.
    Ok(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// Takes ownership of an inherited descriptor that has been validated, marking it close-on-exec.
pub(crate) fn own_inherited(fd: BorrowedFd<'static>) -> io::Result<OwnedFd> {
    set_cloexec(fd)?;
    // SAFETY: the descriptor is open and was passed to us for our exclusive use by the parent
    // (LISTEN_FDS protocol); this is the only place that takes ownership of it, once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd.as_raw_fd()) })
}

/// Marks a descriptor close-on-exec (`F_SETFD`, not `F_SETFL`, is where that flag lives).
pub(crate) fn set_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

/// Duplicates `fd` to the lowest free number at or above `min`, close-on-exec.
pub(crate) fn dup_cloexec_above(fd: BorrowedFd<'_>, min: RawFd) -> io::Result<OwnedFd> {
    let raw = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(min))?;
    // SAFETY: `F_DUPFD_CLOEXEC` returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Checks that `fd` is a listening stream socket of a family we can serve, and says which.
///
/// The error is a human-readable reason, for the caller to wrap with the variable and fd.
pub(crate) fn inspect_listener(fd: BorrowedFd<'_>) -> Result<ListenerFamily, String> {
    let stat = fstat(fd).map_err(|e| format!("fstat failed: {e}"))?;
    let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
    if kind != SFlag::S_IFSOCK {
        let what = match kind {
            SFlag::S_IFREG => "a regular file",
            SFlag::S_IFDIR => "a directory",
            SFlag::S_IFIFO => "a pipe",
            SFlag::S_IFCHR => "a character device",
            SFlag::S_IFBLK => "a block device",
            SFlag::S_IFLNK => "a symbolic link",
            _ => "not a socket",
        };
        return Err(format!("is {what}, not a socket"));
    }
    let ty = socket::getsockopt(&fd, sockopt::SockType).map_err(|e| format!("SO_TYPE: {e}"))?;
    if ty != SockType::Stream {
        return Err(format!("is a {ty:?} socket, not a stream socket"));
    }
    let listening =
        socket::getsockopt(&fd, sockopt::AcceptConn).map_err(|e| format!("SO_ACCEPTCONN: {e}"))?;
    if !listening {
        return Err("is a stream socket that is not listening".to_owned());
    }
    let addr: socket::SockaddrStorage =
        socket::getsockname(fd.as_raw_fd()).map_err(|e| format!("getsockname: {e}"))?;
    match addr.family() {
        Some(AddressFamily::Inet | AddressFamily::Inet6) => Ok(ListenerFamily::Tcp),
        Some(AddressFamily::Unix) => Ok(ListenerFamily::Unix),
        other => Err(format!("has unsupported address family {other:?}")),
    }
}

/// Checks that `fd` is the write end of a pipe (the readiness channel).
pub(crate) fn is_fifo(fd: BorrowedFd<'_>) -> bool {
    fstat(fd)
        .map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFIFO)
        .unwrap_or(false)
}

/// Creates, binds and listens on a TCP socket with `SO_REUSEADDR` and the given backlog.
pub(crate) fn bind_tcp(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if addr.is_ipv6() {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    socket::bind(fd.as_raw_fd(), &socket::SockaddrStorage::from(addr))?;
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    socket::listen(
        &fd,
        socket::Backlog::new(backlog).unwrap_or(socket::Backlog::MAXCONN),
    )?;
    Ok(TcpListener::from(fd))
}

/// Binds and listens on a Unix domain socket at `path`, with `mode` as its permission bits.
///
/// A socket file left behind by a dead process (connecting to it is refused) is replaced; one
/// that a live process still serves is `AddrInUse`, and any other kind of file is left alone
/// and reported.
pub(crate) fn bind_unix(path: &Path, backlog: u32, mode: Option<u32>) -> io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket",
            ));
        }
        // A non-blocking connect: a live server whose backlog is full answers EAGAIN at once
        // instead of blocking start-up.
        let probe = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        match socket::connect(probe.as_raw_fd(), &socket::UnixAddr::new(path)?) {
            Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is serving on this socket",
                ))
            }
            Err(nix::errno::Errno::EAGAIN) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is serving on this socket (its backlog is full)",
                ))
            }
            Err(nix::errno::Errno::ECONNREFUSED) => {
                log::info!("replacing stale socket file {}", path.display());
                std::fs::remove_file(path)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::bind(fd.as_raw_fd(), &socket::UnixAddr::new(path)?)?;
    if let Some(mode) = mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    socket::listen(
        &fd,
        socket::Backlog::new(backlog).unwrap_or(socket::Backlog::MAXCONN),
    )?;
    Ok(UnixListener::from(fd))
}

/// Where a listening socket listens, to recognise the connections accepted from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LocalAddr {
    Tcp(SocketAddr),
    Unix(std::path::PathBuf),
}

impl LocalAddr {
    /// The address `fd` (a listening socket) is bound to.
    pub(crate) fn of(fd: BorrowedFd<'_>) -> Option<LocalAddr> {
        local_addr(fd.as_raw_fd())
    }

    /// Whether a connection whose local address is `other` was accepted from this listener.
    fn accepted(&self, other: &LocalAddr) -> bool {
        match (self, other) {
            (LocalAddr::Tcp(listen), LocalAddr::Tcp(local)) => {
                listen.port() == local.port()
                    && (listen.ip().is_unspecified() || listen.ip() == local.ip())
            }
            (LocalAddr::Unix(listen), LocalAddr::Unix(local)) => listen == local,
            _ => false,
        }
    }
}

fn local_addr(fd: RawFd) -> Option<LocalAddr> {
    let addr: socket::SockaddrStorage = socket::getsockname(fd).ok()?;
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(LocalAddr::Tcp(SocketAddr::V4((*v4).into())));
    }
    if let Some(v6) = addr.as_sockaddr_in6() {
        return Some(LocalAddr::Tcp(SocketAddr::V6((*v6).into())));
    }
    let path = addr.as_unix_addr()?.path()?;
    Some(LocalAddr::Unix(path.to_owned()))
}

/// This process's open descriptors and what `/proc/self/fd` says each one is.
fn open_fds() -> io::Result<Vec<(RawFd, std::path::PathBuf)>> {
    let mut fds = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // A descriptor closed since the directory was read has no link any more: skip it.
        if let Ok(target) = std::fs::read_link(entry.path()) {
            fds.push((fd, target));
        }
    }
    Ok(fds)
}

/// Whether any epoll instance of this process still watches one of `fds`: after actix's
/// acceptor has acted on a pause it has removed its listening sockets from its epoll, and only
/// then can no connection be accepted any more.
///
/// `known` are the epoll instances found watching them earlier ([`epolls_watching`]): with
/// thousands of connections open, listing every descriptor and reading every worker's epoll
/// (one line per connection) costs a core for a quarter of a second, so only those are read
/// while they are still epoll instances; otherwise every one is.
pub(crate) fn epoll_watches_any(fds: &[RawFd], known: &[RawFd]) -> io::Result<bool> {
    let still_epolls = !known.is_empty()
        && known.iter().all(|&fd| {
            std::fs::read_link(format!("/proc/self/fd/{fd}"))
                .is_ok_and(|target| target.as_os_str() == EVENTPOLL)
        });
    if still_epolls {
        return Ok(known.iter().any(|&epoll| epoll_watches(epoll, fds)));
    }
    Ok(!epolls_watching(fds)?.is_empty())
}

/// The epoll instances of this process that watch one of `fds`.
pub(crate) fn epolls_watching(fds: &[RawFd]) -> io::Result<Vec<RawFd>> {
    Ok(open_fds()?
        .into_iter()
        .filter(|(epoll, target)| target.as_os_str() == EVENTPOLL && epoll_watches(*epoll, fds))
        .map(|(epoll, _)| epoll)
        .collect())
}

const EVENTPOLL: &str = "anon_inode:[eventpoll]";

/// Whether epoll instance `epoll` watches one of `fds` (`false` if it cannot be read).
fn epoll_watches(epoll: RawFd, fds: &[RawFd]) -> bool {
    let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{epoll}")) else {
        return false;
    };
    let mut watched = info.lines().filter_map(|line| {
        line.strip_prefix("tfd:")?
            .split_whitespace()
            .next()?
            .parse::<RawFd>()
            .ok()
    });
    watched.any(|fd| fds.contains(&fd))
}

/// The accept queues of the listening TCP sockets `fds`, summed: connections completed and
/// not yet accepted, and the most the queues hold. `None` if one of them is not a TCP socket
/// (a Unix socket has no such count) or is gone.
pub(crate) fn accept_queue(fds: &[RawFd]) -> Option<(usize, usize)> {
    /// `TCP_LISTEN` of the kernel's `include/net/tcp_states.h` (not in the libc crate).
    const TCP_LISTEN: u8 = 10;
    let mut total = (0, 0);
    for &fd in fds {
        // SAFETY: tcp_info is plain integers; all zeroes is a valid value.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `info`, which it owns; an fd that
        // is not (or no longer) a TCP socket only makes it fail.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        // For a listening socket the kernel reports the accept queue's length in
        // tcpi_unacked and its limit in tcpi_sacked (tcp_get_info, TCP_LISTEN).
        if rc != 0 || info.tcpi_state != TCP_LISTEN || info.tcpi_sacked == 0 {
            return None;
        }
        total.0 += info.tcpi_unacked as usize;
        total.1 += info.tcpi_sacked as usize;
    }
    Some(total)
}

/// How many connections accepted from the listeners at `listening` this process holds open,
/// as the kernel sees them: including those accepted but still queued for a worker, which
/// no callback has counted yet.
pub(crate) fn count_accepted(listening: &[LocalAddr]) -> io::Result<usize> {
    let mut count = 0;
    for (fd, target) in open_fds()? {
        if !target.to_string_lossy().starts_with("socket:[") {
            continue;
        }
        // The descriptor may be closed or reused by another thread at any moment; the calls
        // below then fail or describe the new file, and the next check sees the truth.
        if int_sockopt(fd, libc::SO_ACCEPTCONN) != Some(0)
            || int_sockopt(fd, libc::SO_TYPE) != Some(libc::SOCK_STREAM)
        {
            continue;
        }
        if let Some(local) = local_addr(fd) {
            if listening.iter().any(|l| l.accepted(&local)) {
                count += 1;
            }
        }
    }
    Ok(count)
}

fn int_sockopt(fd: RawFd, option: libc::c_int) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`, an int it owns; an fd
    // number that is not (or no longer) a socket only makes it fail.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(value)
}

/// The user id of the process at the other end of the Unix stream socket `fd`.
pub(crate) fn peer_uid(fd: BorrowedFd<'_>) -> io::Result<u32> {
    Ok(socket::getsockopt(&fd, sockopt::PeerCredentials)?.uid())
}

/// This process's effective user id.
pub(crate) fn effective_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// A close-on-exec pipe: `(read end, write end)`.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// Waits until `fd` is readable (data or end of file), at most `timeout`.
/// Returns `false` on timeout.
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(0) => Ok(false),
        Ok(_) => Ok(true),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Blocks until the reading end of the pipe whose writing end is `fd` is closed everywhere.
pub(crate) fn wait_reader_gone(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        // No event asked for: poll reports POLLERR once no reader is left.
        let mut fds = [PollFd::new(fd, PollFlags::empty())];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads one byte without blocking past what `wait_readable` promised. `Ok(None)` is end of file.
pub(crate) fn read_byte(fd: BorrowedFd<'_>) -> io::Result<Option<u8>> {
    let mut buf = [0u8; 1];
    loop {
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(buf[0])),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes one byte to `fd`, retrying on `EINTR`.
pub(crate) fn write_byte(fd: BorrowedFd<'_>, byte: u8) -> io::Result<()> {
    loop {
        match nix::unistd::write(fd, &[byte]) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn regular_file_is_not_a_listener() {
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let err = inspect_listener(file.as_fd()).unwrap_err();
        assert!(err.contains("regular file"), "{err}");
    }

    #[test]
    fn accepted_connections_are_counted_by_local_address() {
        let l = bind_tcp("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let local = [LocalAddr::of(l.as_fd()).unwrap()];
        assert_eq!(count_accepted(&local).unwrap(), 0);
        // Until it is accepted the connection sits in the backlog, and the client end (ours
        // too) has an ephemeral local port: nothing to count.
        let _client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        assert_eq!(count_accepted(&local).unwrap(), 0);
        let (conn, _) = l.accept().unwrap();
        assert_eq!(count_accepted(&local).unwrap(), 1);
        drop(conn);
        assert_eq!(count_accepted(&local).unwrap(), 0);
    }

    #[test]
    fn epoll_registration_is_visible() {
        let l = bind_tcp("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let fd = l.as_raw_fd();
        assert!(!epoll_watches_any(&[fd], &[]).unwrap());
        let epoll =
            nix::sys::epoll::Epoll::new(nix::sys::epoll::EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
        let event = nix::sys::epoll::EpollEvent::new(nix::sys::epoll::EpollFlags::EPOLLIN, 1);
        epoll.add(&l, event).unwrap();
        assert!(epoll_watches_any(&[fd], &[]).unwrap());
        // The instances found watching it are the ones read from then on.
        let known = epolls_watching(&[fd]).unwrap();
        assert_eq!(known, [epoll.0.as_raw_fd()]);
        assert!(epoll_watches_any(&[fd], &known).unwrap());
        epoll.delete(&l).unwrap();
        assert!(!epoll_watches_any(&[fd], &known).unwrap());
        assert!(!epoll_watches_any(&[fd], &[]).unwrap());
        // A known descriptor that is no longer an epoll instance: every one is read again.
        let other =
            nix::sys::epoll::Epoll::new(nix::sys::epoll::EpollCreateFlags::empty()).unwrap();
        other.add(&l, event).unwrap();
        assert!(epoll_watches_any(&[fd], &[fd]).unwrap());
    }

    #[test]
    fn tcp_listener_is_recognised() {
        let l = bind_tcp("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        assert_eq!(inspect_listener(l.as_fd()), Ok(ListenerFamily::Tcp));
    }
}
