//! Peers in the same run: the rows that put other zero-downtime upgrade mechanisms under the
//! same wrk load as `hello`, each next to a row of the same server without upgrades.
//!
//! * **nginx**: Debian's nginx (`nginx-light`) answering `return 200` with hello's body,
//!   `worker_processes` = `--workers`, upgraded with nginx's binary upgrade exactly as its
//!   documentation ("Upgrading Executable on the Fly") describes: `USR2` to the master (it
//!   renames its pid file to `nginx.pid.oldbin` and starts a new master from the binary, which
//!   inherits the listening socket and starts its workers), `WINCH` to the old master once the
//!   new master and its workers run (its workers finish their requests and exit), and `QUIT`
//!   to the old master once its workers are gone. The master is started like a daemon,
//!   reparented away from the benchmark (a master ignores `USR2` while its first parent runs,
//!   see `peer_nginx.rs`), so every nginx process is tracked by pid (pid file and `/proc`
//!   children) and killed at the end of the row; a sweep of `/proc` for the row's
//!   configuration path catches any master the pid file never named.
//! * **ecdysis**: `ecdysis_hello` (Cloudflare's ecdysis + hyper 1 with hyper-util's
//!   `GracefulShutdown`), upgraded by `SIGHUP` to the pid in its pid file; measured like the
//!   endless rows (the same monitor loop, see `Runner::monitored`).
//! * **naive** (plain actix-web restarted by SIGTERM + start) is an existing row; its own
//!   no-upgrade row is `plain`, added here for the modes where the steady-state pair does not
//!   run one.
//!
//! A peer losing requests is a finding, not a failure of the benchmark: the only target is
//! that every peer row ran.
//!
//! This is a child module of `scenario`, so it drives rows with the runner's own helpers.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use super::{Kind, Row, RowData, RowSpec, Runner};
use crate::{
    cli::{Config, ConnMode},
    procs::Guard,
    report::{Target, Verdict},
};

/// The nginx rows' driver.
#[path = "peer_nginx.rs"]
mod peer_nginx;

/// A peer row: the server and whether it is upgraded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// nginx without upgrades.
    NginxControl,
    /// nginx with binary upgrades.
    Nginx,
    /// `ecdysis_hello` without upgrades.
    EcdysisControl,
    /// `ecdysis_hello` with ecdysis upgrades.
    Ecdysis,
}

impl Peer {
    /// Row label.
    pub fn name(self) -> &'static str {
        match self {
            Peer::NginxControl => "nginx-control",
            Peer::Nginx => "nginx",
            Peer::EcdysisControl => "ecdysis-control",
            Peer::Ecdysis => "ecdysis",
        }
    }

    /// The peer's row without upgrades.
    pub fn control(self) -> Peer {
        match self {
            Peer::NginxControl | Peer::Nginx => Peer::NginxControl,
            Peer::EcdysisControl | Peer::Ecdysis => Peer::EcdysisControl,
        }
    }
}

/// The peer rows of one mode and run, in the order they run: each peer's no-upgrade row right
/// before its upgrade row (neighbours see the same machine).
pub fn rows(cfg: &Config, mode: ConnMode, run: u32) -> Vec<RowSpec> {
    let row = |kind, restarts| RowSpec {
        kind,
        mode,
        connections: cfg.connections,
        restarts,
        run,
        duration: cfg.duration,
    };
    let mut out = Vec::new();
    // naive's own no-upgrade row; the steady-state pair runs one in keep-alive mode.
    if cfg.only.naive && (mode != ConnMode::KeepAlive || !cfg.only.steady) {
        out.push(row(Kind::Plain, 0));
    }
    if cfg.only.nginx {
        out.push(row(Kind::Peer(Peer::NginxControl), 0));
        out.push(row(Kind::Peer(Peer::Nginx), cfg.restarts));
    }
    if cfg.only.ecdysis {
        out.push(row(Kind::Peer(Peer::EcdysisControl), 0));
        out.push(row(Kind::Peer(Peer::Ecdysis), cfg.restarts));
    }
    out
}

impl Runner {
    /// Runs a peer row.
    pub(super) fn peer(
        &mut self,
        guard: &mut Guard,
        dir: &Path,
        spec: RowSpec,
        peer: Peer,
    ) -> Result<RowData, String> {
        match peer {
            Peer::NginxControl | Peer::Nginx => self.nginx(guard, dir, spec),
            Peer::EcdysisControl | Peer::Ecdysis => {
                let bin = self.ecdysis_binary()?;
                // `monitored` starts `bins.hello` with hello's options (--bind, --addr-file,
                // --workers, --pid-file), which ecdysis_hello takes too, and upgrades it by
                // SIGHUP to the pid in the pid file: exactly the ecdysis protocol.
                let hello = std::mem::replace(&mut self.bins.hello, bin);
                let result = self.monitored(guard, dir, spec);
                self.bins.hello = hello;
                result
            }
        }
    }

    /// `ecdysis_hello`, next to this executable or to plain_hello.
    fn ecdysis_binary(&self) -> Result<PathBuf, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let candidates = [
            exe.with_file_name("ecdysis_hello"),
            self.bins.plain.with_file_name("ecdysis_hello"),
        ];
        candidates
            .iter()
            .find(|p| p.is_file())
            .cloned()
            .ok_or_else(|| {
                format!(
                    "ecdysis_hello not found at {} (cargo build --release -p integration --bins)",
                    candidates[0].display()
                )
            })
    }
}

/// The base row of a peer row: the same peer's no-upgrade row of the same mode and run, else
/// of the same mode.
pub fn control_for<'a>(rows: &'a [Row], row: &Row, peer: Peer) -> Option<&'a Row> {
    let base = Kind::Peer(peer.control());
    let same_mode = |r: &&Row| r.spec.kind == base && r.spec.mode == row.spec.mode;
    rows.iter()
        .filter(same_mode)
        .find(|r| r.spec.run == row.spec.run)
        .or_else(|| rows.iter().find(same_mode))
}

/// What the peer rows are, for the report's legend.
pub const LEGEND: &str = "\
peers: nginx = Debian's nginx, worker_processes = --workers, `return 200` with hello's body; binary upgrade as
      nginx's docs describe: USR2 to the master (new master from the binary, pid file -> nginx.pid.oldbin), WINCH
      to the old master once the new master runs all its workers, QUIT to it once its workers have exited.
      signal->ready = USR2 until nginx.pid names the new master and all its workers run; ->old exit = from then
      until the old master is gone. ecdysis = ecdysis_hello (Cloudflare's ecdysis + hyper 1, hyper-util's
      GracefulShutdown, --workers tokio threads), upgraded by SIGHUP (ecdysis fork-execs it, the child inherits
      the socket and reports ready, the old process stops accepting and drains); measured like endless.
      X-control = the same server without upgrades: the peer rows' vs control is to their own X-control row.";

/// The peers block: per mode, failed requests and req/s ratio of each upgrade mechanism
/// against its own server without upgrades. Empty if no peer row ran.
pub fn summary(rows: &[Row]) -> String {
    // (label, upgrade row kind, its no-upgrade row kind)
    let peers = [
        ("endless (actix-endless)", Kind::Endless, Kind::Control),
        (
            "nginx (binary upgrade)",
            Kind::Peer(Peer::Nginx),
            Kind::Peer(Peer::NginxControl),
        ),
        (
            "ecdysis + hyper",
            Kind::Peer(Peer::Ecdysis),
            Kind::Peer(Peer::EcdysisControl),
        ),
        ("naive actix-web", Kind::Naive, Kind::Plain),
    ];
    if !rows.iter().any(|r| matches!(r.spec.kind, Kind::Peer(_))) {
        return String::new();
    }
    let mut out = String::from(
        "| peer | mode | run | upgrades | failed requests | req/s | no-upgrade req/s | ratio |\n\
         |:-----|:-----|----:|---------:|----------------:|------:|-----------------:|------:|\n",
    );
    let modes = [ConnMode::KeepAlive, ConnMode::Close];
    for mode in modes {
        for (label, kind, base_kind) in peers {
            for row in rows
                .iter()
                .filter(|r| r.spec.kind == kind && r.spec.mode == mode)
            {
                let same = |r: &&Row| r.spec.kind == base_kind && r.spec.mode == mode;
                let base = rows
                    .iter()
                    .filter(same)
                    .find(|r| r.spec.run == row.spec.run)
                    .or_else(|| rows.iter().find(same))
                    .and_then(|r| r.result.as_ref().ok())
                    .map(|d| d.wrk.req_per_sec);
                let cells = match &row.result {
                    Err(_) => "row failed to run | | | |".to_string(),
                    Ok(d) => {
                        let rps = d.wrk.req_per_sec;
                        format!(
                            "{}/{} | {} | {rps:.0} | {} | {}",
                            d.restarts.completed,
                            d.restarts.requested,
                            d.wrk.failed(),
                            base.map_or("-".into(), |b| format!("{b:.0}")),
                            base.filter(|b| *b > 0.0)
                                .map_or("-".into(), |b| format!("{:.3}", rps / b)),
                        )
                    }
                };
                let _ = writeln!(
                    out,
                    "| {label} | {} | {} | {cells} |",
                    mode.name(),
                    row.spec.run
                );
            }
        }
    }
    out
}

/// The peers' only target: every selected peer row ran (what they measure is a finding).
pub fn target(rows: &[Row]) -> Option<Target> {
    let peer_rows: Vec<&Row> = rows
        .iter()
        .filter(|r| matches!(r.spec.kind, Kind::Peer(_)))
        .collect();
    if peer_rows.is_empty() {
        return None;
    }
    let failed: Vec<String> = peer_rows
        .iter()
        .filter(|r| r.result.is_err())
        .map(|r| {
            format!(
                "{} {} run {}",
                r.spec.kind.name(),
                r.spec.mode.name(),
                r.spec.run
            )
        })
        .collect();
    let verdict = if failed.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    let text = if failed.is_empty() {
        format!(
            "peer rows ran (nginx, ecdysis; their failed requests are findings, not targets): {} of {}",
            peer_rows.len(),
            peer_rows.len()
        )
    } else {
        format!(
            "peer rows ran (nginx, ecdysis): {} of {}; failed to run: {}",
            peer_rows.len() - failed.len(),
            peer_rows.len(),
            failed.join(", ")
        )
    };
    Some(Target { verdict, text })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_peer_runs_next_to_its_own_control() {
        let cfg = Config::default();
        let kinds = |mode| -> Vec<Kind> { rows(&cfg, mode, 1).iter().map(|r| r.kind).collect() };
        let pairs = [
            Kind::Peer(Peer::NginxControl),
            Kind::Peer(Peer::Nginx),
            Kind::Peer(Peer::EcdysisControl),
            Kind::Peer(Peer::Ecdysis),
        ];
        // keep-alive: the steady-state pair already runs plain.
        assert_eq!(kinds(ConnMode::KeepAlive), pairs);
        let mut close = vec![Kind::Plain];
        close.extend(pairs);
        assert_eq!(kinds(ConnMode::Close), close);
        for r in rows(&cfg, ConnMode::Close, 1) {
            let upgraded = matches!(r.kind, Kind::Peer(Peer::Nginx | Peer::Ecdysis));
            assert_eq!(r.restarts, if upgraded { cfg.restarts } else { 0 });
        }
        assert!(summary(&[]).is_empty() && target(&[]).is_none());
    }
}
