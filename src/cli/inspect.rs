//! `wick inspect MODEL [--arch FILE]`: a table of nodes with totals last.

use super::Outcome;
use wick::model::load::load_model;
use wick::model::stats::node_stats;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    m: super::ModelArgs,
    /// Print the rows as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    let loaded = load_model(&a.m.model, a.m.arch.as_deref())?;
    super::warn_all(&loaded.warnings);
    let rows = node_stats(&loaded.model, |_| 4);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(Outcome::Ok);
    }
    let shape = |s: &[usize]| format!("[{}]", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "));
    let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(5);
    println!("{:<w$}  {:<16} {:<16} {:>12} {:>14} {:>12}", "node", "op", "output", "params", "MACs", "bytes");
    for r in &rows {
        println!("{:<w$}  {:<16} {:<16} {:>12} {:>14} {:>12}", r.name, r.op, shape(&r.output_shape), r.params, r.macs, r.bytes);
    }
    let (p, m, b) = rows.iter().fold((0, 0, 0), |(p, m, b), r| (p + r.params, m + r.macs, b + r.bytes));
    println!("{:<w$}  {:<16} {:<16} {:>12} {:>14} {:>12}", "total", "", shape(&[]), p, m, b);
    Ok(Outcome::Ok)
}
