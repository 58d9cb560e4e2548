//! What the demo examples share: the command line, logging and the hooks that log each signal.
//!
//! Every example answers `--help` and `--version`. Every option can also be given through an
//! environment variable named `ENDLESS_` + the option in upper case with `_` for `-`
//! (`ENDLESS_BIND`, `ENDLESS_HAMMER_TIME`, ...), for containers; the command line wins over
//! the environment. The environment is inherited by every generation, like the command line.

use std::path::PathBuf;
use std::time::Duration;

use actix_endless::{HammerTime, HookStage, Signal};
use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, CommandFactory, FromArgMatches, Parser};

/// What `--help` says after the options.
const AFTER_HELP: &str = "\
DURATION is a number with a unit: ms, s, m or h, which may be combined (250ms, 30s, 2m, 1h, \
1m30s). A bare number is milliseconds (1500 = 1.5 s), as in earlier versions.

Every option falls back to an environment variable: ENDLESS_ + the option's name in upper \
case with '_' for '-' (ENDLESS_BIND=127.0.0.1:8080,unix:/run/app.sock, \
ENDLESS_HAMMER_TIME=30s, ENDLESS_MASTER=true). A flag on the command line wins; an empty \
variable counts as unset.

Signals: HUP upgrades (re-exec with the sockets), TERM/INT/QUIT drain and stop, USR2 closes every \
connection now, USR1/TSTP run the hooks only.";

/// The demo's command line: the options every example has.
#[derive(Debug, Clone, Args)]
pub struct Options {
    /// Where to serve: HOST:PORT for TCP, h2c:HOST:PORT for TCP with HTTP/2 without TLS too
    /// (prior knowledge; feature `http2`), unix:PATH for a Unix socket. Repeat the flag (or
    /// separate with commas) for several addresses.
    #[arg(
        long = "bind",
        value_name = "ADDR",
        default_value = "127.0.0.1:8080",
        env = "ENDLESS_BIND",
        value_delimiter = ',',
        action = ArgAction::Append
    )]
    pub binds: Vec<String>,

    /// Write the serving process's pid here (rewritten by every generation).
    #[arg(long, value_name = "PATH", env = "ENDLESS_PID_FILE")]
    pub pid_file: Option<PathBuf>,

    /// Write the addresses actually served here, one per line, once serving (for port 0).
    #[arg(long, value_name = "PATH", env = "ENDLESS_ADDR_FILE")]
    pub addr_file: Option<PathBuf>,

    /// Longest a drain may last before the remaining connections are closed: a DURATION, or
    /// `never` to wait for the last connection.
    #[arg(
        long,
        value_name = "DURATION|never",
        default_value = "60s",
        env = "ENDLESS_HAMMER_TIME",
        value_parser = parse_hammer_time
    )]
    pub hammer_time: HammerTime,

    /// How long a new generation has to report ready before the upgrade is abandoned (it is
    /// killed and this process serves on).
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "30s",
        env = "ENDLESS_UPGRADE_TIMEOUT",
        value_parser = parse_duration
    )]
    pub upgrade_timeout: Duration,

    /// actix-web worker threads (one per CPU when not given; 0 is refused by the runtime).
    #[arg(long, value_name = "N", env = "ENDLESS_WORKERS")]
    pub workers: Option<usize>,

    /// Permission bits, in octal, of the Unix sockets it creates (660, 0600).
    #[arg(
        long,
        value_name = "OCTAL",
        env = "ENDLESS_SOCKET_MODE",
        value_parser = parse_octal_mode
    )]
    pub socket_mode: Option<u32>,

    /// Run under a master process that keeps its pid across upgrades (for supervisors that
    /// track a pid, and for a container's PID 1).
    #[arg(
        long,
        env = "ENDLESS_MASTER",
        value_parser = BoolishValueParser::new()
    )]
    pub master: bool,

    /// Serve on listening descriptors passed without LISTEN_PID, as `systemfd --no-pid` passes
    /// them (the development loop: `systemfd --no-pid -s http::8080 -- cargo watch -x run`).
    #[arg(
        long,
        env = "ENDLESS_ADOPT_UNCLAIMED_FDS",
        value_parser = BoolishValueParser::new()
    )]
    pub adopt_unclaimed_fds: bool,

    /// Answer deploy scripts on this Unix socket (mode 0600): `hello upgrade|status|stop
    /// --control-socket PATH` talk to it.
    #[arg(long, value_name = "PATH", env = "ENDLESS_CONTROL_SOCKET")]
    pub control_socket: Option<PathBuf>,

    /// After an upgrade, keep the old generation (paused, with the sockets) this long, and roll
    /// back to it if the new one dies meanwhile.
    #[arg(long, value_name = "DURATION", env = "ENDLESS_COMMIT_AFTER", value_parser = parse_duration)]
    pub commit_after: Option<Duration>,

    /// Serve `POST /admin/upgrade` (hello only; no authentication: for tests and demos on
    /// 127.0.0.1).
    #[arg(long, env = "ENDLESS_ADMIN_ROUTES", value_parser = BoolishValueParser::new())]
    pub admin_routes: bool,

    /// Crash (abort) this long after serving began (for tests of the commit window).
    #[arg(long, value_name = "DURATION", env = "ENDLESS_CRASH_AFTER", value_parser = parse_duration)]
    pub crash_after: Option<Duration>,

    /// Wait this long in the readiness gate before serving (for tests and demos).
    #[arg(
        long,
        value_name = "DURATION",
        env = "ENDLESS_READY_DELAY",
        value_parser = parse_duration
    )]
    pub ready_delay: Option<Duration>,

    /// Fail the readiness gate (for tests).
    #[arg(
        long,
        env = "ENDLESS_READY_FAIL",
        value_parser = BoolishValueParser::new()
    )]
    pub ready_fail: bool,
}

/// An example's whole command line: the common [`Options`] and the example's own flags `E`.
#[derive(Debug, Parser)]
#[command(version, args_override_self = true, after_help = AFTER_HELP)]
struct Cli<E: Args> {
    #[command(flatten)]
    options: Options,
    #[command(flatten)]
    own: E,
}

/// No flags besides the common ones.
#[derive(Debug, Args)]
pub struct NoFlags {}

impl Options {
    /// Parses `std::env::args` (and the `ENDLESS_*` fallbacks) for an example without flags of
    /// its own, described by `about` in `--help`. Exits 0 after `--help` or `--version` and 2
    /// with clap's message on a bad command line.
    #[allow(dead_code)] // the examples with flags of their own call `parse_with`
    pub fn parse(about: &'static str) -> Options {
        Options::parse_with::<NoFlags>(about).0
    }

    /// [`Options::parse`] for an example with flags of its own, `E`.
    pub fn parse_with<E: Args>(about: &'static str) -> (Options, E) {
        // The name in `--version` and `--help`: the example's, not the crate's.
        let mut command = Cli::<E>::command()
            .name(env!("CARGO_BIN_NAME"))
            .about(about)
            // An empty variable counts as unset (as `ENDLESS_PID_FILE=${PID_FILE}` in a compose
            // file gives when PID_FILE is not set).
            .mut_args(|arg| {
                let empty = arg
                    .get_env()
                    .and_then(std::env::var_os)
                    .is_some_and(|value| value.is_empty());
                if empty {
                    arg.env(None)
                } else {
                    arg
                }
            });
        let mut matches = command.get_matches_mut();
        match Cli::<E>::from_arg_matches_mut(&mut matches) {
            Ok(cli) => (cli.options, cli.own),
            Err(e) => e.format(&mut command).exit(),
        }
    }
}

/// Parses a DURATION: `250ms`, `30s`, `2m`, `1h` or a combination (`1m30s`), or a bare
/// number of milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse()
            .map(Duration::from_millis)
            .map_err(|_| "too large".to_owned());
    }
    let invalid = || {
        "not a duration: use a number with a unit, ms, s, m or h (250ms, 30s, 1m30s), or a bare \
number of milliseconds"
            .to_owned()
    };
    let mut rest = text;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return Err(invalid());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let units = rest[digits..]
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        if digits == 0 || units == 0 {
            return Err(invalid());
        }
        let millis_per_unit: u64 = match &rest[digits..digits + units] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(invalid()),
        };
        total = rest[..digits]
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(millis_per_unit))
            .and_then(|ms| total.checked_add(Duration::from_millis(ms)))
            .ok_or_else(|| "too large".to_owned())?;
        rest = &rest[digits + units..];
    }
    Ok(total)
}

/// Parses `--hammer-time`: a DURATION or `never`.
fn parse_hammer_time(text: &str) -> Result<HammerTime, String> {
    if text.trim() == "never" {
        return Ok(HammerTime::Never);
    }
    parse_duration(text)
        .map(HammerTime::After)
        .map_err(|e| format!("{e}; or `never`"))
}

/// Parses `--socket-mode`: octal permission bits, `660`, `0660` or `0o660`.
fn parse_octal_mode(text: &str) -> Result<u32, String> {
    let digits = text.trim().trim_start_matches("0o");
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o7777 => Ok(mode),
        _ => Err("not an octal mode (such as 660 or 0600)".to_owned()),
    }
}

/// Exits with status 1 when `run` failed. The runtime has logged why (with its pid and
/// generation); the error is printed here only when logging is off. (`main` returning the
/// error would print its `Debug` form instead.)
pub fn exit_on_error<E: std::fmt::Display>(result: Result<(), E>) {
    if let Err(e) = result {
        if !log::log_enabled!(log::Level::Error) {
            eprintln!("error: {e}");
        }
        std::process::exit(1);
    }
}

/// Logs at info level unless `RUST_LOG` says otherwise.
pub fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
}

/// Serves on every `--bind` address: `unix:PATH` is a Unix domain socket, anything else TCP.
/// An address that cannot be used (one that does not resolve) is an error naming it.
pub fn bind_all<F, I, S, B>(
    mut endless: actix_endless::Endless<F, I, S, B>,
    options: &Options,
) -> std::io::Result<actix_endless::Endless<F, I, S, B>>
where
    F: Fn() -> I + Send + 'static,
    I: actix_service::IntoServiceFactory<S, actix_http::Request>,
    S: actix_endless::AppFactory<B>,
    B: actix_web::body::MessageBody + 'static,
{
    for bind in &options.binds {
        let bound = match (bind.strip_prefix("unix:"), bind.strip_prefix("h2c:")) {
            (Some(path), _) => endless.bind_uds(path),
            (_, Some(addr)) => bind_h2c(endless, addr),
            _ => endless.bind(bind.as_str()),
        };
        endless = bound.map_err(|e| {
            let e = std::io::Error::new(e.kind(), format!("cannot listen on {bind}: {e}"));
            log::error!("pid {}: {e}", std::process::id());
            e
        })?;
    }
    Ok(endless)
}

/// `--bind h2c:ADDR`: HTTP/1.1 and HTTP/2 with prior knowledge on ADDR (an error without the
/// `http2` feature).
fn bind_h2c<F, I, S, B>(
    endless: actix_endless::Endless<F, I, S, B>,
    addr: &str,
) -> std::io::Result<actix_endless::Endless<F, I, S, B>>
where
    F: Fn() -> I + Send + 'static,
    I: actix_service::IntoServiceFactory<S, actix_http::Request>,
    S: actix_endless::AppFactory<B>,
    B: actix_web::body::MessageBody + 'static,
{
    #[cfg(feature = "http2")]
    return endless.bind_auto_h2c(addr);
    #[cfg(not(feature = "http2"))]
    {
        drop(endless);
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("h2c:{addr} needs the http2 feature (cargo run --features http2 ...)"),
        ))
    }
}

/// Applies the common options (all but the addresses) and logs `hook: pre|post SIGNAME` for every handled signal.
pub fn configure<F, I, S, B>(
    mut endless: actix_endless::Endless<F, I, S, B>,
    options: &Options,
) -> actix_endless::Endless<F, I, S, B>
where
    F: Fn() -> I + Send + 'static,
    I: actix_service::IntoServiceFactory<S, actix_http::Request>,
    S: actix_endless::AppFactory<B>,
    B: actix_web::body::MessageBody + 'static,
{
    if let Some(path) = &options.pid_file {
        endless = endless.pid_file(path);
    }
    if let Some(workers) = options.workers {
        endless = endless.workers(workers);
    }
    if let Some(after) = options.crash_after {
        endless = endless.on_serving(move |_| {
            std::thread::spawn(move || {
                std::thread::sleep(after);
                log::error!("--crash-after {after:?}: aborting");
                std::process::abort();
            });
        });
    }
    if let Some(window) = options.commit_after {
        endless = endless.commit_after(window);
    }
    if let Some(path) = &options.control_socket {
        endless = endless.control_socket(path);
    }
    if options.adopt_unclaimed_fds {
        endless = endless.adopt_unclaimed_fds();
    }
    if options.ready_delay.is_some() || options.ready_fail {
        let (delay, fail) = (options.ready_delay, options.ready_fail);
        endless = endless.ready_when(move || async move {
            if let Some(delay) = delay {
                log::info!("readiness gate: waiting {delay:?}");
                actix_rt::time::sleep(delay).await;
            }
            if fail {
                return Err("--ready-fail was given");
            }
            Ok(())
        });
    }
    if let Some(path) = options.addr_file.clone() {
        endless = endless.on_serving(move |event| {
            let text: String = event.addrs.iter().map(|a| format!("{a}\n")).collect();
            let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
            if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path)) {
                log::error!("cannot write {}: {e}", path.display());
            }
        });
    }
    for signal in Signal::ALL {
        for stage in [HookStage::Pre, HookStage::Post] {
            endless = endless.hook(signal, stage, |event| {
                let stage = match event.stage {
                    HookStage::Pre => "pre",
                    HookStage::Post => "post",
                };
                log::info!(
                    "hook: {stage} {} pid={} generation={}",
                    event.signal,
                    event.pid,
                    event.generation
                );
            });
        }
    }
    if options.master {
        endless = endless.process_mode(actix_endless::ProcessMode::Master);
    }
    if let Some(mode) = options.socket_mode {
        endless = endless.unix_socket_mode(mode);
    }
    endless
        .hammer_time(options.hammer_time)
        .upgrade_timeout(options.upgrade_timeout)
}

/// The control-socket client's command line: `hello upgrade|status|stop --control-socket PATH`.
#[derive(Debug, Parser)]
#[command(version, about = "Talks to a running server's control socket.")]
struct CtlCli {
    #[command(subcommand)]
    command: CtlCommand,
    /// The server's control socket.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "ENDLESS_CONTROL_SOCKET"
    )]
    control_socket: Option<PathBuf>,
    /// How long to wait for the outcome.
    #[arg(long, global = true, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(Debug, clap::Subcommand)]
enum CtlCommand {
    /// Upgrade, print the progress, and exit 0 once the new generation serves (1 if the
    /// upgrade failed, with the reason on stderr; 2 on a usage or connection error).
    Upgrade,
    /// Print the server's status as JSON.
    Status,
    /// Stop the server gracefully.
    Stop,
}

/// When the command line starts with `upgrade`, `status` or `stop`: runs that client command
/// and exits with its status. Otherwise returns, and the example serves.
#[allow(dead_code)] // only the hello examples offer the client
pub fn control_client() {
    let first = std::env::args().nth(1);
    if !matches!(first.as_deref(), Some("upgrade" | "status" | "stop")) {
        return;
    }
    let cli = CtlCli::parse();
    let Some(path) = cli.control_socket else {
        eprintln!("error: --control-socket PATH (or ENDLESS_CONTROL_SOCKET) is required");
        std::process::exit(2);
    };
    let code = match cli.command {
        CtlCommand::Upgrade => {
            match actix_endless::ctl::upgrade(&path, cli.timeout, |line| println!("{line}")) {
                Ok(done) => {
                    println!(
                        "upgraded: generation {} serves as pid {}",
                        done.generation, done.pid
                    );
                    0
                }
                Err(e) => ctl_error(e),
            }
        }
        CtlCommand::Status => match actix_endless::ctl::status(&path, cli.timeout) {
            Ok(status) => {
                println!("{status}");
                0
            }
            Err(e) => ctl_error(e),
        },
        CtlCommand::Stop => match actix_endless::ctl::stop(&path, cli.timeout) {
            Ok(()) => 0,
            Err(e) => ctl_error(e),
        },
    };
    std::process::exit(code);
}

/// 1 when the server said no (the reason on stderr), 2 when it could not be asked.
fn ctl_error(error: actix_endless::Error) -> i32 {
    eprintln!("error: {error}");
    match error {
        actix_endless::Error::UpgradeFailed { .. } => 1,
        actix_endless::Error::Io { context, .. } if context.contains("waiting") => 1,
        _ => 2,
    }
}
