//! The scale plot: the operator's resident memory (left axis) and CPU at rest (right axis)
//! against the number of objects, one point per run. Text is drawn with the DejaVu Sans font
//! embedded by the `dejavu` crate (no system font library).

use std::path::Path;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use super::Row;

const FONT: &str = "sans-serif";
const WIDTH: u32 = 1000;
const HEIGHT: u32 = 600;
const RSS: RGBColor = RGBColor(31, 119, 180);
const CPU: RGBColor = RGBColor(214, 39, 40);

/// Draws `rows` into `path` (PNG, 1000×600).
pub fn write_png(path: &Path, rows: &[Row]) -> Result<(), Box<dyn std::error::Error>> {
    register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| "cannot load the embedded DejaVu Sans font")?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut pixels = vec![0_u8; WIDTH as usize * HEIGHT as usize * 3];
    draw(&mut pixels, rows)?;
    let file = std::fs::File::create(path)?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), WIDTH, HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&pixels)?;
    writer.finish()?;
    Ok(())
}

fn objects(r: &Row) -> f64 {
    (r.qworkers + r.pools) as f64
}

fn draw(pixels: &mut [u8], rows: &[Row]) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::with_buffer(pixels, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let x_max = rows.iter().map(objects).fold(1.0, f64::max) * 1.05;
    let rss_max = rows.iter().map(|r| r.rss_peak).fold(10.0, f64::max) * 1.15;
    let cpu_max = rows.iter().map(|r| r.cpu).fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "workerpool-operator at rest: resident memory and CPU against objects",
            (FONT, 22),
        )
        .margin(16)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..rss_max)?
        .set_secondary_coord(0.0..x_max, 0.0..cpu_max);
    chart
        .configure_mesh()
        .x_desc("objects (QWorkers + StormWorkerPools)")
        .y_desc("resident memory, steady (MiB)")
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 16))
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("CPU at rest (% of a core)")
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 16))
        .draw()?;
    let rss: Vec<(f64, f64)> = rows.iter().map(|r| (objects(r), r.rss_steady)).collect();
    let cpu: Vec<(f64, f64)> = rows.iter().map(|r| (objects(r), r.cpu)).collect();
    chart
        .draw_series(LineSeries::new(rss.clone(), RSS.stroke_width(3)))?
        .label("resident memory (MiB, left)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 24, y)], RSS.stroke_width(3)));
    chart.draw_series(rss.iter().map(|&p| Circle::new(p, 5, RSS.filled())))?;
    chart
        .draw_secondary_series(LineSeries::new(cpu.clone(), CPU.stroke_width(3)))?
        .label("CPU at rest (% of a core, right)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 24, y)], CPU.stroke_width(3)));
    chart.draw_secondary_series(cpu.iter().map(|&p| Circle::new(p, 5, CPU.filled())))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font((FONT, 15))
        .draw()?;
    root.present()?;
    Ok(())
}
