//! The nginx peer rows (see `peers.rs`): nginx started on a socket the benchmark bound, and
//! upgraded with its binary upgrade (`USR2`, `WINCH`, `QUIT`) on the rows' schedule. A child
//! module of `peers`, itself a child of `scenario`, so it uses the runner's helpers.

use std::{
    ffi::{CStr, CString},
    fs,
    net::{SocketAddr, TcpListener},
    os::{
        fd::AsRawFd,
        unix::{ffi::OsStrExt, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use nix::sys::signal::Signal;

use crate::{
    procs::{self, poll_until, Guard, Proc},
    scenario::{
        check_get, read_pid, RowData, RowSpec, Runner, Tick, Tracked, EXIT_TIMEOUT, POLL,
        READY_TIMEOUT, START_TIMEOUT,
    },
};

/// Where nginx is: Debian's path, else `nginx` on `PATH`.
fn nginx_binary() -> Option<PathBuf> {
    let debian = PathBuf::from("/usr/sbin/nginx");
    if debian.is_file() {
        return Some(debian);
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("nginx"))
        .find(|p| p.is_file())
}

impl Runner {
    /// nginx rows: start nginx on an inherited socket, wrk, binary upgrades on schedule, RSS
    /// sampling; a single loop ticking every millisecond.
    pub(super) fn nginx(
        &self,
        guard: &mut Guard,
        dir: &Path,
        spec: RowSpec,
    ) -> Result<RowData, String> {
        let bin = nginx_binary().ok_or(
            "nginx not found (/usr/sbin/nginx or on PATH): apt-get install nginx-light \
             (`make bench` does)",
        )?;
        let conf = dir.join("nginx.conf");
        // Declared before anything is started: on every return it kills what the pid file
        // and the guard may have missed.
        let _sweep = Sweep(conf.clone());
        let (server, spawned) = self.start_nginx(guard, dir, &bin, &conf, spec)?;
        let pid_file = dir.join("nginx.pid");
        let first = read_pid(&pid_file)
            .and_then(Proc::of)
            .ok_or("the nginx master vanished after start-up")?;
        let mut tracked = Tracked::new(first, spawned);
        guard.adopt(first);
        // USR2 sent, waiting for the new master and its workers: (sent at, old master).
        let mut pending: Option<(Instant, Proc)> = None;
        // Old master draining: (ready at, old master, new master, QUIT sent).
        let mut draining: Option<(Instant, Proc, Proc, bool)> = None;
        let load = self.drive(guard, dir, spec, server, "nginx", |tick, schedule| {
            let Tick {
                guard,
                now,
                t0,
                wrk_done,
                rec,
                restarts,
            } = tick;
            tracked.sample(guard, now);

            if let Some((sent, old)) = pending {
                let new = read_pid(&pid_file)
                    .filter(|&p| p != old.pid)
                    .and_then(Proc::of);
                if let Some(new) = new.filter(|n| live_children(n.pid, None) >= self.cfg.workers) {
                    // The documented second step: the old workers finish and exit.
                    let ready = Instant::now();
                    restarts.to_ready.push(ready - sent);
                    rec.ready(ready);
                    restarts.completed += 1;
                    tracked.add(guard, new);
                    if !old.signal(Signal::SIGWINCH) {
                        restarts.problems.push(format!(
                            "could not send WINCH to the old master {}",
                            old.pid
                        ));
                    }
                    draining = Some((ready, old, new, false));
                    pending = None;
                } else if now - sent > READY_TIMEOUT {
                    restarts.problems.push(format!(
                        "USR2 to master {} sent at {:.3} s: no new master with {} workers within {:?}",
                        old.pid,
                        (sent - t0).as_secs_f64(),
                        self.cfg.workers,
                        READY_TIMEOUT
                    ));
                    pending = None;
                } else if old.is_gone() {
                    restarts.problems.push(format!(
                        "master {} exited before a new master was ready",
                        old.pid
                    ));
                    pending = None;
                }
            }

            if let Some((ready, old, new, quit_sent)) = &mut draining {
                let since = Instant::now().saturating_duration_since(*ready);
                if old.is_gone() {
                    restarts.to_exit.push(since);
                    rec.old_exit(*ready + since);
                    draining = None;
                } else if since > EXIT_TIMEOUT {
                    restarts.problems.push(format!(
                        "old master {} still running {EXIT_TIMEOUT:?} after its successor was ready",
                        old.pid
                    ));
                    draining = None;
                } else if !*quit_sent && live_children(old.pid, Some(new.pid)) == 0 {
                    // The documented last step, once the old workers have exited.
                    *quit_sent = true;
                    if !old.signal(Signal::SIGQUIT) {
                        restarts
                            .problems
                            .push(format!("could not send QUIT to the old master {}", old.pid));
                    }
                }
            }

            // The next upgrade goes to the current master once the previous one is complete
            // (a new master ignores USR2 while the old one runs).
            if pending.is_none() && draining.is_none() && !wrk_done && schedule.due(t0, now) {
                match current_master(&pid_file, tracked.procs()) {
                    Ok(master) if master.signal(Signal::SIGUSR2) => {
                        let sent = Instant::now();
                        rec.signal(sent);
                        pending = Some((sent, master));
                    }
                    Ok(master) => restarts
                        .problems
                        .push(format!("could not send USR2 to master {}", master.pid)),
                    Err(e) => restarts.problems.push(e),
                }
            }
            pending.is_some() || draining.is_some()
        })?;
        // TERM is nginx's fast shutdown, for masters and workers alike.
        let mut notes = tracked.stop(guard);
        notes.extend(load.notes);
        Ok(RowData {
            wrk: load.wrk,
            peak_rss_kib: Some(tracked.peak_rss_kib()),
            restarts: load.restarts,
            notes,
            orphan_cpu_secs: tracked.orphan_cpu_secs(),
            other_cpu_pct: None,
            timeline: load.timeline,
        })
    }

    /// Writes the configuration and starts nginx on a socket bound here and inherited through
    /// `NGINX="fd;"` (nginx refuses port 0; its own binary upgrade hands sockets over the same
    /// way). Waits until the daemonized master has written its pid file, runs all its workers
    /// and answers `GET /`. Returns the address and the pid of the process spawned (it exits
    /// once the master runs).
    fn start_nginx(
        &self,
        guard: &mut Guard,
        dir: &Path,
        bin: &Path,
        conf: &Path,
        spec: RowSpec,
    ) -> Result<(SocketAddr, i32), String> {
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("local address: {e}"))?;
        let worker_connections = (spec.connections * 2 + 64).max(1024);
        fs::write(
            conf,
            nginx_conf(dir, addr, self.cfg.workers, worker_connections),
        )
        .map_err(|e| format!("{}: {e}", conf.display()))?;
        let log =
            fs::File::create(dir.join("server.log")).map_err(|e| format!("server.log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("server.log: {e}"))?;
        let fd = listener.as_raw_fd();
        let mut cmd = Command::new(bin);
        cmd.arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(conf)
            .arg("-e")
            .arg(dir.join("error.log"))
            .env("NGINX", format!("{fd};"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let pid_file = dir.join("nginx.pid");
        let pid_path = CString::new(pid_file.as_os_str().as_bytes())
            .map_err(|e| format!("{}: {e}", pid_file.display()))?;
        // SAFETY: the closure runs between fork and exec and only calls async-signal-safe
        // functions (fcntl, fork, access, waitpid, nanosleep, _exit) and allocates nothing.
        unsafe {
            cmd.pre_exec(move || start_like_a_daemon(fd, &pid_path));
        }
        let spawned = guard
            .spawn(&mut cmd)
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        // nginx holds its own copy now.
        drop(listener);
        let error_log = || {
            let text = fs::read_to_string(dir.join("error.log")).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(5)..].join("\n")
        };
        let deadline = Instant::now() + START_TIMEOUT;
        // The process spawned forks the master and exits once its pid file is written.
        let status = guard
            .wait_child(spawned, deadline)
            .ok_or_else(|| format!("nginx wrote no pid file within {START_TIMEOUT:?}"))?;
        if !status.success() {
            return Err(format!(
                "nginx did not start ({status}; 3: it exited, 4: no pid file):\n{}",
                error_log()
            ));
        }
        let workers = self.cfg.workers;
        poll_until(deadline, POLL, || {
            let master = read_pid(&pid_file).and_then(Proc::of)?;
            guard.adopt(master);
            (live_children(master.pid, None) >= workers).then_some(())
        })
        .ok_or_else(|| {
            format!(
                "nginx: no master with {workers} workers within {START_TIMEOUT:?}:\n{}",
                error_log()
            )
        })?;
        check_get(addr)?;
        let adopted = fs::read_to_string(dir.join("error.log"))
            .is_ok_and(|t| t.contains(&format!("using inherited sockets from \"{fd};\"")));
        if !adopted {
            return Err("nginx did not adopt the socket it was handed".into());
        }
        Ok((addr, spawned))
    }
}

/// Runs in the child between fork and exec: clears close-on-exec on the listener `fd`, then
/// forks again. The grandchild goes on to exec nginx; the child waits until nginx has written
/// `pid_file` (or exited, or 15 s) and exits, so that nginx's master ends up reparented as a
/// daemon's is. nginx does not daemonize itself when it inherits sockets (a new binary of an
/// upgrade must not), and it ignores `USR2` while its parent is the one it started with
/// (that parent would be the old binary's master), so a master that stayed our child could
/// never be upgraded; nginx reads its parent's pid before it writes its pid file.
fn start_like_a_daemon(fd: libc::c_int, pid_file: &CStr) -> std::io::Result<()> {
    // SAFETY: fcntl, fork, access, waitpid, nanosleep and _exit are async-signal-safe; the
    // pointers passed are valid for the calls.
    unsafe {
        if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
            return Err(std::io::Error::last_os_error());
        }
        let nginx = libc::fork();
        match nginx {
            -1 => Err(std::io::Error::last_os_error()),
            0 => Ok(()),
            _ => {
                let tick = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 1_000_000,
                };
                for _ in 0..15_000 {
                    if libc::access(pid_file.as_ptr(), libc::F_OK) == 0 {
                        libc::_exit(0);
                    }
                    let mut status = 0;
                    if libc::waitpid(nginx, &mut status, libc::WNOHANG) == nginx {
                        libc::_exit(3);
                    }
                    libc::nanosleep(&tick, std::ptr::null_mut());
                }
                libc::_exit(4)
            }
        }
    }
}

/// nginx's configuration: every path in `dir`, `worker_processes` = `--workers`, `GET /`
/// answered with hello's body and headers (no content type, keep-alive like actix-web's).
fn nginx_conf(dir: &Path, addr: SocketAddr, workers: u32, worker_connections: u32) -> String {
    let d = dir.display();
    // No `user` line: as root nginx's workers run as its default user (nobody), which this
    // configuration lets them (no file is read or written by a worker); otherwise the line
    // would be ignored with a warning.
    format!(
        "# restart_bench: nginx with hello's response; every file in {d}.
worker_processes {workers};
pid {d}/nginx.pid;
lock_file {d}/nginx.lock;
error_log {d}/error.log notice;
events {{
    worker_connections {worker_connections};
}}
http {{
    access_log off;
    server_tokens off;
    # hello sends no Content-Type; nginx omits it for an empty type.
    default_type \"\";
    # actix-web's keep-alive: 5 s idle, no limit on requests per connection (nginx closes
    # after 1000 requests by default).
    keepalive_timeout 5s;
    keepalive_requests 1000000000;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen {addr};
        location / {{
            return 200 \"hello from pid $pid, generation 1, release v1\\n\";
        }}
    }}
}}
"
    )
}

/// Live children of `pid`, not counting `except` (the new master, a child of the old one).
fn live_children(pid: i32, except: Option<i32>) -> u32 {
    procs::children(pid)
        .into_iter()
        .filter(|&c| Some(c) != except)
        .filter_map(Proc::of)
        .filter(|p| !p.is_gone())
        .count() as u32
}

/// The master named by the pid file, if it is a live nginx process of this row.
fn current_master(pid_file: &Path, tracked: &[Proc]) -> Result<Proc, String> {
    let pid = read_pid(pid_file)
        .ok_or_else(|| format!("cannot read a pid from {}", pid_file.display()))?;
    tracked
        .iter()
        .copied()
        .find(|p| p.pid == pid && !p.is_gone())
        .ok_or_else(|| format!("nginx.pid names {pid}, which is not a live nginx of this row"))
}

/// On drop, SIGKILLs every process whose command line names the row's configuration file
/// (the nginx masters: `nginx: master process /usr/sbin/nginx -p DIR -c CONF ...`) and their
/// children (the workers). The row's directory is unique to this run, so nothing else
/// matches. Normally there is nothing left: the row stops nginx and the guard kills the
/// processes it tracked; this catches a master started but never named by the pid file.
struct Sweep(PathBuf);

impl Drop for Sweep {
    fn drop(&mut self) {
        let needle = self.0.to_string_lossy().into_owned();
        let Ok(entries) = fs::read_dir("/proc") else {
            return;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            if pid == std::process::id() as i32
                || !String::from_utf8_lossy(&cmdline).contains(&needle)
            {
                continue;
            }
            let Some(master) = Proc::of(pid) else {
                continue;
            };
            for child in procs::children(pid).into_iter().filter_map(Proc::of) {
                child.signal(Signal::SIGKILL);
            }
            master.signal(Signal::SIGKILL);
        }
    }
}
