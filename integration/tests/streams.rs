//! Long-lived responses across upgrades (issue 13): WebSockets (`GET /ws`) and server-sent
//! events (`GET /events`) of the `hello` example await `actix_endless::Draining`, so an
//! upgrade or a stop closes them cleanly (close code 1001, a final `shutdown` event and the
//! end of the chunked body) as soon as the process starts draining, and the old generation
//! exits right after the handover instead of at hammer time. Every server here runs with
//! `--hammer-time 60s`, so a drain that waited for hammer time would be obvious.

mod streams_support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use integration::{
    examples, pid_alive, process_state, send_signal, wait_for, wait_until, RawRequest, Server,
    TIMEOUT,
};
use nix::sys::signal::Signal;
use streams_support::{
    become_subreaper, drain_counts, log_lines, reap, start_clients, wait_new_pid_file, wait_opened,
    wait_settled, Client, Connection, Kind, Progress, Ws, AWAY, NOT_OUR_CHILD,
};

/// How long after its handover (the new pid in the pid file) an old generation whose only
/// connections are streams may take to exit; hammer time is 60 s.
const EXIT_LIMIT: Duration = Duration::from_secs(1);

/// A request that keeps an old generation draining while the next upgrade happens.
const HOLD_MS: u64 = 3000;

/// Joins every client and returns their connections.
fn join_all(clients: Vec<Client>) -> Vec<Connection> {
    clients.into_iter().flat_map(Client::join).collect()
}

/// Panics with every abnormal connection described (at most 20 of them).
fn assert_all_clean(connections: &[Connection]) {
    let errors: Vec<String> = connections
        .iter()
        .filter_map(|c| c.check_clean().err())
        .collect();
    assert!(
        errors.is_empty(),
        "{} of {} connections did not end cleanly:\n{}",
        errors.len(),
        connections.len(),
        errors
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Asserts the `drain ended` line of `pid` cut nothing; returns its counts.
fn assert_nothing_cut(server: &Server, pid: i32) -> (usize, usize, usize) {
    let counts = wait_for(TIMEOUT, || drain_counts(server, pid)).unwrap_or_else(|| {
        panic!(
            "no `drain ended` line for pid {pid}:\n{}",
            log_lines(server, &format!("pid {pid} "))
        )
    });
    assert_eq!(
        counts.2,
        0,
        "pid {pid} cut connections at the end of its drain:\n{}",
        log_lines(server, &format!("pid {pid} "))
    );
    counts
}

/// Asserts `pid` ends within `limit` of `since` and exits 0; returns how long it took.
fn assert_prompt_clean_exit(
    server: &mut Server,
    pid: i32,
    since: Instant,
    limit: Duration,
) -> Duration {
    assert!(
        wait_until(TIMEOUT, || !pid_alive(pid)),
        "pid {pid} still runs {TIMEOUT:?} after its handover:\n{}",
        log_lines(server, &format!("pid {pid} "))
    );
    let took = since.elapsed();
    match reap(server, pid, TIMEOUT) {
        Ok(0) => {}
        // Its parent, the generation before, outlived it and reaped it without logging the
        // status: the process's own last line is all there is to see.
        Err(e) if e == NOT_OUR_CHILD => {
            let exiting = ": exiting";
            let lines = log_lines(server, &format!("pid {pid} generation "));
            assert!(
                lines
                    .lines()
                    .last()
                    .is_some_and(|line| line.ends_with(exiting)),
                "pid {pid} (reaped by its parent) did not end with its `exiting` line:\n{lines}"
            );
        }
        other => panic!("pid {pid} did not exit 0: {other:?}"),
    }
    assert!(
        took <= limit,
        "pid {pid} exited {took:?} after its handover, more than {limit:?}:\n{}",
        log_lines(server, &format!("pid {pid} "))
    );
    took
}

#[test]
fn streams_end_cleanly_and_reconnect_across_five_upgrades() {
    const UPGRADES: usize = 5;
    const WEBSOCKETS: usize = 100;
    const EVENT_STREAMS: usize = 20;
    const CLIENTS: usize = WEBSOCKETS + EVENT_STREAMS;
    become_subreaper();
    let mut server = Server::start(&examples().hello, &["--hammer-time", "60s"]);
    let port = server.port();
    let mut pids = vec![server.first_pid()];
    // One connection per generation: the first, then one reconnect after each upgrade.
    let rounds = UPGRADES + 1;
    let progress = Progress::new(rounds);
    let mut clients = start_clients(Kind::WebSocket, 0, WEBSOCKETS, port, rounds, &progress);
    clients.extend(start_clients(
        Kind::Events,
        WEBSOCKETS,
        EVENT_STREAMS,
        port,
        rounds,
        &progress,
    ));

    let mut handovers = Vec::new();
    let mut exits = Vec::new();
    for upgrade in 1..=UPGRADES {
        wait_settled(&progress, upgrade - 1, CLIENTS, TIMEOUT)
            .unwrap_or_else(|e| panic!("before upgrade {upgrade}: {e}"));
        // Let every event stream tick before the upgrade.
        let ticks = progress.ticks.load(Ordering::SeqCst);
        assert!(
            wait_until(TIMEOUT, || {
                progress.ticks.load(Ordering::SeqCst) >= ticks + 2 * EVENT_STREAMS
            }),
            "before upgrade {upgrade}: the event streams do not tick"
        );
        let old = *pids.last().unwrap();
        send_signal(old, Signal::SIGHUP);
        let (new, handover) = wait_new_pid_file(&server, old, TIMEOUT)
            .unwrap_or_else(|| panic!("upgrade {upgrade}: no new pid in the pid file"));
        exits.push(assert_prompt_clean_exit(
            &mut server,
            old,
            handover,
            EXIT_LIMIT,
        ));
        handovers.push(handover);
        pids.push(new);
    }
    wait_settled(&progress, UPGRADES, CLIENTS, TIMEOUT)
        .unwrap_or_else(|e| panic!("after the last upgrade: {e}"));

    // A stop drains the same way: the last generation's streams end cleanly too.
    let last = *pids.last().unwrap();
    let term = Instant::now();
    send_signal(last, Signal::SIGTERM);
    let stop_took = assert_prompt_clean_exit(&mut server, last, term, EXIT_LIMIT);

    let connections = join_all(clients);
    // Every connection must have ended cleanly, and connection `i` of every client, opened
    // once upgrade `i` was done, must have been served by generation `i + 1`, the one the
    // pid file named then. Every failure is gathered, so that one run shows them all.
    let mut abnormal = Vec::new();
    let mut misrouted = Vec::new();
    let mut latest_end = Duration::ZERO;
    for connection in &connections {
        let label = format!(
            "{:?} client {} connection {}",
            connection.kind, connection.client, connection.index
        );
        if let Err(e) = connection.check_clean() {
            abnormal.push(e);
        }
        let Ok(who) = connection.who.clone() else {
            continue;
        };
        // The newest generation when the client began to connect: the one after the last
        // handover seen by then (a connection opened in the instant between a new pid file
        // and the test seeing it is judged against the older generation, in its favour).
        let newest = handovers
            .iter()
            .filter(|&&handover| handover <= connection.opened_at)
            .count();
        if who.generation < newest as u64 + 1 {
            let since = connection.opened_at - handovers[newest - 1];
            misrouted.push(format!(
                "{label} was served by {who}, though it connected {since:?} after pid {} \
                 generation {} had taken over",
                pids[newest],
                newest + 1
            ));
        }
        if let (Some(&handover), Some(end)) = (handovers.get(connection.index), &connection.end) {
            latest_end = latest_end.max(end.at.saturating_duration_since(handover));
        }
    }
    let drains: Vec<_> = pids
        .iter()
        .map(|&pid| (pid, drain_counts(&server, pid)))
        .collect();
    let ws = connections
        .iter()
        .filter(|c| c.kind == Kind::WebSocket)
        .count();
    let ws_1001 = connections
        .iter()
        .filter(|c| c.kind == Kind::WebSocket && c.check_clean().is_ok())
        .count();
    let sse = connections.len() - ws;
    let sse_clean = connections
        .iter()
        .filter(|c| c.kind == Kind::Events && c.check_clean().is_ok())
        .count();
    let ticks: usize = connections
        .iter()
        .map(|c| c.end.as_ref().map_or(0, |e| e.ticks))
        .sum();
    println!(
        "{UPGRADES} upgrades + stop, generations {pids:?}: {ws_1001} of {ws} WebSockets closed \
         with {AWAY}; {sse_clean} of {sse} event streams ended with `shutdown` + chunked end \
         ({ticks} ticks); {} of {} reconnects served by an older generation; {} connections \
         ended abnormally or could not open",
        misrouted.len(),
        connections.len().saturating_sub(CLIENTS),
        abnormal.len()
    );
    println!(
        "old generation exit after handover: max {:?} (each {exits:?}); stop exit \
         {stop_took:?}; latest stream end seen by a client {latest_end:?} after its handover",
        exits.iter().max().unwrap()
    );
    println!("drain counts (own, idle closed, cut) per generation: {drains:?}");

    let mut problems = Vec::new();
    if connections.len() != CLIENTS * rounds {
        problems.push(format!(
            "{} connections made, expected {} (one per client per generation)",
            connections.len(),
            CLIENTS * rounds
        ));
    }
    problems.extend(abnormal.iter().take(10).cloned());
    problems.extend(misrouted.iter().take(10).cloned());
    for (pid, counts) in &drains {
        match counts {
            Some((_, _, 0)) => {}
            other => problems.push(format!(
                "pid {pid}: drain counts {other:?} (cut or missing)"
            )),
        }
    }
    assert!(
        problems.is_empty(),
        "{} abnormal ends, {} reconnects served by an older generation:\n{}\n\nlog lines:\n{}",
        abnormal.len(),
        misrouted.len(),
        problems.join("\n"),
        log_lines(&server, "draining")
    );
}

/// The two-upgrade scenario's connections, checked: every WebSocket got 1001 from the
/// generation it was on. Returns how many WebSockets each pid closed.
fn check_two_upgrade_connections(connections: &[Connection]) -> BTreeMap<i32, usize> {
    assert_all_clean(connections);
    let mut per_pid = BTreeMap::new();
    for connection in connections {
        *per_pid
            .entry(connection.who.clone().unwrap().pid)
            .or_insert(0) += 1;
    }
    per_pid
}

#[test]
fn two_upgrades_200ms_apart_end_three_generations_cleanly() {
    const WEBSOCKETS: usize = 20;
    become_subreaper();
    let mut server = Server::start(&examples().hello, &["--hammer-time", "60s"]);
    let port = server.port();
    let first = server.first_pid();
    // Up to three connections each: on generation 1, 2 and 3 (closed by the final stop).
    let progress = Progress::new(3);
    let clients = start_clients(Kind::WebSocket, 0, WEBSOCKETS, port, 3, &progress);
    wait_opened(&progress, 0, WEBSOCKETS, TIMEOUT).unwrap();

    // A slow request keeps generation 1 draining while generation 3 starts, so that three
    // generations coexist however fast the upgrades are.
    let hold = RawRequest::send(port, &format!("/sleep/{HOLD_MS}"));
    assert!(
        hold.wait_accepted_by(first, TIMEOUT),
        "generation 1 did not take the slow request"
    );
    let hold = hold.spawn_response();

    let first_hup = Instant::now();
    send_signal(first, Signal::SIGHUP);
    let (second, handover_1) =
        wait_new_pid_file(&server, first, TIMEOUT).expect("generation 2 never wrote the pid file");
    // The required gap; generation 2 must be the one in the pid file by then.
    if let Some(rest) = Duration::from_millis(200).checked_sub(first_hup.elapsed()) {
        thread::sleep(rest);
    }
    let on_second_before = progress.opened(1);
    let gap = first_hup.elapsed();
    send_signal(second, Signal::SIGHUP);
    let (third, handover_2) =
        wait_new_pid_file(&server, second, TIMEOUT).expect("generation 3 never wrote the pid file");
    // Generation 1 (held by its request) still runs when generation 3 appears; generation 2
    // drains only once generation 3 is ready, which its log shows.
    assert!(
        pid_alive(first),
        "generation 1 was gone when generation 3 appeared"
    );
    let serving_3 = format!("pid {third} generation 3: serving on");
    assert!(
        server.wait_for_log(&serving_3, 1, TIMEOUT),
        "generation 3 never served"
    );

    // Generation 2 holds only streams: it ends at once. Generation 1 ends with its request.
    let second_took = assert_prompt_clean_exit(&mut server, second, handover_2, EXIT_LIMIT);
    let log = server.log();
    let (serving_3_at, second_drained_at) = (
        log.find(&serving_3).unwrap(),
        log.find(&format!("pid {second} generation 2: drain ended")),
    );
    assert!(
        second_drained_at.is_some_and(|at| at > serving_3_at),
        "generation 2 did not drain after generation 3 served:\n{}",
        log_lines(&server, "generation")
    );
    let response = hold
        .join()
        .expect("slow request thread panicked")
        .unwrap_or_else(|e| panic!("the slow request on generation 1 failed: {e}"));
    assert_eq!(
        (response.status, response.body),
        (200, format!("slept {HOLD_MS} ms in pid {first}\n"))
    );
    let answered = Instant::now();
    let first_took = assert_prompt_clean_exit(&mut server, first, answered, EXIT_LIMIT);

    wait_settled(&progress, 2, WEBSOCKETS, TIMEOUT).unwrap();
    let term = Instant::now();
    send_signal(third, Signal::SIGTERM);
    let third_took = assert_prompt_clean_exit(&mut server, third, term, EXIT_LIMIT);

    let connections = join_all(clients);
    let per_pid = check_two_upgrade_connections(&connections);
    // Generation 1 drained for 3 s, yet its WebSockets were closed at its handover.
    let mut late = Duration::ZERO;
    for connection in &connections {
        let who = connection.who.clone().unwrap();
        let since = match who.pid {
            pid if pid == first => handover_1,
            pid if pid == second => handover_2,
            _ => term,
        };
        late = late.max(
            connection
                .end
                .as_ref()
                .unwrap()
                .at
                .saturating_duration_since(since),
        );
    }
    assert!(
        late <= EXIT_LIMIT,
        "a WebSocket was closed {late:?} after its generation started draining"
    );
    for pid in [first, second, third] {
        assert!(
            per_pid.get(&pid).copied().unwrap_or(0) > 0,
            "no WebSocket on pid {pid}: {per_pid:?}"
        );
        assert_nothing_cut(&server, pid);
    }
    println!(
        "SIGHUPs {gap:?} apart; generations {first}, {second}, {third} coexisted; WebSockets \
         closed with {AWAY} per pid {per_pid:?} ({on_second_before} on generation 2 at the \
         second SIGHUP); latest close {late:?} after its drain began; exits: gen 2 {second_took:?} \
         after its handover, gen 1 {first_took:?} after its request, gen 3 {third_took:?} after \
         SIGTERM"
    );
}

/// `(generation, pid)` of every worker the master logged as ready, in order.
fn ready_workers(server: &Server, master: i32) -> Vec<(u64, i32)> {
    let prefix = format!("master pid {master}: worker generation ");
    server
        .log()
        .lines()
        .filter_map(|line| {
            let rest = &line[line.find(&prefix)? + prefix.len()..];
            let (generation, rest) = rest.split_once(" (pid ")?;
            let (pid, rest) = rest.split_once(')')?;
            rest.starts_with(" is ready after")
                .then(|| Some((generation.parse().ok()?, pid.parse().ok()?)))?
        })
        .collect()
}

#[test]
fn master_two_sighups_200ms_apart_drain_several_workers_cleanly() {
    const WEBSOCKETS: usize = 20;
    let mut server = Server::start(&examples().hello, &["--master", "--hammer-time", "60s"]);
    let port = server.port();
    let master = server.first_pid();
    let worker_1 = wait_for(TIMEOUT, || {
        ready_workers(&server, master).first().map(|w| w.1)
    })
    .expect("no first worker");
    server.record_pid(worker_1);
    let progress = Progress::new(3);
    let clients = start_clients(Kind::WebSocket, 0, WEBSOCKETS, port, 3, &progress);
    wait_opened(&progress, 0, WEBSOCKETS, TIMEOUT).unwrap();
    // Keeps worker 1 draining while the later upgrades happen.
    let hold = RawRequest::send(port, &format!("/sleep/{HOLD_MS}"));
    assert!(
        hold.wait_accepted_by(worker_1, TIMEOUT),
        "worker 1 did not take the slow request"
    );
    let hold = hold.spawn_response();

    let first_hup = Instant::now();
    send_signal(master, Signal::SIGHUP);
    thread::sleep(Duration::from_millis(200));
    let gap = first_hup.elapsed();
    send_signal(master, Signal::SIGHUP);
    // Both SIGHUPs handled (the post hook runs whether the upgrade started or was ignored).
    let post = format!("hook: post SIGHUP pid={master} ");
    assert!(
        server.wait_for_log(&post, 2, TIMEOUT),
        "the master did not handle both SIGHUPs"
    );
    let ignored = server.log_count("upgrade ignored: a new worker is starting");
    let worker_2 = wait_for(TIMEOUT, || {
        ready_workers(&server, master).get(1).map(|w| w.1)
    })
    .expect("no second worker");
    server.record_pid(worker_2);
    if ignored > 0 {
        // The master takes one upgrade at a time: a SIGHUP while a worker starts is dropped,
        // not queued. Upgrade again once worker 2 serves (worker 1 still drains).
        assert_eq!(ignored, 1);
        wait_settled(&progress, 1, WEBSOCKETS, TIMEOUT).unwrap();
        send_signal(master, Signal::SIGHUP);
    }
    let (worker_3, ready_3) = wait_for(TIMEOUT, || {
        ready_workers(&server, master)
            .get(2)
            .map(|w| (w.1, Instant::now()))
    })
    .expect("no third worker");
    server.record_pid(worker_3);
    let workers = ready_workers(&server, master);
    assert_eq!(
        workers.iter().map(|w| w.0).collect::<Vec<_>>(),
        [1, 2, 3],
        "workers {workers:?}"
    );
    // Worker 1, held by its request, still drains when worker 2 is told to drain.
    assert!(
        pid_alive(worker_1),
        "worker 1 was gone when worker 3 was ready"
    );
    let told_2 = format!("telling worker generation 2 (pid {worker_2}) to drain");
    assert!(
        server.wait_for_log(&told_2, 1, TIMEOUT),
        "worker 2 was never told to drain"
    );

    // Worker exit statuses are the master's to see: it logs them.
    let finished = |pid: i32, generation: u64| {
        format!("worker generation {generation} (pid {pid}) finished draining: exit status: 0")
    };
    assert!(
        wait_until(TIMEOUT, || !pid_alive(worker_2)),
        "worker 2 did not exit"
    );
    let second_took = ready_3.elapsed();
    assert!(
        server.wait_for_log(&finished(worker_2, 2), 1, TIMEOUT),
        "worker 2 did not exit 0:\n{}",
        log_lines(&server, &format!("pid {worker_2}"))
    );
    assert!(
        second_took <= EXIT_LIMIT,
        "worker 2 exited {second_took:?} after worker 3 was ready"
    );
    let response = hold
        .join()
        .expect("slow request thread panicked")
        .unwrap_or_else(|e| panic!("the slow request on worker 1 failed: {e}"));
    assert_eq!(
        (response.status, response.body),
        (200, format!("slept {HOLD_MS} ms in pid {worker_1}\n"))
    );
    let answered = Instant::now();
    assert!(
        wait_until(TIMEOUT, || !pid_alive(worker_1)),
        "worker 1 did not exit"
    );
    let first_took = answered.elapsed();
    assert!(
        server.wait_for_log(&finished(worker_1, 1), 1, TIMEOUT),
        "worker 1 did not exit 0:\n{}",
        log_lines(&server, &format!("pid {worker_1}"))
    );
    assert!(
        first_took <= EXIT_LIMIT,
        "worker 1 exited {first_took:?} after its last request"
    );
    let log = server.log();
    assert!(
        log.find(&told_2) < log.find(&finished(worker_1, 1)),
        "workers 1 and 2 did not drain at the same time:\n{}",
        log_lines(&server, "worker generation")
    );

    wait_settled(&progress, 2, WEBSOCKETS, TIMEOUT).unwrap();
    let term = Instant::now();
    send_signal(master, Signal::SIGTERM);
    let status = server.wait_exit(TIMEOUT);
    let stop_took = term.elapsed();
    assert!(status.success(), "the master exited with {status}");
    assert!(
        stop_took <= EXIT_LIMIT,
        "the master took {stop_took:?} to stop"
    );
    assert!(server.log_contains(&format!(
        "worker generation 3 (pid {worker_3}) stopped: exit status: 0"
    )));

    let connections = join_all(clients);
    let per_pid = check_two_upgrade_connections(&connections);
    for pid in [worker_1, worker_2, worker_3] {
        assert!(
            per_pid.get(&pid).copied().unwrap_or(0) > 0,
            "no WebSocket on worker {pid}: {per_pid:?}"
        );
        assert_nothing_cut(&server, pid);
    }
    assert_eq!(
        per_pid.keys().copied().collect::<BTreeSet<_>>(),
        [worker_1, worker_2, worker_3].into()
    );
    println!(
        "master: SIGHUPs {gap:?} apart, {ignored} ignored while a worker was starting{}; \
         workers {worker_1}, {worker_2}, {worker_3}; WebSockets closed with {AWAY} per worker \
         {per_pid:?}; worker 2 exited {second_took:?} after worker 3 was ready, worker 1 \
         {first_took:?} after its request; stop {stop_took:?}",
        if ignored > 0 {
            " (a third SIGHUP started worker 3)"
        } else {
            ""
        }
    );
}

#[test]
fn only_handover_and_stop_resolve_the_drain_signal() {
    const EVENT_STREAMS: usize = 5;
    const WEBSOCKETS: usize = 3;
    const MORE_TICKS: usize = 3;
    let mut server = Server::start(&examples().hello, &["--hammer-time", "60s"]);
    let port = server.port();
    let pid = server.first_pid();
    let progress = Progress::new(1);
    let clients = start_clients(Kind::Events, 0, EVENT_STREAMS, port, 1, &progress);
    wait_opened(&progress, 0, EVENT_STREAMS, TIMEOUT).unwrap();
    // WebSockets held here, to check they are still served after each signal.
    let mut sockets: Vec<Ws> = (0..WEBSOCKETS)
        .map(|_| Ws::open(port).unwrap_or_else(|e| panic!("WebSocket: {e}")))
        .collect();

    for (signal, name) in [(Signal::SIGUSR1, "SIGUSR1"), (Signal::SIGTSTP, "SIGTSTP")] {
        send_signal(pid, signal);
        let line = format!("hook: post {name} pid={pid} ");
        assert!(
            server.wait_for_log(&line, 1, TIMEOUT),
            "{name} was not handled"
        );
        // Every stream keeps ticking after the signal was handled.
        let ticks = progress.ticks.load(Ordering::SeqCst);
        assert!(
            wait_until(TIMEOUT, || {
                progress.ticks.load(Ordering::SeqCst) >= ticks + MORE_TICKS * EVENT_STREAMS
            }),
            "the event streams stopped ticking after {name}"
        );
        assert_eq!(
            progress.done.load(Ordering::SeqCst),
            0,
            "an event stream ended after {name}"
        );
        assert!(
            !server.log_contains("drain ended"),
            "{name} started a drain"
        );
        assert_ne!(process_state(pid), Some('T'), "{name} stopped the process");
        for (n, ws) in sockets.iter_mut().enumerate() {
            ws.echo(&format!("after {name} {n}"))
                .unwrap_or_else(|e| panic!("WebSocket after {name}: {e}"));
        }
        let (status, body) = server.get("/").expect("GET /");
        assert_eq!(status, 200);
        assert!(
            body.starts_with(&format!("hello from pid {pid},")),
            "{body}"
        );
    }
    let ticks_before_stop = progress.ticks.load(Ordering::SeqCst);

    let closers: Vec<_> = sockets
        .into_iter()
        .map(|ws| thread::spawn(move || (ws.who, ws.wait_close())))
        .collect();
    let term = Instant::now();
    send_signal(pid, Signal::SIGTERM);
    let status = server.wait_exit(TIMEOUT);
    let stop_took = term.elapsed();
    assert!(status.success(), "the server exited with {status}");
    assert!(
        stop_took <= EXIT_LIMIT,
        "SIGTERM took {stop_took:?} to end the server"
    );

    let connections = join_all(clients);
    assert_all_clean(&connections);
    for closer in closers {
        let (who, end) = closer.join().expect("WebSocket thread panicked");
        assert_eq!(
            end.outcome,
            Ok((Some(AWAY), format!("{who} is draining"))),
            "WebSocket on {who} at SIGTERM"
        );
    }
    let drain = assert_nothing_cut(&server, pid);
    println!(
        "SIGUSR1 and SIGTSTP: {EVENT_STREAMS} event streams kept ticking ({ticks_before_stop} \
         ticks), {WEBSOCKETS} WebSockets kept echoing; SIGTERM: all ended cleanly, exit 0 after \
         {stop_took:?}; drain {drain:?}"
    );
}
