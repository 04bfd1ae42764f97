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

/// Measured top-1 vs BOPs (log axis): the uniform baselines (squares), the chosen policies
/// (filled: measured test top-1 after the final fine-tune; hollow, joined to it by a dotted
/// line: predicted validation top-1 under the short labelling fine-tune), the measured Pareto
/// front of both (a step line), the predicted front (solid where labels were sampled, dashed
/// beyond them; crosses where the predictor extrapolates), the labelled samples and the BOPs
/// budgets as labelled vertical lines. Text labels are placed so that no two overlap and none
/// covers a marker. None when there is nothing to plot.
pub fn plot_top1_vs_bops(r: &RunReport) -> Result<Option<String>> {
    Ok(top1_plot(r)?.map(|p| p.svg))
}

/// A text label placed on the plot: its text and its box in pixels.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Placed {
    pub text: String,
    pub rect: Rect,
}

/// An axis-aligned box in pixels, `[x0, x1) × [y0, y1)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Rect {
    pub x0: i32,
    pub y0: i32,
    pub x1: i32,
    pub y1: i32,
}

impl Rect {
    /// The box of `text` in `px`-pixel sans-serif with its top-left corner at `(x, y)` (width
    /// estimated generously at 0.62 em per character, so real glyphs fit inside).
    fn text(x: i32, y: i32, text: &str, px: u32) -> Rect {
        let w = (text.chars().count() as f64 * 0.62 * px as f64).ceil() as i32 + 2;
        Rect {
            x0: x,
            y0: y,
            x1: x + w,
            y1: y + px as i32 + 3,
        }
    }

    /// The square of half-width `r` around `(x, y)` (a marker).
    fn around((x, y): (i32, i32), r: i32) -> Rect {
        Rect {
            x0: x - r,
            y0: y - r,
            x1: x + r + 1,
            y1: y + r + 1,
        }
    }

    #[cfg(test)]
    pub(crate) fn overlaps(&self, o: &Rect) -> bool {
        self.x0 < o.x1 && o.x0 < self.x1 && self.y0 < o.y1 && o.y0 < self.y1
    }

    fn inside(&self, o: &Rect) -> bool {
        self.x0 >= o.x0 && self.x1 <= o.x1 && self.y0 >= o.y0 && self.y1 <= o.y1
    }

    fn overlap_area(&self, o: &Rect) -> i64 {
        let w = (self.x1.min(o.x1) - self.x0.max(o.x0)).max(0) as i64;
        let h = (self.y1.min(o.y1) - self.y0.max(o.y0)).max(0) as i64;
        w * h
    }
}

/// Label font size (px).
const LABEL_PX: u32 = 12;

/// Places each `(anchor, text)` at the first of its candidate positions around the anchor
/// (right, left, above, below, then further up and down in steps of a line) whose box lies in
/// `bounds` and overlaps neither a box placed before nor an `obstacle`; when none is free, at
/// the candidate of least overlap. Greedy in the given order.
fn place_labels(items: &[((i32, i32), String)], obstacles: &[Rect], bounds: Rect) -> Vec<Placed> {
    let line = LABEL_PX as i32 + 4;
    let mut placed: Vec<Placed> = Vec::new();
    for ((ax, ay), text) in items {
        let probe = Rect::text(0, 0, text, LABEL_PX);
        let (w, h) = (probe.x1, probe.y1);
        let mut cands: Vec<(i32, i32)> = vec![
            (ax + 8, ay - h / 2),
            (ax - 8 - w, ay - h / 2),
            (ax - w / 2, ay - 8 - h),
            (ax - w / 2, ay + 8),
        ];
        for k in 1..=8 {
            for sign in [-1, 1] {
                let dy = sign * k * line;
                cands.push((ax + 8, ay - h / 2 + dy));
                cands.push((ax - 8 - w, ay - h / 2 + dy));
            }
        }
        let cost = |r: &Rect| -> i64 {
            let out = if r.inside(&bounds) { 0 } else { 1 << 40 };
            out + placed
                .iter()
                .map(|p| p.rect.overlap_area(r))
                .chain(obstacles.iter().map(|o| o.overlap_area(r)))
                .sum::<i64>()
        };
        let best = cands
            .iter()
            .map(|&(x, y)| Rect::text(x, y, text, LABEL_PX))
            .min_by_key(|r| cost(r))
            .expect("candidates");
        placed.push(Placed {
            text: text.clone(),
            rect: best,
        });
    }
    placed
}

/// Indices of the Pareto-optimal points of `(bops, top1)`: no other point has at most the
/// BOPs and a higher top-1, or fewer BOPs and the same top-1. Sorted by BOPs.
pub(crate) fn pareto_front(points: &[(f64, f64)]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..points.len())
        .filter(|&i| points[i].0.is_finite() && points[i].1.is_finite())
        .collect();
    idx.sort_by(|&a, &b| {
        points[a]
            .0
            .total_cmp(&points[b].0)
            .then(points[b].1.total_cmp(&points[a].1))
    });
    let mut front = Vec::new();
    let mut best = f64::NEG_INFINITY;
    for i in idx {
        if points[i].1 > best {
            best = points[i].1;
            front.push(i);
        }
    }
    front
}

/// The top-1 plot with the text labels it placed and the marker boxes they had to avoid.
pub(crate) struct Top1Plot {
    pub svg: String,
    #[cfg_attr(not(test), allow(dead_code))]
    pub placed: Vec<Placed>,
    #[cfg_attr(not(test), allow(dead_code))]
    pub markers: Vec<Rect>,
}

/// Draws the top-1 plot (see [`plot_top1_vs_bops`]).
pub(crate) fn top1_plot(r: &RunReport) -> Result<Option<Top1Plot>> {
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
        (xmin / 1.25, xmax * 1.25)
    };
    let (ymin, ymax) = (
        ys.iter().copied().fold(f64::INFINITY, f64::min),
        ys.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    // Head room above the data for the budget lines' labels.
    let (ylo, yhi) = padded(ymin, ymax, 0.08);
    let yhi = yhi + 0.12 * (yhi - ylo);

    let mut svg = String::new();
    let (placed, markers);
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
            .x_labels(8)
            .x_label_formatter(&|x| fmt::si(x.round() as u64))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(perr)?;
        // Pixel positions of everything that carries a label or must not be covered by one,
        // taken before drawing (the chart is borrowed mutably while it draws).
        let mut at: std::collections::HashMap<(u64, u64), (i32, i32)> = Default::default();
        let key = |x: f64, y: f64| (x.to_bits(), y.to_bits());
        for (x, y) in r
            .budgets
            .iter()
            .filter_map(|b| b.max_bops.map(|m| (m as f64, yhi)))
            .chain(r.uniform.iter().map(|u| (u.bops as f64, u.measured_top1)))
            .chain(r.budgets.iter().map(|b| (b.bops as f64, b.predicted_top1)))
            .chain(
                r.budgets
                    .iter()
                    .filter_map(|b| b.measured_top1.map(|m| (b.bops as f64, m))),
            )
        {
            at.insert(key(x, y), chart.backend_coord(&(x, y)));
        }
        let px = |x: f64, y: f64| at.get(&key(x, y)).copied().unwrap_or_default();
        let (plot_x, plot_y) = chart.plotting_area().get_pixel_range();
        let bounds = Rect {
            x0: plot_x.start,
            y0: plot_y.start,
            x1: plot_x.end,
            y1: plot_y.end,
        };
        let mut obstacles: Vec<Rect> = Vec::new();
        let mut texts: Vec<((i32, i32), String, RGBColor)> = Vec::new();

        // Budget limits: dashed vertical lines, labelled at the top.
        for b in &r.budgets {
            let Some(mb) = b.max_bops else { continue };
            let x = mb as f64;
            chart
                .draw_series(DashedLineSeries::new(
                    [(x, ylo), (x, yhi)],
                    6,
                    4,
                    BLACK.mix(0.45).into(),
                ))
                .map_err(perr)?;
            let (lx, ly) = px(x, yhi);
            texts.push((
                (lx, ly + LABEL_PX as i32),
                format!("{} limit", b.label),
                RGBColor(90, 90, 90),
            ));
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
            // Solid within the BOPs range the labels cover, dashed beyond it.
            let (lab_lo, lab_hi) = r
                .labels
                .iter()
                .map(|l| l.bops as f64)
                .fold((f64::INFINITY, 0.0f64), |(a, b), x| (a.min(x), b.max(x)));
            let f = sorted_by_x(r.front.iter().map(|p| (p.bops as f64, p.predicted_top1)));
            let inside = |x: f64| r.labels.is_empty() || (lab_lo..=lab_hi).contains(&x);
            let solid: Vec<(f64, f64)> = f.iter().copied().filter(|p| inside(p.0)).collect();
            chart
                .draw_series(LineSeries::new(solid, FRONT.stroke_width(2)))
                .map_err(perr)?
                .label("predicted front (val, short fine-tune)")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], FRONT.stroke_width(2)));
            let below: Vec<(f64, f64)> = f.iter().copied().filter(|p| p.0 <= lab_lo).collect();
            let above: Vec<(f64, f64)> = f.iter().copied().filter(|p| p.0 >= lab_hi).collect();
            let parts: Vec<Vec<(f64, f64)>> = [below, above]
                .into_iter()
                .filter(|p| p.len() >= 2 && !r.labels.is_empty())
                .collect();
            if !parts.is_empty() {
                for part in parts {
                    {
                        chart
                            .draw_series(DashedLineSeries::new(
                                part,
                                5,
                                4,
                                FRONT.mix(0.7).stroke_width(2),
                            ))
                            .map_err(perr)?;
                    }
                }
                chart
                    .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())
                    .map_err(perr)?
                    .label("predicted front beyond the labelled BOPs")
                    .legend(|(x, y)| {
                        EmptyElement::at((x, y))
                            + PathElement::new([(0, 0), (5, 0)], FRONT.mix(0.7).stroke_width(2))
                            + PathElement::new([(10, 0), (16, 0)], FRONT.mix(0.7).stroke_width(2))
                    });
            }
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
        // The measured Pareto front: uniform baselines and measured chosen policies.
        let measured: Vec<(f64, f64)> = r
            .uniform
            .iter()
            .map(|u| (u.bops as f64, u.measured_top1))
            .chain(
                r.budgets
                    .iter()
                    .filter_map(|b| b.measured_top1.map(|m| (b.bops as f64, m))),
            )
            .collect();
        let front = pareto_front(&measured);
        if front.len() >= 2 {
            let mut steps: Vec<(f64, f64)> = Vec::new();
            for (k, &i) in front.iter().enumerate() {
                if k > 0 {
                    steps.push((measured[i].0, measured[front[k - 1]].1));
                }
                steps.push(measured[i]);
            }
            chart
                .draw_series(LineSeries::new(steps, BLACK.mix(0.55).stroke_width(1)))
                .map_err(perr)?
                .label("measured Pareto front (test)")
                .legend(|(x, y)| {
                    PathElement::new(
                        [(x, y + 3), (x + 8, y + 3), (x + 8, y - 3), (x + 16, y - 3)],
                        BLACK.mix(0.55),
                    )
                });
        }
        if !r.uniform.is_empty() {
            chart
                .draw_series(r.uniform.iter().map(|u| {
                    EmptyElement::at((u.bops as f64, u.measured_top1))
                        + Rectangle::new([(-4, -4), (4, 4)], UNIFORM.filled())
                }))
                .map_err(perr)?
                .label("uniform bit-width (measured test)")
                .legend(|(x, y)| {
                    Rectangle::new([(x + 4, y - 4), (x + 12, y + 4)], UNIFORM.filled())
                });
            for u in &r.uniform {
                let a = px(u.bops as f64, u.measured_top1);
                obstacles.push(Rect::around(a, 5));
                texts.push((a, u.name.clone(), UNIFORM));
            }
        }
        if !r.budgets.is_empty() {
            // Predicted → measured, dotted, so the pair reads as one policy.
            for b in &r.budgets {
                if let Some(m) = b.measured_top1 {
                    let x = b.bops as f64;
                    chart
                        .draw_series(DashedLineSeries::new(
                            [(x, b.predicted_top1), (x, m)],
                            2,
                            3,
                            CHOSEN.mix(0.6).into(),
                        ))
                        .map_err(perr)?;
                }
            }
            chart
                .draw_series(r.budgets.iter().map(|b| {
                    EmptyElement::at((b.bops as f64, b.predicted_top1))
                        + Circle::new((0, 0), 5, CHOSEN.stroke_width(2))
                }))
                .map_err(perr)?
                .label("chosen policy, predicted (val, short fine-tune)")
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
                }))
                .map_err(perr)?
                .label("chosen policy, measured (test, final fine-tune)")
                .legend(|(x, y)| Circle::new((x + 8, y), 5, CHOSEN.filled()));
            for b in &r.budgets {
                obstacles.push(Rect::around(px(b.bops as f64, b.predicted_top1), 6));
            }
            // Budgets that chose the same policy share one label.
            let mut groups: Vec<((i32, i32), Vec<&str>)> = Vec::new();
            for b in &measured {
                let a = px(b.bops as f64, b.measured_top1.unwrap_or_default());
                obstacles.push(Rect::around(a, 6));
                match groups.iter_mut().find(|(p, _)| *p == a) {
                    Some((_, names)) => names.push(&b.label),
                    None => groups.push((a, vec![&b.label])),
                }
            }
            for (a, names) in groups {
                texts.push((a, names.join(", "), CHOSEN));
            }
        }
        let items: Vec<((i32, i32), String)> =
            texts.iter().map(|(a, t, _)| (*a, t.clone())).collect();
        placed = place_labels(&items, &obstacles, bounds);
        markers = obstacles;
        for (p, (_, _, colour)) in placed.iter().zip(&texts) {
            root.draw(&Text::new(
                p.text.clone(),
                (p.rect.x0 + 1, p.rect.y0 + 1),
                ("sans-serif", LABEL_PX).into_font().color(colour),
            ))
            .map_err(perr)?;
        }
        draw_legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        root.present().map_err(perr)?;
    }
    Ok(Some(Top1Plot {
        svg,
        placed,
        markers,
    }))
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
/// (line, right axis) of the policy chosen for budget `b`, one group per unit named on the x
/// axis (rotated when the names do not fit side by side). Both axes leave head room above the
/// data for the legend, so it covers no bar.
pub fn plot_policy_layers(r: &RunReport, b: &BudgetOutcome) -> Result<String> {
    let units = &b.policy.units;
    let n = units.len().max(1);
    let names: Vec<String> = (0..units.len())
        .map(|i| {
            r.unit_names
                .get(i)
                .filter(|_| r.unit_names.len() == units.len())
                .cloned()
                .unwrap_or_else(|| format!("unit {i}"))
        })
        .collect();
    let max_bits = units
        .iter()
        .map(|u| u.wbits.max(u.abits))
        .max()
        .unwrap_or(8)
        .max(8) as f64;
    let longest = names.iter().map(|s| s.chars().count()).max().unwrap_or(1);
    let width = W.max(160 + 26 * n as u32);
    let slot = (width as f64 - 160.0) / n as f64;
    let char_px = 0.62 * 11.0;
    let rotate = longest as f64 * char_px > slot * 0.95;
    let x_area = if rotate {
        (longest as f64 * char_px) as u32 + 30
    } else {
        44
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, 380 + x_area)).into_drawing_area();
        root.fill(&WHITE).map_err(perr)?;
        let caption = format!("Policy {} — {} per unit", b.label, r.arch);
        // The top 35% of both axes is head room for the legend.
        let mut chart = chart_on(&root, caption, 18, (x_area, 48))
            .right_y_label_area_size(56)
            .build_cartesian_2d(-0.6..(n as f64 - 0.4), 0.0..(max_bits + 0.5) / 0.65)
            .map_err(perr)?
            .set_secondary_coord(-0.6..(n as f64 - 0.4), 0.0..1.05 / 0.65);
        let label_font = if rotate {
            ("sans-serif", 11)
                .into_font()
                .transform(FontTransform::Rotate90)
        } else {
            ("sans-serif", 11).into_font()
        };
        chart
            .configure_mesh()
            .y_desc("bits")
            .y_label_formatter(&|y| {
                if *y <= max_bits + 0.5 {
                    format!("{y:.0}")
                } else {
                    String::new()
                }
            })
            .x_labels(n.min(60))
            .x_label_style(label_font)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 {
                    names.get(i as usize).cloned().unwrap_or_default()
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
            .y_label_formatter(&|y| {
                if *y <= 1.0 + 1e-9 {
                    format!("{y:.1}")
                } else {
                    String::new()
                }
            })
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

    /// The contents of the SVG's `<text>` elements (the backend writes each on its own line).
    fn texts(svg: &str) -> Vec<String> {
        let lines: Vec<&str> = svg.lines().collect();
        lines
            .windows(2)
            .filter(|w| w[0].starts_with("<text"))
            .map(|w| w[1].trim().to_string())
            .collect()
    }

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
            "measured Pareto front (test)",
            "chosen policy, predicted (val, short fine-tune)",
            "chosen policy, measured (test, final fine-tune)",
            "toy&lt;net&gt;",
        ] {
            assert!(svg.contains(needle), "missing {needle}");
        }
        assert!(!svg.contains("toy<net>"));
        // frac-0.15 has no measurement: its point is not labelled (its budget line is).
        let t = texts(&svg);
        assert!(t.iter().any(|x| x == "frac-0.05"), "{t:?}");
        assert!(t.iter().any(|x| x == "frac-0.15 limit"), "{t:?}");
        assert!(!t.iter().any(|x| x == "frac-0.15"), "{t:?}");
        let empty = RunReport::default();
        assert_eq!(plot_top1_vs_bops(&empty).unwrap(), None);
    }

    /// Issue 17, case 7: budget lines had no labels, "frac-0.08" and "frac-0.12" printed on top
    /// of each other, a baseline label covered a chosen point, and the uniform baselines were
    /// joined by a zigzag line that read like a front.
    #[test]
    fn labels_never_overlap_and_budget_lines_are_named() {
        let mut r = synthetic();
        // Two budgets that chose the same policy (same point), a third at a uniform baseline's
        // point, and labels sampled over part of the range only.
        let mut same = r.budgets[0].clone();
        same.label = "frac-0.08".into();
        same.max_bops = Some(200_000_000);
        r.budgets.push(same);
        let mut on_uniform = r.budgets[0].clone();
        on_uniform.label = "frac-0.12".into();
        on_uniform.max_bops = Some(300_000_000);
        on_uniform.bops = r.uniform[1].bops;
        on_uniform.measured_top1 = Some(r.uniform[1].measured_top1 + 0.05);
        r.budgets.push(on_uniform);
        let Top1Plot {
            svg,
            placed,
            markers,
        } = top1_plot(&r).unwrap().unwrap();
        for b in &r.budgets {
            let name = format!("{} limit", b.label);
            assert!(
                placed.iter().any(|p| p.text == name) && svg.contains(&name),
                "budget line {} unlabelled",
                b.label
            );
        }
        // One label for the two budgets at the same point.
        assert!(
            placed.iter().any(|p| p.text == "frac-0.05, frac-0.08"),
            "{placed:?}"
        );
        for (i, a) in placed.iter().enumerate() {
            for b in &placed[i + 1..] {
                assert!(!a.rect.overlaps(&b.rect), "{a:?} overlaps {b:?}");
            }
        }
        // No text box covers a uniform or a chosen marker.
        for p in &placed {
            assert!(
                markers.iter().all(|m| !p.rect.overlaps(m)),
                "{p:?} covers a marker"
            );
        }
        let squares = svg
            .lines()
            .filter(|l| l.starts_with("<rect") && l.contains("fill=\"#1F77B4\""))
            .count();
        assert_eq!(
            squares,
            r.uniform.len() + 1,
            "one square per baseline + legend"
        );
        // The uniform baselines are markers only: no polyline in their colour.
        assert!(
            !svg.lines()
                .any(|l| l.contains("<polyline") && l.contains("#1F77B4")),
            "uniform baselines joined by a line"
        );
    }

    #[test]
    fn the_measured_pareto_front_keeps_only_undominated_points() {
        let pts = [
            (10.0, 70.0),
            (20.0, 80.0),
            (30.0, 75.0), // dominated by (20, 80)
            (40.0, 85.0),
            (40.0, 84.0), // same BOPs, lower
            (5.0, f64::NAN),
        ];
        assert_eq!(pareto_front(&pts), vec![0, 1, 3]);
    }

    #[test]
    fn the_placer_moves_a_label_off_markers_and_other_labels() {
        let bounds = Rect {
            x0: 0,
            y0: 0,
            x1: 400,
            y1: 300,
        };
        let a = (200, 150);
        let items = vec![(a, "w4a4".to_string()), (a, "frac-0.12".to_string())];
        let markers = [Rect::around(a, 6), Rect::around((215, 150), 6)];
        let p = place_labels(&items, &markers, bounds);
        assert!(!p[0].rect.overlaps(&p[1].rect));
        for q in &p {
            assert!(q.rect.inside(&bounds));
            assert!(markers.iter().all(|m| !q.rect.overlaps(m)), "{q:?}");
        }
    }

    #[test]
    fn layers_plot_has_one_bar_pair_per_unit_and_names_them() {
        let r = synthetic();
        let svg = plot_policy_layers(&r, &r.budgets[0]).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("keep ratio"));
        // 5 units -> 5 weight bars + 5 activation bars + 2 legend swatches in the two bar colours.
        let w = svg.matches("fill=\"#1F77B4\"").count();
        let a = svg.matches("fill=\"#2CA02C\"").count();
        assert_eq!((w, a), (6, 6), "bars: {w} {a}");
        let t = texts(&svg);
        for n in &r.unit_names {
            let esc = n.replace('<', "&lt;").replace('>', "&gt;");
            assert!(t.contains(&esc), "unit {n} not named: {t:?}");
        }
        assert!(!svg.contains("unit index"));
    }
}
