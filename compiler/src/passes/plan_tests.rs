//! Hand-computed plans for small graphs: chains, diamonds, views, in-place
//! reuse and the slots of graph outputs.

use super::*;
use crate::ir::{Attrs, DType, Tensor, ValueType};

/// A graph builder: `op(g, "Softmax", &["x"], "a")` adds node `a_node`.
fn op(g: &mut Graph, op: &str, ins: &[&str], out: &str) -> ValueId {
    let inputs = ins.iter().map(|n| Some(g.find(n).unwrap())).collect();
    g.add_node(
        &format!("{out}_node"),
        op,
        13,
        Attrs::default(),
        inputs,
        &[out.to_string()],
    )
    .unwrap();
    g.find(out).unwrap()
}

/// `x`: f32[1,16], 64 bytes, one aligned block.
fn graph() -> Graph {
    let mut g = Graph::new("t");
    g.add_input("x", ValueType::new(DType::F32, [1, 16]))
        .unwrap();
    g
}

fn arena(p: &MemoryPlan, v: ValueId) -> usize {
    match p.slots[v.0] {
        Slot::Arena { offset } => offset,
        s => panic!("{v:?} is {s:?}"),
    }
}

#[test]
fn chain_of_non_elementwise_ops_ping_pongs() {
    let mut g = graph();
    let a = op(&mut g, "Softmax", &["x"], "a");
    let b = op(&mut g, "Softmax", &["a"], "b");
    let c = op(&mut g, "Softmax", &["b"], "c");
    let d = op(&mut g, "Softmax", &["c"], "d");
    g.outputs = vec![d];
    let p = plan(&g).unwrap();
    assert_eq!((arena(&p, a), arena(&p, b), arena(&p, c)), (0, 64, 0));
    assert_eq!(p.slots[d.0], Slot::Output(0));
    assert_eq!(p.slots[0], Slot::Input(0));
    assert_eq!(p.arena_bytes, 128);
    assert_eq!(p.intermediate_bytes, 3 * 64);
}

#[test]
fn elementwise_chain_runs_in_place() {
    let mut g = graph();
    let a = op(&mut g, "Softmax", &["x"], "a");
    let b = op(&mut g, "Relu", &["a"], "b");
    let c = op(&mut g, "Sigmoid", &["b"], "c");
    let d = op(&mut g, "Neg", &["c"], "d");
    g.outputs = vec![d];
    let p = plan(&g).unwrap();
    assert_eq!((arena(&p, a), arena(&p, b), arena(&p, c)), (0, 0, 0));
    assert_eq!(p.arena_bytes, 64);
}

#[test]
fn diamond_keeps_the_shared_value_alive() {
    let mut g = graph();
    let a = op(&mut g, "Softmax", &["x"], "a");
    let b = op(&mut g, "Softmax", &["a"], "b");
    let c = op(&mut g, "Exp", &["a"], "c");
    let d = op(&mut g, "Add", &["b", "c"], "d");
    let e = op(&mut g, "Softmax", &["d"], "e");
    g.outputs = vec![e];
    let p = plan(&g).unwrap();
    // `a` is read by `c`, so `b` cannot take it; `c` may (a's last reader).
    assert_eq!((arena(&p, a), arena(&p, b), arena(&p, c)), (0, 64, 0));
    // `d` takes over `b` (the first input dying here).
    assert_eq!(arena(&p, d), 64);
    assert_eq!(p.arena_bytes, 128);
}

#[test]
fn views_share_bytes_and_extend_lifetimes() {
    let mut g = graph();
    g.add_const("shape", Tensor::from_vec(&[3], vec![1i64, 4, 4]).unwrap())
        .unwrap();
    g.add_const("w", Tensor::zeros(DType::F32, &[1, 16]))
        .unwrap();
    let a = op(&mut g, "Softmax", &["x"], "a");
    let r = op(&mut g, "Reshape", &["a", "shape"], "r");
    let f = op(&mut g, "Flatten", &["r"], "f");
    let b = op(&mut g, "Softmax", &["x"], "b");
    let c = op(&mut g, "Softmax", &["f"], "c");
    let xi = op(&mut g, "Identity", &["x"], "xi");
    let wi = op(&mut g, "Identity", &["w"], "wi");
    let s = op(&mut g, "Sum", &["b", "xi", "wi"], "s");
    let out = op(&mut g, "Add", &["c", "s"], "out");
    g.outputs = vec![out];
    let p = plan(&g).unwrap();
    let x = g.find("x").unwrap();
    let w = g.find("w").unwrap();
    assert_eq!(p.slots[r.0], Slot::View(a));
    assert_eq!(p.slots[f.0], Slot::View(a), "views of views name the root");
    assert_eq!(p.slots[xi.0], Slot::View(x));
    assert_eq!(p.slots[wi.0], Slot::View(w));
    assert_eq!(p.slots[w.0], Slot::Const);
    // `a` lives until `c` reads its view `f`, so `b` goes elsewhere.
    assert_eq!((arena(&p, a), arena(&p, b)), (0, 64));
    // `c` is written while `a` is read: a fresh block.
    assert_eq!(arena(&p, c), 128);
    // `s` takes over `b`, its first input dying there.
    assert_eq!(arena(&p, s), 64);
}

#[test]
fn in_place_needs_a_dying_same_shaped_arena_input() {
    let mut g = graph();
    g.add_input("row", ValueType::new(DType::F32, [1, 16]))
        .unwrap();
    g.add_input("big", ValueType::new(DType::F32, [4, 16]))
        .unwrap();
    let a = op(&mut g, "Softmax", &["row"], "a");
    let m = op(&mut g, "Softmax", &["big"], "m");
    // `a` broadcasts: the output may take `m`'s block, never `a`'s.
    let s = op(&mut g, "Add", &["a", "m"], "s");
    // `s` is read again later: Relu must not overwrite it.
    let r = op(&mut g, "Relu", &["s"], "r");
    let t = op(&mut g, "Mul", &["r", "s"], "t");
    g.outputs = vec![t];
    let p = plan(&g).unwrap();
    assert_eq!(arena(&p, s), arena(&p, m));
    assert_ne!(arena(&p, r), arena(&p, s));
    assert_eq!(arena(&p, a), 0);
    assert_eq!(arena(&p, m), 64);
    // `r` cannot reuse `a`'s 64-byte block (256 needed) and `s` is live.
    assert_eq!(arena(&p, r), 320);
    assert_eq!(p.arena_bytes, 576);
}

#[test]
fn graph_outputs_get_output_slots() {
    let mut g = graph();
    g.add_const("shape", Tensor::from_vec(&[1], vec![16i64]).unwrap())
        .unwrap();
    let k = g.add_const("k", Tensor::zeros(DType::F32, &[2])).unwrap();
    let a = op(&mut g, "Softmax", &["x"], "a");
    let r = op(&mut g, "Reshape", &["a", "shape"], "r");
    let u = op(&mut g, "Softmax", &["a"], "unread");
    let x = g.find("x").unwrap();
    g.outputs = vec![k, r, x, r];
    let p = plan(&g).unwrap();
    assert_eq!(
        p.slots[r.0],
        Slot::Output(1),
        "first index, even from a view op"
    );
    assert_eq!(p.slots[x.0], Slot::Input(0));
    assert_eq!(p.slots[k.0], Slot::Const);
    // Unread values are still written somewhere, apart from live ones.
    assert_eq!(arena(&p, a), 0);
    assert_eq!(arena(&p, u), 64);
    assert_eq!(p.intermediate_bytes, 128);
}

#[test]
fn multiple_outputs_and_omitted_inputs() {
    let mut g = Graph::new("t");
    g.add_input("x", ValueType::new(DType::F32, [4, 16]))
        .unwrap();
    let mut attrs = Attrs::default();
    attrs.set("axis", crate::ir::Attr::Int(0));
    let x = g.find("x").unwrap();
    let names = ["p".to_string(), "q".to_string()];
    g.add_node("split", "Split", 13, attrs, vec![Some(x), None], &names)
        .unwrap();
    let (p_, q) = (g.find("p").unwrap(), g.find("q").unwrap());
    let o = op(&mut g, "Add", &["p", "q"], "o");
    g.outputs = vec![o];
    let p = plan(&g).unwrap();
    assert_eq!((arena(&p, p_), arena(&p, q)), (0, 128));
    assert_eq!(p.arena_bytes, 256);
}

#[test]
fn unreferenced_values_are_unused() {
    let mut g = graph();
    let a = op(&mut g, "Softmax", &["x"], "a");
    let b = op(&mut g, "Softmax", &["a"], "b");
    g.outputs = vec![a];
    let n = g.value(b).producer.unwrap().0;
    g.remove_node(n);
    let p = plan(&g).unwrap();
    assert_eq!(p.slots[b.0], Slot::Unused);
    assert_eq!(p.arena_bytes, 0);
}

/// `name`: a fused op over `x` (f32[1,16]) and a 16x16 weight, with
/// `residual` as input 3 (no bias) and `alpha`.
fn fused(g: &mut Graph, name: &str, x: &str, residual: &str, alpha: f32) -> ValueId {
    let w = g
        .add_const(&format!("{name}_w"), Tensor::zeros(DType::F32, &[16, 16]))
        .unwrap();
    let (x, r) = (g.find(x).unwrap(), g.find(residual).unwrap());
    let mut attrs = Attrs::default();
    attrs.set("alpha", crate::ir::Attr::Float(alpha));
    let op = if alpha == 1.0 {
        "cpucc.FusedMatMul"
    } else {
        "cpucc.FusedGemm"
    };
    let ins = vec![Some(x), Some(w), None, Some(r)];
    g.add_node(
        &format!("{name}_node"),
        op,
        13,
        attrs,
        ins,
        &[name.to_string()],
    )
    .unwrap();
    g.find(name).unwrap()
}

#[test]
fn fused_ops_accumulate_onto_a_dying_residual() {
    let mut g = graph();
    op(&mut g, "Softmax", &["x"], "a");
    let r = op(&mut g, "Softmax", &["x"], "r");
    // `r` dies at `f`: `f` takes its block.
    let f = fused(&mut g, "f", "a", "r", 1.0);
    let r2 = op(&mut g, "Softmax", &["f"], "r2");
    // Gemm's alpha would scale the residual: a fresh block.
    let h = fused(&mut g, "h", "a", "r2", 0.75);
    // The residual is also the A input: a fresh block.
    let k = fused(&mut g, "k", "h", "h", 1.0);
    // `k` is read again after `m`: a fresh block.
    let m = fused(&mut g, "m", "a", "k", 1.0);
    let n = op(&mut g, "Add", &["m", "k"], "n");
    g.outputs = vec![n];
    let p = plan(&g).unwrap();
    assert_eq!(arena(&p, f), arena(&p, r));
    assert_ne!(arena(&p, h), arena(&p, r2));
    assert_ne!(arena(&p, k), arena(&p, h));
    assert_ne!(arena(&p, m), arena(&p, k));
}
