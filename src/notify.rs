//! systemd's readiness protocol (`sd_notify`): datagrams to the socket in `NOTIFY_SOCKET`.
//!
//! With `Type=notify` and `NotifyAccess=all`, systemd learns that the service is ready, that a
//! reload (an upgrade) is in progress, which pid is now the main one, and that it is stopping.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The variable systemd sets to the notification socket's path (`@` for the abstract namespace).
pub(crate) const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// A connection to systemd's notification socket.
#[derive(Debug)]
pub(crate) struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` asks for; `Ok(None)` when it is not set.
    pub(crate) fn from_env() -> io::Result<Option<Notifier>> {
        let Some(path) = std::env::var_os(NOTIFY_SOCKET) else {
            return Ok(None);
        };
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        let addr = match bytes.split_first() {
            None => return Ok(None),
            Some((b'@', name)) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name)?
            }
            Some((b'/', _)) => SocketAddr::from_pathname(&path)?,
            Some(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{NOTIFY_SOCKET}={path:?} is neither a path nor an abstract name"),
                ))
            }
        };
        Ok(Some(Notifier {
            socket: UnixDatagram::unbound()?,
            addr,
        }))
    }

    /// Sends one notification, lines such as `READY=1` joined by newlines.
    pub(crate) fn send(&self, lines: &[&str]) -> io::Result<()> {
        self.socket
            .send_to_addr(lines.join("\n").as_bytes(), &self.addr)
            .map(drop)
    }
}

/// `MONOTONIC_USEC=<now>`, which systemd wants with `RELOADING=1`.
pub(crate) fn monotonic_usec() -> String {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0);
    format!("MONOTONIC_USEC={now}")
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, when systemd set it.
/// `WATCHDOG_PID` is deliberately not checked: it names the first generation, and after an
/// upgrade the new generation, now the main pid, inherits it and must keep pinging.
pub(crate) fn watchdog_interval() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    Some(std::time::Duration::from_micros(usec / 2).max(std::time::Duration::from_millis(1)))
}
