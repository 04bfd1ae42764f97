//! `report.html`: one self-contained page (inline CSS and inline SVG plots, no external assets).

use crate::Result;
#[cfg(not(feature = "plots"))]
use crate::RunReport;
use crate::doc::{Block, document};
#[cfg(feature = "plots")]
use crate::{RunReport, TOP1_PLOT, layers_plot_name, plot_policy_layers, plot_top1_vs_bops};

/// Escapes text for HTML element content and attribute values.
pub(crate) fn html_escape(s: &str) -> String {
    escape_markup(s, |c, out| match c {
        '"' => out.push_str("&quot;"),
        '\'' => out.push_str("&#39;"),
        c => out.push(c),
    })
}

/// Copies `s` with `&`, `<` and `>` as HTML entities, handing every other character to
/// `other` (which appends it, escaped as its format needs).
pub(crate) fn escape_markup(s: &str, mut other: impl FnMut(char, &mut String)) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => other(c, &mut out),
        }
    }
    out
}

const CSS: &str = "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}\
th{background:#f3f3f3}td{font-variant-numeric:tabular-nums}figure{margin:1em 0}figcaption{color:#555;font-size:.9em}\
svg{max-width:100%;height:auto}";

/// Renders `report.html` with every plot inlined. Err(Report) when a plot cannot be drawn.
pub fn render_html(r: &RunReport) -> Result<String> {
    let doc = document(r);
    let title = doc
        .iter()
        .find_map(|b| {
            if let Block::Heading(1, t) = b {
                Some(t.clone())
            } else {
                None
            }
        })
        .unwrap_or_default();
    let mut s = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n",
        html_escape(&title)
    );
    for b in doc {
        match b {
            Block::Heading(level, t) => s += &format!("<h{level}>{}</h{level}>\n", html_escape(&t)),
            Block::Para(t) => s += &format!("<p>{}</p>\n", html_escape(&t)),
            Block::List(items) => {
                s += "<ul>\n";
                for i in items {
                    s += &format!("<li>{}</li>\n", html_escape(&i));
                }
                s += "</ul>\n";
            }
            Block::Table(head, rows) => {
                s += "<table>\n<thead><tr>";
                for h in head {
                    s += &format!("<th>{}</th>", html_escape(&h));
                }
                s += "</tr></thead>\n<tbody>\n";
                for row in rows {
                    s += "<tr>";
                    for c in row {
                        s += &format!("<td>{}</td>", html_escape(&c));
                    }
                    s += "</tr>\n";
                }
                s += "</tbody>\n</table>\n";
            }
            #[cfg(not(feature = "plots"))]
            Block::Plot(..) => {}
            #[cfg(feature = "plots")]
            Block::Plot(file, alt) => {
                let svg = if file == TOP1_PLOT {
                    plot_top1_vs_bops(r)?
                } else {
                    match r
                        .budgets
                        .iter()
                        .find(|b| layers_plot_name(&b.label) == file)
                    {
                        Some(b) => Some(plot_policy_layers(r, b)?),
                        None => None,
                    }
                };
                if let Some(svg) = svg {
                    s += &format!(
                        "<figure role=\"img\" aria-label=\"{0}\">\n{1}\n<figcaption>{0}</figcaption>\n</figure>\n",
                        html_escape(&alt),
                        strip_xml_prolog(&svg)
                    );
                }
            }
        }
    }
    s += "</body>\n</html>\n";
    Ok(s)
}

/// An SVG document without an `<?xml ...?>` prolog, ready to inline in HTML.
#[cfg(feature = "plots")]
fn strip_xml_prolog(svg: &str) -> &str {
    let t = svg.trim_start();
    match (t.starts_with("<?xml"), t.find("?>")) {
        (true, Some(i)) => t[i + 2..].trim_start(),
        _ => t,
    }
}

#[cfg(all(test, feature = "plots"))]
mod tests {
    use super::*;
    use crate::tests::synthetic;

    #[test]
    fn self_contained_and_escaped() {
        let r = synthetic();
        let h = render_html(&r).unwrap();
        assert!(h.starts_with("<!DOCTYPE html>") && h.ends_with("</html>\n"));
        assert_eq!(
            h.matches("<svg").count(),
            3,
            "top-1 plot + one per budget, inline"
        );
        // No external assets of any kind.
        for bad in [
            "src=", "href=", "<link", "<img", "url(", "@import", "<script",
        ] {
            assert!(!h.contains(bad), "found {bad}");
        }
        assert!(h.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(h.contains("<title>Synthetic &lt;test&gt; &amp; &quot;report&quot;</title>"));
        assert!(h.contains("cargo xtask compress --out &#39;a&lt;b&gt;&#39;"));
        assert!(h.contains("<td>+5.20</td>") && h.contains("<td>not measured</td>"));
        // The extrapolating prediction keeps its marker.
        assert!(h.contains("<td>91.40†</td>") && h.contains("† The prediction extrapolates"));
        // Tags balance: every table and figure opened is closed.
        for tag in ["table", "figure", "ul", "tr"] {
            assert_eq!(
                h.matches(&format!("<{tag}")).count(),
                h.matches(&format!("</{tag}>")).count(),
                "{tag}"
            );
        }
    }

    #[test]
    fn escape() {
        assert_eq!(html_escape("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&#39;");
        assert_eq!(
            strip_xml_prolog("<?xml version=\"1.0\"?>\n<svg/>"),
            "<svg/>"
        );
    }
}
