//! The tunnel comparison as a picture: drawn from the `tunnels` records of
//! target/peerpool-bench.json, one panel per workload and figure
//! (throughput on top, p99 below), one bar per tunnel.

use std::path::Path;

use plotters::prelude::*;
use serde_json::Value;

use super::tunnels::TUNNELS;

const COLOURS: [RGBColor; 4] = [
    RGBColor(150, 150, 150),
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
];

/// One bar: a tunnel's value for a workload.
struct Bar {
    tunnel: usize,
    value: f64,
}

/// Panels in workload order: (workload, figure title, bars).
fn panels(records: &[Value]) -> Vec<(String, &'static str, Vec<Bar>)> {
    let mut workloads: Vec<String> = Vec::new();
    for r in records {
        if let Some(w) = r["extra"]["workload"].as_str() {
            if !workloads.iter().any(|x| x == w) {
                workloads.push(w.to_string());
            }
        }
    }
    let mut out = Vec::new();
    for (title, pick) in [
        (
            "throughput",
            (|r: &Value| {
                if r["extra"]["workload"]
                    .as_str()
                    .is_some_and(|w| w.starts_with("bulk"))
                {
                    r["mb_per_sec"].as_f64()
                } else {
                    r["ops_per_sec"].as_f64()
                }
            }) as fn(&Value) -> Option<f64>,
        ),
        ("p99", |r: &Value| r["p99_us"].as_f64()),
    ] {
        for w in &workloads {
            let bars = records
                .iter()
                .filter(|r| r["extra"]["workload"].as_str() == Some(w))
                .filter_map(|r| {
                    let tunnel = r["extra"]["tunnel"].as_str()?;
                    Some(Bar {
                        tunnel: TUNNELS.iter().position(|t| *t == tunnel)?,
                        value: pick(r)?,
                    })
                })
                .collect();
            out.push((w.clone(), title, bars));
        }
    }
    out
}

fn unit(workload: &str, figure: &str) -> &'static str {
    match (figure, workload.starts_with("bulk")) {
        ("p99", _) => "p99 µs (lower is better)",
        (_, true) => "MB/s",
        _ => "requests/s",
    }
}

/// Draws the `tunnels` records of `bench_json` into an SVG at `out`.
pub fn draw(bench_json: &Value, out: &Path) -> Result<(), String> {
    let records: Vec<Value> = bench_json["records"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .filter(|r| r["scenario"] == "tunnels")
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let panels = panels(&records);
    if panels.is_empty() {
        return Err("no tunnels records".into());
    }
    let columns = panels.len().div_ceil(2);
    let root = SVGBackend::new(out, (300 * columns as u32, 640)).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let title = format!(
        "peerpool vs mutual-TLS tunnels ({})",
        if bench_json["quick"] == true {
            "quick run"
        } else {
            "same run, same client"
        }
    );
    let root = root.titled(&title, ("sans-serif", 18)).map_err(e)?;
    let (body, legend) = root.split_vertically(580);
    for (area, (workload, figure, bars)) in body.split_evenly((2, columns)).iter().zip(&panels) {
        let top = bars.iter().map(|b| b.value).fold(0.0, f64::max).max(1.0) * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(workload.as_str(), ("sans-serif", 13))
            .margin(8)
            .x_label_area_size(8)
            .y_label_area_size(52)
            .build_cartesian_2d(0..TUNNELS.len() as i32, 0.0..top)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .disable_x_axis()
            .y_desc(unit(workload, figure))
            .y_label_formatter(&|v| short(*v))
            .label_style(("sans-serif", 10))
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(bars.iter().map(|b| {
                let x = b.tunnel as i32;
                let mut r = Rectangle::new(
                    [(x, 0.0), (x + 1, b.value)],
                    COLOURS[b.tunnel % COLOURS.len()].filled(),
                );
                r.set_margin(0, 0, 6, 6);
                r
            }))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(bars.iter().map(|b| {
                Text::new(
                    short(b.value),
                    (b.tunnel as i32, b.value + top * 0.02),
                    ("sans-serif", 10),
                )
            }))
            .map_err(|e| e.to_string())?;
    }
    for (i, (name, colour)) in TUNNELS.iter().zip(COLOURS).enumerate() {
        let x = 20 + 140 * i as i32;
        legend
            .draw(&Rectangle::new([(x, 20), (x + 14, 34)], colour.filled()))
            .map_err(e)?;
        legend
            .draw(&Text::new(*name, (x + 20, 22), ("sans-serif", 13)))
            .map_err(e)?;
    }
    root.present().map_err(e)?;
    Ok(())
}

/// 1234567 -> "1.2M", 45678 -> "45.7k", 12.3 -> "12".
fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}
