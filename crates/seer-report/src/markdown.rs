//! `report.md`: the report as GitHub-flavoured Markdown; plots are linked as SVG files beside it.

use crate::RunReport;
use crate::doc::{Block, document};
use crate::html::escape_markup;

/// Escapes text for Markdown: HTML-special characters become entities (a renderer would
/// otherwise pass raw HTML through), and Markdown punctuation that could start markup is
/// backslash-escaped. Newlines become spaces (cells and list items are one line).
pub(crate) fn md_escape(s: &str) -> String {
    escape_markup(s, |c, out| match c {
        '\n' | '\r' => out.push(' '),
        '\\' | '`' | '*' | '_' | '[' | ']' | '|' | '#' | '!' => {
            out.push('\\');
            out.push(c);
        }
        c => out.push(c),
    })
}

/// Renders `report.md`.
pub fn render_markdown(r: &RunReport) -> String {
    let mut s = String::new();
    for b in document(r) {
        match b {
            Block::Heading(level, t) => {
                s += &format!("{} {}\n\n", "#".repeat(level as usize), md_escape(&t));
            }
            Block::Para(t) => s += &format!("{}\n\n", md_escape(&t)),
            Block::List(items) => {
                for i in items {
                    s += &format!("- {}\n", md_escape(&i));
                }
                s += "\n";
            }
            Block::Table(head, rows) => {
                let line = |cells: &[String]| {
                    format!(
                        "| {} |\n",
                        cells
                            .iter()
                            .map(|c| md_escape(c))
                            .collect::<Vec<_>>()
                            .join(" | ")
                    )
                };
                s += &line(&head);
                s += &format!("|{}\n", "---|".repeat(head.len()));
                for r in rows {
                    s += &line(&r);
                }
                s += "\n";
            }
            Block::Plot(file, alt) => s += &format!("![{}]({})\n\n", md_escape(&alt), file),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::synthetic;

    #[cfg(feature = "plots")]
    #[test]
    fn renders_what_it_is_given() {
        let r = synthetic();
        let md = render_markdown(&r);
        assert!(md.starts_with("# Synthetic &lt;test&gt; &amp; \"report\"\n"));
        // Baseline, both budgets, the uniform table, predictor and timings.
        for needle in [
            "| 92.31 | 92.90 |",
            "frac-0.05",
            "frac-0.15",
            "| w2a2 | 2 | 2 | 0 |",
            "| 0.710 | 0.880 | 0.420 | 96 | 16 |",
            "| labelling | 13m 32s |",
            "![measured top-1 vs BOPs",
            "(layers-frac-0.05.svg)",
            "| 90.20 | w2a2 (85.00) | +5.20 |",
            "not measured",
            "14.4×",
            "conv3&lt;x&gt;",
            "Budget used: 99.2%",
            "Budget used: 99.0% (test note &lt;b&gt;)",
            "Label fidelity: Kendall τ-b 0.833",
            "over the 9 policies",
        ] {
            assert!(md.contains(needle), "missing {needle:?} in\n{md}");
        }
        assert!(!md.contains("<script>") && !md.contains("toy<net>"));
        // Issue 17, case 6: the timings counted the total twice and a resumed run replaced the
        // real run's; now one column per scope and a measured wall-time row.
        for needle in [
            "| stage | this invocation | all 2 invocations |",
            "| labelling | 13m 32s | 20m 00s |",
            "| total wall time | 13m 35s | 20m 31s |",
        ] {
            assert!(md.contains(needle), "missing {needle:?} in\n{md}");
        }
        assert!(!md.contains("| total |") && !md.contains("this invocation)"));
        // The model's stored size and the file's size are separate columns.
        assert!(md.contains("| model size | file | ONNX QDQ file |"), "{md}");
        assert!(md.contains("| 75.00 KB | 81.23 KB | 152.35 KB |"), "{md}");
        // Issue 20: the ONNX QDQ export's bytes on disk, in the table and the policy's facts.
        assert!(
            md.contains("ONNX QDQ file: model-frac-0.05.onnx (152346 bytes)"),
            "{md}"
        );
        // The unmeasured budget gets no margin.
        let row = md.lines().find(|l| l.starts_with("| frac-0.15 |")).unwrap();
        assert!(
            row.contains("not measured") && row.ends_with("| w3a3 (88.40) | — |"),
            "{row}"
        );
        // Every table row has as many cells as its header.
        let mut cols = None;
        for l in md.lines() {
            if l.starts_with("|---") {
                continue;
            }
            if l.starts_with('|') {
                let n = l.matches(" | ").count();
                assert_eq!(*cols.get_or_insert(n), n, "ragged table row: {l}");
            } else {
                cols = None;
            }
        }
    }

    #[test]
    fn extrapolated_predictions_are_marked_with_a_legend() {
        let mut r = synthetic();
        let md = render_markdown(&r);
        let row = |md: &str, label: &str| {
            md.lines()
                .find(|l| l.starts_with(&format!("| {label} |")))
                .unwrap()
                .to_string()
        };
        // frac-0.15 extrapolates, frac-0.05 does not.
        assert!(row(&md, "frac-0.15").contains("| 91.40† |"), "{md}");
        assert!(row(&md, "frac-0.05").contains("| 89.50 ± 0.30 |"), "{md}");
        let legend = "† The prediction extrapolates beyond the predictor's training data";
        assert_eq!(md.matches(legend).count(), 1, "{md}");
        assert!(
            md.contains("- Predicted top-1 extrapolates †: above the highest training label\n")
        );
        assert!(md.contains("1 of the 3 points of the predicted front extrapolate"));
        // Nothing flagged: no marker, no legend, no front note.
        r.budgets[1].extrapolation = None;
        r.front.iter_mut().for_each(|f| f.extrapolates = false);
        let md = render_markdown(&r);
        assert!(!md.contains('†') && !md.contains("extrapolate"), "{md}");
    }

    #[test]
    fn empty_report_claims_nothing() {
        let md = render_markdown(&RunReport::default());
        assert!(
            md.contains("No budget results.")
                && md.contains("None measured")
                && md.contains("Not evaluated")
        );
        assert!(!md.contains(".svg"));
    }
}
