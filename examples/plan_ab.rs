//! Profiling aid: two compiled plans of one model, alternating call by call in one process so
//! both see the same machine load (this VM's load moves single runs by ±30 %, and a ratio of
//! two separate runs with it)
//! (`cargo run --release --example plan_ab -- MODEL TRAIN TEST VARIANT [REPS] [BATCH]`).
//! A is the default INT8 plan (min-max PTQ on TRAIN for a float model); VARIANT says what B is:
//! - `fp32`: the default float plan (the ratio is INT8's speed-up over FP32);
//! - `parts:N`: A with the batch cut into parts of N samples;
//! - `no-residual`, `requant`: A without the residual-add fusion, with the requantisation
//!   fusion;
//! - `fp32:no-residual`: A is the float plan, B the float plan without the residual fusion.
//!
//! Prints each median time and the median of the per-pair ratios B/A (> 1: A faster).
use std::path::Path;
use std::time::Instant;
use wick::artifact::AnyModel;
use wick::runtime::plan::{Fusions, Plan};

fn main() -> anyhow::Result<()> {
    rayon::scope(|_| run())
}

fn run() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: usize| a.get(i).map(|s| s.parse()).transpose().map(|v| v.unwrap_or(d));
    let (reps, batch) = (arg(5, 200)?, arg(6, 64)?);
    let (m, _) = wick::artifact::load_any(Path::new(&a[1]), None)?;
    let test = wick::data::Dataset::read(Path::new(&a[3]))?;
    let x = test.x.narrow(0, 0, batch)?;
    let variant = a[4].as_str();
    let int8 = |f: Fusions| -> anyhow::Result<Plan> {
        Ok(match &m {
            AnyModel::Float(m) => Plan::int8_with(&wick::bench::int8_of(m, &wick::data::Dataset::read(Path::new(&a[2]))?, wick::quant::ActType::U8)?, f)?,
            AnyModel::Int8(q) => Plan::int8_with(q, f)?,
        })
    };
    let float = |f: Fusions| -> anyhow::Result<Plan> {
        match &m {
            AnyModel::Float(m) => Ok(Plan::float_with(m, f)?),
            AnyModel::Int8(_) => anyhow::bail!("the float plan needs a float model"),
        }
    };
    let d = Fusions::default();
    let default_parts = rayon::current_num_threads().min(batch / 8).max(1);
    let (plan_a, plan_b, b_parts) = match variant {
        "fp32" => (int8(d)?, float(d)?, default_parts),
        "no-residual" => (int8(d)?, int8(Fusions { residual_adds: false, ..d })?, default_parts),
        "requant" => (int8(d)?, int8(Fusions { requantisation: true, ..d })?, default_parts),
        "fp32:no-residual" => (float(d)?, float(Fusions { residual_adds: false, ..d })?, default_parts),
        v => match v.strip_prefix("parts:") {
            Some(n) => (int8(d)?, int8(d)?, batch.div_ceil(n.parse::<usize>()?.max(1)).max(default_parts)),
            None => anyhow::bail!("unknown variant '{v}'"),
        },
    };
    let time = |plan: &Plan, parts: usize| -> anyhow::Result<f64> {
        let t = Instant::now();
        plan.predict_in_parts(&x, parts)?;
        Ok(t.elapsed().as_secs_f64() * 1e3)
    };
    let (ta, tb) = (|| time(&plan_a, default_parts), || time(&plan_b, b_parts));
    ta()?;
    tb()?;
    let (mut va, mut vb, mut r) = (vec![], vec![], vec![]);
    for i in 0..reps {
        let (x, y) = if i % 2 == 0 {
            (ta()?, tb()?)
        } else {
            let y = tb()?;
            (ta()?, y)
        };
        va.push(x);
        vb.push(y);
        r.push(y / x);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("{variant} batch {batch}, {} thread(s): A {:.3} ms, B {:.3} ms, B/A {:.3}", rayon::current_num_threads(), med(&mut va), med(&mut vb), med(&mut r));
    Ok(())
}
