//! Typed node attributes: every ONNX attribute kind has a variant, so no op
//! needs to look at protobuf.

use std::collections::BTreeMap;
use std::fmt;

use crate::error::{Error, Result};
use crate::ir::Tensor;

#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Float(f32),
    Int(i64),
    String(String),
    Tensor(Tensor),
    Floats(Vec<f32>),
    Ints(Vec<i64>),
    Strings(Vec<String>),
    Tensors(Vec<Tensor>),
    /// Subgraphs (If/Loop/Scan bodies) are kept by name only: cpucc has no
    /// control flow, and ops that need a body report it as unsupported.
    Graph(String),
    Graphs(Vec<String>),
    /// Attribute kinds no supported op reads (TypeProto, sparse tensors).
    Opaque(&'static str),
}

impl Attr {
    pub fn kind(&self) -> &'static str {
        match self {
            Attr::Float(_) => "float",
            Attr::Int(_) => "int",
            Attr::String(_) => "string",
            Attr::Tensor(_) => "tensor",
            Attr::Floats(_) => "floats",
            Attr::Ints(_) => "ints",
            Attr::Strings(_) => "strings",
            Attr::Tensors(_) => "tensors",
            Attr::Graph(_) => "graph",
            Attr::Graphs(_) => "graphs",
            Attr::Opaque(k) => k,
        }
    }
}

impl fmt::Display for Attr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn list<T: fmt::Display>(f: &mut fmt::Formatter<'_>, v: &[T]) -> fmt::Result {
            f.write_str("[")?;
            for (i, x) in v.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                write!(f, "{x}")?;
            }
            f.write_str("]")
        }
        match self {
            Attr::Float(x) => write!(f, "{x:?}"),
            Attr::Int(x) => write!(f, "{x}"),
            Attr::String(s) => write!(f, "{s:?}"),
            Attr::Tensor(t) => write!(f, "tensor<{}{:?}>", t.dtype(), t.shape()),
            Attr::Floats(v) => list(f, &v.iter().map(|x| format!("{x:?}")).collect::<Vec<_>>()),
            Attr::Ints(v) => list(f, v),
            Attr::Strings(v) => list(f, &v.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>()),
            Attr::Tensors(v) => write!(f, "tensors<{}>", v.len()),
            Attr::Graph(name) => write!(f, "graph<{name}>"),
            Attr::Graphs(v) => write!(f, "graphs<{}>", v.len()),
            Attr::Opaque(k) => write!(f, "<{k}>"),
        }
    }
}

/// A node's attributes by name, with typed getters whose errors name the
/// attribute (the caller adds the node).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Attrs(pub BTreeMap<String, Attr>);

impl Attrs {
    pub fn get(&self, name: &str) -> Option<&Attr> {
        self.0.get(name)
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    pub fn set(&mut self, name: &str, a: Attr) {
        self.0.insert(name.to_string(), a);
    }

    fn wrong(name: &str, want: &str, got: &Attr) -> Error {
        Error::Invalid(format!(
            "attribute '{name}' must be {want}, found {}",
            got.kind()
        ))
    }

    pub fn int_opt(&self, name: &str) -> Result<Option<i64>> {
        match self.get(name) {
            None => Ok(None),
            Some(Attr::Int(i)) => Ok(Some(*i)),
            Some(a) => Err(Self::wrong(name, "an int", a)),
        }
    }

    pub fn int(&self, name: &str, default: i64) -> Result<i64> {
        Ok(self.int_opt(name)?.unwrap_or(default))
    }

    pub fn req_int(&self, name: &str) -> Result<i64> {
        self.int_opt(name)?
            .ok_or_else(|| Error::Invalid(format!("missing required attribute '{name}'")))
    }

    pub fn float_opt(&self, name: &str) -> Result<Option<f32>> {
        match self.get(name) {
            None => Ok(None),
            Some(Attr::Float(x)) => Ok(Some(*x)),
            Some(Attr::Int(i)) => Ok(Some(*i as f32)),
            Some(a) => Err(Self::wrong(name, "a float", a)),
        }
    }

    pub fn float(&self, name: &str, default: f32) -> Result<f32> {
        Ok(self.float_opt(name)?.unwrap_or(default))
    }

    pub fn string_opt(&self, name: &str) -> Result<Option<&str>> {
        match self.get(name) {
            None => Ok(None),
            Some(Attr::String(s)) => Ok(Some(s)),
            Some(a) => Err(Self::wrong(name, "a string", a)),
        }
    }

    pub fn string<'a>(&'a self, name: &str, default: &'a str) -> Result<&'a str> {
        Ok(self.string_opt(name)?.unwrap_or(default))
    }

    pub fn ints_opt(&self, name: &str) -> Result<Option<&[i64]>> {
        match self.get(name) {
            None => Ok(None),
            Some(Attr::Ints(v)) => Ok(Some(v)),
            Some(a) => Err(Self::wrong(name, "a list of ints", a)),
        }
    }

    pub fn floats_opt(&self, name: &str) -> Result<Option<&[f32]>> {
        match self.get(name) {
            None => Ok(None),
            Some(Attr::Floats(v)) => Ok(Some(v)),
            Some(a) => Err(Self::wrong(name, "a list of floats", a)),
        }
    }

    pub fn strings_opt(&self, name: &str) -> Result<Option<&[String]>> {
        match self.get(name) {
            None => Ok(None),
            Some(Attr::Strings(v)) => Ok(Some(v)),
            Some(a) => Err(Self::wrong(name, "a list of strings", a)),
        }
    }

    pub fn tensor_opt(&self, name: &str) -> Result<Option<&Tensor>> {
        match self.get(name) {
            None => Ok(None),
            Some(Attr::Tensor(t)) => Ok(Some(t)),
            Some(a) => Err(Self::wrong(name, "a tensor", a)),
        }
    }
}
