//! `cpucc bench` and `cpucc profile` on the example model: the JSON fields,
//! disjoint instance cores, the profile table and trace, and the flags that
//! must be refused.

use std::path::PathBuf;
use std::process::Command;

fn model() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/models/conv_relu.onnx")
        .to_string_lossy()
        .into_owned()
}

/// Runs cpucc: (exit code, stdout, stderr).
fn cpucc(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cpucc"))
        .args(args)
        .env_remove("CPUCC_NUM_THREADS")
        .env_remove("CPUCC_CORES")
        .env_remove("CPUCC_NUMA_NODE")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn allowed_cpus() -> Vec<usize> {
    cpucc_runtime::affinity::current().unwrap()
}

#[test]
fn bench_json_reports_percentiles_throughput_and_cores() {
    let m = model();
    let (code, out, err) = cpucc(&[
        "bench",
        &m,
        "--threads",
        "1",
        "--iters",
        "5",
        "--warmup",
        "1",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let ms = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"));
    assert!(ms("min_ms") <= ms("median_ms"));
    assert!(ms("median_ms") <= ms("p90_ms"));
    assert!(ms("p90_ms") <= ms("p99_ms"));
    // 5 runs take at least 5 x min: throughput cannot exceed 1 / min.
    assert!(ms("throughput_per_s") > 0.0);
    assert!(ms("throughput_per_s") <= 1e3 / ms("min_ms") * 1.001);
    assert!(!v["cpu_model"].as_str().unwrap().is_empty());
    let cores = v["cores"].as_array().unwrap();
    assert_eq!(cores.len(), 1);
    let cpu: usize = cores[0].as_str().unwrap().parse().unwrap();
    assert!(allowed_cpus().contains(&cpu));
    assert_eq!(v["pinned"], true);
}

#[test]
fn instances_get_disjoint_cores() {
    let cpus = allowed_cpus();
    let m = model();
    let (code, out, err) = cpucc(&[
        "bench",
        &m,
        "--instances",
        "2",
        "--threads",
        "1",
        "--iters",
        "3",
        "--json",
    ]);
    if cpucc_runtime::topology::Topology::host()
        .physical_cores(&cpus)
        .len()
        < 2
    {
        assert_eq!(code, 2, "one core cannot hold two instances: {err}");
        assert!(err.contains("need 2 physical cores"), "{err}");
        return;
    }
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let cores: Vec<&str> = v["cores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(cores.len(), 2);
    assert_ne!(cores[0], cores[1]);
    assert_eq!(v["instances"], 2);
}

#[test]
fn refused_settings_exit_2_with_one_line() {
    let m = model();
    let too_many = (allowed_cpus().len() + 1).to_string();
    for (args, needle) in [
        (
            vec!["--fast-math", "bf16", "--target", "x86-64-v3"],
            "AMX-BF16 or AVX512-BF16",
        ),
        (vec!["--cores", "1-x"], "is not a CPU list"),
        (vec!["--cores", "100000"], "is not among the CPUs"),
        (vec!["--threads", "0"], "at least 1"),
        (
            vec!["--instances", too_many.as_str(), "--threads", "1"],
            "physical cores",
        ),
    ] {
        let mut all = vec!["bench", m.as_str()];
        all.extend(&args);
        let (code, _, err) = cpucc(&all);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn profile_prints_the_table_and_writes_a_trace() {
    let m = model();
    let trace = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("profile_trace.json");
    let _ = std::fs::remove_file(&trace);
    let (code, out, err) = cpucc(&[
        "profile",
        &m,
        "--threads",
        "2",
        "--iters",
        "5",
        "--trace",
        trace.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("kernel"), "{out}");
    // The fused convolution is there, with its source node and GFLOP/s.
    let conv = lines
        .iter()
        .find(|l| l.starts_with("FusedConv"))
        .unwrap_or_else(|| panic!("{out}"));
    let cols: Vec<&str> = conv.split_whitespace().collect();
    assert!(cols[cols.len() - 2].parse::<f64>().unwrap() > 0.0, "{conv}");
    // Percentages of the rows add up to 100.
    let pct: f64 = lines[1..]
        .iter()
        .take_while(|l| !l.starts_with("steps sum"))
        .filter_map(|l| l.split_whitespace().find(|c| c.ends_with('%')))
        .map(|c| c.trim_end_matches('%').parse::<f64>().unwrap())
        .sum();
    assert!((pct - 100.0).abs() < 1.0, "{pct}: {out}");
    assert!(out.contains("steps sum to"), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let events = v["traceEvents"].as_array().unwrap();
    let tids: std::collections::BTreeSet<u64> = events
        .iter()
        .filter(|e| e["ph"] == "X")
        .map(|e| e["tid"].as_u64().unwrap())
        .collect();
    // The caller's track and the worker's track.
    assert_eq!(tids.into_iter().collect::<Vec<_>>(), vec![0, 1], "{v}");
    assert!(
        events
            .iter()
            .all(|e| e["ph"] != "X" || e["dur"].as_f64().unwrap() >= 0.0)
    );
}
