//! `wick bench` reports every workload it measures (no timing is asserted: speed is
//! compared in benchmarks, not tests).

use crate::common::*;

/// `wick --threads 2 bench --json --scaling` on the MLP: one run per thread count, each with the
/// compiled FP32, candle FP32, 8-bit and 7-bit INT8 latencies at batch 1 and 64, speed-ups that
/// are the quotients of those latencies, the kernels' names, and a training epoch.
#[test]
fn bench_reports_every_workload_at_both_thread_counts() {
    let (train, test) = (digits("train"), digits("test"));
    let (out, _) =
        run_expect(&["--threads", "2", "bench", mlp_path().to_str().unwrap(), "--train", train.to_str().unwrap(), "--test", test.to_str().unwrap(), "--epochs", "1", "--scaling", "--json"], 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.iter().map(|r| r["threads"].as_u64().unwrap()).collect::<Vec<_>>(), [2, 1]);
    for r in runs {
        for kind in ["fp32", "fp32_candle", "int8", "int8_u7"] {
            assert_eq!(r[kind]["large_batch"], 64, "{kind}");
            for key in ["batch1_ms", "large_batch_ms"] {
                let ms = r[kind][key].as_f64().unwrap();
                assert!(ms > 0.0 && ms.is_finite(), "{kind} {key}: {ms}");
            }
        }
        let ratio = |a: &str, b: &str, key: &str| r[a][key].as_f64().unwrap() / r[b][key].as_f64().unwrap();
        assert!((r["int8_speedup_large_batch"].as_f64().unwrap() - ratio("fp32", "int8", "large_batch_ms")).abs() < 1e-9);
        assert!((r["int8_u7_speedup_batch1"].as_f64().unwrap() - ratio("fp32", "int8_u7", "batch1_ms")).abs() < 1e-9);
        assert!(r["train_epoch_s"].as_f64().unwrap() > 0.0);
        // The 8-bit model never runs the 7-bit kernel; the 7-bit one names the kernel it runs.
        assert!(!r["int8_kernel"].as_str().unwrap().contains("7-bit"), "{}", r["int8_kernel"]);
        assert!(!r["int8_u7_kernel"].as_str().unwrap().is_empty());
    }
}
