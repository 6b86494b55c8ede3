//! The compiler's one error type. Every message is a single line that names
//! what was wrong (node, op, input, file) and why; the CLI maps kinds to exit
//! codes (2 for bad input or unsupported features, 1 for internal errors).

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model, an input file or a flag is malformed or inconsistent.
    #[error("{0}")]
    Invalid(String),
    /// Well-formed, but uses something cpucc does not implement.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A graph input's value decides a shape; a static-shape compiler must
    /// know it at compile time (bind it as a constant).
    #[error("input '{input}' decides a shape ({why}); bind it as a constant")]
    NeedsConstant { input: String, why: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A broken invariant inside cpucc: a bug, never the user's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Prefixes the message with the node it arose in, keeping the kind.
    pub fn in_node(self, node: &str, op: &str) -> Error {
        let at = |m: String| format!("node '{node}' ({op}): {m}");
        match self {
            Error::Invalid(m) => Error::Invalid(at(m)),
            Error::Unsupported(m) => Error::Unsupported(at(m)),
            Error::Internal(m) => Error::Internal(at(m)),
            Error::NeedsConstant { input, why } => Error::NeedsConstant {
                input,
                why: at(why),
            },
            e @ Error::Io { .. } => e,
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// `bail!(Invalid, "...")`-style early returns keep op code short.
#[macro_export]
macro_rules! bail {
    ($kind:ident, $($fmt:tt)*) => {
        return Err($crate::error::Error::$kind(format!($($fmt)*)))
    };
}

#[macro_export]
macro_rules! ensure {
    ($cond:expr, $kind:ident, $($fmt:tt)*) => {
        let ok: bool = $cond;
        if !ok {
            $crate::bail!($kind, $($fmt)*);
        }
    };
}
