//! SVG plots of a run: slot occupancy by class over time, and connections admitted and turned away
//! per second by population.

use crate::harness::RunReport;
use plotters::prelude::*;
use std::path::Path;

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

type PlotResult = Result<(), Box<dyn std::error::Error>>;
type Chart<'a> = ChartContext<
    'a,
    SVGBackend<'a>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// A white canvas with a caption and axes from 0 to `x_max` seconds and 0 to `y_max`.
fn frame<'a>(
    root: &DrawingArea<SVGBackend<'a>, plotters::coord::Shift>,
    caption: &str,
    x_max: f64,
    y_max: f64,
    y_desc: &str,
) -> Result<Chart<'a>, Box<dyn std::error::Error>> {
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(root)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc(y_desc)
        .draw()?;
    Ok(chart)
}

/// One labelled line.
fn line(
    chart: &mut Chart<'_>,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    label: &str,
) -> PlotResult {
    chart
        .draw_series(LineSeries::new(points, color.stroke_width(2)))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    Ok(())
}

/// The box naming every line.
fn legend(chart: &mut Chart<'_>) -> PlotResult {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// Slots in use by class (and the capacity) over the run, from mxgate's scraped metrics.
pub fn occupancy(run: &RunReport, path: &Path) -> PlotResult {
    let Some(gate) = &run.gate else {
        return Ok(());
    };
    let samples = &gate.metrics.occupancy;
    let mut classes: Vec<&String> = samples.iter().flat_map(|s| s.in_use.keys()).collect();
    classes.sort();
    classes.dedup();
    let t_max = samples.last().map_or(1.0, |s| s.t).max(1.0);
    let y_max = samples
        .iter()
        .map(|s| s.capacity.max(s.in_use.values().sum()))
        .fold(1.0, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    let caption = format!("{}: slots in use by class ({})", run.scenario, run.target);
    let mut chart = frame(&root, &caption, t_max, y_max, "slots")?;
    let capacity: Vec<(f64, f64)> = samples.iter().map(|s| (s.t, s.capacity)).collect();
    chart
        .draw_series(LineSeries::new(capacity, BLACK.stroke_width(1)))?
        .label("capacity")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK));
    for (i, class) in classes.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let points: Vec<(f64, f64)> = samples
            .iter()
            .map(|s| (s.t, s.in_use.get(*class).copied().unwrap_or(0.0)))
            .collect();
        line(&mut chart, points, color, class)?;
    }
    legend(&mut chart)?;
    root.present()?;
    Ok(())
}

/// Connections per second by population: admitted (top) and deferred or refused (bottom), each
/// panel on its own scale so that a few good senders stay visible next to a flood.
pub fn connections(run: &RunReport, path: &Path) -> PlotResult {
    let seconds = run
        .populations
        .iter()
        .map(|p| p.per_second.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let root = SVGBackend::new(path, (900, 640)).into_drawing_area();
    let panels = root.split_evenly((2, 1));
    for (column, (panel, what)) in panels
        .iter()
        .zip(["admitted", "deferred or refused"])
        .enumerate()
    {
        let y_max = run
            .populations
            .iter()
            .flat_map(|p| p.per_second.iter().map(|s| s[column]))
            .max()
            .unwrap_or(1)
            .max(1) as f64
            * 1.1;
        let caption = format!(
            "{}: connections {what} per second ({})",
            run.scenario, run.target
        );
        let mut chart = frame(panel, &caption, seconds as f64, y_max, "connections / s")?;
        for (i, p) in run.populations.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let points: Vec<(f64, f64)> = p
                .per_second
                .iter()
                .enumerate()
                .map(|(t, s)| (t as f64 + 0.5, s[column] as f64))
                .collect();
            line(&mut chart, points, color, &p.name)?;
        }
        legend(&mut chart)?;
    }
    root.present()?;
    Ok(())
}
