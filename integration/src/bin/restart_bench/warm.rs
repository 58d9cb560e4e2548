//! Interleaved slices against servers that stay up: the steady-state comparison.
//!
//! Neither arm of a steady-state comparison restarts, so nothing needs a fresh server per
//! slice: starting one would put each server's start-up and warm-up (and the benchmark's own
//! start-up work) into every 2 s slice, where they weigh more than the per-request cost the
//! comparison is after. Here each arm gets one server for the whole comparison, warmed up by
//! one discarded slice, and the slices run back to back in ABBA order, so a neighbour's burst
//! more often hits both slices of a pair.

use std::fs;
use std::path::Path;

use super::{RowData, Server};
use crate::{
    procs::{self, Guard},
    scenario::{Restarts, Row, RowSpec, Runner, INTERRUPTED},
    timeline::Timeline,
};

impl Runner {
    /// Runs `pairs` pairs of slices of `base` and `test` (neither may restart) against one
    /// server per arm; `progress` sees each slice. Returns the base and the test slices in
    /// the order they ran; stops early when the benchmark is interrupted. Every process is
    /// killed on return.
    pub fn warm_pairs(
        &mut self,
        base: RowSpec,
        test: RowSpec,
        pairs: u32,
        mut progress: impl FnMut(&Row),
    ) -> (Vec<Row>, Vec<Row>) {
        debug_assert!(base.restarts == 0 && test.restarts == 0);
        self.seq += 1;
        let dir = self.work.join(format!(
            "{:02}-warm-{}-{}-{}",
            self.seq,
            base.kind.name(),
            test.kind.name(),
            base.mode.name()
        ));
        let mut guard = Guard::default();
        let (mut base_rows, mut test_rows) = (Vec::new(), Vec::new());
        let servers = fs::create_dir_all(&dir)
            .map_err(|e| format!("create {}: {e}", dir.display()))
            .and_then(|()| {
                let b = self.start_server(&mut guard, &arm_dir(&dir, "base")?, base.kind, 0)?;
                let t = self.start_server(&mut guard, &arm_dir(&dir, "test")?, test.kind, 0)?;
                Ok((b, t))
            })
            // One discarded slice each: the first requests of a server pay for its warm-up.
            .and_then(|(b, t)| {
                self.slice(&mut guard, &dir.join("warm-up-base"), base, &b)?;
                self.slice(&mut guard, &dir.join("warm-up-test"), test, &t)?;
                Ok((b, t))
            });
        let (b, t) = match servers {
            Ok(servers) => servers,
            Err(e) => {
                // Both arms report why: the comparison then says it has no figures.
                base_rows.push(Row {
                    spec: base,
                    result: Err(e.clone()),
                });
                test_rows.push(Row {
                    spec: test,
                    result: Err(e),
                });
                return (base_rows, test_rows);
            }
        };
        for pair in 0..pairs {
            let base_first = pair % 2 == 0;
            for is_base in [base_first, !base_first] {
                let (spec, server, rows) = if is_base {
                    (base, &b, &mut base_rows)
                } else {
                    (test, &t, &mut test_rows)
                };
                let slice_dir = dir.join(format!("{pair:03}-{}", spec.kind.name()));
                let row = Row {
                    spec,
                    result: self.slice(&mut guard, &slice_dir, spec, server),
                };
                progress(&row);
                rows.push(row);
                if procs::interrupted() {
                    return (base_rows, test_rows);
                }
            }
        }
        (base_rows, test_rows)
    }

    /// One wrk slice against `server`, which must still be the process we started.
    fn slice(
        &self,
        guard: &mut Guard,
        dir: &Path,
        spec: RowSpec,
        server: &Server,
    ) -> Result<RowData, String> {
        fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let wspec = self.wrk_spec(spec, server.addr);
        let wrk = self.start_wrk(guard, dir, &wspec)?;
        let report = self.finish_wrk(guard, dir, wrk, spec.duration);
        if procs::interrupted() {
            return Err(INTERRUPTED.into());
        }
        if let Some(status) = guard.try_wait(server.first) {
            return Err(format!(
                "the {} server (pid {}) exited during the comparison ({status})",
                spec.kind.name(),
                server.first
            ));
        }
        Ok(RowData {
            wrk: report?,
            peak_rss_kib: None,
            restarts: Restarts::default(),
            notes: Vec::new(),
            orphan_cpu_secs: 0.0,
            other_cpu_pct: None,
            timeline: Timeline::default(),
        })
    }
}

/// `dir/name`, created.
fn arm_dir(dir: &Path, name: &str) -> Result<std::path::PathBuf, String> {
    let arm = dir.join(name);
    fs::create_dir_all(&arm).map_err(|e| format!("create {}: {e}", arm.display()))?;
    Ok(arm)
}
