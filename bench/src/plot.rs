//! The latency CDF as a PNG.

use hdrhistogram::Histogram;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use std::path::Path;

const FONTS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Draws the CDFs of `series` (latencies in ns) with a log time axis in ms.
/// Without a TrueType font on the machine there are no labels to draw, so
/// the plot is skipped with a message.
pub(crate) fn cdf(
    path: &Path,
    title: &str,
    series: &[(&str, &Histogram<u64>)],
) -> anyhow::Result<()> {
    let Some(font) = FONTS.iter().find_map(|f| std::fs::read(f).ok()) else {
        println!("(no TrueType font found under /usr/share/fonts: CDF plot skipped)");
        return Ok(());
    };
    if register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .is_err()
    {
        println!("(font not usable: CDF plot skipped)");
        return Ok(());
    }
    let max_ms = series
        .iter()
        .map(|(_, h)| h.max() as f64 / 1e6)
        .fold(1.0f64, f64::max)
        * 1.2;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d((0.01f64..max_ms).log_scale(), 0f64..1f64)?;
    chart
        .configure_mesh()
        .x_desc("ms after COMMIT returned (log scale)")
        .y_desc("fraction of commits")
        .draw()?;
    let colors = [BLUE, RED, GREEN, MAGENTA];
    for (i, (name, h)) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        let points: Vec<(f64, f64)> = h
            .iter_quantiles(20)
            .map(|v| {
                (
                    (v.value_iterated_to() as f64 / 1e6).max(0.01),
                    v.quantile_iterated_to(),
                )
            })
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
