//! Tidy checks of the repository's habits (issue 12): every Rust file opens with a `//!` line,
//! every library crate's docs carry an example that runs, and no documentation link leaves
//! the repository (the repository stands alone: `docs/method.md`, not a sibling checkout).

use std::path::{Path, PathBuf};

/// Folders never walked: build output, VCS data, fetched packages, fuzz corpora.
const SKIP_DIRS: &[&str] = &["target", ".git", "node_modules", "corpus", "artifacts", "runs"];

fn walk(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if p.is_dir() {
            if !SKIP_DIRS.contains(&name) && !name.starts_with('.') {
                walk(&p, ext, out);
            }
        } else if p.extension().and_then(|e| e.to_str()) == Some(ext) {
            out.push(p);
        }
    }
}

fn files(ext: &str) -> Vec<PathBuf> {
    let root = seernet_tests::workspace_root();
    let mut out = Vec::new();
    for top in ["crates", "tests", "xtask", "docs", "assets", "fuzz"] {
        walk(&root.join(top), ext, &mut out);
    }
    if ext == "md" {
        for f in ["README.md", "ARCHITECTURE.md"] {
            out.push(root.join(f));
        }
    }
    out
}

fn rel(p: &Path) -> String {
    let root = seernet_tests::workspace_root();
    p.strip_prefix(&root).unwrap_or(p).display().to_string()
}

#[test]
fn every_rust_file_opens_with_a_module_doc_line() {
    let rs = files("rs");
    assert!(rs.len() > 50, "found only {} .rs files", rs.len());
    let bad: Vec<String> = rs
        .iter()
        .filter(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            !text.starts_with("//!")
        })
        .map(|p| rel(p))
        .collect();
    assert!(bad.is_empty(), "files not opening with `//!`: {bad:?}");
}

/// The crate-level doc comment (`//!` lines) of a lib.rs.
fn crate_docs(text: &str) -> String {
    text.lines()
        .filter_map(|l| l.trim_start().strip_prefix("//!"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `docs` holds a fenced Rust code block that rustdoc runs (not `ignore`, `no_run`,
/// `compile_fail` or another language).
fn has_runnable_example(docs: &str) -> bool {
    let mut in_block = false;
    for line in docs.lines() {
        let t = line.trim();
        if let Some(info) = t.strip_prefix("```") {
            if in_block {
                in_block = false;
                continue;
            }
            in_block = true;
            let info = info.trim();
            let runs = info
                .split(',')
                .map(str::trim)
                .all(|tag| matches!(tag, "" | "rust" | "should_panic" | "edition2021" | "edition2024"));
            if runs {
                return true;
            }
        }
    }
    false
}

#[test]
fn every_library_crate_documents_a_runnable_example() {
    let root = seernet_tests::workspace_root();
    let mut libs = Vec::new();
    for e in std::fs::read_dir(root.join("crates")).expect("crates/ exists") {
        let lib = e.expect("dir entry").path().join("src").join("lib.rs");
        if lib.is_file() {
            libs.push(lib);
        }
    }
    assert!(libs.len() >= 8, "found only {} library crates", libs.len());
    let bad: Vec<String> = libs
        .iter()
        .filter(|p| !has_runnable_example(&crate_docs(&std::fs::read_to_string(p).unwrap())))
        .map(|p| rel(p))
        .collect();
    assert!(bad.is_empty(), "library crates whose docs carry no runnable example: {bad:?}");
}

/// Markdown link targets `[text](target)` of `text`.
fn md_links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(j) = rest.find(')') {
            out.push(rest[..j].trim().to_string());
            rest = &rest[j..];
        }
    }
    out
}

/// Problems of one documentation text at `path`: links that leave the repository or point
/// nowhere, and references to the sibling `shared/` checkout.
fn link_problems(path: &Path, text: &str) -> Vec<String> {
    let root = seernet_tests::workspace_root();
    let dir = path.parent().unwrap_or(&root);
    let mut bad = Vec::new();
    if text.contains("../shared") {
        bad.push(format!("{}: refers to ../shared (outside the repository)", rel(path)));
    }
    for link in md_links(text) {
        let target = link.split_whitespace().next().unwrap_or("");
        if target.is_empty()
            || target.starts_with('#')
            || target.contains("://")
            || target.starts_with("mailto:")
            || !target.contains(['/', '.'])
        {
            continue;
        }
        let file = target.split('#').next().unwrap_or("");
        let resolved = dir.join(file);
        let Ok(abs) = resolved.canonicalize() else {
            bad.push(format!("{}: link to missing {target}", rel(path)));
            continue;
        };
        let root_abs = root.canonicalize().expect("root");
        if !abs.starts_with(&root_abs) {
            bad.push(format!("{}: link {target} leaves the repository", rel(path)));
        }
    }
    bad
}

#[test]
fn no_documentation_link_leaves_the_repository() {
    let mut bad = Vec::new();
    for p in files("md") {
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        bad.extend(link_problems(&p, &text));
    }
    for p in files("rs") {
        if p.ends_with("tidy.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        let docs: String = text
            .lines()
            .filter_map(|l| {
                let t = l.trim_start();
                t.strip_prefix("//!").or_else(|| t.strip_prefix("///"))
            })
            .collect::<Vec<_>>()
            .join("\n");
        bad.extend(link_problems(&p, &docs));
    }
    assert!(bad.is_empty(), "documentation links outside the repository:\n{}", bad.join("\n"));
}

#[test]
fn the_checks_themselves_catch_what_they_look_for() {
    assert!(has_runnable_example("x\n```\nlet a = 1;\n```"));
    assert!(has_runnable_example("```rust\nfn main() {}\n```"));
    assert!(!has_runnable_example("```no_run\nx\n```\n```text\ny\n```"));
    assert!(!has_runnable_example("```ignore\nx\n```"));
    let root = seernet_tests::workspace_root();
    let readme = root.join("README.md");
    assert!(link_problems(&readme, "see [map](ARCHITECTURE.md)").is_empty());
    assert_eq!(link_problems(&readme, "see [m](../shared/docs/method.md)").len(), 2);
    assert_eq!(link_problems(&readme, "see [m](docs/nowhere.md)").len(), 1);
    assert!(link_problems(&readme, "see [paper](https://arxiv.org/abs/1)").is_empty());
}
