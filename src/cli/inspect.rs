//! `wick inspect MODEL [--arch FILE]`: a table of nodes with totals last (for an INT8 artifact,
//! its quantised nodes' weights counted at one byte per parameter).

use super::Outcome;
use wick::artifact::{load_any, AnyModel};
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
    let (loaded, warnings) = load_any(&a.m.model, a.m.arch.as_deref())?;
    super::warn_all(&warnings);
    let rows = match &loaded {
        AnyModel::Float(m) => node_stats(m, |_| 4),
        AnyModel::Int8(q) => {
            let int8 = q.quantised_weights();
            node_stats(&q.model, |param| if int8.contains_key(param) { 1 } else { 4 })
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(Outcome::Ok);
    }
    let shape = |s: &[usize]| format!("[{}]", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "));
    // Each text column as wide as its longest entry, so long op names and shapes stay aligned.
    let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(5);
    let wo = rows.iter().map(|r| r.op.len()).max().unwrap_or(0).max(16);
    let ws = rows.iter().map(|r| shape(&r.output_shape).len()).max().unwrap_or(0).max(16);
    println!("{:<w$}  {:<wo$} {:<ws$} {:>12} {:>14} {:>12}", "node", "op", "output", "params", "MACs", "bytes");
    for r in &rows {
        println!("{:<w$}  {:<wo$} {:<ws$} {:>12} {:>14} {:>12}", r.name, r.op, shape(&r.output_shape), r.params, r.macs, r.bytes);
    }
    let (p, m, b) = rows.iter().fold((0, 0, 0), |(p, m, b), r| (p + r.params, m + r.macs, b + r.bytes));
    println!("{:<w$}  {:<wo$} {:<ws$} {:>12} {:>14} {:>12}", "total", "", shape(&[]), p, m, b);
    if let AnyModel::Int8(q) = &loaded {
        println!("INT8 artifact: {} quantised units ({}); their weights counted at 1 byte per parameter", q.layers.len(), q.layers.keys().cloned().collect::<Vec<_>>().join(", "));
    }
    Ok(Outcome::Ok)
}
