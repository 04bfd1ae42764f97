//! The last stage: the run report (`report.md`, `report.html`, `report.json`, plots) and
//! `summary.json`.

use std::time::Instant;

use super::choice::{Choice, Fitted};
use super::finals::Finals;
use super::{Config, Run, Summary};
use crate::error::Result;
use crate::report::{self, RunReport};

impl Run<'_> {
    /// Stage 8: writes the report and `summary.json`, and returns the summary.
    pub(super) fn finish(
        mut self,
        fitted: Fitted,
        choice: Choice,
        finals: Finals,
    ) -> Result<Summary> {
        let t = Instant::now();
        let fidelity = finals.label_fidelity();
        if let Some(f) = &fidelity {
            self.log.line(&format!(
                "label fidelity: Kendall tau {:.3} between labels and the validation top-1 after \
                 the final fine-tune, over {} policies",
                f.kendall_tau, f.n
            ));
        }
        let mut rep = self.report(&fitted, choice.front, finals);
        rep.label_fidelity = fidelity;
        self.timed("report", t);
        self.timings.close();
        rep.timings = self.timings.this().to_vec();
        rep.wall_seconds = Some(self.timings.wall());
        let (all, wall_all) = self.timings.all();
        rep.invocations = self.timings.invocations();
        rep.timings_all = all;
        rep.wall_seconds_all = Some(wall_all);
        let files = report::write_report(&self.out, &rep)?;
        self.log.line(&format!(
            "report: {}",
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let summary = Summary {
            out_dir: self.out.display().to_string(),
            method: self.cfg.method,
            labels: fitted.recs.len(),
            labels_computed: self.computed,
            dropped_tail: self.dropped_tail.clone(),
            budgets: self.budgets_json(&rep),
            predictor_tau: fitted.quality.as_ref().map(|q| q.kendall_tau),
            predictor: fitted.quality,
            predictor_heldout: fitted.heldout,
            label_fidelity_tau: rep.label_fidelity.as_ref().map(|f| f.kendall_tau),
            timings: rep.timings.clone(),
            seconds: self.timings.wall(),
            invocations: rep.invocations,
            seconds_all: wall_all,
            run_seconds: wall_all,
        };
        let js = serde_json::to_string_pretty(&summary).expect("serializes") + "\n";
        crate::store::write_atomic(&self.out.join("summary.json"), js.as_bytes())?;
        self.log.line(&format!("done in {:.1} s", summary.seconds));
        Ok(summary)
    }

    /// The report of the run (timings left empty).
    fn report(&self, fitted: &Fitted, front: Vec<report::FrontPoint>, finals: Finals) -> RunReport {
        let (space, cfg, dname) = (&self.space, self.cfg, self.dname.short_name());
        let labels = fitted
            .recs
            .iter()
            .map(|r| report::LabelPoint {
                bops: r.bops,
                top1: r.top1,
            })
            .collect();
        let mut notes = vec![
            "Labels: validation top-1 after the short fine-tune (docs/method.md §3); budgets: test top-1 after the final fine-tune. The test split is used only for the final figures.".into(),
            "Exported models: physically pruned; quantized weights packed to their bit-widths with per-channel f32 scales, BatchNorm folded, activation clip ranges as requantisations (seer-int integer engine format seernet-int-model v1, run with `seernet infer`); see crates/seer-nn/src/export.rs.".into(),
            format!("Labels computed by the last invocation: {} of {}.", self.computed, fitted.recs.len()),
        ];
        if let Some(d) = &self.dropped_tail {
            notes.push(format!("Label store: {d}."));
        }
        notes.push(format!(
            "Method: {} (docs/method.md §9); label budget {}, labels used {}.{}",
            cfg.method,
            self.label_budget(),
            fitted.recs.len(),
            if cfg.method.uses_predictor() {
                ""
            } else {
                " This method uses no predictor: the predicted column shows each chosen policy's label (validation top-1 after the short fine-tune)."
            }
        ));
        RunReport {
            title: format!(
                "SeerNet-rs compression of {} on {dname} (method {})",
                space.spec().name,
                cfg.method
            ),
            arch: space.spec().name.clone(),
            input: space.spec().input.to_string(),
            dataset: self.dname.id(),
            seed: cfg.seed,
            command: cfg.command.clone(),
            baseline: report::Baseline {
                top1_test: self.base.test_top1,
                top1_val: Some(self.base.val_top1),
                macs: self.budgets.dearest.macs,
                bops_w8a8: self.budgets.w8a8,
                size_bits_fp32: self.base.size_bits_fp32,
                source: self.base.source.clone(),
            },
            settings: settings_table(cfg, &self.protocol.hash()),
            unit_names: space.units().iter().map(|u| u.name.clone()).collect(),
            budgets: finals.outcomes,
            uniform: finals.uniform,
            front,
            labels,
            predictor: fitted.quality.clone(),
            notes,
            ..RunReport::default()
        }
    }

    /// `summary.json`'s per-budget entries: limits, costs, predicted and measured top-1, the
    /// best uniform baseline within the budget and the margin over it
    /// (`RunReport::uniform_for`), files.
    fn budgets_json(&self, rep: &RunReport) -> Vec<serde_json::Value> {
        let w8a8 = self.budgets.w8a8;
        rep.budgets
            .iter()
            .map(|b| {
                let best = rep.uniform_for(b);
                let margin = rep.margin(b).map(|(m, _)| m);
                let target = b.accuracy_target.as_ref().map(|t| {
                    let held = b.measured_top1.map(|m| t.held(m));
                    serde_json::json!({
                        "max_drop": t.max_drop,
                        "reference_test_top1": t.reference_test_top1,
                        "label_threshold": t.label_threshold,
                        "reached_on_labels": t.reached_on_labels,
                        "test_drop": held.map(|h| h.0),
                        "held": held.map(|h| h.1),
                        "next_cheaper": t.next_cheaper,
                        "next_safer": t.next_safer,
                    })
                });
                serde_json::json!({
                    "accuracy_target": target,
                    "label": b.label, "max_bops": b.max_bops, "max_size_bits": b.max_size_bits,
                    "bops": b.bops, "size_bits": b.size_bits,
                    "bops_frac_w8a8": b.bops as f64 / w8a8 as f64,
                    "predicted_val_top1": b.predicted_top1, "test_top1": b.measured_top1,
                    "best_uniform": best.map(|u| &u.name), "best_uniform_test_top1": best.map(|u| u.measured_top1),
                    "margin": margin, "margin_points": margin,
                    "budget_used": b.budget_used, "budget_note": b.budget_note,
                    "policy_file": b.policy_file, "model_file": b.model_file,
                })
            })
            .collect()
    }
}

/// The report's settings table.
fn settings_table(cfg: &Config, protocol_hash: &str) -> Vec<report::Setting> {
    let s = |n: &str, v: String| report::Setting {
        name: n.into(),
        value: v,
    };
    vec![
        s("method", cfg.method.to_string()),
        s("initial labels N0", cfg.n0.to_string()),
        s(
            "active rounds R × labels K",
            format!("{} × {}", cfg.rounds, cfg.k),
        ),
        s("acquisition", cfg.acquisition.to_string()),
        s(
            "verification rounds × pessimism κ",
            format!("{} × {:?}", cfg.verify_rounds, cfg.kappas),
        ),
        s(
            "label fine-tune",
            format!(
                "{} steps, batch {}, lr {}",
                cfg.label_steps, cfg.batch_size, cfg.lr
            ),
        ),
        s(
            "final fine-tune",
            format!(
                "{} steps, batch {}, lr {}",
                cfg.final_steps, cfg.batch_size, cfg.lr
            ),
        ),
        s("prune ratios", format!("{:?}", cfg.space.prune_ratios)),
        s(
            "weight bits / activation bits",
            format!("{:?} / {:?}", cfg.space.wbits, cfg.space.abits),
        ),
        s("first layer searchable", (!cfg.space.fix_first).to_string()),
        s("labelling protocol", protocol_hash.into()),
    ]
}
