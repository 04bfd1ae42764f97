//! Training samples (feature rows + accuracy targets) and their CSV input format.
//!
//! CSV format: a header line, then one line per sample; every cell a finite number; fields
//! separated by commas (a field may be wrapped in double quotes, but may not contain a comma).
//! One column is the target (default `top1`); by default every other column is a raw feature.
//! Errors name the file, the line (the header is line 1) and the column.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};

/// The default target column name.
pub const DEFAULT_TARGET: &str = "top1";

/// A numeric CSV table: header names and rows of finite `f64`s, all validated.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvTable {
    /// Where the table came from (file path or a caller-chosen name), for error messages.
    pub source_name: String,
    /// Column names, in file order, all distinct and non-empty.
    pub headers: Vec<String>,
    /// Data rows; each has `headers.len()` finite values.
    pub rows: Vec<Vec<f64>>,
    /// The file line number (1-based; header is line 1) of each row, for error messages.
    pub lines: Vec<usize>,
}

fn unquote(s: &str) -> &str {
    let t = s.trim();
    if t.len() >= 2 && t.starts_with('"') && t.ends_with('"') {
        t[1..t.len() - 1].trim()
    } else {
        t
    }
}

impl CsvTable {
    /// Reads and validates a CSV file (see the module docs for the format).
    ///
    /// Errors: [`Error::Io`] if unreadable; [`Error::Csv`] naming line and column for an empty
    /// file, an empty or duplicate header, a row with the wrong number of cells, or a cell
    /// that is not a finite number (`NaN`, `inf` and text are rejected).
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|error| Error::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses CSV text; `source_name` is used in error messages. Same errors as [`Self::read`].
    pub fn parse(text: &str, source_name: &str) -> Result<Self> {
        let err = |message: String| Error::Csv {
            source_name: source_name.to_string(),
            message,
        };
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim_end_matches('\r')));
        let Some((_, header_line)) = lines.by_ref().find(|(_, l)| !l.trim().is_empty()) else {
            return Err(err("empty file: expected a header line".into()));
        };
        let headers: Vec<String> = header_line
            .split(',')
            .map(|h| unquote(h).to_string())
            .collect();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (j, h) in headers.iter().enumerate() {
            if h.is_empty() {
                return Err(err(format!("header: column {} has an empty name", j + 1)));
            }
            if let Some(first) = seen.insert(h.as_str(), j) {
                return Err(err(format!(
                    "header: duplicate column name {h:?} (columns {} and {})",
                    first + 1,
                    j + 1
                )));
            }
        }
        let mut rows = Vec::new();
        let mut line_nos = Vec::new();
        for (lineno, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            let cells: Vec<&str> = line.split(',').collect();
            if cells.len() != headers.len() {
                return Err(err(format!(
                    "line {lineno}: {} cells, but the header has {} columns",
                    cells.len(),
                    headers.len()
                )));
            }
            let mut row = Vec::with_capacity(cells.len());
            for (j, cell) in cells.iter().enumerate() {
                let c = unquote(cell);
                let v: f64 = c.parse().map_err(|_| {
                    err(format!(
                        "line {lineno}, column {} ({:?}): {c:?} is not a number",
                        j + 1,
                        headers[j]
                    ))
                })?;
                if !v.is_finite() {
                    return Err(err(format!(
                        "line {lineno}, column {} ({:?}): {c:?} is not a finite number",
                        j + 1,
                        headers[j]
                    )));
                }
                row.push(v);
            }
            rows.push(row);
            line_nos.push(lineno);
        }
        if rows.is_empty() {
            return Err(err("no data rows after the header".into()));
        }
        Ok(Self {
            source_name: source_name.to_string(),
            headers,
            rows,
            lines: line_nos,
        })
    }

    /// Index of column `name`, or [`Error::Csv`] listing the available columns.
    pub fn column(&self, name: &str) -> Result<usize> {
        self.headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| Error::Csv {
                source_name: self.source_name.clone(),
                message: format!(
                    "no column named {name:?} (columns: {})",
                    self.headers.join(", ")
                ),
            })
    }

    /// Splits into samples: `target` is the target column and every other column a raw feature.
    pub fn into_samples(self, target: &str) -> Result<Samples> {
        let t = self.column(target)?;
        if self.headers.len() < 2 {
            return Err(Error::Csv {
                source_name: self.source_name,
                message: format!("only the target column {target:?}: no feature columns"),
            });
        }
        let feature_names = self
            .headers
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != t)
            .map(|(_, h)| h.clone())
            .collect();
        let y = self.rows.iter().map(|r| r[t]).collect();
        let x = self
            .rows
            .into_iter()
            .map(|r| {
                r.into_iter()
                    .enumerate()
                    .filter(|&(j, _)| j != t)
                    .map(|(_, v)| v)
                    .collect()
            })
            .collect();
        Samples::new(feature_names, target.to_string(), x, y)
    }
}

/// A set of labelled samples: feature rows `x` (`n × d`) and targets `y` (`n`, e.g. top-1 in %).
#[derive(Debug, Clone, PartialEq)]
pub struct Samples {
    feature_names: Vec<String>,
    target_name: String,
    x: Vec<Vec<f64>>,
    y: Vec<f64>,
}

impl Samples {
    /// Builds a sample set. Errors: [`Error::Shape`] if rows differ in length from
    /// `feature_names` or `x.len() != y.len()`; [`Error::NonFinite`] naming the row (0-based)
    /// and feature for any NaN/inf; [`Error::TooFewSamples`] if empty.
    pub fn new(
        feature_names: Vec<String>,
        target_name: String,
        x: Vec<Vec<f64>>,
        y: Vec<f64>,
    ) -> Result<Self> {
        if x.len() != y.len() {
            return Err(Error::Shape(format!(
                "{} feature rows but {} targets",
                x.len(),
                y.len()
            )));
        }
        if x.is_empty() {
            return Err(Error::TooFewSamples(
                "a sample set needs at least one row".into(),
            ));
        }
        for (i, (row, &t)) in x.iter().zip(&y).enumerate() {
            check_row(row, &feature_names, ("", i), "expected")?;
            if !t.is_finite() {
                return Err(Error::NonFinite(format!(
                    "row {i}, target {target_name:?}: {t}"
                )));
            }
        }
        Ok(Self {
            feature_names,
            target_name,
            x,
            y,
        })
    }

    /// Reads `path` as CSV with target column `target` and all other columns as raw features.
    pub fn from_csv(path: &Path, target: &str) -> Result<Self> {
        CsvTable::read(path)?.into_samples(target)
    }

    /// Number of samples `n`.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// Always false (a sample set has at least one row); present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// Number of features `d`.
    pub fn n_features(&self) -> usize {
        self.feature_names.len()
    }

    /// Feature names (length `d`).
    pub fn feature_names(&self) -> &[String] {
        &self.feature_names
    }

    /// Target column name.
    pub fn target_name(&self) -> &str {
        &self.target_name
    }

    /// Feature rows (`n × d`).
    pub fn x(&self) -> &[Vec<f64>] {
        &self.x
    }

    /// Targets (length `n`).
    pub fn y(&self) -> &[f64] {
        &self.y
    }

    /// The samples at `idx` (in that order; repeats allowed). Panics if an index is out of range.
    pub fn subset(&self, idx: &[usize]) -> Samples {
        Samples {
            feature_names: self.feature_names.clone(),
            target_name: self.target_name.clone(),
            x: idx.iter().map(|&i| self.x[i].clone()).collect(),
            y: idx.iter().map(|&i| self.y[i]).collect(),
        }
    }
}

/// Checks feature row `i` (named `{prefix}row {i}` in messages): `names.len()` values, all
/// finite. Errors: [`Error::Shape`] "... has n features, `{expects}` d", [`Error::NonFinite`]
/// naming the feature.
pub(crate) fn check_row(
    row: &[f64],
    names: &[String],
    (prefix, i): (&str, usize),
    expects: &str,
) -> Result<()> {
    let d = names.len();
    if row.len() != d {
        return Err(Error::Shape(format!(
            "{prefix}row {i} has {} features, {expects} {d}",
            row.len()
        )));
    }
    if let Some(j) = row.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite(format!(
            "{prefix}row {i}, feature {:?}: {}",
            names[j], row[j]
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Samples> {
        CsvTable::parse(s, "t.csv")?.into_samples("top1")
    }

    #[test]
    fn parses_and_splits_target() {
        let s = parse("a,top1,b\n1,80.5,2\n3,81,4\n\n").unwrap();
        assert_eq!(s.feature_names(), &["a".to_string(), "b".to_string()]);
        assert_eq!(s.x(), &[vec![1.0, 2.0], vec![3.0, 4.0]]);
        assert_eq!(s.y(), &[80.5, 81.0]);
    }

    #[test]
    fn errors_name_row_and_column() {
        let e = parse("a,b\n1,2\n").unwrap_err().to_string();
        assert!(e.contains("no column named \"top1\""), "{e}");
        let e = parse("a,top1\n1,2\n1,x\n").unwrap_err().to_string();
        assert!(
            e.contains("line 3, column 2 (\"top1\")") && e.contains("not a number"),
            "{e}"
        );
        let e = parse("a,top1\n1,2\nNaN,3\n").unwrap_err().to_string();
        assert!(
            e.contains("line 3, column 1 (\"a\")") && e.contains("not a finite"),
            "{e}"
        );
        let e = parse("a,top1,a\n1,2,3\n").unwrap_err().to_string();
        assert!(
            e.contains("duplicate column name \"a\" (columns 1 and 3)"),
            "{e}"
        );
        let e = parse("a,top1\n1,2,3\n").unwrap_err().to_string();
        assert!(e.contains("line 2: 3 cells"), "{e}");
        let e = parse("").unwrap_err().to_string();
        assert!(e.contains("empty file"), "{e}");
        let e = parse("a,top1\n").unwrap_err().to_string();
        assert!(e.contains("no data rows"), "{e}");
        let e = parse("top1\n1\n").unwrap_err().to_string();
        assert!(e.contains("no feature columns"), "{e}");
    }
}
