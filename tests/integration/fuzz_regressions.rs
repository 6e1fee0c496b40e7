//! The fuzz targets' code (`fuzz/parsers.rs`) on the saved regression inputs
//! (`fuzz/regressions/<target>/`): each is refused or runs, without a panic. Also keeps the
//! targets compiling on the stable toolchain, where the fuzzer itself does not run.

#[allow(dead_code)]
#[path = "../../fuzz/parsers.rs"]
mod parsers;

use std::path::Path;

/// A fuzz target's code: takes one input, panics on a bug.
type Target = fn(&[u8]);

#[test]
fn fuzz_regression_inputs_are_refused_or_run_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let targets: [(&str, Target); 6] = [
        ("safetensors", parsers::safetensors),
        ("architecture", parsers::architecture),
        ("recipe", parsers::recipe),
        ("manifest", parsers::manifest),
        ("int8_artifact", parsers::int8_artifact),
        ("onnx", parsers::onnx),
    ];
    for (target, run) in targets {
        let mut inputs: Vec<_> = std::fs::read_dir(root.join(target)).unwrap().flatten().map(|e| e.path()).collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "no regression inputs for {target}");
        for p in inputs {
            eprintln!("{target}: {}", p.display());
            run(&std::fs::read(&p).unwrap());
        }
    }
}
