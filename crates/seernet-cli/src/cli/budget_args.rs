//! The budget flags (`--max-bops`, `--max-size`, `--bops-frac`, `--bops-uniform`) as one clap
//! argument group.

use seernet::budget::{Budget, parse_budgets};

/// The budget flags as a clap argument group, for `seernet` subcommands that take budgets.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct BudgetArgs {
    /// BOPs budget(s): 5M, 1.5G, 5e6 (K=1e3, M=1e6, G=1e9); repeat or comma-separate.
    #[arg(long = "max-bops", value_name = "BOPS")]
    pub max_bops: Vec<String>,
    /// Model-size budget(s) in bytes: 40KB (=40000 B) or 40KiB (=40960 B); repeat or comma-separate.
    #[arg(long = "max-size", value_name = "BYTES")]
    pub max_size: Vec<String>,
    /// BOPs budget(s) as a fraction of the unpruned w8a8 BOPs: 0.1 or 10%; repeat or comma-separate.
    #[arg(long = "bops-frac", value_name = "FRACTION")]
    pub bops_frac: Vec<String>,
    /// BOPs budget(s) of the unpruned network at uniform bit-widths, named by them: w3a3
    /// (every searchable unit at 3-bit weights and activations); repeat or comma-separate.
    #[arg(long = "bops-uniform", value_name = "wXaY")]
    pub bops_uniform: Vec<String>,
}

impl BudgetArgs {
    /// Parses every given budget. Errors: see [`seernet::budget::parse_budgets`] (a malformed
    /// value, a budget given twice, no budget at all).
    pub fn budgets(&self) -> seernet::policy::Result<Vec<Budget>> {
        parse_budgets(
            &self.max_bops,
            &self.max_size,
            &self.bops_frac,
            &self.bops_uniform,
        )
    }
}
