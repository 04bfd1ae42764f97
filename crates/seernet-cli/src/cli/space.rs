//! `seernet space`: the searchable units, genes and residual tie groups of a search space.

use std::fmt::Write as _;

use anyhow::Result;
use clap::Args;

use super::net::{NetArgs, SpaceArgs};

/// Arguments of `seernet space`.
#[derive(Args, Debug)]
pub struct SpaceArgsCmd {
    #[command(flatten)]
    net: NetArgs,
    #[command(flatten)]
    space: SpaceArgs,
    /// Print one JSON object instead of the listing.
    #[arg(long)]
    json: bool,
    /// Print the network itself in the user JSON format (docs/network-spec.md), e.g. to
    /// start a custom network from a built-in one.
    #[arg(long, conflicts_with = "json")]
    network_json: bool,
}

/// Runs `seernet space`.
pub fn run(args: SpaceArgsCmd) -> Result<()> {
    let mut o = String::new();
    let spec = args.net.spec()?;
    if args.network_json {
        return super::emit(&spec.to_json());
    }
    let space = args.space.space(spec)?;
    let spec = space.spec();
    let names = |ls: &[usize]| {
        ls.iter()
            .map(|&l| spec.layers[l].name.clone())
            .collect::<Vec<_>>()
    };
    let lo = space.totals_indices(&space.cheapest())?;
    let hi = space.totals_indices(&space.most_expensive())?;
    if args.json {
        let units: Vec<_> = space
            .units()
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let g = space.unit_genes(i);
                let mut gs = vec![g.prune, g.wbits];
                if g.abits != g.wbits {
                    gs.push(g.abits);
                }
                serde_json::json!({
                    "index": i,
                    "name": u.name,
                    "layers": names(&u.layers),
                    "prunable": u.prunable,
                    "genes": gs.iter().map(|&k| serde_json::json!({
                        "gene": k,
                        "kind": space.genes()[k].kind,
                        "candidates": space.genes()[k].candidates,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let v = serde_json::json!({
            "arch": spec.name,
            "input": spec.input.to_string(),
            "config": space.config(),
            "dim": space.dim(),
            "units": units,
            "tie_groups": space.tie_groups().iter().map(|g| names(g)).collect::<Vec<_>>(),
            "fixed_layers": names(space.fixed_layers()),
            "min_bops": lo.bops, "max_bops": hi.bops,
            "min_size_bits": lo.size_bits, "max_size_bits": hi.size_bits,
        });
        writeln!(o, "{v}")?;
        return super::emit(&o);
    }
    let c = space.config();
    writeln!(
        o,
        "{} ({}): {} searchable units, {} genes; residual pruning {}, {} bits",
        spec.name,
        spec.input,
        space.units().len(),
        space.dim(),
        c.residual_pruning,
        if c.shared_bits {
            "shared"
        } else {
            "separate weight/activation"
        }
    )?;
    writeln!(
        o,
        "candidates: prune {:?}, wbits {:?}, abits {:?}",
        c.prune_ratios, c.wbits, c.abits
    )?;
    writeln!(
        o,
        "fixed at w{}a{}: {}",
        c.fixed_bits,
        c.fixed_bits,
        names(space.fixed_layers()).join(", ")
    )?;
    let w = space
        .units()
        .iter()
        .map(|u| u.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    writeln!(
        o,
        "{:>4}  {:<w$}  {:<8}  layers",
        "unit", "name", "prunable"
    )?;
    for (i, u) in space.units().iter().enumerate() {
        writeln!(
            o,
            "{i:>4}  {:<w$}  {:<8}  {}",
            u.name,
            if u.prunable { "yes" } else { "no (0)" },
            names(&u.layers).join(", ")
        )?;
    }
    if space.tie_groups().is_empty() {
        writeln!(o, "tie groups: none")?;
    } else {
        writeln!(o, "tie groups (outputs joined by residual adds):")?;
        for g in space.tie_groups() {
            writeln!(o, "  {}", names(g).join(", "))?;
        }
    }
    writeln!(
        o,
        "BOPs range: {} .. {}; size range: {} .. {} bits",
        lo.bops, hi.bops, lo.size_bits, hi.size_bits
    )?;
    super::emit(&o)
}
