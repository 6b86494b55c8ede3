//! Layout assignment: graphs with 2-D convolutions run channels-last.
//!
//! Spatial ops (those `ops::nhwc::data_inputs` lists: Conv, FusedConv,
//! pools, BatchNormalization, Resize) on 4-D data get `layout="NHWC"`; their
//! data tensors become physically `[N, H, W, C]` (`Value.layout = Nhwc`),
//! while weights (OIHW), biases, statistics, scales and attributes keep
//! their ONNX meaning. Layout-agnostic ops between them follow: elementwise
//! ops (broadcast constants are permuted, e.g. `[C,1,1]` -> `[1,1,1,C]`),
//! `cpucc.Elementwise`, Concat/Split (axis remapped), Pad (pads permuted)
//! and reductions (axes remapped). Conversions are explicit `Transpose`
//! nodes, perm `[0,2,3,1]` into NHWC and `[0,3,1,2]` back, inserted only
//! where an op needs NCHW and at graph outputs. A Reshape/Flatten/Squeeze
//! of an NHWC value whose C or H*W is 1 reads the NHWC data directly (both
//! orders flatten alike). Finally adjacent Transposes are merged or
//! cancelled and Transposes of constants folded into new constants.

use std::collections::{HashMap, HashSet};

use petgraph::stable_graph::NodeIndex;

use super::rewrite::{Replacement, add_const, constant, out, produced_by, replace};
use crate::error::Result;
use crate::ir::{Attr, Attrs, Graph, Layout, Tensor, ValueId};
use crate::ops::{self, fused, nhwc};

pub fn run(g: &mut Graph) -> Result<()> {
    let order = g.topo_order()?;
    if !order
        .iter()
        .any(|&n| is_spatial(g, n) && g.node(n).op.ends_with("Conv"))
    {
        return Ok(());
    }
    let mut st = State::default();
    for n in order {
        convert(g, &mut st, n)?;
    }
    for i in 0..g.outputs.len() {
        let o = g.outputs[i];
        if st.converted.contains(&o) {
            let back = st.nchw_of(g, o)?;
            g.swap_names(back, o);
            g.outputs[i] = back;
        }
    }
    cancel_transposes(g)?;
    g.compact();
    Ok(())
}

/// A 4-D op with a channels-last form and one output.
fn is_spatial(g: &Graph, n: NodeIndex) -> bool {
    let node = g.node(n);
    nhwc::data_inputs(&node.op).is_some()
        && node.outputs.len() == 1
        && node
            .inputs
            .first()
            .copied()
            .flatten()
            .is_some_and(|x| g.value(x).ty.shape.len() == 4)
        && !node.attrs.has(nhwc::ATTR)
}

/// Elementwise ops (with numpy broadcasting) that any layout suits.
fn is_elementwise(op: &str) -> bool {
    fused::step_attr_names(op).is_some()
        || matches!(
            op,
            "cpucc.Elementwise" | "Sum" | "Mean" | "Cast" | "Identity" | "Where" | "Gelu"
        )
}

fn is_reduce(op: &str) -> bool {
    matches!(
        op,
        "ReduceSum"
            | "ReduceMean"
            | "ReduceMax"
            | "ReduceMin"
            | "ReduceProd"
            | "ReduceL1"
            | "ReduceL2"
            | "ReduceLogSum"
            | "ReduceLogSumExp"
            | "ReduceSumSquare"
    )
}

/// Where NCHW axis `a` sits in NHWC.
fn nhwc_axis(a: usize) -> usize {
    nhwc::TO_NCHW[a]
}

#[derive(Default)]
struct State {
    /// A (logical NCHW) value -> its NHWC form.
    nhwc: HashMap<ValueId, ValueId>,
    /// Values whose producer was replaced by its NHWC form.
    converted: HashSet<ValueId>,
    /// Converted values -> their NCHW form, once some reader needed it.
    nchw: HashMap<ValueId, ValueId>,
    /// Constants -> their permuted (rank-4, NHWC-ordered) copies.
    consts: HashMap<ValueId, ValueId>,
}

fn transpose(g: &mut Graph, x: ValueId, perm: &[usize], suffix: &str) -> Result<ValueId> {
    let base = g.value(x).name.clone();
    let name = g.fresh_name(&format!("{base}.{suffix}"));
    let mut attrs = Attrs::default();
    attrs.set("perm", Attr::Ints(perm.iter().map(|&p| p as i64).collect()));
    let n = g.add_node(
        &format!("layout/{suffix}/{base}"),
        "Transpose",
        13,
        attrs,
        vec![Some(x)],
        &[name],
    )?;
    Ok(out(g, n))
}

impl State {
    /// `v` in NCHW: itself, or a Transpose back from its NHWC form.
    fn nchw_of(&mut self, g: &mut Graph, v: ValueId) -> Result<ValueId> {
        if !self.converted.contains(&v) {
            return Ok(v);
        }
        if let Some(&b) = self.nchw.get(&v) {
            return Ok(b);
        }
        let b = transpose(g, self.nhwc[&v], &nhwc::TO_NCHW, "nchw")?;
        self.nchw.insert(v, b);
        Ok(b)
    }

    /// `v` (4-D) in NHWC: its NHWC form, or a new Transpose into it.
    fn nhwc_of(&mut self, g: &mut Graph, v: ValueId) -> Result<ValueId> {
        if let Some(&t) = self.nhwc.get(&v) {
            return Ok(t);
        }
        let t = transpose(g, v, &nhwc::TO_NHWC, "nhwc")?;
        g.value_mut(t).layout = Layout::Nhwc;
        self.nhwc.insert(v, t);
        Ok(t)
    }

    /// An operand of an elementwise op whose other operands are NHWC: NHWC
    /// form, single values as they are, constants permuted; `None` when
    /// it cannot follow (a run-time lower-rank tensor).
    fn operand(&mut self, g: &mut Graph, v: ValueId) -> Result<Option<ValueId>> {
        let ty = g.value(v).ty.clone();
        if self.nhwc.contains_key(&v) || (ty.shape.len() == 4 && constant(g, v).is_none()) {
            return self.nhwc_of(g, v).map(Some);
        }
        if ty.numel() == 1 {
            return Ok(Some(v));
        }
        let Some(t) = constant(g, v) else {
            return Ok(None);
        };
        if ty.shape.len() > 4 {
            return Ok(None);
        }
        if let Some(&c) = self.consts.get(&v) {
            return Ok(Some(c));
        }
        let mut s = vec![1; 4 - ty.shape.len()];
        s.extend(&ty.shape);
        let p = nhwc::permute(&t.reshape(&s)?, &nhwc::TO_NHWC)?;
        let name = format!("{}.nhwc", g.value(v).name);
        let c = add_const(g, &name, p)?;
        g.value_mut(c).layout = Layout::Nhwc;
        self.consts.insert(v, c);
        Ok(Some(c))
    }
}

/// Rewrites node `n` for the layouts its inputs have.
fn convert(g: &mut Graph, st: &mut State, n: NodeIndex) -> Result<()> {
    let any_nhwc = g
        .node(n)
        .inputs
        .iter()
        .any(|v| v.is_some_and(|v| st.nhwc.contains_key(&v)));
    let done = if is_spatial(g, n) {
        spatial(g, st, n)?
    } else if !any_nhwc {
        false
    } else {
        let op = g.node(n).op.clone();
        if is_elementwise(&op) {
            elementwise(g, st, n)?
        } else if matches!(op.as_str(), "Reshape" | "Flatten" | "Squeeze") {
            flatten(g, st, n)?
        } else if is_reduce(&op) {
            reduce(g, st, n)?
        } else {
            match op.as_str() {
                "Concat" => concat(g, st, n)?,
                "Split" => split(g, st, n)?,
                "Pad" => pad(g, st, n)?,
                _ => false,
            }
        }
    };
    let reads_converted = |v: &Option<ValueId>| v.is_some_and(|v| st.converted.contains(&v));
    if !done && g.node(n).inputs.iter().any(reads_converted) {
        let mut ins = g.node(n).inputs.clone();
        for v in ins.iter_mut().flatten() {
            *v = st.nchw_of(g, *v)?;
        }
        g.set_inputs(n, ins);
    }
    Ok(())
}

/// Adds `op` as the NHWC form of node `n` (whose outputs become converted
/// values), then removes `n`.
fn emit(
    g: &mut Graph,
    st: &mut State,
    n: NodeIndex,
    attrs: Attrs,
    inputs: Vec<Option<ValueId>>,
) -> Result<bool> {
    let node = g.node(n).clone();
    if g.infer(&node.op, node.opset, &attrs, &inputs, node.outputs.len())
        .is_err()
    {
        return Ok(false);
    }
    let names: Vec<String> = node
        .outputs
        .iter()
        .map(|&o| g.fresh_name(&format!("{}.nhwc", g.value(o).name)))
        .collect();
    let m = g.add_node(&node.name, &node.op, node.opset, attrs, inputs, &names)?;
    g.node_mut(m).fused = node.fused.clone();
    let outs = g.node(m).outputs.clone();
    for (&o, &new) in node.outputs.iter().zip(&outs) {
        g.value_mut(new).layout = Layout::Nhwc;
        st.nhwc.insert(o, new);
        st.converted.insert(o);
    }
    g.remove_node(n);
    Ok(true)
}

fn spatial(g: &mut Graph, st: &mut State, n: NodeIndex) -> Result<bool> {
    let node = g.node(n).clone();
    let data = nhwc::data_inputs(&node.op).expect("a spatial op");
    let mut ins = node.inputs.clone();
    for (i, v) in ins.iter_mut().enumerate() {
        if let Some(x) = v {
            *x = if data.contains(&i) {
                st.nhwc_of(g, *x)?
            } else {
                st.nchw_of(g, *x)?
            };
        }
    }
    let mut attrs = node.attrs.clone();
    attrs.set(nhwc::ATTR, Attr::String("NHWC".into()));
    emit(g, st, n, attrs, ins)
}

fn elementwise(g: &mut Graph, st: &mut State, n: NodeIndex) -> Result<bool> {
    let node = g.node(n).clone();
    if node.outputs.len() != 1 || g.value(node.outputs[0]).ty.shape.len() != 4 {
        return Ok(false);
    }
    let mut ins = Vec::with_capacity(node.inputs.len());
    for v in &node.inputs {
        ins.push(match v {
            Some(v) => match st.operand(g, *v)? {
                Some(x) => Some(x),
                None => return Ok(false),
            },
            None => None,
        });
    }
    emit(g, st, n, node.attrs.clone(), ins)
}

/// Replaces node `n` (reading an NHWC value) by `op` computing the same
/// ONNX-layout output.
fn exit(
    g: &mut Graph,
    n: NodeIndex,
    op: &str,
    opset: i64,
    attrs: Attrs,
    inputs: Vec<Option<ValueId>>,
) -> Result<bool> {
    let node = g.node(n).clone();
    replace(
        g,
        Replacement {
            name: &node.name,
            op,
            opset,
            attrs,
            inputs,
        },
        node.outputs[0],
        &[n],
    )
}

/// Reshape/Flatten/Squeeze of a 4-D value whose NCHW and NHWC element
/// orders agree (C == 1 or H*W == 1): a Reshape of the NHWC data.
fn flatten(g: &mut Graph, st: &mut State, n: NodeIndex) -> Result<bool> {
    let node = g.node(n).clone();
    let Some(x) = node.inputs[0] else {
        return Ok(false);
    };
    let s = g.value(x).ty.shape.clone();
    if s.len() != 4 || node.outputs.len() != 1 || !(s[1] == 1 || s[2] * s[3] == 1) {
        return Ok(false);
    }
    let Some(&xn) = st.nhwc.get(&x) else {
        return Ok(false);
    };
    let target: Vec<i64> = g
        .value(node.outputs[0])
        .ty
        .shape
        .iter()
        .map(|&d| d as i64)
        .collect();
    let shape = add_const(
        g,
        &format!("{}.shape", node.name),
        Tensor::from_vec(&[target.len()], target)?,
    )?;
    exit(
        g,
        n,
        "Reshape",
        node.opset.max(5),
        Attrs::default(),
        vec![Some(xn), Some(shape)],
    )
}

/// NCHW axes (of a rank-4 tensor) as NHWC axes.
fn remap_axes(axes: &[i64]) -> Option<Vec<i64>> {
    axes.iter()
        .map(|&a| ops::axis(a, 4).ok().map(|a| nhwc_axis(a) as i64))
        .collect()
}

fn reduce(g: &mut Graph, st: &mut State, n: NodeIndex) -> Result<bool> {
    let node = g.node(n).clone();
    let Some(x) = node.inputs[0] else {
        return Ok(false);
    };
    if g.value(x).ty.shape.len() != 4 {
        return Ok(false);
    }
    let keep = node.attrs.int("keepdims", 1)? != 0;
    let mut attrs = node.attrs.clone();
    let mut ins = node.inputs.clone();
    let axes: Vec<i64> = match node.inputs.get(1).copied().flatten() {
        Some(a) => match constant(g, a) {
            Some(t) => t.to_i64_vec()?,
            None => return Ok(false),
        },
        None => node.attrs.ints_opt("axes")?.unwrap_or_default().to_vec(),
    };
    let Some(new_axes) = remap_axes(&axes) else {
        return Ok(false);
    };
    let reduced: Vec<usize> = new_axes
        .iter()
        .map(|&a| nhwc::TO_NHWC[a as usize])
        .collect();
    if !axes.is_empty() {
        if let Some(a) = node.inputs.get(1).copied().flatten() {
            let name = format!("{}.nhwc", g.value(a).name);
            let t = Tensor::from_vec(&[new_axes.len()], new_axes)?;
            ins[1] = Some(add_const(g, &name, t)?);
        } else {
            attrs.set("axes", Attr::Ints(new_axes));
        }
    }
    let Some(&xn) = st.nhwc.get(&x) else {
        return Ok(false);
    };
    ins[0] = Some(xn);
    if keep {
        return emit(g, st, n, attrs, ins);
    }
    // Without keepdims the kept axes must come out in the same order.
    let all_reduced = axes.is_empty() && node.attrs.int("noop_with_empty_axes", 0)? == 0;
    let kept = |a: usize| !all_reduced && !reduced.contains(&a);
    if kept(1) && (kept(2) || kept(3)) {
        return Ok(false);
    }
    exit(g, n, &node.op, node.opset, attrs, ins)
}

fn concat(g: &mut Graph, st: &mut State, n: NodeIndex) -> Result<bool> {
    let node = g.node(n).clone();
    let rank4 = node
        .inputs
        .iter()
        .flatten()
        .all(|&v| g.value(v).ty.shape.len() == 4);
    let Ok(axis) = ops::axis(node.attrs.req_int("axis")?, 4) else {
        return Ok(false);
    };
    if !rank4 {
        return Ok(false);
    }
    let mut ins = Vec::new();
    for v in &node.inputs {
        ins.push(match v {
            Some(v) => Some(nhwc_or_permuted(g, st, *v)?),
            None => None,
        });
    }
    let mut attrs = node.attrs.clone();
    attrs.set("axis", Attr::Int(nhwc_axis(axis) as i64));
    emit(g, st, n, attrs, ins)
}

/// A 4-D value in NHWC: constants permuted, others transposed.
fn nhwc_or_permuted(g: &mut Graph, st: &mut State, v: ValueId) -> Result<ValueId> {
    if constant(g, v).is_some()
        && !st.nhwc.contains_key(&v)
        && let Some(c) = st.operand(g, v)?
    {
        return Ok(c);
    }
    st.nhwc_of(g, v)
}

fn split(g: &mut Graph, st: &mut State, n: NodeIndex) -> Result<bool> {
    let node = g.node(n).clone();
    let Some(x) = node.inputs[0] else {
        return Ok(false);
    };
    let Ok(axis) = ops::axis(node.attrs.int("axis", 0)?, 4) else {
        return Ok(false);
    };
    if g.value(x).ty.shape.len() != 4 {
        return Ok(false);
    }
    let Some(&xn) = st.nhwc.get(&x) else {
        return Ok(false);
    };
    let mut ins = node.inputs.clone();
    ins[0] = Some(xn);
    let mut attrs = node.attrs.clone();
    attrs.set("axis", Attr::Int(nhwc_axis(axis) as i64));
    emit(g, st, n, attrs, ins)
}

fn pad(g: &mut Graph, st: &mut State, n: NodeIndex) -> Result<bool> {
    let node = g.node(n).clone();
    let Some(x) = node.inputs[0] else {
        return Ok(false);
    };
    let Some(&xn) = st.nhwc.get(&x) else {
        return Ok(false);
    };
    let mut ins = node.inputs.clone();
    let mut attrs = node.attrs.clone();
    let permute_pads = |p: &[i64]| -> Vec<i64> {
        let (b, e) = p.split_at(4);
        let o = nhwc::TO_NHWC;
        o.iter()
            .map(|&i| b[i])
            .chain(o.iter().map(|&i| e[i]))
            .collect()
    };
    if node.opset < 11 {
        let Some(p) = node.attrs.ints_opt("pads")? else {
            return Ok(false);
        };
        if p.len() != 8 {
            return Ok(false);
        }
        attrs.set("pads", Attr::Ints(permute_pads(p)));
    } else if let Some(a) = node.inputs.get(3).copied().flatten() {
        let Some(axes) = constant(g, a).map(|t| t.to_i64_vec()).transpose()? else {
            return Ok(false);
        };
        let Some(new_axes) = remap_axes(&axes) else {
            return Ok(false);
        };
        let name = format!("{}.nhwc", g.value(a).name);
        ins[3] = Some(add_const(
            g,
            &name,
            Tensor::from_vec(&[new_axes.len()], new_axes)?,
        )?);
    } else {
        let Some(pv) = node.inputs.get(1).copied().flatten() else {
            return Ok(false);
        };
        let Some(p) = constant(g, pv).map(|t| t.to_i64_vec()).transpose()? else {
            return Ok(false);
        };
        if p.len() != 8 {
            return Ok(false);
        }
        let name = format!("{}.nhwc", g.value(pv).name);
        ins[1] = Some(add_const(
            g,
            &name,
            Tensor::from_vec(&[8], permute_pads(&p))?,
        )?);
    }
    ins[0] = Some(xn);
    emit(g, st, n, attrs, ins)
}

// ------------------------------------------------------ reorder elimination

fn perm_of(g: &Graph, n: NodeIndex) -> Option<Vec<usize>> {
    let node = g.node(n);
    let rank = g
        .value(node.inputs.first().copied().flatten()?)
        .ty
        .shape
        .len();
    match node.attrs.ints_opt("perm").ok()? {
        Some(p) => p.iter().map(|&i| usize::try_from(i).ok()).collect(),
        None => Some((0..rank).rev().collect()),
    }
}

/// Merges Transpose chains (cancelling inverse pairs), folds Transposes of
/// constants and drops Transposes nothing reads, until none applies.
fn cancel_transposes(g: &mut Graph) -> Result<()> {
    loop {
        let mut changed = false;
        for n in g.topo_order()? {
            if g.node(n).op != "Transpose" {
                continue;
            }
            let y = out(g, n);
            let is_output = g.outputs.contains(&y);
            if g.consumers(y).is_empty() && !is_output {
                g.remove_node(n);
                changed = true;
                continue;
            }
            let Some(x) = g.node(n).inputs[0] else {
                continue;
            };
            let Some(p) = perm_of(g, n) else { continue };
            if let Some(t) = constant(g, x) {
                if is_output {
                    continue;
                }
                let folded = nhwc::permute(t, &p)?;
                let name = format!("{}.t", g.value(x).name);
                let c = add_const(g, &name, folded)?;
                g.value_mut(c).layout = g.value(y).layout;
                g.replace_uses(y, c);
                g.remove_node(n);
                changed = true;
            } else if let Some(inner) = produced_by(g, x, "Transpose")
                && let Some(p0) = perm_of(g, inner)
            {
                let src = g.node(inner).inputs[0].expect("perm_of saw it");
                let composed: Vec<usize> = p.iter().map(|&i| p0[i]).collect();
                if composed.iter().enumerate().all(|(i, &c)| i == c) {
                    if is_output {
                        // The source takes the output's name, when it is a
                        // node's result that no one else names.
                        let own = g.value(src).producer.is_some() && !g.outputs.contains(&src);
                        if !own {
                            continue;
                        }
                        g.swap_names(y, src);
                        g.value_mut(src).layout = g.value(y).layout;
                    }
                    g.replace_uses(y, src);
                    g.remove_node(n);
                } else {
                    let perm = composed.iter().map(|&c| c as i64).collect();
                    g.node_mut(n).attrs.set("perm", Attr::Ints(perm));
                    g.set_inputs(n, vec![Some(src)]);
                }
                changed = true;
            }
        }
        if !changed {
            return Ok(());
        }
    }
}
