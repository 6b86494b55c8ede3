//! The IR every stage shares: typed tensors, values and nodes in a graph, and
//! its text form.

mod attr;
mod dtype;
mod graph;
mod printer;
mod stats;
mod tensor;

pub use attr::{Attr, Attrs};
pub use dtype::DType;
pub use graph::{Graph, Layout, Node, Value, ValueId, ValueType};
pub use printer::print;
pub use stats::{Stats, node_macs, stats};
pub use tensor::{Elem, Tensor};
