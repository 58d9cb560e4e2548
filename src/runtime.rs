//! The runtime: start-up, the control loop (signals, upgrades, drains) and shutdown.
//!
//! The actix server runs on the main thread's actix system. A control thread owns every
//! lifecycle decision: it receives signals, handle commands and readiness reports on one
//! channel and drives the server through its `ServerHandle` (pause, resume, stop).

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_service::IntoServiceFactory;
use actix_web::body::MessageBody;
use actix_web::dev::ServerHandle;
use actix_web::HttpServer;
use log::{error, info, warn};

use crate::builder::{resolve, AppFactory, Endless, HammerTime};
use crate::child::{self, Executable, Readiness};
use crate::drain::{self, DrainApp, TRACKER};
use crate::error::{Error, Result};
use crate::hooks::{run_guarded, HookStage, Hooks, ServingEvent, UpgradeEvent};
use crate::listeners::{self, InheritEnv, Inherited, Listener, Socket};
use crate::master::Master;
use crate::notify::{self, Notifier};
use crate::pidfile;
use crate::signals::{self, Action, Signal};
use crate::sys::{self, LocalAddr};

/// How often a drain checks whether it is done.
const DRAIN_POLL: Duration = Duration::from_millis(2);
/// How long the server has to confirm that it paused accepting.
const PAUSE_CONFIRM: Duration = Duration::from_secs(2);
/// Where `/proc` cannot tell whether actix's acceptor has acted on the pause, or which
/// connections are still queued for a worker, a drain waits this long after the pause instead.
const ACCEPT_SETTLE: Duration = Duration::from_millis(50);
/// How long a new process that closed its readiness pipe has to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(1);
/// How long the acceptor may take to act on a pause before the drain goes on regardless.
const PAUSE_WAIT: Duration = Duration::from_secs(1);

static GENERATION: AtomicU64 = AtomicU64::new(1);
static RUNNING: AtomicBool = AtomicBool::new(false);

/// This process's generation: 1 for the first process, one more for each upgrade.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}

/// The builder's plain settings.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) pid_file: Option<PathBuf>,
    pub(crate) hammer_time: HammerTime,
    pub(crate) upgrade_timeout: Duration,
    pub(crate) idle_close_after: Duration,
    pub(crate) backlog: u32,
    pub(crate) executable: Option<PathBuf>,
    pub(crate) unix_socket_mode: Option<u32>,
    pub(crate) mode: ProcessMode,
}

/// How upgrades change processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProcessMode {
    /// The serving process re-executes itself on `SIGHUP`: the pid changes on every upgrade,
    /// like Go's endless and nginx. The default.
    #[default]
    Reexec,
    /// A small master process keeps its pid and the listening sockets; server generations run
    /// as its workers. For supervisors that track a pid (supervisord, runit, container PID 1).
    Master,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            pid_file: None,
            hammer_time: HammerTime::After(Duration::from_secs(60)),
            upgrade_timeout: Duration::from_secs(30),
            idle_close_after: Duration::from_millis(250),
            backlog: 4096,
            executable: None,
            unix_socket_mode: None,
            mode: ProcessMode::Reexec,
        }
    }
}

/// Everything the control thread hears about.
pub(crate) enum Event {
    /// A signal arrived.
    Signal(Signal),
    /// A [`crate::Handle`] asked for an action.
    Command(Action),
    /// The server's workers and acceptor run: this process serves.
    Serving,
    /// The readiness pipe of the child `pid` said something.
    Readiness { pid: u32, readiness: Readiness },
    /// The server future has completed.
    ServerStopped,
}

/// Marks the one runtime of this process; released on drop.
struct RunningGuard;

impl RunningGuard {
    fn acquire() -> Result<RunningGuard> {
        if RUNNING.swap(true, Ordering::SeqCst) {
            return Err(Error::AlreadyRunning);
        }
        Ok(RunningGuard)
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        RUNNING.store(false, Ordering::SeqCst);
    }
}

/// `pid 123 generation 2`, the prefix of every lifecycle log line.
#[derive(Clone, Copy)]
struct Who {
    pid: u32,
    generation: u64,
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} generation {}", self.pid, self.generation)
    }
}

/// Runs the runtime; every error it returns is logged first, with the pid and generation.
pub(crate) fn run<F, I, S, B>(endless: Endless<F, I, S, B>) -> Result<()>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, actix_http::Request>,
    S: AppFactory<B>,
    B: MessageBody + 'static,
{
    let _running = RunningGuard::acquire()?;
    let pid = std::process::id();
    let inherited =
        match listeners::parse(&InheritEnv::from_process(), pid).and_then(listeners::adopt) {
            Ok(inherited) => inherited,
            Err(e) => {
                error!("pid {pid}: cannot start: {e}");
                return Err(e);
            }
        };
    GENERATION.store(inherited.generation, Ordering::Relaxed);
    let who = Who {
        pid,
        generation: inherited.generation,
    };
    let result = serve(endless, inherited, who);
    if let Err(e) = &result {
        error!("{who}: {e}");
    }
    result
}

fn serve<F, I, S, B>(endless: Endless<F, I, S, B>, inherited: Inherited, who: Who) -> Result<()>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, actix_http::Request>,
    S: AppFactory<B>,
    B: MessageBody + 'static,
{
    let pid = who.pid;
    let Endless {
        factory,
        binds,
        settings,
        hooks,
        configure,
        on_connect,
        events: (tx, rx),
        ..
    } = endless;
    let exe = Executable::resolve(settings.executable.as_deref())
        .map_err(Error::io("resolving the executable for upgrades"))?;
    let (addrs, tls): (Vec<_>, Vec<_>) = resolve(binds, settings.unix_socket_mode)?
        .into_iter()
        .unzip();
    if !inherited.listeners.is_empty() {
        info!(
            "{who}: inherited {} listening socket(s) from the previous generation or systemd",
            inherited.listeners.len()
        );
    }
    let mut listeners = listeners::assemble(&addrs, inherited.listeners, settings.backlog)?;
    for (listener, tls) in listeners.iter_mut().zip(tls) {
        listener.tls = tls;
    }
    if listeners.is_empty() {
        return Err(Error::Bind {
            addr: "(none)".to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "no address configured and no socket inherited",
            ),
        });
    }
    let mut settings = settings;
    if let Some(master) = inherited.master {
        info!("{who}: worker of master pid {master}");
        // The master owns the pid file and talks to systemd.
        settings.pid_file = None;
    }
    // Fail before serving rather than after: a generation that cannot write its pid file
    // would have to close connections it had already accepted.
    if let Some(path) = &settings.pid_file {
        pidfile::check_writable(path, pid)?;
    }
    let signal_handle = signals::listen(tx.clone(), Event::Signal)
        .map_err(Error::io("installing signal handlers"))?;

    let notifier = Notifier::from_env().unwrap_or_else(|e| {
        warn!("{who}: not notifying systemd: {e}");
        None
    });
    if settings.mode == ProcessMode::Master && inherited.master.is_none() {
        let master = Master::new(settings, hooks, exe, listeners, notifier, tx);
        let result = master.run(rx);
        signal_handle.close();
        return result;
    }
    drain::register_factory(factory);
    TRACKER.set_draining(false);
    let control = Control {
        who,
        notifier,
        master: inherited.master,
        settings,
        hooks,
        exe,
        tx: tx.clone(),
        ready: inherited.ready,
        state: State::Starting,
        final_signals: Vec::new(),
        failure: None,
        listeners: Vec::new(),
        listening: Vec::new(),
        acceptor_fds: Vec::new(),
        handle: None,
    };
    let system = actix_rt::System::new();
    let serving_tx = tx.clone();
    let served = system.block_on(async move {
        let make_app: fn() -> DrainApp<S, B> = drain::make_app::<F, I, S, B>;
        let mut server = HttpServer::new(make_app);
        if let Some(configure) = configure {
            server = configure(server);
        }
        server = server
            .on_connect(move |io, ext| drain::on_connect(on_connect.as_ref(), io, ext))
            .disable_signals();
        let mut acceptor_fds = Vec::with_capacity(listeners.len());
        for listener in &listeners {
            let fd;
            (server, fd) = listen(server, listener).map_err(|source| Error::Bind {
                addr: listener.socket.to_string(),
                source,
            })?;
            acceptor_fds.push(fd);
        }
        let server = server.run();
        let control = Control {
            listening: listeners
                .iter()
                .filter_map(|l| LocalAddr::of(l.socket.fd()))
                .collect(),
            acceptor_fds,
            listeners,
            handle: Some(server.handle()),
            ..control
        };
        let thread = std::thread::Builder::new()
            .name("actix-endless-control".into())
            .spawn(move || control.run(rx))
            .map_err(Error::io("starting the control thread"))?;
        let result = NotifyFirstPoll::new(server, serving_tx).await;
        Ok::<_, Error>((thread, result))
    });
    let (thread, result) = served?;
    let _ = tx.send(Event::ServerStopped);
    let outcome = thread.join().unwrap_or_else(|_| Outcome {
        final_signals: Vec::new(),
        failure: Some(Error::Io {
            context: "control thread",
            source: std::io::Error::other("the control thread panicked"),
        }),
        hooks: None,
        pid_file: None,
    });
    signal_handle.close();
    if let Some(hooks) = &outcome.hooks {
        for signal in &outcome.final_signals {
            hooks.run_signal(HookStage::Post.event(*signal, who.pid, who.generation));
        }
    }
    if let Some(path) = &outcome.pid_file {
        match pidfile::remove_if_ours(path, who.pid) {
            Ok(true) => info!("{who}: removed pid file {}", path.display()),
            Ok(false) => {}
            Err(e) => warn!("{who}: {e}"),
        }
    }
    info!("{who}: exiting");
    if let Some(failure) = outcome.failure {
        return Err(failure);
    }
    result.map_err(Error::io("running the server"))
}

/// Hands one of our listening sockets to the server, keeping our own copy for the next
/// hand-over. Returns the descriptor the server got.
fn listen<S, B>(
    server: drain::Server<S, B>,
    listener: &Listener,
) -> std::io::Result<(drain::Server<S, B>, RawFd)>
where
    S: AppFactory<B>,
    B: MessageBody + 'static,
{
    let socket = listener.socket.try_clone()?;
    let fd = socket.fd().as_raw_fd();
    let server = match socket {
        #[cfg(feature = "rustls")]
        Socket::Tcp(l) if listener.tls.is_some() => {
            l.set_nonblocking(true)?;
            let config = listener
                .tls
                .as_deref()
                .cloned()
                .expect("checked by the guard");
            server.listen_rustls_0_23(l, config)
        }
        Socket::Tcp(l) => {
            l.set_nonblocking(true)?;
            server.listen(l)
        }
        Socket::Unix(l) => {
            l.set_nonblocking(true)?;
            server.listen_uds(l)
        }
    }?;
    Ok((server, fd))
}

/// Polls the server and reports [`Event::Serving`] after its first poll, which is when actix
/// starts the workers (synchronously) and the acceptor.
struct NotifyFirstPoll<Fut> {
    server: Fut,
    tx: Option<Sender<Event>>,
}

impl<Fut> NotifyFirstPoll<Fut> {
    fn new(server: Fut, tx: Sender<Event>) -> Self {
        NotifyFirstPoll {
            server,
            tx: Some(tx),
        }
    }
}

impl<Fut: Future + Unpin> Future for NotifyFirstPoll<Fut> {
    type Output = Fut::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let polled = Pin::new(&mut self.server).poll(cx);
        if polled.is_pending() {
            if let Some(tx) = self.tx.take() {
                let _ = tx.send(Event::Serving);
            }
        }
        polled
    }
}

/// Where the control loop is.
enum State {
    /// The server is built but has not reported its first poll.
    Starting,
    /// Serving; ready for an upgrade.
    Serving,
    /// A new generation was started and has not reported ready yet.
    Upgrading {
        child: Child,
        generation: u64,
        started: Instant,
        signal: Option<Signal>,
    },
    /// Not accepting any more; waiting for this process's connections to finish.
    Draining {
        since: Instant,
        deadline: Option<Instant>,
        /// The new generation we handed over to, watched so we can take over again if it dies.
        successor: Option<(Child, u64)>,
        /// Whether actix's acceptor has acted on the pause (no connection can arrive any more).
        acceptor_paused: bool,
    },
    /// The server has been told to stop; waiting for it to finish.
    Stopping,
}

/// What the control thread hands back when the server has stopped.
struct Outcome {
    final_signals: Vec<Signal>,
    failure: Option<Error>,
    hooks: Option<Hooks>,
    pid_file: Option<PathBuf>,
}

struct Control {
    who: Who,
    /// The stable-pid master this process is a worker of: upgrades are its job.
    master: Option<u32>,
    /// systemd's notification socket, when `NOTIFY_SOCKET` is set.
    notifier: Option<Notifier>,
    settings: Settings,
    hooks: Hooks,
    exe: Executable,
    tx: Sender<Event>,
    ready: Option<OwnedFd>,
    state: State,
    /// Stop signals whose post hooks run once the server has stopped.
    final_signals: Vec<Signal>,
    failure: Option<Error>,
    /// Our copies of the listening sockets: what an upgrade hands over.
    listeners: Vec<Listener>,
    /// Where they listen, to recognise connections accepted from them.
    listening: Vec<LocalAddr>,
    /// The descriptors of actix's own copies of the listening sockets.
    acceptor_fds: Vec<RawFd>,
    handle: Option<ServerHandle>,
}

impl Control {
    fn run(mut self, rx: Receiver<Event>) -> Outcome {
        loop {
            let event = if matches!(self.state, State::Draining { .. }) {
                match rx.recv_timeout(DRAIN_POLL) {
                    Ok(event) => Some(event),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(event) => Some(event),
                    Err(_) => break,
                }
            };
            match event {
                Some(Event::ServerStopped) => break,
                Some(Event::Signal(signal)) => self.on_signal(signal),
                Some(Event::Command(action)) => {
                    info!("{}: {action:?} requested through a handle", self.who);
                    self.act(action, None);
                }
                Some(Event::Serving) => self.on_serving(),
                Some(Event::Readiness { pid, readiness }) => self.on_readiness(pid, readiness),
                None => {}
            }
            if matches!(self.state, State::Draining { .. }) {
                self.check_drain();
            }
        }
        if let State::Upgrading { child, .. } = &mut self.state {
            abandon(self.who, child, "the server stopped", Duration::ZERO);
        }
        Outcome {
            final_signals: self.final_signals,
            failure: self.failure,
            hooks: Some(self.hooks),
            pid_file: self.settings.pid_file,
        }
    }

    /// Tells systemd (when it listens) what is happening.
    fn notify(&self, lines: &[&str]) {
        if let Some(notifier) = &self.notifier {
            if let Err(e) = notifier.send(lines) {
                warn!("{}: cannot notify systemd: {e}", self.who);
            }
        }
    }

    /// Sends a command to the server. `ServerHandle` sends when the method is called; the
    /// future it returns only awaits the confirmation, which the control loop does not need
    /// (it observes the effect through the connection counts and `Event::ServerStopped`).
    fn command<Fut>(&self, send: impl FnOnce(&ServerHandle) -> Fut) {
        if let Some(handle) = &self.handle {
            drop(send(handle));
        }
    }

    fn on_signal(&mut self, signal: Signal) {
        info!("{}: {signal} received", self.who);
        self.hooks
            .run_signal(HookStage::Pre.event(signal, self.who.pid, self.who.generation));
        self.act(signal.action(), Some(signal));
    }

    /// Runs the post hooks of `signal` now, if the action came from a signal.
    fn post(&self, signal: Option<Signal>) {
        if let Some(signal) = signal {
            self.hooks
                .run_signal(HookStage::Post.event(signal, self.who.pid, self.who.generation));
        }
    }

    fn act(&mut self, action: Action, signal: Option<Signal>) {
        match action {
            Action::Upgrade => self.upgrade(signal),
            Action::GracefulStop => self.graceful_stop(signal),
            Action::ForceStop => {
                self.final_signals.extend(signal);
                self.force_stop("hammer time requested");
            }
            Action::HooksOnly => self.post(signal),
        }
    }

    fn on_serving(&mut self) {
        let who = self.who;
        if let Some(path) = &self.settings.pid_file {
            if let Err(e) = pidfile::write(path, who.pid) {
                // Not ready, so the previous generation (if any) still serves: finish what
                // was accepted already and go.
                error!("{who}: {e}; stopping gracefully without reporting ready");
                // The readiness pipe stays open (unwritten) until this process exits, so the
                // parent does not kill it while it drains.
                self.failure = Some(e);
                self.start_drain(None);
                return;
            }
        }
        if let Some(ready) = self.ready.take() {
            match child::report_ready(ready) {
                Ok(()) => info!("{who}: reported ready to the parent process"),
                Err(e) => warn!(
                    "{who}: could not report ready ({e}); the parent process is gone, serving on"
                ),
            }
        }
        let addrs: Vec<SocketAddr> = self
            .listeners
            .iter()
            .filter_map(|l| match &l.socket {
                Socket::Tcp(t) => t.local_addr().ok(),
                Socket::Unix(_) => None,
            })
            .collect();
        let shown: Vec<String> = self
            .listeners
            .iter()
            .map(|l| l.socket.to_string())
            .collect();
        info!("{who}: serving on {}", shown.join(", "));
        self.notify(&[
            &format!("MAINPID={}", who.pid),
            "READY=1",
            &format!(
                "STATUS=generation {} serving on {}",
                who.generation,
                shown.join(", ")
            ),
        ]);
        if matches!(self.state, State::Starting) {
            self.state = State::Serving;
        }
        let event = ServingEvent {
            pid: who.pid,
            generation: who.generation,
            addrs,
        };
        for hook in &self.hooks.serving {
            run_guarded("serving", || hook(&event));
        }
    }

    fn upgrade(&mut self, signal: Option<Signal>) {
        let who = self.who;
        let busy = match &self.state {
            State::Serving => None,
            State::Starting => Some("not serving yet"),
            State::Upgrading { .. } => Some("an upgrade is already in progress"),
            State::Draining { .. } => Some("this process is draining"),
            State::Stopping => Some("this process is stopping"),
        };
        if let Some(why) = busy {
            info!("{who}: upgrade request ignored: {why}");
            self.post(signal);
            return;
        }
        if let Some(master) = self.master {
            info!("{who}: upgrade request forwarded to master pid {master}");
            let master = nix::unistd::Pid::from_raw(master as i32);
            if let Err(e) = nix::sys::signal::kill(master, nix::sys::signal::Signal::SIGHUP) {
                error!("{who}: cannot forward the upgrade request to the master: {e}");
            }
            self.post(signal);
            return;
        }
        let generation = who.generation + 1;
        self.notify(&[
            "RELOADING=1",
            &notify::monotonic_usec(),
            &format!("STATUS=upgrading to generation {generation}"),
        ]);
        info!(
            "{who}: upgrading: starting generation {generation} from {}",
            self.exe.path.display()
        );
        match child::spawn(&self.exe, &self.listeners, generation, None) {
            Err(e) => self.upgrade_failed(e, signal),
            Ok(spawned) => {
                let pid = spawned.child.id();
                let timeout = self.settings.upgrade_timeout;
                info!("{who}: generation {generation} started as pid {pid}; waiting up to {timeout:?} for it to report ready");
                let watcher = child::watch(spawned.ready, pid, timeout, self.tx.clone());
                let mut child = spawned.child;
                if let Err(e) = watcher {
                    abandon(
                        who,
                        &mut child,
                        "no thread to watch its readiness",
                        Duration::ZERO,
                    );
                    self.upgrade_failed(Error::io("starting the readiness watcher")(e), signal);
                    return;
                }
                self.state = State::Upgrading {
                    child,
                    generation,
                    started: Instant::now(),
                    signal,
                };
            }
        }
    }

    fn upgrade_failed(&mut self, error: Error, signal: Option<Signal>) {
        error!(
            "{}: upgrade failed: {error}; this process keeps serving",
            self.who
        );
        self.notify(&[
            "READY=1",
            &format!(
                "STATUS=upgrade failed: {error}; generation {} serving",
                self.who.generation
            ),
        ]);
        for hook in &self.hooks.upgrade_failed {
            run_guarded("upgrade-failed", || hook(&error));
        }
        self.post(signal);
    }

    fn on_readiness(&mut self, pid: u32, readiness: Readiness) {
        let who = self.who;
        let State::Upgrading { child, .. } = &self.state else {
            return;
        };
        if child.id() != pid {
            return;
        }
        let State::Upgrading {
            mut child,
            generation,
            started,
            signal,
        } = std::mem::replace(&mut self.state, State::Serving)
        else {
            unreachable!("matched above");
        };
        let error = match readiness {
            Readiness::Ready => {
                info!(
                    "{who}: generation {generation} (pid {pid}) is ready after {:?}; stopping accepting and draining",
                    started.elapsed()
                );
                let event = UpgradeEvent {
                    pid: who.pid,
                    new_pid: pid,
                    new_generation: generation,
                };
                for hook in &self.hooks.upgrade_ready {
                    run_guarded("upgrade-ready", || hook(&event));
                }
                self.post(signal);
                self.start_drain(Some((child, generation)));
                return;
            }
            Readiness::Closed => {
                let status = abandon(who, &mut child, "it closed the readiness pipe", EXIT_GRACE);
                Error::ChildExited { pid, status }
            }
            Readiness::TimedOut => {
                abandon(
                    who,
                    &mut child,
                    "it did not report ready in time",
                    Duration::ZERO,
                );
                Error::ReadyTimeout {
                    pid,
                    timeout: self.settings.upgrade_timeout,
                }
            }
            Readiness::Failed(source) => {
                abandon(who, &mut child, "its readiness pipe failed", Duration::ZERO);
                Error::Io {
                    context: "reading the readiness pipe",
                    source,
                }
            }
        };
        self.upgrade_failed(error, signal);
    }

    fn graceful_stop(&mut self, signal: Option<Signal>) {
        let who = self.who;
        self.final_signals.extend(signal);
        match &mut self.state {
            State::Starting | State::Serving => {
                info!("{who}: graceful stop");
                self.start_drain(None);
            }
            State::Upgrading { .. } => {
                info!("{who}: graceful stop; abandoning the upgrade in progress");
                self.abandon_upgrade("a stop was requested during the upgrade");
                self.start_drain(None);
            }
            State::Draining {
                successor: successor @ Some(_),
                ..
            } => {
                info!("{who}: graceful stop requested while draining after an upgrade; the drain goes on, and another stop request forces the close");
                *successor = None;
            }
            State::Draining {
                successor: None, ..
            } => self.force_stop("a second stop request arrived during the drain"),
            State::Stopping => info!("{who}: already stopping"),
        }
    }

    fn start_drain(&mut self, successor: Option<(Child, u64)>) {
        let who = self.who;
        if successor.is_none() {
            self.notify(&["STOPPING=1", "STATUS=stopping: draining connections"]);
        }
        TRACKER.set_draining(true);
        TRACKER.touch();

        if let Some(handle) = &self.handle {
            if !block_on_for(handle.pause(), PAUSE_CONFIRM) {
                warn!("{who}: the server did not confirm the pause within {PAUSE_CONFIRM:?}");
            }
        }
        let deadline = match self.settings.hammer_time {
            HammerTime::After(d) => Some(Instant::now() + d),
            HammerTime::Never => None,
        };
        info!(
            "{who}: stopped accepting; draining {} connection(s) with {} request(s) in flight (hammer time {})",
            TRACKER.connections(),
            TRACKER.in_flight(),
            match self.settings.hammer_time {
                HammerTime::After(d) => format!("{d:?}"),
                HammerTime::Never => "never".to_owned(),
            }
        );
        self.state = State::Draining {
            since: Instant::now(),
            deadline,
            successor,
            acceptor_paused: false,
        };
    }

    fn check_drain(&mut self) {
        let who = self.who;
        let State::Draining {
            since,
            deadline,
            successor,
            acceptor_paused,
        } = &mut self.state
        else {
            return;
        };
        if let Some((child, generation)) = successor {
            if let Ok(Some(status)) = child.try_wait() {
                let (pid, generation) = (child.id(), *generation);
                self.take_back(pid, generation, status);
                return;
            }
        }
        let elapsed = since.elapsed();
        if !*acceptor_paused {
            *acceptor_paused = acceptor_has_paused(who, &self.acceptor_fds, elapsed);
        }
        let acceptor_paused = *acceptor_paused;
        let connections = TRACKER.connections();
        let in_flight = TRACKER.in_flight();
        // A connection accepted just before the pause is counted by `TRACKER` only once a
        // worker takes it from its queue; the kernel knows it at once. Until then it is not
        // idle, and closing "everything" would reset it unanswered.
        let none_queued = |counted: usize| match sys::count_accepted(&self.listening) {
            Ok(open) => open <= counted,
            Err(_) => elapsed >= ACCEPT_SETTLE,
        };
        if acceptor_paused && connections == 0 && none_queued(0) {
            info!("{who}: drained in {:?}", since.elapsed());
        } else if acceptor_paused
            && in_flight == 0
            && TRACKER.idle_for() >= self.settings.idle_close_after
            && none_queued(connections)
        {
            info!(
                "{who}: drained in {:?}; closing {connections} idle keep-alive connection(s)",
                since.elapsed()
            );
        } else if deadline.is_some_and(|d| Instant::now() >= d) {
            warn!("{who}: hammer time after {elapsed:?}: forcing {connections} connection(s) with {in_flight} request(s) in flight closed");
        } else {
            return;
        }
        self.stop_server();
    }

    /// The successor died while this process was draining: serve again.
    fn take_back(&mut self, pid: u32, generation: u64, status: std::process::ExitStatus) {
        let who = self.who;
        error!(
            "{who}: generation {generation} (pid {pid}) died while this process was draining ({status}); taking the listening sockets back and serving again"
        );
        if let Some(path) = &self.settings.pid_file {
            if let Err(e) = pidfile::write(path, who.pid) {
                error!("{who}: {e}");
            }
        }
        self.command(ServerHandle::resume);
        TRACKER.set_draining(false);
        self.state = State::Serving;
        self.notify(&[
            &format!("MAINPID={}", who.pid),
            "READY=1",
            &format!(
                "STATUS=generation {} serving again: generation {generation} died",
                who.generation
            ),
        ]);
    }

    /// Kills the new process of the upgrade in progress (if any) and ends that upgrade,
    /// running the post hooks of the signal that asked for it.
    fn abandon_upgrade(&mut self, why: &str) {
        if let State::Upgrading {
            mut child, signal, ..
        } = std::mem::replace(&mut self.state, State::Serving)
        {
            abandon(self.who, &mut child, why, Duration::ZERO);
            self.post(signal);
        }
    }

    fn force_stop(&mut self, why: &str) {
        let who = self.who;
        self.abandon_upgrade("the process is being stopped");
        if matches!(self.state, State::Stopping) {
            return;
        }
        warn!(
            "{who}: {why}: closing {} connection(s) now",
            TRACKER.connections()
        );
        self.stop_server();
    }

    fn stop_server(&mut self) {
        self.command(|server| server.stop(false));
        self.state = State::Stopping;
    }
}

/// Whether actix's acceptor thread has stopped watching its listening sockets (`fds`), which it
/// does when it acts on a pause: only then is a count of this process's connections final.
fn acceptor_has_paused(who: Who, fds: &[RawFd], elapsed: Duration) -> bool {
    match sys::epoll_watches_any(fds) {
        Ok(false) => true,
        Ok(true) if elapsed < PAUSE_WAIT => false,
        Ok(true) => {
            warn!("{who}: the acceptor still watches its sockets {elapsed:?} after the pause; draining regardless");
            true
        }
        Err(_) => elapsed >= ACCEPT_SETTLE,
    }
}

/// Drives `fut` to completion on this (non-async) thread, for at most `timeout`.
/// Returns whether it completed.
fn block_on_for<Fut: Future>(fut: Fut, timeout: Duration) -> bool {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    let deadline = Instant::now() + timeout;
    loop {
        if fut.as_mut().poll(&mut cx).is_ready() {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        std::thread::park_timeout(left);
    }
}

/// Kills a child that will not become the next generation, and reaps it.
/// Returns how it ended.
///
/// A child that closed its readiness pipe is usually exiting: it gets `grace` to do so, so
/// that the log reports its own exit status rather than our `SIGKILL`.
fn abandon(who: Who, child: &mut Child, why: &str, grace: Duration) -> String {
    let pid = child.id();
    let deadline = Instant::now() + grace;
    let exited = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => break None,
        }
    };
    let status = match exited {
        Some(status) => status,
        None => {
            let _ = child.kill();
            match child.wait() {
                Ok(status) => status,
                Err(e) => return format!("could not be reaped: {e}"),
            }
        }
    };
    warn!("{who}: new process {pid} abandoned ({why}): {status}");
    status.to_string()
}
