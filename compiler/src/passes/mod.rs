//! Graph passes: rewrites between import and code generation, and the
//! static memory plan the backend consumes.

pub mod plan;
