//! The accuracy-versus-size chart of `report.md`: one point per stage (teacher, then each
//! pass), drawn as SVG by plotters.

use crate::error::{Result, WickError};
use plotters::prelude::*;

/// One labelled point: `(label, kilobytes, accuracy in %)`.
pub type Point = (String, f64, f64);

/// SVG text of the chart.
pub fn accuracy_vs_size(points: &[Point]) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 420)).into_drawing_area();
        let err = |e: String| WickError::invalid("chart", e);
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let xmax = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.15;
        let ymin = points.iter().map(|p| p.2).fold(100.0, f64::min);
        let ylo = (ymin - 2.0).max(0.0).floor();
        let mut chart = ChartBuilder::on(&root)
            .caption("test accuracy vs weight size", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..xmax, ylo..100.5f64)
            .map_err(|e| err(e.to_string()))?;
        chart.configure_mesh().x_desc("weight size (KiB)").y_desc("test accuracy (%)").draw().map_err(|e| err(e.to_string()))?;
        chart.draw_series(LineSeries::new(points.iter().map(|p| (p.1, p.2)), BLUE.mix(0.5))).map_err(|e| err(e.to_string()))?;
        chart.draw_series(points.iter().map(|p| Circle::new((p.1, p.2), 5, BLUE.filled()))).map_err(|e| err(e.to_string()))?;
        chart.draw_series(points.iter().enumerate().map(|(i, p)| Text::new(format!("{} {}", i, p.0), (p.1, p.2), ("sans-serif", 13).into_font()))).map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(svg)
}
