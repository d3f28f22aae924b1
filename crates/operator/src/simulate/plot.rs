//! `replicas.png`: replicas of both policies and the arrival rate over time, and queue lengths.
//!
//! Text is drawn with `ab_glyph` and the DejaVu Sans font embedded by the `dejavu` crate, so no
//! system font library (fontconfig, freetype) is needed.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, anyhow};
use plotters::chart::DualCoordChartContext;
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use super::Params;
use super::report::Comparison;
use super::trace::Trace;

const FONT: &str = "sans-serif";
const OURS: RGBColor = RGBColor(31, 119, 180);
const HPA: RGBColor = RGBColor(214, 39, 40);
const ARRIVALS: RGBColor = RGBColor(170, 170, 170);

fn ensure_font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok());
    if ok {
        Ok(())
    } else {
        Err(anyhow!("cannot load the embedded DejaVu Sans font"))
    }
}

const WIDTH: u32 = 1400;
const HEIGHT: u32 = 900;

/// Draws the chart for `c` into `path` (PNG, 1400×900, RGB).
pub fn write_png(
    path: &Path,
    trace: &Trace,
    params: &Params,
    c: &Comparison,
) -> anyhow::Result<()> {
    ensure_font()?;
    let mut pixels = vec![0_u8; WIDTH as usize * HEIGHT as usize * 3];
    draw(&mut pixels, trace, params, c)
        .with_context(|| format!("cannot draw {}", path.display()))?;
    encode(path, &pixels).with_context(|| format!("cannot write {}", path.display()))
}

/// PNG without row filters (flat-coloured charts compress well without them, and the adaptive
/// filter search is what makes encoding slow in a debug build).
fn encode(path: &Path, pixels: &[u8]) -> anyhow::Result<()> {
    let file = std::fs::File::create(path)?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), WIDTH, HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Default);
    encoder.set_filter(png::FilterType::NoFilter);
    encoder.set_adaptive_filter(png::AdaptiveFilterType::NonAdaptive);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(pixels)?;
    writer.finish()?;
    Ok(())
}

/// A panel of the chart.
type Panel<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
/// Minutes against a value.
type Coord = Cartesian2d<RangedCoordf64, RangedCoordf64>;
/// The upper panel's chart: replicas on the left axis, arrivals per second on the right.
type ReplicaChart<'a, 'b> = DualCoordChartContext<'a, BitMapBackend<'b>, Coord, Coord>;

/// Seconds as minutes, the x axis.
fn minutes(t: f64) -> f64 {
    t / 60.0
}

fn draw(pixels: &mut [u8], trace: &Trace, params: &Params, c: &Comparison) -> anyhow::Result<()> {
    let root = BitMapBackend::with_buffer(pixels, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(560);
    let x_max = c
        .ours
        .samples
        .last()
        .map_or(1.0, |s| minutes(s.time))
        .max(1.0 / 60.0);
    draw_replicas_panel(&top, trace, params, c, x_max)?;
    draw_queue_panel(&bottom, c, x_max)?;
    root.present()?;
    Ok(())
}

/// The upper panel: both policies' replicas and the arrival rate, with their legend.
fn draw_replicas_panel(
    area: &Panel<'_>,
    trace: &Trace,
    params: &Params,
    c: &Comparison,
    x_max: f64,
) -> anyhow::Result<()> {
    let mu = params.service_rate;
    let replicas_peak = c
        .ours
        .samples
        .iter()
        .chain(&c.hpa.samples)
        .map(|s| f64::from(s.replicas))
        .fold(0.0, f64::max);
    let y_max = (replicas_peak.max(trace.peak() / mu) * 1.1).max(1.0);
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "{}: requested replicas (left axis) and arrival rate (right axis)",
                trace.name
            ),
            (FONT, 24),
        )
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .right_y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?
        .set_secondary_coord(0.0..x_max, 0.0..y_max * mu);
    chart
        .configure_mesh()
        .x_desc("minutes")
        .y_desc("replicas")
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 18))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("arrivals per second")
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 18))
        .draw()?;
    draw_arrivals(&mut chart, c)?;
    draw_replicas(&mut chart, c)?;
    chart
        .configure_series_labels()
        .label_font((FONT, 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    Ok(())
}

/// The arrival rate, on the right axis.
fn draw_arrivals(chart: &mut ReplicaChart<'_, '_>, c: &Comparison) -> anyhow::Result<()> {
    chart
        .draw_secondary_series(LineSeries::new(
            c.ours
                .samples
                .iter()
                .map(|s| (minutes(s.time), s.arrival_rate)),
            ARRIVALS.stroke_width(5),
        ))?
        .label("arrivals/s (right axis)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], ARRIVALS.stroke_width(5)));
    Ok(())
}

/// Each policy's requested replicas, labelled with its worker-seconds and p95 wait.
fn draw_replicas(chart: &mut ReplicaChart<'_, '_>, c: &Comparison) -> anyhow::Result<()> {
    for (outcome, color, label) in [
        (&c.hpa, HPA, "hpa (KEDA + HPA model)"),
        (&c.ours, OURS, "ours"),
    ] {
        chart
            .draw_series(LineSeries::new(
                outcome
                    .samples
                    .iter()
                    .map(|s| (minutes(s.time), f64::from(s.replicas))),
                color.stroke_width(2),
            ))?
            .label(format!(
                "{label}: {:.0} worker-s, p95 wait {:.1} s",
                outcome.stats.worker_seconds, outcome.stats.p95_wait
            ))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
            });
    }
    Ok(())
}

/// The lower panel: both policies' queue lengths.
fn draw_queue_panel(area: &Panel<'_>, c: &Comparison, x_max: f64) -> anyhow::Result<()> {
    let queue_peak = c
        .ours
        .samples
        .iter()
        .chain(&c.hpa.samples)
        .map(|s| s.queue_length as f64)
        .fold(0.0, f64::max);
    let mut queue = ChartBuilder::on(area)
        .caption("queue length (waiting + in flight)", (FONT, 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .right_y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..(queue_peak * 1.1).max(1.0))?;
    queue
        .configure_mesh()
        .x_desc("minutes")
        .y_desc("tasks")
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 18))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for (outcome, color, label) in [(&c.hpa, HPA, "hpa"), (&c.ours, OURS, "ours")] {
        queue
            .draw_series(LineSeries::new(
                outcome
                    .samples
                    .iter()
                    .map(|s| (minutes(s.time), s.queue_length as f64)),
                color.stroke_width(2),
            ))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
            });
    }
    queue
        .configure_series_labels()
        .label_font((FONT, 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    Ok(())
}
