//! Graph-to-graph passes (minimal module list for the fuse/layout branch;
//! the pass manager lives in the lead's merge of this file).

pub mod fuse;
pub mod layout;
mod rewrite;
