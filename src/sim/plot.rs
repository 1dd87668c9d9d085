//! `simulate --plot`: Lambda concurrency over time for each policy with the
//! ceiling as a line, and the queue backlog below it — the picture a user
//! would otherwise pull from CloudWatch. SVG or PNG by the file extension.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::sim::report::Timeline;

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
/// At most this many points per line: enough for a 1,200-pixel chart.
const MAX_POINTS: usize = 1500;

/// Why a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The file name is neither .svg nor .png.
    #[error("{path}: unsupported plot format; use a .svg or .png file name")]
    Format {
        /// The file.
        path: String,
    },
    /// The embedded font did not register.
    #[error("cannot load the embedded font: {0}")]
    Font(String),
    /// Drawing or writing the chart failed.
    #[error("cannot draw {path}: {message}")]
    Draw {
        /// The file.
        path: String,
        /// What the drawing backend said.
        message: String,
    },
}

/// One line of the chart: a policy's run.
pub struct Run<'a> {
    /// The legend entry.
    pub label: String,
    /// The run's series.
    pub timeline: &'a Timeline,
}

/// Draw `runs` against `ceiling` to `path` (SVG or PNG by extension).
pub fn plot(path: &Path, runs: &[Run<'_>], ceiling: u32, title: &str) -> Result<(), PlotError> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| PlotError::Font("DejaVuSans.ttf".into()))?;
    let shown = path.display().to_string();
    let size = (1200, 800);
    let result = match path.extension().and_then(|e| e.to_str()) {
        Some("svg") => draw(
            &SVGBackend::new(path, size).into_drawing_area(),
            runs,
            ceiling,
            title,
        ),
        Some("png") => draw(
            &BitMapBackend::new(path, size).into_drawing_area(),
            runs,
            ceiling,
            title,
        ),
        _ => return Err(PlotError::Format { path: shown }),
    };
    result.map_err(|message| PlotError::Draw {
        path: shown,
        message,
    })
}

/// Mean of each bucket of consecutive values.
fn buckets(values: impl ExactSizeIterator<Item = f64>) -> Vec<(f64, f64)> {
    let n = values.len();
    let step = n.div_ceil(MAX_POINTS).max(1);
    let v: Vec<f64> = values.collect();
    v.chunks(step)
        .enumerate()
        .map(|(i, c)| ((i * step) as f64, c.iter().sum::<f64>() / c.len() as f64))
        .collect()
}

const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    runs: &[Run<'_>],
    ceiling: u32,
    title: &str,
) -> Result<(), String> {
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
    root.fill(&WHITE).map_err(e)?;
    let (upper, lower) = root.split_vertically(540);
    let x_max = runs
        .iter()
        .map(|r| r.timeline.concurrency.len())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let y_max = f64::from(ceiling) * 1.12;
    let mut chart = ChartBuilder::on(&upper)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("virtual time (s)")
        .y_desc("Lambda concurrency (pipeline)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(e)?;
    chart
        .draw_series(LineSeries::new(
            vec![(0.0, f64::from(ceiling)), (x_max, f64::from(ceiling))],
            RED.stroke_width(2),
        ))
        .map_err(e)?
        .label(format!("ceiling {ceiling}"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    for (i, r) in runs.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points = buckets(r.timeline.concurrency.iter().copied());
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(e)?
            .label(r.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(e)?;

    let d_max = runs
        .iter()
        .flat_map(|r| r.timeline.backlog.iter().copied())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut depth = ChartBuilder::on(&lower)
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..d_max * 1.05)
        .map_err(e)?;
    depth
        .configure_mesh()
        .x_desc("virtual time (s)")
        .y_desc("messages waiting in SQS")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(e)?;
    for (i, r) in runs.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points = buckets(r.timeline.backlog.iter().map(|&d| d as f64));
        depth
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(e)?;
    }
    root.present().map_err(e)?;
    Ok(())
}
