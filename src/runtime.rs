//! The runtime's entry: prepare (inherited sockets, addresses, pid file, signals), pick the
//! process mode, then serve until done and finish (hooks, pid file, exit status).
//!
//! In a serving process the actix server runs on the caller's async runtime ([`run`]) or on an
//! actix system of its own on the calling thread ([`run_blocking`]), and a control thread
//! ([`Control`]) owns every lifecycle decision. A stable-pid master runs [`Master`] instead,
//! on a thread that lives as long as it does, and never starts a server nor runs the
//! application's setup.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};

use actix_web::body::MessageBody;
use log::{error, info, warn};

use crate::child::{Executable, ParentPipe};
use crate::config::{resolve, Bind, ProcessMode, ServerSettings, Settings};
use crate::control;
use crate::drain::{self, AppFactory, Factory, OnConnect, TRACKER};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::hooks::Hooks;
use crate::listeners::{self, InheritEnv, Listener, Unclaimed, MASTER_PID, READY_FD};
use crate::master::Master;
use crate::notify::Notifier;
use crate::pidfile;
use crate::reexec::{Control, Outcome};
use crate::report::{Reporter, Role, SocketFiles, Who};
use crate::server::{self, Configure, Gate, NotifyFirstPoll};
use crate::signals;
use crate::sys::{self, LocalAddr};

static GENERATION: AtomicU64 = AtomicU64::new(1);
static RUNNING: AtomicBool = AtomicBool::new(false);
/// Whether the inherited readiness pipe has been taken, by the runtime or by [`setup_failed`].
static READY_PIPE_CLAIMED: AtomicBool = AtomicBool::new(false);

/// Claims the inherited readiness pipe; `false` if it was claimed before.
fn claim_ready_pipe() -> bool {
    !READY_PIPE_CLAIMED.swap(true, Ordering::SeqCst)
}

/// This process's generation: 1 for the first process, one more for each upgrade.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}

/// Turns a failed application setup into the error `main` returns, and, in a new generation
/// started by an upgrade, tells the old generation why this one will not serve: its log then
/// says `upgrade failed: new process N is not ready: setup failed: <error>` and it serves on.
///
/// Use it on the setup that `main` runs before [`crate::Endless::run`] (which, on `SIGHUP`,
/// runs again in the new process before it can report ready):
///
/// ```no_run
/// # async fn connect(url: &str) -> std::io::Result<String> { Ok(url.to_owned()) }
/// #[actix_web::main]
/// async fn main() -> std::io::Result<()> {
///     let db = connect("postgres://localhost/app")
///         .await
///         .map_err(actix_endless::setup_failed)?;
///     # let _ = db;
///     // ... actix_endless::Endless::new(...).bind(...)?.run().await
///     Ok(())
/// }
/// ```
///
/// Without it, a setup that fails makes the new process exit, and the old generation reports
/// the exit status instead of the reason; so does a setup that panics. At first start (no
/// upgrade in progress) it only converts the error. Only the first call in a process speaks
/// to the old generation, and the runtime refuses to start in a process that called it,
/// since the old generation has already been told that this one will not serve.
pub fn setup_failed<E>(error: E) -> std::io::Error
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let error = std::io::Error::other(error);
    let reason = format!("setup failed: {error}");
    if let Err(e) = refuse_upgrade(&reason) {
        warn!(
            "pid {}: cannot tell the previous generation that {reason}: {e}",
            std::process::id()
        );
    }
    error
}

/// Writes the refusal and `reason` on the inherited readiness pipe, if this process was
/// started by an upgrade and the pipe has not been claimed; the pipe is then closed.
fn refuse_upgrade(reason: &str) -> Result<()> {
    let plan = listeners::parse(
        &InheritEnv::from_process(),
        std::process::id(),
        Unclaimed::Ignore,
    )?;
    let Some(fd) = plan.ready_fd else {
        return Ok(());
    };
    if !claim_ready_pipe() {
        return Ok(());
    }
    let fd_error = |reason: String| Error::InheritedFd {
        var: READY_FD,
        fd,
        reason,
    };
    let borrowed = sys::borrow_inherited(fd)
        .map_err(|e| fd_error(format!("is not an open descriptor ({e})")))?;
    if !sys::is_fifo(borrowed) {
        return Err(fd_error("is not a pipe".to_owned()));
    }
    let owned = sys::own_inherited(borrowed)
        .map_err(|e| fd_error(format!("cannot be made close-on-exec ({e})")))?;
    ParentPipe::new(owned)
        .refuse(reason)
        .map_err(Error::io("writing on the readiness pipe"))
}

/// Everything the builder collected, with the application's types.
pub(crate) struct App<S: AppFactory<B>, B: MessageBody + 'static> {
    pub(crate) factory: Factory<S>,
    pub(crate) binds: Vec<Bind>,
    pub(crate) settings: Settings,
    pub(crate) server: ServerSettings,
    pub(crate) hooks: Hooks,
    pub(crate) configure: Vec<Configure<S, B>>,
    pub(crate) on_connect: Option<OnConnect>,
    pub(crate) ready_gate: Option<Gate>,
    pub(crate) setup: Option<Gate>,
    pub(crate) events: (Sender<Event>, Receiver<Event>),
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

/// What start-up found: ready to serve in either mode.
struct Prepared {
    who: Who,
    settings: Settings,
    exe: Executable,
    listeners: Vec<Listener>,
    /// The pipe to the process that started this one.
    parent: Option<ParentPipe>,
    /// The master this process is a worker of.
    master: Option<u32>,
    notifier: Option<Notifier>,
    /// The control socket, if one is configured (never in a master's worker).
    control: Option<Listener>,
}

/// What a started process holds until it is done: the process's one runtime and the signal
/// thread.
struct Running {
    _guard: RunningGuard,
    signals: signal_hook::iterator::Handle,
    who: Who,
}

impl Running {
    /// Logs the error the runtime ends with, and stops the signal thread.
    fn end(self, result: Result<()>) -> Result<()> {
        self.signals.close();
        if let Err(e) = &result {
            error!("{}: {e}", self.who);
        }
        result
    }
}

/// What start-up decided this process is.
enum Started<S: AppFactory<B>, B: MessageBody + 'static> {
    /// A stable-pid master: never runs the application.
    Master(Box<Master>, Receiver<Event>),
    /// A serving generation (or a master's worker).
    Serve(Box<Serve<S, B>>),
}

/// A serving process's part of start-up.
struct Serve<S: AppFactory<B>, B: MessageBody + 'static> {
    prepared: Prepared,
    server: Server<S, B>,
    hooks: Hooks,
    tx: Sender<Event>,
    rx: Receiver<Event>,
}

/// The synchronous part of start-up, common to [`run`] and [`run_blocking`]: claims the
/// process's one runtime, adopts what was inherited, resolves and checks the addresses and
/// the pid file, installs the signal handlers and picks the process's role. Every error it
/// returns is logged first, with the pid and generation.
fn start<S, B>(app: App<S, B>) -> Result<(Running, Started<S, B>)>
where
    S: AppFactory<B>,
    B: MessageBody + 'static,
{
    let guard = RunningGuard::acquire()?;
    let pid = std::process::id();
    let mut who = Who {
        pid,
        role: Role::Server { generation: 1 },
    };
    let prepared = match prepare(&mut who, app.binds, app.settings, &app.server) {
        Ok(prepared) => prepared,
        Err(e) => {
            error!("{who}: {e}");
            return Err(e);
        }
    };
    let (tx, rx) = app.events;
    let master_mode = prepared.settings.mode == ProcessMode::Master && prepared.master.is_none();
    let child_ended: Option<fn() -> Event> = master_mode.then_some(|| Event::ChildEnded);
    let signals = match signals::listen(tx.clone(), Event::Signal, child_ended) {
        Ok(handle) => handle,
        Err(e) => {
            let e = Error::io("installing signal handlers")(e);
            error!("{who}: {e}");
            return Err(e);
        }
    };
    let started = if master_mode {
        let who = Who {
            pid,
            role: Role::Master,
        };
        let reporter = Reporter::new(
            who,
            app.hooks,
            prepared.notifier,
            prepared.settings.pid_file.clone(),
        );
        let master = Master::new(
            reporter,
            prepared.settings,
            prepared.exe,
            prepared.listeners,
            prepared.control,
            tx,
        );
        Started::Master(Box::new(master), rx)
    } else {
        Started::Serve(Box::new(Serve {
            prepared,
            server: Server {
                factory: app.factory,
                setup: app.setup,
                configure: app.configure,
                on_connect: app.on_connect,
                ready_gate: app.ready_gate,
                settings: app.server,
            },
            hooks: app.hooks,
            tx,
            rx,
        }))
    };
    let running = Running {
        _guard: guard,
        signals,
        who,
    };
    Ok((running, started))
}

/// Runs the runtime on the caller's async runtime (an actix `System`, or Tokio where actix-web
/// supports it) until this process is done.
pub(crate) async fn run<S, B>(app: App<S, B>) -> Result<()>
where
    S: AppFactory<B>,
    B: MessageBody + 'static,
{
    let (running, started) = start(app)?;
    let result = match started {
        // On a thread that lives as long as the master: its workers get `SIGTERM` when the
        // thread that started them ends (`PR_SET_PDEATHSIG` follows the thread).
        Started::Master(master, rx) => actix_rt::task::spawn_blocking(move || master.run(rx))
            .await
            .unwrap_or_else(|e| Err(thread_failed("the master thread", e.to_string()))),
        Started::Serve(serve) => serve_async(*serve).await,
    };
    running.end(result)
}

/// Runs the runtime on the calling thread until this process is done: a serving process on
/// an actix `System` of its own, a master without any async runtime.
pub(crate) fn run_blocking<S, B>(app: App<S, B>) -> Result<()>
where
    S: AppFactory<B>,
    B: MessageBody + 'static,
{
    let (running, started) = start(app)?;
    let result = match started {
        Started::Master(master, rx) => master.run(rx),
        Started::Serve(serve) => actix_rt::System::new().block_on(serve_async(*serve)),
    };
    running.end(result)
}

/// The error for a runtime thread that did not end normally.
fn thread_failed(context: &'static str, why: String) -> Error {
    Error::Io {
        context,
        source: std::io::Error::other(why),
    }
}

/// Reads what was inherited, resolves the addresses and checks what can be checked before
/// serving. Sets `who`'s generation as soon as it is known.
fn prepare(
    who: &mut Who,
    binds: Vec<Bind>,
    mut settings: Settings,
    server: &ServerSettings,
) -> Result<Prepared> {
    let plan = listeners::parse(&InheritEnv::from_process(), who.pid, settings.unclaimed)?;
    let ignored = plan.ignored.clone();
    if let Some(why) = &ignored {
        warn!("{who}: {why}");
    }
    if plan.ready_fd.is_some() && !claim_ready_pipe() {
        return Err(Error::Config {
            setting: "setup_failed",
            reason: "was called in this process: it told the previous generation that this one \
will not serve"
                .to_owned(),
        });
    }
    let inherited = listeners::adopt(plan)?;
    GENERATION.store(inherited.generation, Ordering::Relaxed);
    who.role = Role::Server {
        generation: inherited.generation,
    };
    server.validate()?;
    if let Some(master) = inherited.master {
        let parent = sys::parent_pid();
        if master != parent {
            return Err(Error::Env {
                var: MASTER_PID,
                value: master.to_string(),
                reason: format!("is not this process's parent (pid {parent}): the master is gone, or the variable was not set by it"),
            });
        }
    }
    let exe = Executable::resolve(settings.executable.as_deref())
        .map_err(Error::io("resolving the executable for upgrades"))?;
    let (addrs, serves): (Vec<_>, Vec<_>) = resolve(binds, settings.unix_socket_mode)
        .into_iter()
        .unzip();
    if !inherited.listeners.is_empty() {
        info!(
            "{who}: inherited {} listening socket(s) from the previous generation or systemd",
            inherited.listeners.len()
        );
    }
    let mut inherited_listeners = inherited.listeners;
    let control = match &settings.control_socket {
        Some(path) if inherited.master.is_none() => {
            Some(control::take_or_bind(&mut inherited_listeners, path)?)
        }
        _ => None,
    };
    let mut listeners = listeners::assemble(&addrs, inherited_listeners, settings.backlog)
        .map_err(|e| match (e, &ignored) {
            // The usual cause: the descriptors hold the address.
            (Error::Bind { addr, source }, Some(why)) => Error::Bind {
                addr,
                source: std::io::Error::new(source.kind(), format!("{source}; {why}")),
            },
            (e, _) => e,
        })?;
    for (listener, serve) in listeners.iter_mut().zip(serves) {
        listener.serve = serve;
    }
    if listeners.is_empty() {
        return Err(Error::NothingToListenOn);
    }
    if let Some(master) = inherited.master {
        info!("{who}: worker of master pid {master}");
        // The master owns the pid file and talks to systemd.
        settings.pid_file = None;
    }
    // Fail before serving rather than after: a generation that cannot write its pid file
    // would have to close connections it had already accepted.
    if let Some(path) = &settings.pid_file {
        pidfile::check_writable(path)?;
        pidfile::check_not_in_use(path, who.pid, sys::parent_pid())?;
    }
    let notifier = Notifier::from_env().unwrap_or_else(|e| {
        warn!("{who}: not notifying systemd: {e}");
        None
    });
    Ok(Prepared {
        who: *who,
        settings,
        exe,
        listeners,
        parent: inherited.ready.map(ParentPipe::new),
        master: inherited.master,
        notifier,
        control,
    })
}

/// The application and how to serve it, for a serving process.
struct Server<S: AppFactory<B>, B: MessageBody + 'static> {
    factory: Factory<S>,
    setup: Option<Gate>,
    configure: Vec<Configure<S, B>>,
    on_connect: Option<OnConnect>,
    ready_gate: Option<Gate>,
    settings: ServerSettings,
}

/// Serves as one generation until it stops or has handed over and drained. Runs on the
/// caller's async runtime; blocking waits happen on threads of their own.
async fn serve_async<S, B>(serve: Serve<S, B>) -> Result<()>
where
    S: AppFactory<B>,
    B: MessageBody + 'static,
{
    let Serve {
        prepared,
        server,
        hooks,
        tx,
        rx,
    } = serve;
    let Prepared {
        who,
        settings,
        exe,
        listeners,
        mut parent,
        master,
        notifier,
        control,
    } = prepared;
    let Server {
        factory,
        setup,
        configure,
        on_connect,
        ready_gate,
        settings: server_settings,
    } = server;
    if let Err(reason) = get_ready(who, setup, ready_gate, settings.upgrade_timeout).await {
        if let Some(pipe) = parent.take() {
            let _ = pipe.refuse(&reason);
        }
        return Err(Error::NotReady {
            pid: who.pid,
            reason,
        });
    }
    drain::register_factory(factory);
    TRACKER.set_draining(false);
    let built = server::build(&server_settings, configure, on_connect, &listeners)?;
    let levers = built.levers();
    let reporter = Reporter::new(who, hooks, notifier, settings.pid_file.clone());
    let serving_tx = tx.clone();
    let stopped_tx = tx.clone();
    let control = Control {
        reporter,
        settings,
        exe,
        tx,
        master,
        ready_pipe: parent,
        resign_pipe: None,
        listening: listeners
            .iter()
            .filter_map(|l| LocalAddr::of(l.socket.fd()))
            .collect(),
        socket_files: SocketFiles::record(&listeners),
        listeners,
        acceptor_fds: built.acceptor_fds,
        acceptor_epolls: Vec::new(),
        levers,
        control: control.map(|socket| (socket, None)),
        tally: Default::default(),
        failure: None,
    };
    let thread = std::thread::Builder::new()
        .name("actix-endless-control".into())
        .spawn(move || control.run(rx))
        .map_err(Error::io("starting the control thread"))?;
    let result = NotifyFirstPoll::new(built.servers, move || {
        let _ = serving_tx.send(Event::Serving);
    })
    .await;
    let _ = stopped_tx.send(Event::ServerStopped);
    // The control thread may still be finishing the drain's bookkeeping (hooks, the pid
    // file): wait for it without blocking the caller's runtime.
    let joined = actix_rt::task::spawn_blocking(move || thread.join()).await;
    let Ok(Ok(Outcome { reporter, failure })) = joined else {
        return Err(thread_failed(
            "control thread",
            "the control thread panicked".to_owned(),
        ));
    };
    reporter.finish();
    if let Some(failure) = failure {
        return Err(failure);
    }
    result.map_err(Error::io("running the server"))
}

/// Runs the application's setup ([`crate::Endless::with_setup`]) and then the readiness gate
/// ([`crate::Endless::ready_when`]); the reason why not, if this generation will not serve.
async fn get_ready(
    who: Who,
    setup: Option<Gate>,
    gate: Option<Gate>,
    timeout: std::time::Duration,
) -> Result<(), String> {
    if let Some(setup) = setup {
        info!("{who}: running the application's setup");
        let started = std::time::Instant::now();
        setup()
            .await
            .map_err(|reason| format!("setup failed: {reason}"))?;
        info!("{who}: setup done after {:?}", started.elapsed());
    }
    match gate {
        Some(gate) => pass_gate(who, gate, timeout).await,
        None => Ok(()),
    }
}

/// Runs the readiness gate, bounded by the upgrade timeout.
async fn pass_gate(who: Who, gate: Gate, timeout: std::time::Duration) -> Result<(), String> {
    info!("{who}: running the readiness gate (up to {timeout:?})");
    let started = std::time::Instant::now();
    match actix_rt::time::timeout(timeout, gate()).await {
        Ok(Ok(())) => {
            info!("{who}: readiness gate passed after {:?}", started.elapsed());
            Ok(())
        }
        Ok(Err(reason)) => Err(format!("readiness gate failed: {reason}")),
        Err(_) => Err(format!("readiness gate did not pass within {timeout:?}")),
    }
}
