//! Native reduction, softmax, normalization and pooling kernels against the
//! interpreter, on shapes and dtypes the ONNX node tests miss: odd sizes
//! (vector bodies plus scalar tails), reductions over inner and outer and
//! non-adjacent axes, narrow and wide integers, half floats, NaN, and a
//! CumSum axis known only at run time.

use cpucc::codegen::jit::JitModel;
use cpucc::codegen::{Dumps, Target};
use cpucc::interp;
use cpucc::ir::{Attr, Attrs, DType, Graph, Tensor, ValueType};
use cpucc::random::SplitMix64;

/// Values in [-8, 8) (integers rounded; unsigned ones shifted to [0, 16)).
fn data(rng: &mut SplitMix64, dt: DType, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| {
            let x = rng.uniform(-8.0, 8.0);
            match dt {
                d if d.is_float() => x,
                d if d.is_signed() => x.floor(),
                _ => (x + 8.0).floor(),
            }
        })
        .collect();
    Tensor::from_f64s(dt, shape, &v).unwrap()
}

/// Builds a one-node graph (`consts` are initializers after the inputs),
/// runs it natively and in the interpreter, and compares every output.
fn check(op: &str, opset: i64, attrs: &[(&str, Attr)], inputs: Vec<Tensor>, consts: Vec<Tensor>) {
    let mut g = Graph::new("t");
    let mut ids = Vec::new();
    for (i, t) in inputs.iter().enumerate() {
        ids.push(Some(
            g.add_input(&format!("x{i}"), ValueType::of(t)).unwrap(),
        ));
    }
    for (i, t) in consts.into_iter().enumerate() {
        ids.push(Some(g.add_const(&format!("c{i}"), t).unwrap()));
    }
    let mut a = Attrs::default();
    for (k, v) in attrs {
        a.set(k, v.clone());
    }
    let n_out = if op == "MaxPool" { 2 } else { 1 };
    let outs: Vec<String> = (0..n_out).map(|i| format!("y{i}")).collect();
    let node = g.add_node("n", op, opset, a, ids, &outs).unwrap();
    g.outputs = g.node(node).outputs.clone();
    let want = interp::run(&g, &inputs).unwrap();
    let m = JitModel::compile(&g, &Target::host(), &mut Dumps::default())
        .unwrap_or_else(|e| panic!("{op}: {e}"));
    let got = m.run(&inputs).unwrap();
    for (w, h) in want.iter().zip(&got) {
        assert_eq!(w.shape(), h.shape(), "{op} {attrs:?}");
        assert_eq!(w.dtype(), h.dtype(), "{op} {attrs:?}");
        let tol = match w.dtype() {
            DType::F16 | DType::BF16 => 1e-2,
            d if d.is_float() => 1e-4,
            _ => 0.0,
        };
        for (k, (a, b)) in w.to_f64_vec().iter().zip(h.to_f64_vec()).enumerate() {
            let same =
                (a.is_nan() && b.is_nan()) || a == &b || (a - b).abs() <= tol * (1.0 + a.abs());
            assert!(same, "{op} {attrs:?} element {k}: {b} != {a}");
        }
    }
}

fn ints(v: &[i64]) -> Attr {
    Attr::Ints(v.to_vec())
}

#[test]
fn reductions_over_every_axis_layout_and_dtype() {
    let mut rng = SplitMix64::new(7);
    let shape = [3, 5, 13];
    let ops = [
        "ReduceSum",
        "ReduceMean",
        "ReduceMax",
        "ReduceMin",
        "ReduceProd",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSumExp",
        "ReduceSumSquare",
    ];
    for dt in [
        DType::F32,
        DType::F16,
        DType::F64,
        DType::I8,
        DType::U32,
        DType::I64,
    ] {
        for op in ops {
            for axes in [vec![2], vec![0], vec![1], vec![0, 2], vec![1, 2], vec![]] {
                for keep in [0, 1] {
                    let x = data(&mut rng, dt, &shape);
                    let attrs = [("axes", ints(&axes)), ("keepdims", Attr::Int(keep))];
                    let attrs = if axes.is_empty() {
                        &attrs[1..]
                    } else {
                        &attrs[..]
                    };
                    check(op, 13, attrs, vec![x], vec![]);
                }
            }
        }
    }
}

#[test]
fn reduce_axes_input_and_nan() {
    let mut rng = SplitMix64::new(8);
    let mut x = data(&mut rng, DType::F32, &[4, 9]).to_f64_vec();
    x[5] = f64::NAN;
    let x = Tensor::from_f64s(DType::F32, &[4, 9], &x).unwrap();
    for op in ["ReduceMax", "ReduceMin", "ReduceSum", "ReduceLogSum"] {
        let axes = Tensor::from_vec(&[1], vec![-1i64]).unwrap();
        check(op, 18, &[], vec![x.clone()], vec![axes]);
    }
    let empty = Tensor::from_vec(&[0], Vec::<i64>::new()).unwrap();
    let noop = [("noop_with_empty_axes", Attr::Int(1))];
    check("ReduceL1", 18, &noop, vec![x], vec![empty]);
}

/// Softmax rows around the sixteen-lane step (the AVX-512 row function)
/// with spreads past exp's range (terms that flush to 0), -inf and NaN
/// entries, and a row of only -inf.
#[test]
fn softmax_rows_at_extremes() {
    let mut rng = SplitMix64::new(10);
    for n in [1, 15, 16, 17, 33, 300] {
        let mut v: Vec<f64> = (0..5 * n).map(|_| rng.uniform(-120.0, 40.0)).collect();
        v[n / 2] = f64::NEG_INFINITY;
        v[n + n / 3] = f64::NAN;
        v[2 * n..3 * n].fill(f64::NEG_INFINITY);
        let x = Tensor::from_f64s(DType::F32, &[5, n], &v).unwrap();
        check("Softmax", 13, &[], vec![x], vec![]);
    }
}

#[test]
fn softmax_family_argmax_and_cumulative() {
    let mut rng = SplitMix64::new(9);
    for dt in [DType::F32, DType::F16, DType::F64] {
        for op in ["Softmax", "LogSoftmax", "Hardmax"] {
            for (opset, axis) in [(13, -1), (13, 1), (11, 1), (11, 0)] {
                let x = data(&mut rng, dt, &[2, 7, 11]);
                check(op, opset, &[("axis", Attr::Int(axis))], vec![x], vec![]);
            }
        }
    }
    for dt in [DType::F32, DType::I8, DType::U32] {
        for op in ["ArgMax", "ArgMin"] {
            for last in [0, 1] {
                let x = data(&mut rng, dt, &[3, 17, 5]);
                let attrs = [
                    ("axis", Attr::Int(1)),
                    ("select_last_index", Attr::Int(last)),
                ];
                check(op, 13, &attrs, vec![x], vec![]);
            }
        }
    }
    for dt in [DType::F32, DType::F16, DType::I32] {
        for op in ["CumSum", "CumProd"] {
            for (ex, rev) in [(0, 0), (1, 1)] {
                let x = data(&mut rng, dt, &[3, 6]);
                let attrs = [("exclusive", Attr::Int(ex)), ("reverse", Attr::Int(rev))];
                // The axis is a graph input: read at run time.
                let axis = Tensor::from_vec(&[], vec![-2i32]).unwrap();
                let opset = if op == "CumSum" { 14 } else { 26 };
                check(op, opset, &attrs, vec![x, axis], vec![]);
            }
        }
    }
}

#[test]
fn normalizations() {
    let mut rng = SplitMix64::new(10);
    for dt in [DType::F32, DType::F16] {
        let x = data(&mut rng, dt, &[2, 3, 9]);
        let s = data(&mut rng, dt, &[9]);
        let b = data(&mut rng, dt, &[9]);
        check(
            "LayerNormalization",
            17,
            &[],
            vec![x.clone(), s.clone(), b],
            vec![],
        );
        check("RMSNormalization", 23, &[], vec![x.clone(), s], vec![]);
        let s = data(&mut rng, dt, &[3]);
        let b = data(&mut rng, dt, &[3]);
        check(
            "InstanceNormalization",
            6,
            &[],
            vec![x.clone(), s.clone(), b.clone()],
            vec![],
        );
        check(
            "LpNormalization",
            1,
            &[("axis", Attr::Int(1)), ("p", Attr::Int(1))],
            vec![x.clone()],
            vec![],
        );
        check(
            "LRN",
            13,
            &[("size", Attr::Int(3))],
            vec![x.clone()],
            vec![],
        );
        let m = data(&mut rng, dt, &[3]);
        let v: Vec<f64> = data(&mut rng, dt, &[3])
            .to_f64_vec()
            .iter()
            .map(|v| v.abs() + 0.5)
            .collect();
        let v = Tensor::from_f64s(dt, &[3], &v).unwrap();
        check("BatchNormalization", 15, &[], vec![x, s, b, m, v], vec![]);
        let x = data(&mut rng, dt, &[2, 4, 3, 5]);
        let s = data(&mut rng, dt, &[2]);
        let b = data(&mut rng, dt, &[2]);
        check(
            "GroupNormalization",
            18,
            &[("num_groups", Attr::Int(2))],
            vec![x.clone(), s, b],
            vec![],
        );
        check("MeanVarianceNormalization", 13, &[], vec![x], vec![]);
    }
}

#[test]
fn layer_and_rms_norm_rows() {
    // The AVX-512 row form: rows of a partial vector only, full vectors
    // and a partial one, whole vectors, over two trailing axes; scale
    // with leading ones, no bias, and a scale broadcast within the row
    // (the group kernel's case); values far from zero (a one-pass
    // variance would cancel).
    let mut rng = SplitMix64::new(12);
    let f = DType::F32;
    let eps = ("epsilon", Attr::Float(1e-3));
    for (shape, axis, sshape, bias) in [
        (vec![4, 5], -1, vec![5], true),
        (vec![3, 40], -1, vec![40], true),
        (vec![2, 3, 16], 1, vec![3, 16], false),
        (vec![5, 40], -1, vec![1, 40], true),
        (vec![3, 40], -1, vec![1], true),
    ] {
        let x = data(&mut rng, f, &shape);
        let s = data(&mut rng, f, &sshape);
        let mut ins = vec![x.clone(), s.clone()];
        if bias {
            ins.push(data(&mut rng, f, &sshape));
        }
        let attrs = [("axis", Attr::Int(axis)), eps.clone()];
        check("LayerNormalization", 17, &attrs, ins, vec![]);
        check("RMSNormalization", 23, &attrs, vec![x, s], vec![]);
    }
    let far: Vec<f64> = data(&mut rng, f, &[2, 100])
        .to_f64_vec()
        .iter()
        .map(|v| v + 1000.0)
        .collect();
    let x = Tensor::from_f64s(f, &[2, 100], &far).unwrap();
    let s = data(&mut rng, f, &[100]);
    check("LayerNormalization", 17, &[], vec![x, s], vec![]);
}

#[test]
fn pools() {
    let mut rng = SplitMix64::new(11);
    for dt in [DType::F32, DType::U8, DType::F16] {
        let x = data(&mut rng, dt, &[2, 3, 9, 10]);
        let geo = [
            ("kernel_shape", ints(&[3, 2])),
            ("strides", ints(&[2, 1])),
            ("pads", ints(&[1, 0, 1, 1])),
            ("dilations", ints(&[1, 2])),
            ("ceil_mode", Attr::Int(1)),
            ("storage_order", Attr::Int(1)),
        ];
        check("MaxPool", 12, &geo, vec![x.clone()], vec![]);
        if dt.is_float() {
            check("GlobalMaxPool", 1, &[], vec![x.clone()], vec![]);
            let avg = [&geo[..5], &[("count_include_pad", Attr::Int(1))]].concat();
            check("AveragePool", 19, &avg, vec![x.clone()], vec![]);
            let lp = [&geo[..4], &[("p", Attr::Int(3))]].concat();
            check("LpPool", 18, &lp, vec![x.clone()], vec![]);
            check("GlobalAveragePool", 1, &[], vec![x], vec![]);
        }
    }
}
