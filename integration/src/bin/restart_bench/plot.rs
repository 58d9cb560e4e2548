//! The SVG picture of a row's [`Timeline`]: req/s per 100 ms and failures per 100 ms on top,
//! the probe's p99 per second below, the upgrade instants as vertical markers on both.

use std::path::{Path, PathBuf};

use plotters::{
    coord::{types::RangedCoordf64, Shift},
    prelude::*,
};

use crate::{
    scenario::{Kind, Row},
    timeline::{Marks, ProbeKind, Timeline},
};

/// Picture size in pixels: README width.
const SIZE: (u32, u32) = (960, 740);
const REQ: RGBColor = RGBColor(31, 119, 180);
const HTTP_ERR: RGBColor = RGBColor(255, 127, 14);
const PROBE_ERR: RGBColor = RGBColor(214, 39, 40);
const SIGNAL: RGBColor = RGBColor(148, 103, 189);
const READY: RGBColor = RGBColor(44, 160, 44);
const EXIT: RGBColor = RGBColor(90, 90, 90);
const P99_KA: RGBColor = RGBColor(23, 150, 160);
const P99_CLOSE: RGBColor = RGBColor(227, 119, 194);

/// Where the pictures go: `<target dir>/bench/` (`$CARGO_TARGET_DIR`, else the parent of
/// this executable's directory, i.e. `target/`).
pub fn svg_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.to_path_buf())
        })
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("bench")
}

/// Draws the timeline of `row` (if it ran and recorded one) into
/// `dir/<kind>-<mode>-<run>.svg`. Returns the file written.
pub fn write_row(dir: &Path, row: &Row) -> Result<Option<PathBuf>, String> {
    let Ok(d) = &row.result else {
        return Ok(None);
    };
    if d.timeline.wrk.is_none() && d.timeline.probe.is_empty() {
        return Ok(None);
    }
    let spec = row.spec;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // The scale rows without upgrades are its controls; of the two with upgrades per run,
    // the later one's picture stays.
    let name = match spec.kind {
        Kind::Scale if spec.restarts == 0 => "scale-control",
        kind => kind.name(),
    };
    let path = dir.join(format!("{name}-{}-{}.svg", spec.mode.name(), spec.run));
    let title = format!(
        "{} {}, wrk -c{}, {} upgrade(s), run {}",
        spec.kind.name(),
        spec.mode.name(),
        spec.connections,
        spec.restarts,
        spec.run
    );
    let w = &d.wrk;
    let (probed, probe_failed) = d.timeline.probe_totals();
    let footer = format!(
        "wrk: {} requests, {:.0} req/s, {} status > 399; socket errors (totals only): connect {}, read {}, \
         write {}, timeout {}\nprobe: {probed} requests, {probe_failed} failed (2 keep-alive + 2 close \
         clients, sequential, <= 500 req/s each, 2 s timeout)",
        w.requests,
        w.req_per_sec,
        w.non_2xx,
        w.connect_errors,
        w.read_errors,
        w.write_errors,
        w.timeout_errors
    );
    draw(
        &path,
        &title,
        &footer,
        &d.timeline,
        spec.duration.as_secs_f64(),
    )?;
    Ok(Some(path))
}

/// Formats any plotters error.
fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("plot: {e:?}")
}

/// Line style of a legend sample or marker: solid, or dashed with this dash length.
#[derive(Clone, Copy)]
enum Sample {
    Line(u32),
    Dot,
}

/// Legend rows above the charts (outside them, so no data is hidden).
const LEGEND: [&[(RGBColor, Sample, &str)]; 3] = [
    &[
        (REQ, Sample::Line(0), "req/s (wrk Lua script, per 100 ms)"),
        (HTTP_ERR, Sample::Dot, "wrk status > 399 / 100 ms (right)"),
        (PROBE_ERR, Sample::Dot, "probe failures / 100 ms (right)"),
    ],
    &[
        (SIGNAL, Sample::Line(0), "upgrade signal sent"),
        (READY, Sample::Line(6), "new generation ready"),
        (EXIT, Sample::Line(2), "old generation exited"),
    ],
    &[
        (P99_KA, Sample::Line(0), "probe p99, keep-alive clients"),
        (
            P99_CLOSE,
            Sample::Line(0),
            "probe p99, close clients (connect included)",
        ),
    ],
];
/// Height of one legend row, px.
const LEGEND_ROW: u32 = 20;
/// Height of the footer, px.
const FOOTER: u32 = 52;

/// Draws `tl` into `path`. `duration` is wrk's (the x axis covers it and every marker);
/// `title` heads the picture, `footer` (at most 2 lines of totals) is written under it.
pub fn draw(
    path: &Path,
    title: &str,
    footer: &str,
    tl: &Timeline,
    duration: f64,
) -> Result<(), String> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(err)?;
    let height = root.dim_in_pixel().1;
    let legend_h = LEGEND_ROW * LEGEND.len() as u32 + 6;
    let (legend, rest) = root.split_vertically(legend_h);
    let (charts, foot) = rest.split_vertically(height - legend_h - FOOTER);
    let (top, bottom) = charts.split_vertically((height - legend_h - FOOTER) * 57 / 100);

    let marks = &tl.marks;
    let last_mark = [&marks.signal, &marks.ready, &marks.old_exit]
        .iter()
        .flat_map(|v| v.iter())
        .map(|d| d.as_secs_f64())
        .fold(0.0, f64::max);
    let x_max = duration.max(last_mark + 0.2);

    draw_legend(&legend)?;
    upper(&top, tl, x_max)?;
    lower(&bottom, tl, x_max)?;
    for (i, line) in footer.lines().take(2).enumerate() {
        foot.draw(&Text::new(
            line.to_string(),
            (12, 6 + 22 * i as i32),
            ("sans-serif", 14).into_font().color(&BLACK),
        ))
        .map_err(err)?;
    }
    root.present().map_err(err)
}

/// The legend rows, left-aligned with the plotting areas.
fn draw_legend(area: &DrawingArea<SVGBackend, Shift>) -> Result<(), String> {
    let font = ("sans-serif", 14).into_font().color(&BLACK);
    for (row, entries) in LEGEND.iter().enumerate() {
        let y = (LEGEND_ROW as i32) * row as i32 + 10;
        let mut x = 90;
        for &(color, sample, label) in entries.iter() {
            match sample {
                Sample::Dot => {
                    area.draw(&Circle::new((x + 12, y), 5, color.filled()))
                        .map_err(err)?;
                }
                Sample::Line(0) => {
                    area.draw(&PathElement::new(
                        [(x, y), (x + 24, y)],
                        color.stroke_width(2),
                    ))
                    .map_err(err)?;
                }
                Sample::Line(dash) => {
                    let dash = dash as i32;
                    let mut from = x;
                    while from < x + 24 {
                        let to = (from + dash).min(x + 24);
                        area.draw(&PathElement::new(
                            [(from, y), (to, y)],
                            color.stroke_width(2),
                        ))
                        .map_err(err)?;
                        from = to + dash.max(3);
                    }
                }
            }
            area.draw(&Text::new(label, (x + 30, y - 8), font.clone()))
                .map_err(err)?;
            // No font metrics without the ttf feature: about 0.45 em per character.
            x += 30 + (label.len() as i32 * 63) / 10 + 30;
        }
    }
    Ok(())
}

/// Top panel: req/s (left axis), failures per 100 ms (right axis), markers.
fn upper(area: &DrawingArea<SVGBackend, Shift>, tl: &Timeline, x_max: f64) -> Result<(), String> {
    let rps = tl.req_per_sec();
    let http: Vec<(f64, f64)> = tl.http_errors().into_iter().filter(|p| p.1 > 0.0).collect();
    let probe = tl.probe_failures();
    let y_max = rps.iter().map(|p| p.1).fold(0.0, f64::max).max(1.0) * 1.15;
    let f_max = (http.iter().chain(&probe).map(|p| p.1).fold(0.0, f64::max) * 1.15)
        .ceil()
        .max(5.0);

    let mut chart = ChartBuilder::on(area)
        .margin(8)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(err)?
        .set_secondary_coord(0f64..x_max, 0f64..f_max);
    chart
        .configure_mesh()
        .x_desc("time since wrk started (s)")
        .y_desc("completed, req/s")
        .y_label_formatter(&|v| format!("{:.0}k", v / 1000.0))
        .axis_desc_style(("sans-serif", 15))
        .label_style(("sans-serif", 13))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(err)?;
    chart
        .configure_secondary_axes()
        .y_desc("failed per 100 ms")
        .y_label_formatter(&integer)
        .axis_desc_style(("sans-serif", 15))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;

    markers(&mut chart, &tl.marks, (0.0, y_max))?;
    // A bucket's count is drawn at its middle.
    let rps = rps.into_iter().map(|(x, y)| (x + 0.05, y));
    chart
        .draw_series(LineSeries::new(rps, REQ.stroke_width(2)))
        .map_err(err)?;
    for (color, size, points) in [(HTTP_ERR, 5, http), (PROBE_ERR, 4, probe)] {
        chart
            .draw_secondary_series(
                points
                    .into_iter()
                    .map(move |(x, y)| Circle::new((x + 0.05, y), size, color.filled())),
            )
            .map_err(err)?;
    }
    Ok(())
}

/// Tick label of a count axis: integers only.
fn integer(v: &f64) -> String {
    if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        String::new()
    }
}

/// Tick label of the log axis: 1, 2 and 5 times a power of ten only.
fn one_two_five(v: &f64) -> String {
    let exp = v.log10().floor();
    let m = v / 10f64.powf(exp);
    if [1.0, 2.0, 5.0, 10.0].iter().any(|k| (m - k).abs() < 1e-6) {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        String::new()
    }
}

/// Bottom panel: probe p99 per second (log scale), markers.
fn lower(area: &DrawingArea<SVGBackend, Shift>, tl: &Timeline, x_max: f64) -> Result<(), String> {
    let ka = tl.probe_p99(ProbeKind::KeepAlive);
    let close = tl.probe_p99(ProbeKind::Close);
    let values = || ka.iter().chain(&close).map(|p| p.1);
    // Whole decades, so that the 1-2-5 ticks exist; widened by 1 % because plotters finds
    // the first tick with ceil(ln(lo) / ln(10)), which rounds an exact decade up.
    let hi = 10f64.powf((values().fold(1.0, f64::max) * 1.3).log10().ceil()) * 1.01;
    let lo = 10f64.powf(
        (values().fold(hi, f64::min) / 1.3)
            .log10()
            .floor()
            .max(-2.0),
    ) * 0.99;
    let mut chart = ChartBuilder::on(area)
        .margin(8)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, (lo..hi).log_scale())
        .map_err(err)?
        // Same scale on the right, unlabelled: keeps the plot aligned with the top panel.
        .set_secondary_coord(0f64..x_max, (lo..hi).log_scale());
    chart
        .configure_mesh()
        .x_desc("time since wrk started (s)")
        .y_desc("probe p99 per 1 s (ms)")
        // Enough points for 1..9 per decade; only 1, 2 and 5 are labelled.
        .y_labels(30)
        .y_label_formatter(&one_two_five)
        .axis_desc_style(("sans-serif", 15))
        .label_style(("sans-serif", 13))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(err)?;
    chart
        .configure_secondary_axes()
        .y_label_formatter(&|_| String::new())
        .draw()
        .map_err(err)?;
    markers(&mut chart, &tl.marks, (lo, hi))?;
    for (color, points) in [(P99_KA, ka), (P99_CLOSE, close)] {
        // Each value covers its second: drawn at the middle.
        let points: Vec<(f64, f64)> = points.into_iter().map(|(x, y)| (x + 0.5, y)).collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)).point_size(3))
            .map_err(err)?;
    }
    Ok(())
}

/// Vertical lines at every upgrade instant across `(y_bottom, y_top)`.
fn markers<'a, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf64, Y>>,
    marks: &Marks,
    (y_bottom, y_top): (f64, f64),
) -> Result<(), String>
where
    Y: Ranged<ValueType = f64>,
{
    for (times, color, sample) in [
        (&marks.signal, SIGNAL, LEGEND[1][0].1),
        (&marks.ready, READY, LEGEND[1][1].1),
        (&marks.old_exit, EXIT, LEGEND[1][2].1),
    ] {
        let style = color.stroke_width(2);
        for t in times {
            let x = t.as_secs_f64();
            let line = vec![(x, y_bottom), (x, y_top)];
            match sample {
                Sample::Line(dash) if dash > 0 => chart
                    .draw_series(DashedLineSeries::new(line, dash, dash.max(3), style))
                    .map_err(err)?,
                _ => chart
                    .draw_series(LineSeries::new(line, style))
                    .map_err(err)?,
            };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::timeline::{ProbeSample, WrkBuckets};

    #[test]
    fn log_labels() {
        let labels: Vec<String> = [0.1, 0.2, 0.3, 1.0, 5.0, 7.0, 20.0, 100.0]
            .iter()
            .map(one_two_five)
            .collect();
        assert_eq!(labels, ["0.1", "0.2", "", "1", "5", "", "20", "100"]);
        assert_eq!(integer(&2.0), "2");
        assert_eq!(integer(&2.5), "");
    }

    #[test]
    fn draws_a_timeline() {
        let ms = Duration::from_millis;
        let probe = (0..2000)
            .map(|i| ProbeSample {
                kind: if i % 2 == 0 {
                    ProbeKind::KeepAlive
                } else {
                    ProbeKind::Close
                },
                at: ms(i * 2),
                latency: Duration::from_micros(300 + i % 7 * 100),
                failure: None,
            })
            .collect();
        let tl = Timeline {
            marks: Marks {
                signal: vec![ms(1000)],
                ready: vec![ms(1015)],
                old_exit: vec![ms(1030)],
            },
            wrk: Some(WrkBuckets {
                origin: -0.03,
                completed: vec![5000; 40],
                http_errors: vec![0; 40],
            }),
            probe,
        };
        let dir = std::env::temp_dir().join(format!("plot_test.{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.svg");
        draw(&path, "title", "footer 1\nfooter 2", &tl, 4.0).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        for label in [
            "title",
            "upgrade signal sent",
            "time since wrk started (s)",
            "probe p99 per 1 s (ms)",
            "failed per 100 ms",
            "footer 2",
            "50k",
        ] {
            assert!(svg.contains(label), "{label} missing");
        }
        // The p99 axis reaches below 1 ms here: its lowest decade is labelled.
        assert!(
            svg.contains(">\n0.1\n<") || svg.contains(">0.1<"),
            "0.1 ms tick"
        );
        // Nothing recorded (a row without the script and probe) still draws.
        draw(&path, "empty", "", &Timeline::default(), 4.0).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
