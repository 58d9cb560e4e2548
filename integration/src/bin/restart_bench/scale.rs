//! The scale targets: many keep-alive connections across a few upgrades, against the scale
//! rows without upgrades run right before and after them (ABBA), per run.

use std::time::Duration;

use super::{data, ms, verdict, Verdict};
use crate::cli::Config;
use crate::scenario::{Kind, Row, RowData};

/// The scale rows of `run` without upgrades (run before and after its upgrade rows).
pub fn controls(rows: &[Row], run: u32) -> Vec<&RowData> {
    rows.iter()
        .filter(|r| r.spec.kind == Kind::Scale && r.spec.restarts == 0 && r.spec.run == run)
        .filter_map(|r| r.result.as_ref().ok())
        .collect()
}

/// The mean of `f` over `rows` (`None` if empty).
pub fn mean(rows: &[&RowData], f: impl Fn(&RowData) -> f64) -> Option<f64> {
    (!rows.is_empty()).then(|| rows.iter().map(|d| f(d)).sum::<f64>() / rows.len() as f64)
}

/// The scale targets, as (verdict, text) lines.
pub fn targets(rows: &[Row], cfg: &Config) -> Vec<(Verdict, String)> {
    let mut out = Vec::new();
    let mut push = |verdict, text: String| out.push((verdict, text));
    let scale: Vec<_> = data(rows, Kind::Scale)
        .filter(|(r, _)| r.spec.restarts > 0)
        .collect();
    if scale.is_empty() {
        push(Verdict::Skip, "scale: no scale rows".into());
    } else {
        let (mut ok, mut fast, mut p99_ok, mut rps_ok) = (true, true, true, true);
        let mut parts = Vec::new();
        for run in 1..=cfg.runs {
            let ups: Vec<&RowData> = scale
                .iter()
                .filter(|(r, _)| r.spec.run == run)
                .filter_map(|(_, d)| d.ok())
                .collect();
            let ctls = controls(rows, run);
            let runs_all = scale.iter().filter(|(r, _)| r.spec.run == run).count();
            if ups.len() < runs_all || ups.is_empty() || ctls.is_empty() {
                ok = false;
                parts.push(format!("run {run}: a row failed to run"));
                continue;
            }
            let failed: u64 = ups.iter().chain(&ctls).map(|d| d.wrk.failed()).sum();
            let (done, asked) = ups.iter().fold((0, 0), |(d, a), u| {
                (d + u.restarts.completed, a + u.restarts.requested)
            });
            ok &= failed == 0 && done == asked;
            let max = ups.iter().map(|d| d.wrk.max).max().unwrap_or_default();
            fast &= max < Duration::from_secs(1);
            let secs = |d: &RowData| d.wrk.p99.as_secs_f64();
            let p99 = mean(&ups, secs).unwrap_or(0.0) / mean(&ctls, secs).unwrap_or(f64::NAN);
            p99_ok &= p99 <= 1.5;
            let rps = |d: &RowData| d.wrk.req_per_sec;
            let ratio = mean(&ups, rps).unwrap_or(0.0) / mean(&ctls, rps).unwrap_or(f64::NAN);
            rps_ok &= ratio >= 0.95;
            parts.push(format!(
                "run {run}: {done}/{asked} upgrades, {failed} failed, max {} ms (control {} ms), \
                 p99 {} ms vs control {} ms = {p99:.2}x, req/s ratio {ratio:.3}",
                ms(max, 0),
                ms(ctls.iter().map(|d| d.wrk.max).max().unwrap_or_default(), 0),
                ms(Duration::from_secs_f64(mean(&ups, secs).unwrap_or(0.0)), 0),
                ms(Duration::from_secs_f64(mean(&ctls, secs).unwrap_or(0.0)), 0),
            ));
        }
        let what = format!(
            "scale: {} keep-alive connections, {} upgrades per row",
            cfg.scale_connections, cfg.scale_restarts
        );
        let detail = parts.join("; ");
        push(
            verdict(ok),
            format!("{what}, 0 failed, every upgrade completes: {detail}"),
        );
        push(
            verdict(fast),
            format!("{what}: no request slower than 1 s (wrk max)"),
        );
        push(verdict(p99_ok), format!("{what}: p99 <= 1.5 x control's"));
        push(
            verdict(rps_ok),
            format!("{what}: req/s >= 0.95 x control's"),
        );
    }
    out
}
