//! TODO

use super::OpTable;

pub fn register(_t: &mut OpTable) {}
