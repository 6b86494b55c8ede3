//! Helpers for the pass tests: a terse graph builder, fixed-seed inputs, and
//! the before/after check (snapshot of the IR text plus interpreter
//! agreement).

#![allow(dead_code)]

use cpucc::interp;
use cpucc::ir::{Attr, Attrs, DType, Graph, Tensor, ValueId, ValueType, print};
use cpucc::random::SplitMix64;

pub struct B {
    pub g: Graph,
    rng: SplitMix64,
    count: usize,
    pub opset: i64,
}

impl B {
    pub fn new(name: &str) -> B {
        B {
            g: Graph::new(name),
            rng: SplitMix64::new(7),
            count: 0,
            opset: 13,
        }
    }

    pub fn input(&mut self, name: &str, shape: &[usize]) -> ValueId {
        self.g
            .add_input(name, ValueType::new(DType::F32, shape))
            .unwrap()
    }

    pub fn constant(&mut self, name: &str, t: Tensor) -> ValueId {
        self.g.add_const(name, t).unwrap()
    }

    /// A random f32 constant uniform in [lo, hi).
    pub fn weight(&mut self, name: &str, shape: &[usize], lo: f64, hi: f64) -> ValueId {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| self.rng.uniform(lo, hi) as f32).collect();
        self.constant(name, Tensor::from_vec(shape, v).unwrap())
    }

    pub fn scalar(&mut self, name: &str, v: f32) -> ValueId {
        self.constant(name, Tensor::scalar(v))
    }

    pub fn ints(&mut self, name: &str, v: &[i64]) -> ValueId {
        self.constant(name, Tensor::from_vec(&[v.len()], v.to_vec()).unwrap())
    }

    /// A node named `{op}_{k}` with output `t{k}`.
    pub fn op(&mut self, op: &str, inputs: &[ValueId], attrs: &[(&str, Attr)]) -> ValueId {
        let ins = inputs.iter().map(|&v| Some(v)).collect();
        self.op_opt(op, ins, attrs)
    }

    pub fn op_opt(
        &mut self,
        op: &str,
        inputs: Vec<Option<ValueId>>,
        attrs: &[(&str, Attr)],
    ) -> ValueId {
        let k = self.count;
        self.count += 1;
        let mut a = Attrs::default();
        for (n, v) in attrs {
            a.set(n, v.clone());
        }
        let n = self
            .g
            .add_node(
                &format!("{op}_{k}"),
                op,
                self.opset,
                a,
                inputs,
                &[format!("t{k}")],
            )
            .unwrap();
        self.g.node(n).outputs[0]
    }

    pub fn output(&mut self, v: ValueId) {
        self.g.outputs.push(v);
    }
}

pub fn ints(v: &[i64]) -> Attr {
    Attr::Ints(v.to_vec())
}

/// Fixed-seed inputs for every graph input, floats scaled by `scale`.
pub fn inputs(g: &Graph, scale: f64) -> Vec<Tensor> {
    let mut rng = SplitMix64::new(11);
    g.inputs
        .iter()
        .map(|&i| {
            let ty = &g.value(i).ty;
            if ty.dtype.is_float() {
                let v: Vec<f64> = (0..ty.numel())
                    .map(|_| rng.uniform(-scale, scale))
                    .collect();
                Tensor::from_f64s(ty.dtype, &ty.shape, &v).unwrap()
            } else {
                rng.tensor(ty.dtype, &ty.shape)
            }
        })
        .collect()
}

/// The largest difference between two results, relative to the largest
/// magnitude of the expected one.
pub fn rel_diff(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.shape(), want.shape());
    let (a, b) = (got.to_f64_vec(), want.to_f64_vec());
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-30);
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
        / scale
}

/// Runs `pass` on a copy of `g`; returns the IR text before and after and
/// asserts both graphs compute the same outputs within `tol`.
pub fn before_after(
    g: &Graph,
    pass: fn(&mut Graph) -> cpucc::Result<()>,
    tol: f64,
) -> (String, Graph) {
    let before = print(g).unwrap();
    let mut after = g.clone();
    pass(&mut after).unwrap();
    let text = print(&after).unwrap();
    let ins = inputs(g, 2.0);
    let want = interp::run(g, &ins).unwrap();
    let got = interp::run(&after, &ins).unwrap();
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        let d = rel_diff(a, b);
        assert!(
            d <= tol,
            "output {i}: relative difference {d:e} > {tol:e}\n{text}"
        );
    }
    (format!("{before}\n=== after ===\n\n{text}"), after)
}

/// How many nodes run `op`.
pub fn count(g: &Graph, op: &str) -> usize {
    g.node_indices()
        .into_iter()
        .filter(|&n| g.node(n).op == op)
        .count()
}
