//! Static memory plan: where every value lives at run time. (Placeholder
//! layout without reuse, replaced by the lifetime-based planner.)

use crate::error::Result;
use crate::ir::{Graph, ValueId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Input(usize),
    Output(usize),
    Const,
    Arena { offset: usize },
    View(ValueId),
    Unused,
}

#[derive(Clone, Debug)]
pub struct MemoryPlan {
    pub slots: Vec<Slot>,
    pub arena_bytes: usize,
    pub intermediate_bytes: usize,
}

pub fn plan(g: &Graph) -> Result<MemoryPlan> {
    let n = g.topo_order()?;
    let mut total = 0;
    let mut slots: Vec<Slot> = Vec::new();
    for (id, _) in g.constants() {
        grow(&mut slots, id);
        slots[id.0] = Slot::Const;
    }
    for (i, &v) in g.inputs.iter().enumerate() {
        grow(&mut slots, v);
        slots[v.0] = Slot::Input(i);
    }
    for &ni in &n {
        for &o in &g.node(ni).outputs {
            grow(&mut slots, o);
            let bytes = g.value(o).ty.numel() * g.value(o).ty.dtype.size_bytes();
            slots[o.0] = Slot::Arena { offset: total };
            total += bytes.div_ceil(64) * 64;
        }
    }
    for (i, &v) in g.outputs.iter().enumerate().rev() {
        if g.value(v).producer.is_some() {
            slots[v.0] = Slot::Output(i);
        }
    }
    Ok(MemoryPlan {
        slots,
        arena_bytes: total,
        intermediate_bytes: total,
    })
}

fn grow(s: &mut Vec<Slot>, v: ValueId) {
    if s.len() <= v.0 {
        s.resize(v.0 + 1, Slot::Unused);
    }
}
