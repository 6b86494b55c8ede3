//! Random small, valid graphs for property tests of the passes: the op mix
//! of CNNs and transformers (Conv with groups and optional bias, folded or
//! computed weights, BatchNormalization, Relu/Clip/Sigmoid, Add/Mul with a
//! constant or another branch, pooling, channel Concat, Reshape/Flatten,
//! Gemm/MatMul, Transpose, decomposed LayerNorm, Softmax). Every graph is
//! built through `Graph::add_node`, so the op table has checked it; the same
//! seed always gives the same graph. Values are kept small (|x| about 1) so
//! that comparisons at 1e-5 relative are meaningful.

use cpucc::ir::{Attr, Attrs, DType, Graph, Tensor, ValueId, ValueType};
use cpucc::random::SplitMix64;

const OPSET: i64 = 13;

/// A random graph with one f32 input of rank 4 ([N, C, H, W]) and one to
/// three outputs, from `seed`.
pub fn random_graph(seed: u64) -> Graph {
    let mut b = Gen {
        g: Graph::new(&format!("random_{seed}")),
        r: SplitMix64::new(seed),
        live: Vec::new(),
        n: 0,
    };
    let shape = [
        1 + b.below(2),
        2 + b.below(3),
        3 + b.below(4),
        3 + b.below(4),
    ];
    let x =
        b.g.add_input("x", ValueType::new(DType::F32, shape))
            .expect("fresh graph");
    b.live.push(x);
    let steps = 3 + b.below(8);
    for _ in 0..steps {
        b.step();
    }
    let last = *b.live.last().expect("the input at least");
    let mut outputs = vec![last];
    // Sometimes an intermediate (still read by others), the input, or the
    // same value twice: the plan and the passes must keep all of them.
    match b.below(4) {
        0 => {
            let i = b.below(b.live.len());
            outputs.push(b.live[i]);
        }
        1 => outputs.push(last),
        _ => {}
    }
    b.g.outputs = outputs;
    b.g
}

struct Gen {
    g: Graph,
    r: SplitMix64,
    /// Values new nodes may read; the last is the "current" one.
    live: Vec<ValueId>,
    n: usize,
}

impl Gen {
    fn below(&mut self, n: usize) -> usize {
        (self.r.next_u64() % n as u64) as usize
    }

    fn shape(&self, v: ValueId) -> Vec<usize> {
        self.g.value(v).ty.shape.clone()
    }

    fn konst(&mut self, shape: &[usize], lo: f64, hi: f64) -> ValueId {
        let n: usize = shape.iter().product();
        let vals: Vec<f64> = (0..n).map(|_| self.r.uniform(lo, hi)).collect();
        let t = Tensor::from_f64s(DType::F32, shape, &vals).expect("length matches");
        let name = self.g.fresh_name("c");
        self.g.add_const(&name, t).expect("fresh name")
    }

    fn ints(&mut self, v: &[i64]) -> ValueId {
        let t = Tensor::from_vec(&[v.len()], v.to_vec()).expect("1-D");
        let name = self.g.fresh_name("shape");
        self.g.add_const(&name, t).expect("fresh name")
    }

    fn node(&mut self, op: &str, attrs: &[(&str, Attr)], inputs: &[Option<ValueId>]) -> ValueId {
        self.n += 1;
        let mut a = Attrs::default();
        for (k, v) in attrs {
            a.set(k, v.clone());
        }
        let out = format!("v{}", self.n);
        let name = format!("{op}_{}", self.n);
        self.g
            .add_node(
                &name,
                op,
                OPSET,
                a,
                inputs.to_vec(),
                std::slice::from_ref(&out),
            )
            .unwrap_or_else(|e| panic!("generator built an invalid {op}: {e}"));
        let v = self.g.find(&out).expect("just added");
        self.live.push(v);
        v
    }

    /// A live value of rank `rank` (preferring the current one).
    fn pick(&mut self, rank: usize) -> Option<ValueId> {
        let cur = *self.live.last().expect("non-empty");
        if self.shape(cur).len() == rank {
            return Some(cur);
        }
        let cands: Vec<_> = self
            .live
            .iter()
            .copied()
            .filter(|&v| self.g.value(v).ty.shape.len() == rank)
            .collect();
        (!cands.is_empty()).then(|| cands[self.below(cands.len())])
    }

    /// Another live value of exactly `shape`, else `v` itself.
    fn partner(&mut self, v: ValueId) -> ValueId {
        let s = self.shape(v);
        let cands: Vec<_> = self
            .live
            .iter()
            .copied()
            .filter(|&w| self.g.value(w).ty.shape == s)
            .collect();
        cands[self.below(cands.len())]
    }

    fn step(&mut self) {
        let x4 = self.pick(4);
        let x2 = self.pick(2);
        match (self.below(14), x4, x2) {
            (0 | 1, Some(x), _) => self.conv(x),
            (2, Some(x), _) => self.batch_norm(x),
            (3, _, _) => self.activation(),
            (4 | 5, _, _) => self.binary(),
            (6, Some(x), _) => self.pool(x),
            (7, Some(x), _) => {
                let y = self.partner(x);
                self.node("Concat", &[("axis", Attr::Int(1))], &[Some(x), Some(y)]);
            }
            (8, Some(x), _) => self.flatten(x),
            (9, _, Some(x)) => self.unflatten(x),
            (10, _, Some(x)) => self.gemm(x),
            (11, Some(x), _) => {
                let perms: [&[i64]; 3] = [&[0, 2, 3, 1], &[0, 3, 1, 2], &[0, 1, 3, 2]];
                let perm = perms[self.below(3)].to_vec();
                self.node("Transpose", &[("perm", Attr::Ints(perm))], &[Some(x)]);
            }
            (12, _, _) => self.layer_norm(),
            (13, _, _) => {
                let x = *self.live.last().expect("non-empty");
                let axis = if self.below(2) == 0 { -1 } else { 1 };
                self.node("Softmax", &[("axis", Attr::Int(axis))], &[Some(x)]);
            }
            // The chosen op needs a rank that no live value has.
            (_, Some(x), _) => self.conv(x),
            (_, None, _) => self.activation(),
        }
    }

    fn conv(&mut self, x: ValueId) {
        let c = self.shape(x)[1];
        let group = if c.is_multiple_of(2) && self.below(3) == 0 {
            2
        } else {
            1
        };
        let group = if self.below(4) == 0 { c } else { group };
        let m = group * (1 + self.below(3));
        let k = if self.below(2) == 0 { 1 } else { 3 };
        let w_shape = [m, c / group, k, k];
        // Weights are constants, sometimes computed from constants (a job
        // for const_fold).
        let w = if self.below(3) == 0 {
            let a = self.konst(&w_shape, -0.5, 0.5);
            let s = self.konst(&[1], 0.5, 1.5);
            self.n += 1;
            let out = format!("w{}", self.n);
            self.g
                .add_node(
                    &format!("Mul_w{}", self.n),
                    "Mul",
                    OPSET,
                    Attrs::default(),
                    vec![Some(a), Some(s)],
                    std::slice::from_ref(&out),
                )
                .expect("valid Mul");
            self.g.find(&out).expect("just added")
        } else {
            self.konst(&w_shape, -0.5, 0.5)
        };
        let bias = (self.below(2) == 0).then(|| self.konst(&[m], -0.5, 0.5));
        let pad = (k / 2) as i64 * self.below(2) as i64;
        let mut attrs = vec![
            ("group", Attr::Int(group as i64)),
            ("kernel_shape", Attr::Ints(vec![k as i64, k as i64])),
            ("pads", Attr::Ints(vec![pad; 4])),
        ];
        if self.below(4) == 0 {
            attrs.push(("strides", Attr::Ints(vec![2, 2])));
        }
        let (h, wd) = (self.shape(x)[2], self.shape(x)[3]);
        if h + 2 * pad as usize >= k && wd + 2 * pad as usize >= k {
            self.node("Conv", &attrs, &[Some(x), Some(w), bias]);
        }
    }

    fn batch_norm(&mut self, x: ValueId) {
        let c = self.shape(x)[1];
        let scale = self.konst(&[c], 0.5, 1.5);
        let beta = self.konst(&[c], -0.5, 0.5);
        let mean = self.konst(&[c], -0.5, 0.5);
        let var = self.konst(&[c], 0.5, 2.0);
        self.node(
            "BatchNormalization",
            &[("epsilon", Attr::Float(1e-3))],
            &[Some(x), Some(scale), Some(beta), Some(mean), Some(var)],
        );
    }

    fn activation(&mut self) {
        let x = *self.live.last().expect("non-empty");
        match self.below(3) {
            0 => self.node("Relu", &[], &[Some(x)]),
            1 => self.node("Sigmoid", &[], &[Some(x)]),
            _ => {
                let lo = Tensor::scalar(0.0f32);
                let hi = Tensor::scalar(6.0f32);
                let lo = self
                    .g
                    .add_const(&self.g.fresh_name("lo"), lo)
                    .expect("fresh");
                let hi = self
                    .g
                    .add_const(&self.g.fresh_name("hi"), hi)
                    .expect("fresh");
                self.node("Clip", &[], &[Some(x), Some(lo), Some(hi)])
            }
        };
    }

    fn binary(&mut self) {
        let x = *self.live.last().expect("non-empty");
        let op = if self.below(2) == 0 { "Add" } else { "Mul" };
        let s = self.shape(x);
        let other = match self.below(4) {
            // A per-channel constant: [C,1,1] / [1,C,1,1] on rank 4, [C] on
            // rank 2, or a scalar.
            0 if s.len() == 4 => {
                let shape: &[usize] = if self.below(2) == 0 {
                    &[s[1], 1, 1]
                } else {
                    &[1, s[1], 1, 1]
                };
                self.konst(shape, 0.5, 1.5)
            }
            0 if s.len() == 2 => self.konst(&[s[1]], 0.5, 1.5),
            1 => self.konst(&[], 0.5, 1.5),
            2 => self.konst(&s, -0.5, 0.5),
            _ => self.partner(x),
        };
        if self.below(2) == 0 {
            self.node(op, &[], &[Some(x), Some(other)]);
        } else {
            self.node(op, &[], &[Some(other), Some(x)]);
        }
    }

    fn pool(&mut self, x: ValueId) {
        let s = self.shape(x);
        if s[2] < 2 || s[3] < 2 {
            return;
        }
        let op = if self.below(2) == 0 {
            "MaxPool"
        } else {
            "AveragePool"
        };
        let stride = 1 + self.below(2) as i64;
        self.node(
            op,
            &[
                ("kernel_shape", Attr::Ints(vec![2, 2])),
                ("strides", Attr::Ints(vec![stride, stride])),
            ],
            &[Some(x)],
        );
    }

    fn flatten(&mut self, x: ValueId) {
        let s = self.shape(x);
        if self.below(2) == 0 {
            self.node("Flatten", &[("axis", Attr::Int(1))], &[Some(x)]);
        } else {
            let shape = self.ints(&[s[0] as i64, -1]);
            self.node("Reshape", &[], &[Some(x), Some(shape)]);
        }
    }

    fn unflatten(&mut self, x: ValueId) {
        let s = self.shape(x);
        let shape = self.ints(&[s[0] as i64, s[1] as i64, 1, 1]);
        self.node("Reshape", &[], &[Some(x), Some(shape)]);
    }

    fn gemm(&mut self, x: ValueId) {
        let k = self.shape(x)[1];
        let m = 2 + self.below(5);
        if self.below(3) == 0 {
            let w = self.konst(&[k, m], -0.5, 0.5);
            self.node("MatMul", &[], &[Some(x), Some(w)]);
            return;
        }
        let trans_b = self.below(2) == 1;
        let w_shape = if trans_b { [m, k] } else { [k, m] };
        let w = self.konst(&w_shape, -0.5, 0.5);
        let c = (self.below(2) == 0).then(|| self.konst(&[m], -0.5, 0.5));
        let alpha = self.r.uniform(0.5, 1.5) as f32;
        self.node(
            "Gemm",
            &[
                ("alpha", Attr::Float(alpha)),
                ("transB", Attr::Int(trans_b as i64)),
            ],
            &[Some(x), Some(w), c],
        );
    }

    /// LayerNorm over the last axis as torch exports it before opset 17.
    fn layer_norm(&mut self) {
        let x = *self.live.last().expect("non-empty");
        let axes = Attr::Ints(vec![-1]);
        let mean = self.node("ReduceMean", &[("axes", axes.clone())], &[Some(x)]);
        let d = self.node("Sub", &[], &[Some(x), Some(mean)]);
        let two = self
            .g
            .add_const(&self.g.fresh_name("two"), Tensor::scalar(2.0f32));
        let two = two.expect("fresh");
        let p = self.node("Pow", &[], &[Some(d), Some(two)]);
        let var = self.node("ReduceMean", &[("axes", axes)], &[Some(p)]);
        let eps = self.konst(&[], 1e-5, 1e-5);
        let ve = self.node("Add", &[], &[Some(var), Some(eps)]);
        let sd = self.node("Sqrt", &[], &[Some(ve)]);
        self.node("Div", &[], &[Some(d), Some(sd)]);
    }
}
