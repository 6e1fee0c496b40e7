//! The Markdown rendering of a report, for people.

use super::Report;
use std::fmt::Write;

/// `b` bytes in KiB below a MiB, else in MiB, one decimal either way.
pub fn size(b: u64) -> String {
    match b < 1 << 20 {
        true => format!("{:.1} KiB", b as f64 / 1024.0),
        false => format!("{:.1} MiB", b as f64 / 1048576.0),
    }
}

/// A latency ratio (`teacher / compressed`) in words: `2.5x faster`, or for a ratio below 1 its
/// inverse, `1.3x slower`, where `0.8x faster` would read as a speed-up.
pub fn speed(speedup: f64) -> String {
    match speedup >= 1.0 {
        true => format!("{speedup:.1}x faster"),
        false => format!("{:.1}x slower", 1.0 / speedup.max(1e-9)),
    }
}

/// `report.md`; `chart` is the file name of the SVG chart beside it.
pub fn render(r: &Report, chart: &str) -> String {
    let mut s = String::new();
    let t = &r.teacher;
    let c = &r.compressed;
    let _ = writeln!(s, "# wick compression report: `{}`\n", r.recipe_name);
    let verdict = match (&r.gate.kind, r.gate.passed) {
        (None, _) => "no gate".to_string(),
        (Some(_), true) => format!("**PASSED** — {}", r.gate.reason),
        (Some(_), false) => format!("**FAILED** — {}", r.gate.reason),
    };
    let _ = writeln!(s, "Gate: {verdict}\n");
    let _ = writeln!(s, "| | teacher | compressed | ratio |\n|---|---|---|---|");
    let _ = writeln!(
        s,
        "| test accuracy | {:.4} ({}/{}) | {:.4} ({}/{}) | drop {:.2} points ({:.2}% relative) |",
        t.accuracy,
        t.correct,
        t.samples,
        c.accuracy,
        c.correct,
        c.samples,
        r.accuracy_drop_points,
        100.0 * r.accuracy_drop_relative
    );
    let _ = writeln!(s, "| agreement with teacher | | {:.4} ({} flipped) | |", r.agreement, r.flipped);
    let _ = writeln!(s, "| bytes on disk | {} | {} | {:.1}x smaller |", size(t.bytes_on_disk), size(c.bytes_on_disk), 1.0 / r.ratios.size);
    let _ = writeln!(s, "| parameters | {} | {} | {:.1}% |", t.params, c.params, 100.0 * r.ratios.params);
    let _ = writeln!(s, "| MACs per sample | {} | {} | {:.1}% |", t.macs, c.macs, 100.0 * r.ratios.macs);
    let _ = writeln!(s, "| latency, batch 1 | {:.3} ms | {:.3} ms | {} |", t.latency.batch1_ms, c.latency.batch1_ms, speed(r.ratios.latency_batch1_speedup));
    let _ = writeln!(s, "| latency, batch {} | {:.3} ms | {:.3} ms | {} |", t.latency.large_batch, t.latency.large_batch_ms, c.latency.large_batch_ms, speed(r.ratios.latency_large_batch_speedup));
    let _ = writeln!(
        s,
        "\nThe compressed accuracy is that of `{}`, executed as: {}; the teacher runs in {}. Latencies are medians measured in this run on this machine.\n",
        c.file, c.execution, t.execution
    );
    let _ = writeln!(s, "![accuracy vs size]({chart})\n");
    let _ = writeln!(s, "## Passes\n\n| # | pass | what it did | seconds | params | weight size | test accuracy |\n|---|---|---|---|---|---|---|");
    for (i, p) in r.passes.iter().enumerate() {
        let _ = writeln!(s, "| {} | `{}` | {} | {:.1} | {} | {} | {:.4} |", i + 1, p.pass, p.summary, p.seconds, p.params, size(p.weight_bytes), p.test_accuracy);
    }
    let _ = writeln!(s, "\n## Layers\n\n| layer | op | shape before | shape after | status | bits | params before | params after |\n|---|---|---|---|---|---|---|---|");
    for l in &r.layers {
        let _ = writeln!(s, "| `{}` | {} | {:?} | {:?} | {} | {} | {} | {} |", l.layer, l.op, l.shape_before, l.shape_after, l.status, l.weight_bits, l.params_before, l.params_after);
    }
    if !r.sensitivity.is_empty() {
        let _ = writeln!(s, "\n## Sensitivity (only this layer quantised; validation set)\n\n| layer | drop (points) |\n|---|---|");
        for x in &r.sensitivity {
            let _ = writeln!(s, "| `{}` | {:.2} |", x.layer, x.drop_points);
        }
        if !r.float_fallback.is_empty() {
            let _ = writeln!(s, "\nKept in float to meet the gate: {}", r.float_fallback.iter().map(|l| format!("`{l}`")).collect::<Vec<_>>().join(", "));
        }
    }
    let _ = writeln!(s, "\n## Provenance\n\n- tool: {}\n- recipe: `{}` (sha256 `{}`)\n- seed: {}", r.tool, r.recipe.path, r.recipe.sha256, r.seed);
    for (k, f) in &r.inputs {
        let _ = writeln!(s, "- {k}: `{}` (sha256 `{}`)", f.path, f.sha256);
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn latency_ratios_read_as_faster_or_slower() {
        assert_eq!(super::speed(2.54), "2.5x faster");
        assert_eq!(super::speed(1.0), "1.0x faster");
        assert_eq!(super::speed(0.5), "2.0x slower");
    }
}
