//! The accuracy-versus-size chart of `report.md`: one point per stage (teacher, then each
//! pass), drawn as SVG by plotters. Sizes span orders of magnitude (a pruned INT8 artifact is
//! tens of times smaller than its teacher), so the size axis is logarithmic; stages that leave
//! size and accuracy unchanged sit on one spot, so each point carries its number, stacked where
//! points coincide, and the legend names them; the gate's accuracy floor is a line.

use crate::error::{Result, WickError};
use plotters::prelude::*;

/// One labelled point: `(label, kilobytes, accuracy in %)`.
pub type Point = (String, f64, f64);

/// The colour of stage `i`.
fn colour(i: usize) -> RGBColor {
    const PALETTE: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(23, 190, 207),
    ];
    PALETTE[i % PALETTE.len()]
}

/// SVG text of the chart; `floor` is the lowest accuracy (%) the gate accepts, if there is a gate.
pub fn accuracy_vs_size(points: &[Point], floor: Option<f64>) -> Result<String> {
    let err = |e: String| WickError::invalid("chart", e);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 460)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let sizes = points.iter().map(|p| p.1.max(1e-3));
        let (lo, hi) = sizes.fold((f64::INFINITY, 0f64), |(a, b), s| (a.min(s), b.max(s)));
        let (xlo, xhi) = (lo / 2.0, hi * 2.0);
        let ymin = points.iter().map(|p| p.2).chain(floor).fold(100.0, f64::min);
        let ylo = (ymin - 2.0).max(0.0).floor();
        let mut chart = ChartBuilder::on(&root)
            .caption("test accuracy vs weight size", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d((xlo..xhi).log_scale(), ylo..100.5f64)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_labels(12)
            .x_label_formatter(&|v| format!("{v:.3}").trim_end_matches('0').trim_end_matches('.').to_string())
            .x_desc("weight size (KiB, log scale)")
            .y_desc("test accuracy (%)")
            .draw()
            .map_err(|e| err(e.to_string()))?;
        chart.draw_series(LineSeries::new(points.iter().map(|p| (p.1.max(1e-3), p.2)), BLUE.mix(0.3))).map_err(|e| err(e.to_string()))?;
        if let Some(f) = floor {
            chart
                .draw_series(LineSeries::new([(xlo, f), (xhi, f)], RED.stroke_width(1)))
                .map_err(|e| err(e.to_string()))?
                .label(format!("gate floor {f:.2}%"))
                .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], RED));
        }
        // Points at one spot (within a few pixels) get their numbers stacked upwards.
        let mut placed: Vec<((i32, i32), i32)> = vec![];
        for (i, p) in points.iter().enumerate() {
            let at = (p.1.max(1e-3), p.2);
            let px = chart.backend_coord(&at);
            let stack = match placed.iter_mut().find(|(q, _)| (q.0 - px.0).abs() < 6 && (q.1 - px.1).abs() < 6) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    placed.push((px, 0));
                    0
                }
            };
            let c = colour(i);
            chart
                .draw_series([Circle::new(at, 5, c.filled())])
                .map_err(|e| err(e.to_string()))?
                .label(format!("{i} {}: {:.1} KiB, {:.2}%", p.0, p.1, p.2))
                .legend(move |(x, y)| Circle::new((x + 8, y), 5, c.filled()));
            let label = EmptyElement::at(at) + Text::new(format!("{i}"), (8, -8 - 14 * stack), ("sans-serif", 13).into_font().color(&c));
            chart.draw_series([label]).map_err(|e| err(e.to_string()))?;
        }
        chart.configure_series_labels().position(SeriesLabelPosition::LowerLeft).background_style(WHITE.mix(0.85)).border_style(BLACK.mix(0.3)).draw().map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(svg)
}
