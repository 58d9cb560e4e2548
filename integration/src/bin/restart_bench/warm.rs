//! Interleaved slices against servers that stay up: every comparison.
//!
//! Each arm gets one server for the whole comparison, warmed up by one discarded slice, and
//! the slices run back to back in ABBA order, so a neighbour's burst more often hits both
//! slices of a pair. A fresh server per slice would put each server's start-up and warm-up
//! (and the benchmark's own start-up work) into every slice, where they weigh more than the
//! per-request cost a steady-state comparison is after, and would give the control arm of an
//! upgrade comparison the same warm-up a new generation pays. An arm with upgrades keeps its
//! server too: each of its slices upgrades the current generation on the schedule of the
//! rows (`restart_times`) and ends once the old generation has exited, so everything an
//! upgrade costs (the new process, the drain, the reconnections, the new generation's warm-up)
//! happens inside that arm's slices. Every slice runs the same monitor loop (`monitor.rs`).

use std::fs;
use std::path::Path;

use super::{monitor::Tracked, RowData, Server};
use crate::{
    procs::{self, Guard},
    scenario::{Row, RowSpec, Runner, INTERRUPTED},
};

/// One arm of a comparison: its server and the processes it has had.
struct Arm {
    spec: RowSpec,
    server: Server,
    tracked: Tracked,
}

impl Runner {
    /// Runs `pairs` pairs of slices of `base` and `test` against one server per arm;
    /// `progress` sees each slice. Returns the base and the test slices in the order they
    /// ran; stops early when the benchmark is interrupted. Every process is stopped on return.
    pub fn warm_pairs(
        &mut self,
        base: RowSpec,
        test: RowSpec,
        pairs: u32,
        mut progress: impl FnMut(&Row),
    ) -> (Vec<Row>, Vec<Row>) {
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
        let arms = fs::create_dir_all(&dir)
            .map_err(|e| format!("create {}: {e}", dir.display()))
            .and_then(|()| {
                let b = self.arm(&mut guard, &arm_dir(&dir, "base")?, base)?;
                let t = self.arm(&mut guard, &arm_dir(&dir, "test")?, test)?;
                Ok([b, t])
            })
            // One discarded slice each: the first requests of a server pay for its warm-up.
            .and_then(|mut arms| {
                for (arm, name) in arms.iter_mut().zip(["warm-up-base", "warm-up-test"]) {
                    self.slice(&mut guard, &dir.join(name), arm)?;
                }
                Ok(arms)
            });
        let mut arms = match arms {
            Ok(arms) => arms,
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
        'pairs: for pair in 0..pairs {
            let base_first = pair % 2 == 0;
            for is_base in [base_first, !base_first] {
                let (arm, rows) = if is_base {
                    (&mut arms[0], &mut base_rows)
                } else {
                    (&mut arms[1], &mut test_rows)
                };
                let slice_dir = dir.join(format!("{pair:03}-{}", arm.spec.kind.name()));
                let row = Row {
                    spec: arm.spec,
                    result: self.slice(&mut guard, &slice_dir, arm),
                };
                progress(&row);
                rows.push(row);
                if procs::interrupted() {
                    break 'pairs;
                }
            }
        }
        for arm in &mut arms {
            arm.tracked.stop(&mut guard);
        }
        (base_rows, test_rows)
    }

    /// Starts the server of an arm.
    fn arm(&self, guard: &mut Guard, dir: &Path, spec: RowSpec) -> Result<Arm, String> {
        let server = self.start_server(guard, dir, spec.kind, 0)?;
        let tracked = Tracked::of(&server)?;
        Ok(Arm {
            spec,
            server,
            tracked,
        })
    }

    /// One monitored wrk slice against the arm's server, whose current generation must
    /// still be running at its end.
    fn slice(&self, guard: &mut Guard, dir: &Path, arm: &mut Arm) -> Result<RowData, String> {
        fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let load = self.load(guard, dir, arm.spec, &arm.server, &mut arm.tracked)?;
        if procs::interrupted() {
            return Err(INTERRUPTED.into());
        }
        if arm.tracked.current(&arm.server).is_none() {
            return Err(format!(
                "the {} server (first pid {}) has no live process left (log: {})",
                arm.spec.kind.name(),
                arm.server.first,
                arm.server.log.display()
            ));
        }
        Ok(RowData {
            wrk: load.wrk,
            peak_rss_kib: None,
            restarts: load.restarts,
            notes: load.notes,
            orphan_cpu_secs: 0.0,
            other_cpu_pct: None,
            timeline: load.timeline,
        })
    }
}

/// `dir/name`, created.
fn arm_dir(dir: &Path, name: &str) -> Result<std::path::PathBuf, String> {
    let arm = dir.join(name);
    fs::create_dir_all(&arm).map_err(|e| format!("create {}: {e}", arm.display()))?;
    Ok(arm)
}
