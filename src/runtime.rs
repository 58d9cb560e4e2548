//! The runtime's entry: prepare (inherited sockets, addresses, pid file, signals), pick the
//! process mode, then serve until done and finish (hooks, pid file, exit status).
//!
//! In a serving process the actix server runs on an actix system on the calling thread, and a
//! control thread ([`Control`]) owns every lifecycle decision. A stable-pid master runs
//! [`Master`] instead and never starts a server.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};

use actix_web::body::MessageBody;
use log::{error, info, warn};

use crate::child::{Executable, ParentPipe};
use crate::config::{resolve, Bind, ProcessMode, ServerSettings, Settings};
use crate::drain::{self, Factory, OnConnect, TRACKER};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::hooks::Hooks;
use crate::listeners::{self, InheritEnv, Listener, MASTER_PID};
use crate::master::Master;
use crate::notify::Notifier;
use crate::pidfile;
use crate::reexec::{Control, Outcome};
use crate::report::{Reporter, Role, SocketFiles, Who};
use crate::server::{self, AppFactory, Configure, Gate, Levers, NotifyFirstPoll};
use crate::signals;
use crate::sys::{self, LocalAddr};

static GENERATION: AtomicU64 = AtomicU64::new(1);
static RUNNING: AtomicBool = AtomicBool::new(false);

/// This process's generation: 1 for the first process, one more for each upgrade.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Relaxed)
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
}

/// Runs the runtime; every error it returns is logged first, with the pid and generation.
pub(crate) fn run<S, B>(app: App<S, B>) -> Result<()>
where
    S: AppFactory<B>,
    B: MessageBody + 'static,
{
    let _running = RunningGuard::acquire()?;
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
    let signal_handle = match signals::listen(tx.clone(), Event::Signal, child_ended) {
        Ok(handle) => handle,
        Err(e) => {
            let e = Error::io("installing signal handlers")(e);
            error!("{who}: {e}");
            return Err(e);
        }
    };
    let result = if master_mode {
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
        Master::new(
            reporter,
            prepared.settings,
            prepared.exe,
            prepared.listeners,
            tx,
        )
        .run(rx)
    } else {
        let server = Server {
            factory: app.factory,
            configure: app.configure,
            on_connect: app.on_connect,
            ready_gate: app.ready_gate,
            settings: app.server,
        };
        serve(prepared, server, app.hooks, tx, rx)
    };
    signal_handle.close();
    if let Err(e) = &result {
        error!("{who}: {e}");
    }
    result
}

/// Reads what was inherited, resolves the addresses and checks what can be checked before
/// serving. Sets `who`'s generation as soon as it is known.
fn prepare(
    who: &mut Who,
    binds: Vec<Bind>,
    mut settings: Settings,
    server: &ServerSettings,
) -> Result<Prepared> {
    let inherited =
        listeners::parse(&InheritEnv::from_process(), who.pid).and_then(listeners::adopt)?;
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
    })
}

/// The application and how to serve it, for a serving process.
struct Server<S: AppFactory<B>, B: MessageBody + 'static> {
    factory: Factory<S>,
    configure: Vec<Configure<S, B>>,
    on_connect: Option<OnConnect>,
    ready_gate: Option<Gate>,
    settings: ServerSettings,
}

/// Serves as one generation until it stops or has handed over and drained.
fn serve<S, B>(
    prepared: Prepared,
    server: Server<S, B>,
    hooks: Hooks,
    tx: Sender<Event>,
    rx: Receiver<Event>,
) -> Result<()>
where
    S: AppFactory<B>,
    B: MessageBody + 'static,
{
    let Prepared {
        who,
        settings,
        exe,
        listeners,
        mut parent,
        master,
        notifier,
    } = prepared;
    let Server {
        factory,
        configure,
        on_connect,
        ready_gate,
        settings: server_settings,
    } = server;
    drain::register_factory(factory);
    TRACKER.set_draining(false);
    let reporter = Reporter::new(who, hooks, notifier, settings.pid_file.clone());
    let serving_tx = tx.clone();
    let stopped_tx = tx.clone();
    let system = actix_rt::System::new();
    let served = system.block_on(async move {
        if let Some(gate) = ready_gate {
            if let Err(reason) = pass_gate(who, gate, settings.upgrade_timeout).await {
                if let Some(pipe) = parent.take() {
                    let _ = pipe.refuse(&reason);
                }
                return Err(Error::NotReady {
                    pid: who.pid,
                    reason,
                });
            }
        }
        let built = server::build(&server_settings, configure, on_connect, &listeners)?;
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
            levers: Levers(built.server.handle()),
            failure: None,
        };
        let thread = std::thread::Builder::new()
            .name("actix-endless-control".into())
            .spawn(move || control.run(rx))
            .map_err(Error::io("starting the control thread"))?;
        let result = NotifyFirstPoll::new(built.server, move || {
            let _ = serving_tx.send(Event::Serving);
        })
        .await;
        Ok::<_, Error>((thread, result))
    });
    let (thread, result) = served?;
    let _ = stopped_tx.send(Event::ServerStopped);
    let outcome: Option<Outcome> = thread.join().ok();
    let Some(Outcome { reporter, failure }) = outcome else {
        return Err(Error::Io {
            context: "control thread",
            source: std::io::Error::other("the control thread panicked"),
        });
    };
    reporter.finish();
    if let Some(failure) = failure {
        return Err(failure);
    }
    result.map_err(Error::io("running the server"))
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
