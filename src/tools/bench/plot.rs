//! The switch latency distribution as a PNG: a CDF above, a histogram below, both on a log
//! time axis so the zero-latency and realistic profiles fit one picture.
//!
//! Text needs a TrueType font; plotters is built without system font lookup (no fontconfig),
//! so one is loaded from well-known paths. Without one the plot is drawn without text.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::coord::combinators::WithKeyPoints;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::BenchError;

/// `$SWITCHYARD_BENCH_FONT`, then fonts Debian and Fedora ship (fonts-dejavu-core, fonts-liberation).
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
];
const FONT: &str = "sans-serif";
const BINS: usize = 48;
const COLORS: [RGBColor; 4] =
    [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44), RGBColor(148, 103, 189)];

/// Registers a font once; whether text can be drawn.
fn font_available() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| {
        let custom = std::env::var_os("SWITCHYARD_BENCH_FONT").map(PathBuf::from);
        let candidates = custom.into_iter().chain(FONT_PATHS.iter().map(PathBuf::from));
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                // plotters keeps fonts for the life of the process; this one is loaded once.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        tracing::warn!("no TrueType font found (set SWITCHYARD_BENCH_FONT): the plot has no text");
        false
    })
}

/// Draws `series` (name, latencies in ms) into `path`.
pub fn switch_latency(path: &Path, series: &[(String, &[f64])], workspaces: usize) -> Result<(), BenchError> {
    let text = font_available();
    let fail = |e: &dyn std::fmt::Display| BenchError::Plot { path: path.to_path_buf(), detail: e.to_string() };
    let root = BitMapBackend::new(path, (1200, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let (upper, lower) = root.split_vertically(470);
    draw(&upper, &lower, series, workspaces, text).map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))
}

type DrawResult = Result<(), DrawingAreaErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>>;

fn draw(
    upper: &DrawingArea<BitMapBackend<'_>, Shift>,
    lower: &DrawingArea<BitMapBackend<'_>, Shift>,
    series: &[(String, &[f64])],
    workspaces: usize,
    text: bool,
) -> DrawResult {
    let all = series.iter().flat_map(|(_, s)| s.iter().copied());
    let (lo, hi) = match all.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v))) {
        (lo, hi) if lo <= hi => (lo, hi),
        _ => (1.0, 1000.0), // nothing to draw but the axes
    };
    // Log axis: clamp to ≥ 1 ms, pad a little either side, span at least a factor of 2.
    let lo = (lo.max(1.0) / 1.15).max(1.0);
    let hi = (hi * 1.15).max(lo * 2.0);
    let bin_edges: Vec<f64> = (0..=BINS).map(|i| lo * (hi / lo).powf(i as f64 / BINS as f64)).collect();
    let histograms: Vec<Vec<f64>> = series
        .iter()
        .map(|(_, s)| {
            let mut counts = vec![0.0; BINS];
            for &v in s.iter() {
                let i = bin_edges.partition_point(|&e| e <= v.max(lo)).saturating_sub(1).min(BINS - 1);
                counts[i] += 1.0 / s.len().max(1) as f64;
            }
            counts
        })
        .collect();
    let top = histograms.iter().flatten().copied().fold(0.0, f64::max).max(0.01) * 1.1;

    let mut cdf = ChartBuilder::on(upper);
    cdf.margin(20).x_label_area_size(if text { 45 } else { 5 }).y_label_area_size(if text { 70 } else { 5 });
    if text {
        let caption = format!("Switch latency, spec patch → Ready ({workspaces} workspaces): cumulative");
        cdf.caption(caption, (FONT, 22));
    }
    let mut cdf = cdf.build_cartesian_2d(log_axis(lo, hi), 0f64..1f64)?;
    axes(&mut cdf, "fraction of workspaces", text)?;
    for (i, (name, samples)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len().max(1) as f64;
        let points = sorted.iter().enumerate().map(|(k, v)| (v.max(lo), (k + 1) as f64 / n));
        let drawn = cdf.draw_series(LineSeries::new(points, color.stroke_width(3)))?;
        if text {
            drawn
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3)));
        }
    }
    if text {
        cdf.configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FONT, 16))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()?;
    }

    let mut hist = ChartBuilder::on(lower);
    hist.margin(20).x_label_area_size(if text { 45 } else { 5 }).y_label_area_size(if text { 70 } else { 5 });
    if text {
        hist.caption("histogram (log-spaced bins)", (FONT, 20));
    }
    let mut hist = hist.build_cartesian_2d(log_axis(lo, hi), 0f64..top)?;
    axes(&mut hist, "fraction per bin", text)?;
    for (i, counts) in histograms.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let bars = counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0.0)
            .map(|(b, c)| Rectangle::new([(bin_edges[b], 0.0), (bin_edges[b + 1], *c)], color.mix(0.45).filled()));
        hist.draw_series(bars)?;
    }
    Ok(())
}

type Chart<'a, 'b> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<WithKeyPoints<LogCoord<f64>>, RangedCoordf64>>;

/// A log time axis labelled at 1, 2 and 5 × powers of ten (plotters' own log axis labels only
/// powers of ten, so a range within one decade would have no label at all).
fn log_axis(lo: f64, hi: f64) -> WithKeyPoints<LogCoord<f64>> {
    let mut labels = Vec::new();
    let mut decade = 10f64.powf(lo.log10().floor());
    while decade <= hi {
        labels.extend([1.0, 2.0, 5.0].map(|m| m * decade).into_iter().filter(|v| (lo..=hi).contains(v)));
        decade *= 10.0;
    }
    (lo..hi).log_scale().with_key_points(labels)
}

/// Labelled axes and grid; without a font just a frame (the mesh needs a font even with no labels).
fn axes(chart: &mut Chart<'_, '_>, y_desc: &str, text: bool) -> DrawResult {
    if !text {
        let (x, y) = (chart.x_range(), chart.y_range());
        let frame = Rectangle::new([(x.start, y.start), (x.end, y.end)], BLACK.stroke_width(1));
        return chart.plotting_area().draw(&frame);
    }
    chart
        .configure_mesh()
        .x_desc("latency (ms, log scale)")
        .y_desc(y_desc)
        .label_style((FONT, 15))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .draw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_without_text_and_without_samples() {
        // Machines without a TrueType font get a plot without text; it must still draw.
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("plot.png");
        let samples = [3.0, 40.0, 41.0, 900.0];
        for series in [vec![("zero".to_string(), &samples[..])], vec![]] {
            let root = BitMapBackend::new(&path, (400, 300)).into_drawing_area();
            let (upper, lower) = root.split_vertically(150);
            draw(&upper, &lower, &series, samples.len(), false).expect("drawn");
            root.present().expect("written");
        }
        assert!(std::fs::read(&path).expect("png").starts_with(b"\x89PNG"));
    }
}
