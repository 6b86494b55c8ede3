//! Native kernels for ops whose indices arrive at run time (GatherElements,
//! GatherND, ScatterElements, ScatterND, TopK, Trilu, OneHot) agree with the
//! interpreter, including duplicate scatter indices, ties and NaN in TopK,
//! negative indices; an out-of-range index fails the run instead of
//! reading or writing out of bounds.

use cpucc::codegen::jit::JitModel;
use cpucc::codegen::{Dumps, Target};
use cpucc::interp;
use cpucc::ir::{Attr, Attrs, Graph, Tensor, ValueType};

/// Inputs from this position on are constants (TopK's K, OneHot's depth
/// decide output shapes).
type Split = usize;

/// A one-node graph; inputs before `split` are run-time inputs.
fn graph(
    op: &str,
    opset: i64,
    attrs: &[(&str, Attr)],
    ins: &[&Tensor],
    split: Split,
    outs: usize,
) -> Graph {
    let mut g = Graph::new(op);
    let ids = ins
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let name = format!("in{i}");
            Some(if i < split {
                g.add_input(&name, ValueType::of(t)).unwrap()
            } else {
                g.add_const(&name, (*t).clone()).unwrap()
            })
        })
        .collect();
    let mut a = Attrs::default();
    for (k, v) in attrs {
        a.set(k, v.clone());
    }
    let names: Vec<String> = (0..outs).map(|i| format!("out{i}")).collect();
    g.add_node(op, op, opset, a, ids, &names).unwrap();
    g.outputs = names.iter().map(|n| g.find(n).unwrap()).collect();
    g
}

fn jit(g: &Graph, ins: &[Tensor]) -> cpucc::Result<Vec<Tensor>> {
    JitModel::compile(g, &Target::host(), &mut Dumps::default())?.run(ins)
}

/// Native and interpreted results are bit-identical (NaN == NaN).
fn same(op: &str, opset: i64, attrs: &[(&str, Attr)], ins: &[Tensor], split: Split, outs: usize) {
    let refs: Vec<&Tensor> = ins.iter().collect();
    let g = graph(op, opset, attrs, &refs, split, outs);
    let want = interp::run(&g, &ins[..split]).unwrap();
    let got = jit(&g, &ins[..split]).unwrap();
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(w.shape(), g.shape(), "{op}");
        assert_eq!(w.to_le_bytes(), g.to_le_bytes(), "{op}: {g:?} vs {w:?}");
    }
}

fn f32s(shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::from_vec(shape, v.to_vec()).unwrap()
}

fn i64s(shape: &[usize], v: &[i64]) -> Tensor {
    Tensor::from_vec(shape, v.to_vec()).unwrap()
}

fn data(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    f32s(
        shape,
        &(0..n).map(|i| i as f32 * 0.5 - 3.0).collect::<Vec<_>>(),
    )
}

#[test]
fn gathers_match_the_interpreter() {
    let x = data(&[3, 4]);
    let idx = i64s(&[2, 4], &[0, -1, 2, 1, 2, 0, -3, 1]);
    same(
        "GatherElements",
        13,
        &[("axis", Attr::Int(0))],
        &[x.clone(), idx],
        2,
        1,
    );
    let idx = i64s(&[3, 2], &[3, 0, -4, 1, 2, 2]);
    same(
        "GatherElements",
        13,
        &[("axis", Attr::Int(1))],
        &[x.clone(), idx],
        2,
        1,
    );
    let idx = i64s(&[2, 2], &[0, 1, -1, 3]);
    same("GatherND", 13, &[], &[x.clone(), idx], 2, 1);
    let x3 = data(&[2, 3, 4]);
    let idx = i64s(&[2, 1, 1], &[2, -1]);
    same(
        "GatherND",
        13,
        &[("batch_dims", Attr::Int(1))],
        &[x3, idx],
        2,
        1,
    );
}

#[test]
fn scatters_combine_duplicates_in_order() {
    let x = data(&[3, 3]);
    let idx = i64s(&[2, 3], &[1, 0, 2, 1, -3, 2]);
    let upd = f32s(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    for red in ["none", "add", "mul", "max", "min"] {
        same(
            "ScatterElements",
            18,
            &[
                ("axis", Attr::Int(0)),
                ("reduction", Attr::String(red.into())),
            ],
            &[x.clone(), idx.clone(), upd.clone()],
            3,
            1,
        );
    }
    let idx = i64s(&[3, 1], &[1, -2, 0]);
    let upd = f32s(&[3, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    for red in ["none", "add", "mul", "max", "min"] {
        same(
            "ScatterND",
            18,
            &[("reduction", Attr::String(red.into()))],
            &[x.clone(), idx.clone(), upd.clone()],
            3,
            1,
        );
    }
}

#[test]
fn topk_ties_and_nan() {
    let x = f32s(
        &[2, 6],
        &[
            1.0,
            3.0,
            f32::NAN,
            3.0,
            -1.0,
            0.0,
            2.0,
            2.0,
            2.0,
            -0.0,
            0.0,
            5.0,
        ],
    );
    for largest in [0, 1] {
        for axis in [1, -1] {
            same(
                "TopK",
                11,
                &[("largest", Attr::Int(largest)), ("axis", Attr::Int(axis))],
                &[x.clone(), i64s(&[1], &[4])],
                1,
                2,
            );
        }
    }
}

#[test]
fn trilu_and_one_hot_with_runtime_inputs() {
    let x = data(&[2, 3, 4]);
    for k in [-1, 0, 2] {
        for upper in [0, 1] {
            same(
                "Trilu",
                14,
                &[("upper", Attr::Int(upper))],
                &[x.clone(), i64s(&[], &[k])],
                2,
                1,
            );
        }
    }
    let idx = i64s(&[2, 3], &[0, -1, 5, 2, -4, 1]);
    let vals = f32s(&[2], &[-1.0, 7.0]);
    for axis in [-1, 0, 1] {
        same(
            "OneHot",
            11,
            &[("axis", Attr::Int(axis))],
            &[idx.clone(), i64s(&[], &[4]), vals.clone()],
            1,
            1,
        );
    }
}

#[test]
fn out_of_range_indices_fail_the_run() {
    let x = data(&[3, 4]);
    let bad = i64s(&[1, 4], &[0, 3, 1, 0]);
    let g = graph("GatherElements", 13, &[], &[&x, &bad], 2, 1);
    assert!(interp::run(&g, &[x.clone(), bad.clone()]).is_err());
    assert!(jit(&g, &[x.clone(), bad]).is_err());
    let bad = i64s(&[1, 2], &[0, 4]);
    let g = graph("GatherND", 13, &[], &[&x, &bad], 2, 1);
    assert!(jit(&g, &[x.clone(), bad]).is_err());
    let bad = i64s(&[1, 1], &[-4]);
    let upd = f32s(&[1, 1], &[1.0]);
    let g = graph("ScatterElements", 13, &[], &[&x, &bad, &upd], 3, 1);
    assert!(jit(&g, &[x, bad, upd]).is_err());
}
