//! Mapping policy CSV columns onto a seer-policy search space, so a predictor trained on a
//! CSV can later drive the search (docs/method.md §1 encoding).
//!
//! Columns (unit index `i` in [`SearchSpace::units`] order, 0-based):
//! `prune_<i>` (pruning ratio; absent → 0), `bits_<i>` (weights and activations share it), or
//! `wbits_<i>` and `abits_<i>` (the names of [`SearchSpace::feature_names`], read back by
//! [`GeneKind::parse_feature`]). Every other non-target column is an error, as is a unit with
//! no bit-width, a unit index outside the space, or both `bits_<i>` and `wbits_<i>`/`abits_<i>`.
//! Features are the encoding `SearchSpace::encode(policy)`, named by [`gene_feature_names`].

use seer_policy::{GeneKind, Policy, SearchSpace, UnitPolicy};

use crate::data::{CsvTable, Samples};
use crate::error::{Error, Result};

/// Feature name of every gene: `"<unit name>.<kind>"`, kind ∈ {prune, wbits, abits, bits}
/// ([`GeneKind::name`]).
pub fn gene_feature_names(space: &SearchSpace) -> Vec<String> {
    space
        .genes()
        .iter()
        .map(|g| format!("{}.{}", space.units()[g.unit].name, g.kind))
        .collect()
}

/// Slot of a column kind in the per-unit column table `[prune, bits, wbits, abits]`.
fn slot(kind: GeneKind) -> usize {
    match kind {
        GeneKind::Prune => 0,
        GeneKind::Bits => 1,
        GeneKind::WBits => 2,
        GeneKind::ABits => 3,
    }
}

/// Reads `table` as policies of `space` (see the module docs) with target column `target`.
///
/// Returns the samples (features = docs/method.md §1 encoding, named by [`gene_feature_names`])
/// and the decoded policies, row by row. Errors: [`Error::Csv`] naming the column for an
/// unknown or out-of-range column, [`Error::Space`] naming the line and unit for a policy
/// the space rejects (bits not among the candidates, a ratio outside [0, 1), ...).
pub fn samples_from_table(
    table: &CsvTable,
    target: &str,
    space: &SearchSpace,
) -> Result<(Samples, Vec<Policy>)> {
    let t = table.column(target)?;
    let n_units = space.units().len();
    let csv_err = |message: String| Error::Csv {
        source_name: table.source_name.clone(),
        message,
    };
    // Per unit: column index of prune, bits, wbits, abits.
    let mut cols = vec![[None::<usize>; 4]; n_units];
    for (j, h) in table.headers.iter().enumerate() {
        if j == t {
            continue;
        }
        let Some((kind, u)) = GeneKind::parse_feature(h) else {
            return Err(csv_err(format!(
                "column {} ({h:?}) is not a policy column (prune_<i>, bits_<i>, wbits_<i>, abits_<i>); \
                 drop it or leave out --arch to use raw features",
                j + 1
            )));
        };
        if u >= n_units {
            return Err(csv_err(format!(
                "column {} ({h:?}): unit {u} does not exist; {} has {n_units} searchable units (0..{})",
                j + 1,
                space.spec().name,
                n_units.saturating_sub(1)
            )));
        }
        cols[u][slot(kind)] = Some(j);
    }
    for (u, c) in cols.iter().enumerate() {
        let name = &space.units()[u].name;
        let [_, b, w, a] = *c;
        match (b, w, a) {
            (Some(_), None, None) | (None, Some(_), Some(_)) => {}
            (Some(_), _, _) => {
                return Err(csv_err(format!(
                    "unit {u} ({name}): both bits_{u} and wbits_{u}/abits_{u} given"
                )));
            }
            _ => {
                return Err(csv_err(format!(
                    "unit {u} ({name}): no bit-width column (need bits_{u}, or wbits_{u} and abits_{u})"
                )));
            }
        }
    }
    let mut x = Vec::with_capacity(table.rows.len());
    let mut policies = Vec::with_capacity(table.rows.len());
    for (row, &line) in table.rows.iter().zip(&table.lines) {
        let bits = |j: usize| -> Result<u32> {
            let v = row[j];
            let range = f64::from(seer_policy::MIN_BITS)..=f64::from(seer_policy::MAX_BITS);
            if v.fract() != 0.0 || !range.contains(&v) {
                return Err(csv_err(format!(
                    "line {line}, column {} ({:?}): bit-width {v} is not an integer in {}..={}",
                    j + 1,
                    table.headers[j],
                    seer_policy::MIN_BITS,
                    seer_policy::MAX_BITS
                )));
            }
            Ok(v as u32)
        };
        let mut units = Vec::with_capacity(n_units);
        for c in &cols {
            let [p, b, w, a] = *c;
            let (wbits, abits) = match b {
                Some(b) => (bits(b)?, bits(b)?),
                None => (bits(w.unwrap())?, bits(a.unwrap())?),
            };
            units.push(UnitPolicy {
                prune: p.map_or(0.0, |j| row[j]),
                wbits,
                abits,
            });
        }
        let policy = Policy {
            arch: space.spec().name.clone(),
            input: space.spec().input,
            units,
        };
        let enc = space
            .encode(&policy)
            .map_err(|e| Error::Space(format!("{}: line {line}: {e}", table.source_name)))?;
        x.push(enc);
        policies.push(policy);
    }
    let y = table.rows.iter().map(|r| r[t]).collect();
    Ok((
        Samples::new(gene_feature_names(space), target.to_string(), x, y)?,
        policies,
    ))
}

/// The one-step-cheaper neighbours of a discrete policy (candidate indices `idx`, one per
/// gene), as encodings: for each gene, the next larger pruning ratio or the next smaller
/// bit-width, all other genes unchanged. These are the `c` of the counterfactual sensitivity
/// score u(x) (docs/method.md §5, [`crate::Predictor::counterfactual_scores`]); the cheapest
/// policy has none. Errors: [`Error::Space`] if `idx` does not fit the space.
pub fn cheaper_neighbours(space: &SearchSpace, idx: &[usize]) -> Result<Vec<Vec<f64>>> {
    let base = space
        .encode_indices(idx)
        .map_err(|e| Error::Space(e.to_string()))?;
    let mut out = Vec::new();
    for (g, gene) in space.genes().iter().enumerate() {
        let next = match gene.kind {
            GeneKind::Prune => (idx[g] + 1 < gene.candidates.len()).then(|| idx[g] + 1),
            _ => idx[g].checked_sub(1),
        };
        if let Some(k) = next {
            let mut x = base.clone();
            x[g] = space.gene_coords(g)[k];
            out.push(x);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use seer_policy::{InputShape, SpaceConfig, builtin};

    /// The peer data's space: ResNet-20, masked residual pruning, shared bits (README of the data).
    fn peer_space() -> SearchSpace {
        let spec = builtin(
            "resnet20",
            Some(InputShape { h: 32, w: 32, c: 3 }),
            Some(10),
        )
        .unwrap();
        SearchSpace::new(spec, SpaceConfig::peer_resnet20()).unwrap()
    }

    fn header(l: usize) -> String {
        let mut h: Vec<String> = (0..l).map(|i| format!("prune_{i}")).collect();
        h.extend((0..l).map(|i| format!("bits_{i}")));
        h.push("top1".into());
        h.join(",")
    }

    #[test]
    fn peer_layout_maps_onto_resnet20() {
        let space = peer_space();
        assert_eq!(space.units().len(), 18);
        let row: Vec<String> = (0..18)
            .map(|i| ["0.25", "0.5", "0.75"][i % 3].to_string())
            .chain((0..18).map(|i| (2 + i % 4).to_string()))
            .chain(["85.5".to_string()])
            .collect();
        let csv = format!("{}\n{}\n", header(18), row.join(","));
        let table = CsvTable::parse(&csv, "p.csv").unwrap();
        let (s, pols) = samples_from_table(&table, "top1", &space).unwrap();
        assert_eq!(s.n_features(), space.dim());
        assert_eq!(s.x()[0], space.encode(&pols[0]).unwrap());
        assert_eq!(pols[0].units[2].prune, 0.75);
        assert_eq!((pols[0].units[5].wbits, pols[0].units[5].abits), (3, 3));
        assert_eq!(s.y(), &[85.5]);
    }

    #[test]
    fn cheaper_neighbours_cost_less() {
        let space = peer_space();
        let idx: Vec<usize> = (0..space.dim()).map(|g| g % 3).collect();
        let base = space.cost_indices(&idx).unwrap().total_bops;
        let nb = cheaper_neighbours(&space, &idx).unwrap();
        // Every gene not already at its cheapest candidate gives one neighbour.
        let movable = space
            .genes()
            .iter()
            .zip(&idx)
            .filter(|&(g, &i)| {
                if g.kind == GeneKind::Prune {
                    i + 1 < g.candidates.len()
                } else {
                    i > 0
                }
            })
            .count();
        assert_eq!(nb.len(), movable);
        for x in &nb {
            let p = space.decode(x).unwrap();
            assert!(space.cost(&p).unwrap().total_bops <= base);
        }
        assert!(
            cheaper_neighbours(&space, &space.cheapest())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn bad_columns_are_named() {
        let space = peer_space();
        let ok_row = |l: usize| {
            vec!["0.5"; l]
                .into_iter()
                .chain(vec!["4"; l])
                .chain(["80"])
                .collect::<Vec<_>>()
                .join(",")
        };
        let csv = |l: usize, row: String| format!("{}\n{row}\n", header(l));
        for (text, needles) in [
            (
                csv(19, ok_row(19)),
                &["\"prune_18\"", "18 searchable units"][..],
            ),
            (csv(17, ok_row(17)), &["unit 17", "no bit-width column"]),
            (
                "foo,top1\n1,2\n".to_string(),
                &["\"foo\"", "not a policy column"],
            ),
            (
                csv(18, ok_row(18).replacen("4", "7", 1)),
                &["p.csv: line 2"],
            ),
        ] {
            let t = CsvTable::parse(&text, "p.csv").unwrap();
            let e = samples_from_table(&t, "top1", &space)
                .unwrap_err()
                .to_string();
            assert!(needles.iter().all(|n| e.contains(n)), "{e}");
        }
    }
}
