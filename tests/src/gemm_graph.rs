//! The GEMM-kernel graph of the aarch64 kernel tests: MatMul, Gemm and
//! NHWC Conv nodes (constant weights) on shapes off the tile, panel and
//! depth-block edges, with alpha/beta, row and column bias, residual,
//! Relu/Clip (in registers) and Sigmoid (after the store). Each node's
//! output is a graph output.

use cpucc::ir::{Attr, Attrs, Graph, Tensor, ValueId, ValueType};
use cpucc::random::SplitMix64;

/// A node operand: a fresh graph input or a fresh constant of this shape,
/// or a fresh input negated by a node first (a workspace value whose life
/// ends at the node: as a fused op's residual, the memory plan may put the
/// op's output over it, and the kernel accumulates onto it; that output
/// is then negated too, to be a workspace value itself).
pub enum Arg {
    In(Vec<usize>),
    Const(Vec<usize>),
    Dying(Vec<usize>),
}
use Arg::{Const, Dying, In};

/// Random operand values for a shape.
pub type Data = fn(&mut SplitMix64, &[usize]) -> Tensor;

/// What the two suites vary: the third MatMul's operands, the depth of the
/// fused MatMul (two depth blocks and a tail for the kernel under test)
/// and the rows of the fused Gemm.
pub struct Edges {
    pub third: [Arg; 2],
    pub depth: usize,
    pub gemm_rows: usize,
}

struct Builder {
    g: Graph,
    inputs: Vec<(String, Tensor)>,
    rng: SplitMix64,
    data: Data,
}

impl Builder {
    fn node(&mut self, op: &str, attrs: &[(&str, Attr)], args: &[Arg]) {
        let k = self.g.node_indices().len();
        let mut ids = Vec::new();
        for (i, arg) in args.iter().enumerate() {
            let name = format!("n{k}_{i}");
            ids.push(Some(match arg {
                In(s) => {
                    let t = (self.data)(&mut self.rng, s);
                    let id = self.g.add_input(&name, ValueType::of(&t)).unwrap();
                    self.inputs.push((name, t));
                    id
                }
                Const(s) => {
                    let t = (self.data)(&mut self.rng, s);
                    self.g.add_const(&name, t).unwrap()
                }
                Dying(s) => {
                    let t = (self.data)(&mut self.rng, s);
                    let id = self.g.add_input(&name, ValueType::of(&t)).unwrap();
                    self.inputs.push((name.clone(), t));
                    self.neg(&name, id)
                }
            }));
        }
        let mut a = Attrs::default();
        for (key, v) in attrs {
            a.set(key, v.clone());
        }
        let n = self
            .g
            .add_node(&format!("n{k}"), op, 13, a, ids, &[format!("y{k}")])
            .unwrap();
        let mut out = self.g.node(n).outputs[0];
        if args.iter().any(|a| matches!(a, Dying(_))) {
            out = self.neg(&format!("y{k}"), out);
        }
        self.g.outputs.push(out);
    }

    fn neg(&mut self, name: &str, x: ValueId) -> ValueId {
        let n = self
            .g
            .add_node(
                &format!("{name}_neg"),
                "Neg",
                13,
                Attrs::default(),
                vec![Some(x)],
                &[format!("{name}_neg")],
            )
            .unwrap();
        self.g.node(n).outputs[0]
    }
}

fn act(name: &str) -> (&'static str, Attr) {
    ("activation", Attr::String(name.to_string()))
}

/// The graph and its inputs' values.
pub fn graph(seed: u64, data: Data, e: Edges) -> (Graph, Vec<(String, Tensor)>) {
    let mut b = Builder {
        g: Graph::new("t"),
        inputs: Vec::new(),
        rng: SplitMix64::new(seed),
        data,
    };
    let (d, r) = (e.depth, e.gemm_rows);
    b.node("MatMul", &[], &[In(vec![1, 1]), Const(vec![1, 1])]);
    b.node("MatMul", &[], &[In(vec![13, 31]), Const(vec![31, 45])]);
    b.node("MatMul", &[], &e.third);
    b.node(
        "MatMul",
        &[],
        &[In(vec![2, 1, 17, 40]), Const(vec![3, 40, 45])],
    );
    b.node(
        "cpucc.FusedMatMul",
        &[act("Sigmoid")],
        &[In(vec![9, d]), Const(vec![d, 70]), Const(vec![70])],
    );
    b.node(
        "cpucc.FusedMatMul",
        &[act("Relu")],
        &[
            In(vec![29, 70]),
            Const(vec![70, 97]),
            Const(vec![97]),
            In(vec![29, 97]),
        ],
    );
    // Two depth blocks and a tail, accumulating onto the residual.
    b.node(
        "cpucc.FusedMatMul",
        &[act("Relu")],
        &[
            In(vec![17, d]),
            Const(vec![d, 45]),
            Const(vec![45]),
            Dying(vec![17, 45]),
        ],
    );
    b.node(
        "cpucc.FusedGemm",
        &[
            ("transB", Attr::Int(1)),
            ("alpha", Attr::Float(0.75)),
            ("beta", Attr::Float(-1.5)),
            act("Clip"),
            ("act_alpha", Attr::Float(-0.25)),
            ("act_beta", Attr::Float(0.5)),
        ],
        &[In(vec![r, 23]), Const(vec![65, 23]), Const(vec![r, 1])],
    );
    for (i, (x, w, s, p)) in [
        ([1, 9, 9, 5], [40, 5, 3, 3], 2, 1),
        ([2, 4, 5, 16], [33, 16, 1, 1], 1, 0),
    ]
    .into_iter()
    .enumerate()
    {
        let oh = (x[1] + 2 * p - w[2]) / s + 1;
        let ow = (x[2] + 2 * p - w[3]) / s + 1;
        b.node(
            "cpucc.FusedConv",
            &[
                ("strides", Attr::Ints(vec![s as i64; 2])),
                ("pads", Attr::Ints(vec![p as i64; 4])),
                ("layout", Attr::String("NHWC".into())),
                act("Relu"),
            ],
            &[
                In(x.to_vec()),
                Const(w.to_vec()),
                Const(vec![w[0]]),
                if i == 0 {
                    In(vec![x[0], oh, ow, w[0]])
                } else {
                    Dying(vec![x[0], oh, ow, w[0]])
                },
            ],
        );
    }
    (b.g, b.inputs)
}
