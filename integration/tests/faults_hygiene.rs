//! Descriptor, process and pid-file hygiene over many upgrades (issue 4, cases 9 and 10).
//!
//! Twenty upgrades in a row leak no descriptor and leave no zombie; exactly the listening
//! socket and the readiness pipe cross the exec into a new generation; the pid file always
//! names a live server, is never seen empty or partial, and a graceful exit removes it only
//! if it names the exiting process.

mod fault_support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use fault_support::{
    fd_targets, idle_fd_profile, link_binary, listening_inode, no_stray_fds, zombie_children,
    ZombieWatch, UPGRADE_FAILED,
};
use integration::{
    examples, pid_alive, replace_file, replace_with_script, send_signal, wait_for, wait_until,
    Server, TempDir, TIMEOUT,
};
use nix::sys::signal::Signal;

/// How many upgrades the long tests run.
const UPGRADES: usize = 20;

/// SIGHUPs `current` and waits until a new process has written the pid file and `current`
/// has exited (`first` is the test's direct child: it is reaped and must exit with status 0).
/// Returns the new pid.
fn upgrade(server: &mut Server, current: i32, first: i32, upgrade: usize) -> i32 {
    send_signal(current, Signal::SIGHUP);
    let next = wait_for(TIMEOUT, || server.read_pid_file().filter(|&p| p != current))
        .unwrap_or_else(|| panic!("upgrade {upgrade}: the pid file still names {current}"));
    if current == first {
        let status = server.wait_exit(TIMEOUT);
        assert!(status.success(), "the first process exited with {status}");
    } else {
        assert!(
            wait_until(TIMEOUT, || !pid_alive(current)),
            "upgrade {upgrade}: pid {current} did not exit"
        );
    }
    next
}

/// Case 9: after 20 upgrades the serving process holds exactly the same kinds and number of
/// descriptors as the first generation did (both serving and idle), its fd 3 is the one
/// listening socket, inherited through every exec, and no zombie appeared at any time.
#[test]
fn twenty_upgrades_leak_no_descriptor_and_no_zombie() {
    no_stray_fds();
    let zombies = ZombieWatch::start();
    let mut server = Server::start(&examples().hello, &["--workers", "2"]);
    let first = server.first_pid();
    zombies.watch(first);
    let port = server.port();
    let listener = listening_inode(port);
    assert_eq!(server.get_pid(), Ok(first));
    let first_profile = idle_fd_profile(first, TIMEOUT);

    let mut current = first;
    for n in 1..=UPGRADES {
        let next = upgrade(&mut server, current, first, n);
        zombies.watch(next);
        assert_eq!(zombie_children(next), Vec::<i32>::new(), "upgrade {n}");
        current = next;
    }
    assert_eq!(server.get_pid(), Ok(current));
    let last_profile = idle_fd_profile(current, TIMEOUT);

    assert_eq!(
        last_profile.values().sum::<usize>(),
        first_profile.values().sum::<usize>(),
        "descriptor count of generation 1 ({first}) and generation {} ({current}):\n\
         first: {first_profile:?}\nlast:  {last_profile:?}",
        UPGRADES + 1
    );
    assert_eq!(last_profile, first_profile, "descriptor kinds");
    assert_eq!(
        listening_inode(port),
        listener,
        "the listening socket was replaced"
    );
    assert_eq!(
        fd_targets(current).get(&3),
        Some(&format!("socket:[{listener}]")),
        "fd 3 of the last generation is not the inherited listening socket"
    );
    assert_eq!(
        zombies.seen(),
        BTreeSet::new(),
        "zombies (pid, parent) seen during the upgrades"
    );
}

/// Exactly what crosses the exec into a new generation: stdin, stdout and stderr, the
/// listening socket at fd 3 and the readiness pipe at fd 4, nothing else; and the protocol
/// variables, with `LISTEN_PID` naming the new process itself.
///
/// The "new binary" is a script that records its own descriptors and environment, then exits.
#[test]
fn only_the_listener_and_the_readiness_pipe_cross_exec() {
    no_stray_fds();
    let dir = TempDir::new("faults-exec-crossing");
    let binary = dir.join("hello");
    link_binary(&binary, &examples().hello);
    let server = Server::start_in(dir, &binary, &["--upgrade-timeout", "25000"]);
    let old = server.first_pid();
    let listener = listening_inode(server.port());
    let fds_report = server.dir().join("fds");
    let env_report = server.dir().join("env");
    // `find` (a child of the shell) lists the shell's descriptors and writes the list itself
    // (`-fprintf`): a shell redirection would open the file in the shell, which would then
    // show up in the list. The shell's own descriptor on the script is filtered out below.
    replace_with_script(
        &binary,
        &format!(
            "find /proc/$$/fd -mindepth 1 -fprintf '{fds}.tmp' '%f %l\\n'\n\
             echo \"pid=$$\" > '{env}.tmp'; env >> '{env}.tmp'\n\
             mv '{fds}.tmp' '{fds}'; mv '{env}.tmp' '{env}'\n\
             exit 3",
            fds = fds_report.display(),
            env = env_report.display(),
        ),
    );
    send_signal(old, Signal::SIGHUP);
    assert!(
        server.wait_for_log(UPGRADE_FAILED, 1, TIMEOUT),
        "the recording script was not run to its end"
    );
    let crossed: BTreeMap<i32, String> = fs::read_to_string(&fds_report)
        .expect("reading the descriptor report")
        .lines()
        .filter_map(|line| {
            let (fd, target) = line.split_once(' ')?;
            Some((fd.parse().ok()?, target.to_owned()))
        })
        .filter(|(_, target)| *target != binary.display().to_string())
        .collect();
    let expected_fds: Vec<i32> = vec![0, 1, 2, 3, 4];
    assert_eq!(
        crossed.keys().copied().collect::<Vec<_>>(),
        expected_fds,
        "descriptors that crossed the exec: {crossed:?}"
    );
    assert_eq!(crossed[&3], format!("socket:[{listener}]"));
    assert!(crossed[&4].starts_with("pipe:["), "fd 4: {}", crossed[&4]);

    let env = fs::read_to_string(&env_report).expect("reading the environment report");
    let value = |name: &str| {
        env.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}=")))
            .map(str::to_owned)
    };
    assert_eq!(
        value("LISTEN_PID"),
        value("pid"),
        "LISTEN_PID names the new process"
    );
    assert_eq!(value("LISTEN_FDS").as_deref(), Some("1"));
    assert!(
        value("LISTEN_FDNAMES").is_some_and(|names| !names.is_empty() && !names.contains(':')),
        "LISTEN_FDNAMES: {:?}",
        value("LISTEN_FDNAMES")
    );
    assert_eq!(value("ACTIX_ENDLESS_READY_FD").as_deref(), Some("4"));
    assert_eq!(value("ACTIX_ENDLESS_GENERATION").as_deref(), Some("2"));
}

/// What a reader polling the pid file saw.
#[derive(Debug, Default)]
struct PidFileWatch {
    reads: u64,
    /// Reads that found no file.
    missing: u64,
    /// Reads that found an empty or unparsable file, with examples.
    unparsable: u64,
    examples: Vec<String>,
    /// The pids named.
    named: BTreeSet<i32>,
    /// The longest stretch during which the file named a process that was not alive.
    longest_dead: Duration,
}

/// Case 10: a reader polling the pid file about every millisecond during 20 upgrades never
/// finds it missing, empty or partial, and never finds it naming a dead process for long
/// (the new generation writes it before the old one stops).
#[test]
fn pid_file_always_names_a_live_server_during_twenty_upgrades() {
    no_stray_fds();
    let mut server = Server::start(&examples().hello, &[]);
    let first = server.first_pid();
    let path = server.pid_file();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = thread::spawn({
        let stop = Arc::clone(&stop);
        move || {
            let mut watch = PidFileWatch::default();
            let mut dead_since: Option<Instant> = None;
            while !stop.load(Ordering::Relaxed) {
                watch.reads += 1;
                let named = match fs::read_to_string(&path) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        watch.missing += 1;
                        None
                    }
                    Err(e) => panic!("reading {}: {e}", path.display()),
                    Ok(text) => {
                        let pid = text.trim().parse::<i32>().ok();
                        if pid.is_none() {
                            watch.unparsable += 1;
                            if watch.examples.len() < 5 {
                                watch.examples.push(text);
                            }
                        }
                        pid
                    }
                };
                if let Some(pid) = named {
                    watch.named.insert(pid);
                    if pid_alive(pid) {
                        if let Some(since) = dead_since.take() {
                            watch.longest_dead = watch.longest_dead.max(since.elapsed());
                        }
                    } else {
                        dead_since.get_or_insert_with(Instant::now);
                    }
                }
                thread::sleep(Duration::from_millis(1));
            }
            if let Some(since) = dead_since {
                watch.longest_dead = watch.longest_dead.max(since.elapsed());
            }
            watch
        }
    });

    let mut pids = vec![first];
    for n in 1..=UPGRADES {
        let next = upgrade(&mut server, pids[n - 1], first, n);
        pids.push(next);
    }
    // Let the reader see the last generation alone for a while.
    let last = *pids.last().expect("at least one pid");
    assert_eq!(server.get_pid(), Ok(last));
    stop.store(true, Ordering::Relaxed);
    let watch = reader.join().expect("the reader panicked");

    assert_eq!(watch.missing, 0, "the pid file was missing: {watch:?}");
    assert_eq!(
        watch.unparsable, 0,
        "the pid file was empty or partial: {watch:?}"
    );
    assert!(
        watch.longest_dead < Duration::from_secs(2),
        "the pid file named a process that was not alive for {:?}: {watch:?}",
        watch.longest_dead
    );
    // The reader was running throughout: it saw every generation.
    let expected: BTreeSet<i32> = pids.iter().copied().collect();
    assert_eq!(
        watch.named, expected,
        "pids the reader saw ({} reads)",
        watch.reads
    );
}

/// Case 10: a graceful exit (SIGTERM) removes the pid file when it names the exiting process
/// (here a generation-2 process, after an upgrade), and leaves it alone, content unchanged,
/// when it names another process.
#[test]
fn graceful_exit_removes_the_pid_file_only_if_it_is_ours() {
    no_stray_fds();
    // Ours: removed.
    let mut server = Server::start(&examples().hello, &[]);
    let first = server.first_pid();
    let second = upgrade(&mut server, first, first, 1);
    send_signal(second, Signal::SIGTERM);
    assert!(
        wait_until(TIMEOUT, || !pid_alive(second)),
        "pid {second} did not exit after SIGTERM"
    );
    assert!(
        server.log_contains(&format!("pid {second} generation 2: removed pid file")),
        "the exit did not log the removal"
    );
    assert!(!server.pid_file().exists(), "the pid file was left behind");

    // Someone else's: kept.
    let mut server = Server::start(&examples().hello, &[]);
    let pid = server.first_pid();
    let other = format!("{}\n", std::process::id());
    replace_file(&server.pid_file(), other.as_bytes(), 0o644);
    send_signal(pid, Signal::SIGTERM);
    let status = server.wait_exit(TIMEOUT);
    assert!(status.success(), "exited with {status}");
    assert_eq!(
        fs::read_to_string(server.pid_file()).ok(),
        Some(other),
        "the pid file naming another process was removed or changed"
    );
}
