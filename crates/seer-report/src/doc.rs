//! The report's content as a small document model, rendered to Markdown and to HTML, so both
//! formats always carry the same figures.

use crate::{EXTRAPOLATION_MARK, PLOTS, RunReport, StageTiming, TOP1_PLOT, fmt, layers_plot_name};

/// One block of the document. All text is plain (renderers escape it).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Block {
    /// Heading of level 1–3.
    Heading(u8, String),
    /// A paragraph.
    Para(String),
    /// A table: header and rows of cells.
    Table(Vec<String>, Vec<Vec<String>>),
    /// A bullet list.
    List(Vec<String>),
    /// A plot: its file name in the run directory and its alt text.
    Plot(String, String),
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "—".to_string(), f)
}

pub(crate) fn document(r: &RunReport) -> Vec<Block> {
    use Block::*;
    let mut d = Vec::new();
    d.push(Heading(
        1,
        if r.title.is_empty() {
            "SeerNet-rs compression report".into()
        } else {
            r.title.clone()
        },
    ));
    let mut facts = vec![
        format!("Network: {} at input {}", r.arch, r.input),
        format!("Dataset: {}", r.dataset),
        format!("Seed: {}", r.seed),
    ];
    if let Some(c) = &r.command {
        facts.push(format!("Command: {c}"));
    }
    d.push(List(facts));

    let b = &r.baseline;
    d.push(Heading(2, "Baseline (full precision)".into()));
    d.push(Table(
        vec![
            "test top-1 (%)".into(),
            "val top-1 (%)".into(),
            "MACs".into(),
            "BOPs at w8a8".into(),
            "fp32 size".into(),
            "source".into(),
        ],
        vec![vec![
            format!("{:.2}", b.top1_test),
            opt(b.top1_val, |v| format!("{v:.2}")),
            fmt::si(b.macs),
            fmt::si(b.bops_w8a8),
            fmt::size(b.size_bits_fp32),
            b.source.clone(),
        ]],
    ));

    d.push(Heading(2, "Chosen policies".into()));
    if r.budgets.is_empty() {
        d.push(Para("No budget results.".into()));
    } else {
        d.push(Para(
            "Predicted top-1 is the predictor's estimate under the labelling protocol (validation split, short fine-tune); \
             measured top-1 is on the test split after the final fine-tune. The best uniform baseline is the measured uniform \
             bit-width model with the highest top-1 within the budget (BOPs and size limits; for an accuracy target, at no more \
             BOPs than the chosen policy); margin = measured − that baseline. \
             Model size is what the integer engine stores (packed weights, per-channel scales and biases; the quantity a size \
             budget limits, docs/method.md §2); file is the exported file with its header (network, provenance)."
                .into(),
        ));
        let rows = r
            .budgets
            .iter()
            .map(|x| {
                let limit = match (x.max_bops, x.max_size_bits, &x.accuracy_target) {
                    (Some(bo), Some(s), _) => format!("≤ {} BOPs, ≤ {}", fmt::si(bo), fmt::size(s)),
                    (Some(bo), None, _) => format!("≤ {} BOPs", fmt::si(bo)),
                    (None, Some(s), _) => format!("≤ {}", fmt::size(s)),
                    (None, None, Some(t)) => format!(
                        "test top-1 ≥ {:.2} (drop ≤ {})",
                        t.reference_test_top1 - t.max_drop,
                        t.max_drop
                    ),
                    (None, None, None) => "—".into(),
                };
                let (best, margin) = match r.uniform_for(x) {
                    Some(u) => (
                        format!("{} ({:.2})", u.name, u.measured_top1),
                        opt(x.measured_top1, |m| format!("{:+.2}", m - u.measured_top1)),
                    ),
                    None => ("none within the budget".into(), "—".into()),
                };
                vec![
                    x.label.clone(),
                    limit,
                    format!(
                        "{}{}",
                        fmt::si(x.bops),
                        opt(r.bops_share(x.bops), |s| format!(
                            " ({:.1}% of w8a8)",
                            100.0 * s
                        ))
                    ),
                    fmt::size(x.size_bits),
                    opt(x.file_bytes, |b| fmt::size(8 * b)),
                    opt(x.onnx_bytes, |b| fmt::size(8 * b)),
                    opt(r.compression_ratio(x.size_bits), |c| format!("{c:.1}×")),
                    format!(
                        "{:.2}{}{}",
                        x.predicted_top1,
                        x.predicted_std
                            .map_or(String::new(), |s| format!(" ± {s:.2}")),
                        if x.extrapolation.is_some() {
                            EXTRAPOLATION_MARK
                        } else {
                            ""
                        }
                    ),
                    fmt::top1(x.measured_top1),
                    best,
                    margin,
                ]
            })
            .collect();
        d.push(Table(
            [
                "budget",
                "limit",
                "BOPs",
                "model size",
                "file",
                "ONNX QDQ file",
                "compression vs fp32",
                "predicted top-1 (%)",
                "measured test top-1 (%)",
                "best uniform ≤ BOPs",
                "margin (points)",
            ]
            .map(String::from)
            .to_vec(),
            rows,
        ));
        if r.budgets.iter().any(|x| x.extrapolation.is_some()) {
            d.push(Para(format!(
                "{EXTRAPOLATION_MARK} The prediction extrapolates beyond the predictor's training data (above the highest \
                 label or below the lowest by more than 5% of their range, or policy features outside the labelled \
                 policies' range): a guess outside the data, not an estimate backed by labels."
            )));
        }
        for x in &r.budgets {
            d.push(Heading(3, format!("Policy {}", x.label)));
            let mut facts = vec![
                fmt::policy_summary(&x.policy),
                format!("MACs: {}", fmt::si(x.macs)),
            ];
            if let Some(src) = &x.selected_from {
                facts.push(format!(
                    "Chosen from: {src}{}",
                    x.label_val_top1.map_or(String::new(), |v| format!(
                        " (validation top-1 {v:.2}% under the labelling protocol)"
                    ))
                ));
            }
            if let Some(u) = x.budget_used {
                facts.push(format!(
                    "Budget used: {:.1}%{}",
                    100.0 * u,
                    x.budget_note
                        .as_ref()
                        .map_or(String::new(), |n| format!(" ({n})"))
                ));
            }
            if let Some(why) = &x.extrapolation {
                facts.push(format!(
                    "Predicted top-1 extrapolates {EXTRAPOLATION_MARK}: {why}"
                ));
            }
            if let Some(t) = &x.accuracy_target {
                facts.extend(accuracy_target_facts(r, x, t));
            }
            if let Some(p) = &x.policy_file {
                facts.push(format!("Policy file: {p}"));
            }
            match &x.model_file {
                Some(m) => facts.push(format!("Model file: {m}")),
                None if x.measured_top1.is_some() => facts.push(
                    "Model file: none (the integer export was skipped; run.log says why)".into(),
                ),
                None => {}
            }
            if let Some(o) = &x.onnx_file {
                facts.push(format!(
                    "ONNX QDQ file: {o}{}",
                    x.onnx_bytes
                        .map_or(String::new(), |b| format!(" ({b} bytes)"))
                ));
            }
            d.push(List(facts));
            let rows = x
                .policy
                .units
                .iter()
                .enumerate()
                .map(|(i, u)| {
                    vec![
                        i.to_string(),
                        r.unit_names.get(i).cloned().unwrap_or_else(|| "—".into()),
                        format!("{}", u.prune),
                        format!("{:.2}", 1.0 - u.prune),
                        u.wbits.to_string(),
                        u.abits.to_string(),
                    ]
                })
                .collect();
            d.push(Table(
                [
                    "#",
                    "unit",
                    "prune",
                    "keep",
                    "weight bits",
                    "activation bits",
                ]
                .map(String::from)
                .to_vec(),
                rows,
            ));
            if PLOTS {
                d.push(Plot(
                    layers_plot_name(&x.label),
                    format!("per-unit bits and keep ratio of policy {}", x.label),
                ));
            }
        }
    }

    d.push(Heading(
        2,
        "Uniform bit-width baselines (measured, same final fine-tune)".into(),
    ));
    if r.uniform.is_empty() {
        d.push(Para("None measured in this run.".into()));
    } else {
        let mut u = r.uniform.clone();
        u.sort_by_key(|u| u.bops);
        d.push(Table(
            [
                "baseline",
                "w bits",
                "a bits",
                "prune",
                "BOPs",
                "model size",
                "measured test top-1 (%)",
            ]
            .map(String::from)
            .to_vec(),
            u.iter()
                .map(|u| {
                    vec![
                        u.name.clone(),
                        u.wbits.to_string(),
                        u.abits.to_string(),
                        format!("{}", u.prune),
                        format!(
                            "{}{}",
                            fmt::si(u.bops),
                            opt(r.bops_share(u.bops), |s| format!(" ({:.1}%)", 100.0 * s))
                        ),
                        fmt::size(u.size_bits),
                        format!("{:.2}", u.measured_top1),
                    ]
                })
                .collect(),
        ));
    }

    d.push(Heading(2, "Top-1 vs BOPs".into()));
    if !PLOTS {
        d.push(Para(
            "Plots not drawn: this build has no `plots` feature (seer-report).".into(),
        ));
    } else if r.uniform.is_empty()
        && r.budgets.is_empty()
        && r.front.is_empty()
        && r.labels.is_empty()
    {
        d.push(Para("Nothing to plot.".into()));
    } else {
        d.push(Plot(
            TOP1_PLOT.into(),
            "measured top-1 vs BOPs with uniform baselines and the predicted front".into(),
        ));
    }
    let flagged = r.front.iter().filter(|f| f.extrapolates).count();
    if flagged > 0 {
        d.push(Para(format!(
            "{flagged} of the {} points of the predicted front extrapolate beyond the predictor's training data{}.",
            r.front.len(),
            if PLOTS { " (crosses on the plot)" } else { "" }
        )));
    }

    d.push(Heading(2, "Predictor quality (held-out labels)".into()));
    match &r.predictor {
        Some(p) => d.push(Table(
            [
                "Kendall τ-b",
                "Spearman ρ",
                "RMSE (points)",
                "fitted on",
                "held out",
            ]
            .map(String::from)
            .to_vec(),
            vec![vec![
                format!("{:.3}", p.kendall_tau),
                opt(p.spearman, |s| format!("{s:.3}")),
                format!("{:.3}", p.rmse),
                p.n_train.to_string(),
                p.n_test.to_string(),
            ]],
        )),
        None => d.push(Para("Not evaluated in this run.".into())),
    }
    if let Some(f) = &r.label_fidelity {
        d.push(Para(format!(
            "Label fidelity: Kendall τ-b {:.3} between the labels (short fine-tune) and the \
             validation top-1 after the final fine-tune, over the {} policies of this run that \
             have both (docs/method.md §3).",
            f.kendall_tau, f.n
        )));
    }

    d.push(Heading(2, "Stage timings".into()));
    if r.timings.is_empty() {
        d.push(Para("Not recorded.".into()));
    } else {
        d.push(timings_table(r));
    }

    if !r.settings.is_empty() {
        d.push(Heading(2, "Settings".into()));
        d.push(Table(
            vec!["setting".into(), "value".into()],
            r.settings
                .iter()
                .map(|s| vec![s.name.clone(), s.value.clone()])
                .collect(),
        ));
    }
    if !r.notes.is_empty() {
        d.push(Heading(2, "Notes".into()));
        d.push(List(r.notes.clone()));
    }
    d
}

/// The stage-timings table: one row per stage with this invocation's wall time and, when the
/// run was resumed, every invocation's together; the last row is the measured wall time (not
/// a sum of the rows, which leaves out the time between stages).
fn timings_table(r: &RunReport) -> Block {
    let several = r.invocations > 1 && !r.timings_all.is_empty();
    let mut names: Vec<&str> = r.timings_all.iter().map(|t| t.stage.as_str()).collect();
    for t in &r.timings {
        if !names.contains(&t.stage.as_str()) {
            names.push(&t.stage);
        }
    }
    let secs = |v: &[StageTiming], n: &str| {
        let s: f64 = v.iter().filter(|t| t.stage == n).map(|t| t.seconds).sum();
        if v.iter().any(|t| t.stage == n) {
            fmt::secs(s)
        } else {
            "—".into()
        }
    };
    let mut rows: Vec<Vec<String>> = names
        .iter()
        .map(|n| {
            let mut row = vec![n.to_string(), secs(&r.timings, n)];
            if several {
                row.push(secs(&r.timings_all, n));
            }
            row
        })
        .collect();
    let mut total = vec![
        "total wall time".to_string(),
        opt(r.wall_seconds, fmt::secs),
    ];
    if several {
        total.push(opt(r.wall_seconds_all, fmt::secs));
    }
    rows.push(total);
    let mut head = vec!["stage".to_string(), "this invocation".to_string()];
    if several {
        head.push(format!("all {} invocations", r.invocations));
    }
    Block::Table(head, rows)
}

/// What the report says of an accuracy target (`--max-drop`): how the policy was chosen,
/// whether the drop held on the test split, and the next cheaper and next safer labelled
/// policies.
fn accuracy_target_facts(
    r: &RunReport,
    x: &crate::BudgetOutcome,
    t: &crate::AccuracyTarget,
) -> Vec<String> {
    let share = |bops: u64| {
        opt(r.bops_share(bops), |s| {
            format!(" ({:.2}% of w8a8)", 100.0 * s)
        })
    };
    let mut f = vec![if t.reached_on_labels {
        format!(
            "Accuracy target (max drop {} points): candidates were the labelled policies whose validation top-1 under the \
             labelling protocol reached {:.2}% (the protocol's reference − {}), cheapest first; the first whose validation \
             top-1 after the final fine-tune, less one standard error of it, is within {} of the baseline's is taken",
            t.max_drop, t.label_threshold, t.max_drop, t.max_drop
        )
    } else {
        format!(
            "Accuracy target (max drop {} points): no labelled policy reached {:.2}% validation top-1 under the \
             labelling protocol; this is the most accurate labelled policy",
            t.max_drop, t.label_threshold
        )
    }];
    f.push(match x.measured_top1 {
        Some(m) => {
            let (drop, held) = t.held(m);
            format!(
                "Test split: {m:.2}% after the final fine-tune vs {:.2}% full precision: drop {drop:.2} points, {}",
                t.reference_test_top1,
                if held {
                    format!("within {} — the target held", t.max_drop)
                } else {
                    format!("more than {} — the target did NOT hold", t.max_drop)
                }
            )
        }
        None => "Test split: not measured, so whether the target held is unknown".into(),
    });
    for (k, tr) in t.tried.iter().enumerate() {
        f.push(format!(
            "Final fine-tune {} of {}: {} BOPs{}, label {:.2}%, validation top-1 {:.2}% after the final fine-tune \
             (drop {:.2} vs the baseline's {:.2}%): {}; test top-1 {:.2}%",
            k + 1,
            t.tried.len(),
            fmt::si(tr.bops),
            share(tr.bops),
            tr.label_val_top1,
            tr.final_val_top1,
            t.reference_val_top1 - tr.final_val_top1,
            t.reference_val_top1,
            if tr.accepted { "accepted" } else { "rejected" },
            tr.test_top1
        ));
    }
    f.push(match &t.next_cheaper {
        Some(a) => format!(
            "Next cheaper labelled policy: {} BOPs{}, {}, validation top-1 {:.2}% (below the threshold)",
            fmt::si(a.bops),
            share(a.bops),
            fmt::size(a.size_bits),
            a.label_val_top1
        ),
        None => "Next cheaper labelled policy: none".into(),
    });
    f.push(match &t.next_safer {
        Some(a) => format!(
            "Next safer labelled policy: {} BOPs{}, {}, validation top-1 {:.2}%",
            fmt::si(a.bops),
            share(a.bops),
            fmt::size(a.size_bits),
            a.label_val_top1
        ),
        None => {
            "Next safer labelled policy: none (no dearer labelled policy was more accurate)".into()
        }
    });
    f
}
