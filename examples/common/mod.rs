//! What the demo examples share: the command line, logging and the hooks that log each signal.

use std::path::PathBuf;
use std::time::Duration;

use actix_endless::{HammerTime, HookStage, Signal};

/// The demo's command line.
pub struct Options {
    pub binds: Vec<String>,
    pub pid_file: Option<PathBuf>,
    pub addr_file: Option<PathBuf>,
    pub hammer_time: HammerTime,
    pub upgrade_timeout: Duration,
    pub workers: Option<usize>,
    /// `--socket-mode OCTAL`: permission bits of the Unix sockets it creates.
    pub socket_mode: Option<u32>,
    /// `--master`: run under a stable-pid master.
    pub master: bool,
    /// Flags the common parser does not know, as `(flag, value)`.
    pub extra: Vec<(String, String)>,
}

const USAGE: &str =
    "options: --bind ADDR|unix:PATH (repeatable, default 127.0.0.1:8080) --pid-file PATH \
--addr-file PATH --hammer-time MS|never --upgrade-timeout MS --workers N --socket-mode OCTAL --master";

impl Options {
    /// Parses `std::env::args`, exiting with a usage message on a bad flag.
    pub fn parse(extra_flags: &[&str]) -> Options {
        match Options::try_parse(std::env::args().skip(1), extra_flags) {
            Ok(options) => options,
            Err(e) => {
                eprintln!("{e}\n{USAGE}");
                std::process::exit(2);
            }
        }
    }

    fn try_parse(
        mut args: impl Iterator<Item = String>,
        extra_flags: &[&str],
    ) -> Result<Options, String> {
        let mut options = Options {
            binds: Vec::new(),
            pid_file: None,
            addr_file: None,
            hammer_time: HammerTime::After(Duration::from_secs(60)),
            upgrade_timeout: Duration::from_secs(30),
            workers: None,
            socket_mode: None,
            master: false,
            extra: Vec::new(),
        };
        let millis = |v: &str| {
            v.parse()
                .map(Duration::from_millis)
                .map_err(|_| format!("not a number of milliseconds: {v}"))
        };
        while let Some(flag) = args.next() {
            if flag == "--master" {
                options.master = true;
                continue;
            }
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--bind" => options.binds.push(value),
                "--pid-file" => options.pid_file = Some(value.into()),
                "--addr-file" => options.addr_file = Some(value.into()),
                "--hammer-time" if value == "never" => options.hammer_time = HammerTime::Never,
                "--hammer-time" => options.hammer_time = HammerTime::After(millis(&value)?),
                "--upgrade-timeout" => options.upgrade_timeout = millis(&value)?,
                "--socket-mode" => {
                    options.socket_mode = Some(
                        u32::from_str_radix(&value, 8)
                            .map_err(|_| format!("not an octal mode: {value}"))?,
                    )
                }
                "--workers" => {
                    options.workers =
                        Some(value.parse().map_err(|_| format!("not a count: {value}"))?)
                }
                other if extra_flags.contains(&other) => options.extra.push((flag, value)),
                other => return Err(format!("unknown flag {other}")),
            }
        }
        if options.binds.is_empty() {
            options.binds.push("127.0.0.1:8080".to_owned());
        }
        Ok(options)
    }

    /// The value of an extra flag.
    #[allow(dead_code)] // only the examples with extra flags call it
    pub fn extra(&self, flag: &str) -> Option<&str> {
        self.extra
            .iter()
            .rev()
            .find(|(f, _)| f == flag)
            .map(|(_, v)| v.as_str())
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
pub fn bind_all<F, I, S, B>(
    mut endless: actix_endless::Endless<F, I, S, B>,
    options: &Options,
) -> actix_endless::Endless<F, I, S, B>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: actix_service::IntoServiceFactory<S, actix_http::Request>,
    S: actix_endless::AppFactory<B>,
    B: actix_web::body::MessageBody + 'static,
{
    for bind in &options.binds {
        endless = match bind.strip_prefix("unix:") {
            Some(path) => endless.bind_uds(path),
            None => endless.bind(bind.as_str()),
        };
    }
    endless
}

/// Applies the common options (all but the addresses) and logs `hook: pre|post SIGNAME` for every handled signal.
pub fn configure<F, I, S, B>(
    mut endless: actix_endless::Endless<F, I, S, B>,
    options: &Options,
) -> actix_endless::Endless<F, I, S, B>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: actix_service::IntoServiceFactory<S, actix_http::Request>,
    S: actix_endless::AppFactory<B>,
    B: actix_web::body::MessageBody + 'static,
{
    if let Some(path) = &options.pid_file {
        endless = endless.pid_file(path);
    }
    if let Some(workers) = options.workers {
        endless = endless.configure(move |server| server.workers(workers));
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
