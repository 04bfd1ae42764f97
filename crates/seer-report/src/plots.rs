//! SVG plots of the report (plotters, SVG backend): top-1 vs BOPs, and per-unit bits and keep
//! ratios of a chosen policy. Text is escaped by the SVG backend.

use plotters::prelude::*;

use crate::{BudgetOutcome, RunReport, fmt};
use crate::{Error, Result};

const W: u32 = 860;
const H: u32 = 520;
const UNIFORM: RGBColor = RGBColor(31, 119, 180);
const CHOSEN: RGBColor = RGBColor(214, 39, 40);
const FRONT: RGBColor = RGBColor(255, 127, 14);
const LABELS: RGBColor = RGBColor(150, 150, 150);
const WBITS: RGBColor = RGBColor(31, 119, 180);
const ABITS: RGBColor = RGBColor(44, 160, 44);
const KEEP: RGBColor = RGBColor(214, 39, 40);

fn perr<E: std::fmt::Debug>(e: E) -> Error {
    Error::Plot(format!("{e:?}"))
}

/// Range `[lo, hi]` padded by `frac` of its width (or ±1 when flat).
fn padded(lo: f64, hi: f64, frac: f64) -> (f64, f64) {
    if hi - lo < 1e-9 {
        (lo - 1.0, hi + 1.0)
    } else {
        (lo - frac * (hi - lo), hi + frac * (hi - lo))
    }
}

/// Measured top-1 vs BOPs (log axis): the uniform baselines, the chosen policies (measured test
/// top-1, and predicted as hollow markers), the predicted front (crosses where it extrapolates),
/// the labelled samples and the BOPs budgets as vertical lines. None when there is nothing to plot.
pub fn plot_top1_vs_bops(r: &RunReport) -> Result<Option<String>> {
    // Every plotted point; only the axis ranges are taken from them, so order does not matter.
    let (mut xs, mut ys): (Vec<f64>, Vec<f64>) = r
        .uniform
        .iter()
        .map(|u| (u.bops, u.measured_top1))
        .chain(r.budgets.iter().map(|b| (b.bops, b.predicted_top1)))
        .chain(r.front.iter().map(|f| (f.bops, f.predicted_top1)))
        .chain(r.labels.iter().map(|l| (l.bops, l.top1)))
        .map(|(x, y)| (x as f64, y))
        .unzip();
    for b in &r.budgets {
        ys.extend(b.measured_top1);
        xs.extend(b.max_bops.map(|mb| mb as f64));
    }
    xs.retain(|x| x.is_finite() && *x > 0.0);
    ys.retain(|y| y.is_finite());
    if xs.is_empty() || ys.is_empty() {
        return Ok(None);
    }
    let (xmin, xmax) = (
        xs.iter().copied().fold(f64::INFINITY, f64::min),
        xs.iter().copied().fold(0.0, f64::max),
    );
    let (xlo, xhi) = if xmax / xmin < 1.01 {
        (xmin / 1.5, xmax * 1.5)
    } else {
        (xmin / 1.15, xmax * 1.15)
    };
    let (ylo, yhi) = padded(
        ys.iter().copied().fold(f64::INFINITY, f64::min),
        ys.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        0.08,
    );

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(perr)?;
        let caption = format!("Top-1 vs BOPs — {} on {}", r.arch, r.dataset);
        let mut chart = chart_on(&root, caption, 20, (44, 56))
            .build_cartesian_2d((xlo..xhi).log_scale(), ylo..yhi)
            .map_err(perr)?;
        chart
            .configure_mesh()
            .x_desc("BOPs (log scale)")
            .y_desc("top-1 (%)")
            .x_label_formatter(&|x| fmt::si(x.round() as u64))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(perr)?;

        for b in r.budgets.iter().filter_map(|b| b.max_bops) {
            let x = b as f64;
            chart
                .draw_series(LineSeries::new([(x, ylo), (x, yhi)], BLACK.mix(0.25)))
                .map_err(perr)?;
        }
        if !r.labels.is_empty() {
            chart
                .draw_series(
                    r.labels
                        .iter()
                        .map(|l| Circle::new((l.bops as f64, l.top1), 2, LABELS.filled())),
                )
                .map_err(perr)?
                .label("labelled samples (val, short fine-tune)")
                .legend(|(x, y)| Circle::new((x + 8, y), 3, LABELS.filled()));
        }
        if !r.front.is_empty() {
            let f = sorted_by_x(r.front.iter().map(|p| (p.bops as f64, p.predicted_top1)));
            chart
                .draw_series(LineSeries::new(f, FRONT.stroke_width(2)))
                .map_err(perr)?
                .label("predicted front")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], FRONT.stroke_width(2)));
            let flagged: Vec<&crate::FrontPoint> =
                r.front.iter().filter(|p| p.extrapolates).collect();
            if !flagged.is_empty() {
                chart
                    .draw_series(flagged.iter().map(|p| {
                        Cross::new((p.bops as f64, p.predicted_top1), 5, FRONT.stroke_width(2))
                    }))
                    .map_err(perr)?
                    .label("predicted, extrapolating")
                    .legend(|(x, y)| Cross::new((x + 8, y), 5, FRONT.stroke_width(2)));
            }
        }
        if !r.uniform.is_empty() {
            let u = sorted_by_x(r.uniform.iter().map(|u| (u.bops as f64, u.measured_top1)));
            chart
                .draw_series(LineSeries::new(u, UNIFORM.mix(0.5)))
                .map_err(perr)?;
            chart
                .draw_series(r.uniform.iter().map(|u| {
                    let (x, y) = (u.bops as f64, u.measured_top1);
                    EmptyElement::at((x, y))
                        + Rectangle::new([(-4, -4), (4, 4)], UNIFORM.filled())
                        + Text::new(
                            u.name.clone(),
                            (6, 4),
                            ("sans-serif", 12).into_font().color(&UNIFORM),
                        )
                }))
                .map_err(perr)?
                .label("uniform bit-width (measured test)")
                .legend(|(x, y)| {
                    Rectangle::new([(x + 4, y - 4), (x + 12, y + 4)], UNIFORM.filled())
                });
        }
        if !r.budgets.is_empty() {
            chart
                .draw_series(r.budgets.iter().map(|b| {
                    EmptyElement::at((b.bops as f64, b.predicted_top1))
                        + Circle::new((0, 0), 5, CHOSEN.stroke_width(2))
                }))
                .map_err(perr)?
                .label("chosen policy (predicted)")
                .legend(|(x, y)| Circle::new((x + 8, y), 5, CHOSEN.stroke_width(2)));
            let measured: Vec<&BudgetOutcome> = r
                .budgets
                .iter()
                .filter(|b| b.measured_top1.is_some())
                .collect();
            chart
                .draw_series(measured.iter().map(|b| {
                    EmptyElement::at((b.bops as f64, b.measured_top1.unwrap_or_default()))
                        + Circle::new((0, 0), 5, CHOSEN.filled())
                        + Text::new(
                            b.label.clone(),
                            (7, -14),
                            ("sans-serif", 12).into_font().color(&CHOSEN),
                        )
                }))
                .map_err(perr)?
                .label("chosen policy (measured test)")
                .legend(|(x, y)| Circle::new((x + 8, y), 5, CHOSEN.filled()));
        }
        draw_legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        root.present().map_err(perr)?;
    }
    Ok(Some(svg))
}

/// A chart builder on `root` in the report's style: `caption` in `font_px` sans-serif, a 12 px
/// margin, and label areas of `(x, y)` px below and left of the plot.
fn chart_on<'a, 'b, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, plotters::coord::Shift>,
    caption: String,
    font_px: u32,
    (x, y): (u32, u32),
) -> ChartBuilder<'a, 'b, DB> {
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(caption, ("sans-serif", font_px))
        .margin(12)
        .x_label_area_size(x)
        .y_label_area_size(y);
    builder
}

/// Draws the series legend at `pos` on a translucent white box.
fn draw_legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    pos: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(pos)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(perr)
}

/// The points `(x, y)` sorted by `x` (stable, `total_cmp`), for drawing as a line.
fn sorted_by_x(points: impl Iterator<Item = (f64, f64)>) -> Vec<(f64, f64)> {
    let mut v: Vec<(f64, f64)> = points.collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// Per-unit weight and activation bit-widths (bars, left axis) and keep ratio `1 − prune`
/// (line, right axis) of the policy chosen for budget `b`; the x axis is the unit index (names
/// in the report's per-unit table).
pub fn plot_policy_layers(r: &RunReport, b: &BudgetOutcome) -> Result<String> {
    let units = &b.policy.units;
    let n = units.len().max(1);
    let max_bits = units
        .iter()
        .map(|u| u.wbits.max(u.abits))
        .max()
        .unwrap_or(8)
        .max(8) as f64;
    let mut svg = String::new();
    {
        let width = W.max(160 + 26 * n as u32);
        let root = SVGBackend::with_string(&mut svg, (width, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(perr)?;
        let caption = format!("Policy {} — {} per unit", b.label, r.arch);
        let mut chart = chart_on(&root, caption, 18, (40, 48))
            .right_y_label_area_size(56)
            .build_cartesian_2d(-0.6..(n as f64 - 0.4), 0.0..max_bits + 0.5)
            .map_err(perr)?
            .set_secondary_coord(-0.6..(n as f64 - 0.4), 0.0..1.05);
        chart
            .configure_mesh()
            .x_desc("unit index")
            .y_desc("bits")
            .y_label_formatter(&|y| format!("{y:.0}"))
            .x_labels(n.min(40))
            .x_label_formatter(&|x| {
                if (x - x.round()).abs() < 1e-6 {
                    format!("{}", x.round() as i64)
                } else {
                    String::new()
                }
            })
            .disable_x_mesh()
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(perr)?;
        chart
            .configure_secondary_axes()
            .y_desc("keep ratio (1 − prune)")
            .draw()
            .map_err(perr)?;
        chart
            .draw_series(units.iter().enumerate().map(|(i, u)| {
                let x = i as f64;
                Rectangle::new(
                    [(x - 0.38, 0.0), (x - 0.02, u.wbits as f64)],
                    WBITS.filled(),
                )
            }))
            .map_err(perr)?
            .label("weight bits")
            .legend(|(x, y)| Rectangle::new([(x + 4, y - 4), (x + 12, y + 4)], WBITS.filled()));
        chart
            .draw_series(units.iter().enumerate().map(|(i, u)| {
                let x = i as f64;
                Rectangle::new(
                    [(x + 0.02, 0.0), (x + 0.38, u.abits as f64)],
                    ABITS.filled(),
                )
            }))
            .map_err(perr)?
            .label("activation bits (input)")
            .legend(|(x, y)| Rectangle::new([(x + 4, y - 4), (x + 12, y + 4)], ABITS.filled()));
        let keep: Vec<(f64, f64)> = units
            .iter()
            .enumerate()
            .map(|(i, u)| (i as f64, 1.0 - u.prune))
            .collect();
        chart
            .draw_secondary_series(LineSeries::new(keep.clone(), KEEP.stroke_width(2)))
            .map_err(perr)?
            .label("keep ratio")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], KEEP.stroke_width(2)));
        chart
            .draw_secondary_series(keep.into_iter().map(|p| Circle::new(p, 3, KEEP.filled())))
            .map_err(perr)?;
        draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        root.present().map_err(perr)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::synthetic;

    #[test]
    fn top1_plot_draws_every_series_and_escapes_text() {
        let r = synthetic();
        let svg = plot_top1_vs_bops(&r).unwrap().unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for needle in [
            "w2a2",
            "w3a3",
            "w4a4",
            "frac-0.05",
            "predicted front",
            "predicted, extrapolating",
            "uniform bit-width",
            "toy&lt;net&gt;",
        ] {
            assert!(svg.contains(needle), "missing {needle}");
        }
        assert!(!svg.contains("toy<net>"));
        // frac-0.15 has no measurement: it must not be labelled as measured.
        assert!(!svg.contains(">frac-0.15<"));
        let empty = RunReport::default();
        assert_eq!(plot_top1_vs_bops(&empty).unwrap(), None);
    }

    #[test]
    fn layers_plot_has_one_bar_pair_per_unit() {
        let r = synthetic();
        let svg = plot_policy_layers(&r, &r.budgets[0]).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("keep ratio"));
        // 5 units -> 5 weight bars + 5 activation bars + 2 legend swatches in the two bar colours.
        let w = svg.matches("fill=\"#1F77B4\"").count();
        let a = svg.matches("fill=\"#2CA02C\"").count();
        assert_eq!((w, a), (6, 6), "bars: {w} {a}");
    }
}
