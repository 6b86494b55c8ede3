//! TorchScript archives (`torch.jit.save`): the pickled module
//! (`data.pkl`), its constants (`constants.pkl`) and the `forward` source in
//! `code/`, evaluated statement by statement into the IR through the aten
//! table. Frozen modules have everything inlined into one `forward` with
//! `CONSTANTS.cN` weights; unfrozen ones call `self.sub.forward(...)` and
//! read `self.sub.weight`, which resolve through the pickled object tree.
//!
//! TorchScript records neither input shapes nor dtypes: shapes come from
//! `--shape`; inputs are f32 unless used as `embedding` indices (i64).

use std::collections::HashMap;
use std::rc::Rc;

use super::archive::{Archive, Tensors};
use super::aten::{self, Arg, Builder};
use super::pickle::{self, Value};
use super::script::{self, Class, Expr, Method, Stmt};
use crate::error::{Error, Result};
use crate::import::ImportOptions;
use crate::ir::{DType, Graph, ValueType};

/// Deeper `self.x.forward(...)` nesting than this is rejected.
const MAX_CALL_DEPTH: usize = 64;

/// What a TorchScript name evaluates to.
#[derive(Clone)]
enum V {
    Arg(Arg),
    /// A pickled module object and its attribute path from the root.
    Module(Rc<Value>, String),
    /// A dotted prefix such as `torch`, `ops.aten` or `CONSTANTS`.
    Namespace(String),
}

struct Loader<'a, 'b> {
    archive: &'b mut Archive<'a>,
    b: Builder,
    constants: Vec<Value>,
    /// Graph values of constants and attributes already materialized.
    consts: HashMap<String, Arg>,
    classes: HashMap<String, Rc<Vec<Class>>>,
}

/// The root object of `data.pkl`.
fn root(archive: &mut Archive) -> Result<Rc<Value>> {
    let v = pickle::load(&archive.read("data.pkl")?, "data.pkl")?;
    Ok(Rc::new(v))
}

/// The class of a pickled TorchScript object (`__torch__.a.b.Cls`).
fn class_of(obj: &Value) -> Option<&str> {
    match obj {
        Value::Build(o, _) => class_of(o),
        Value::Call(f, _) => match f.as_ref() {
            Value::Global(g) => Some(g),
            _ => None,
        },
        _ => None,
    }
}

fn state_of<'v>(obj: &'v Value, name: &str) -> Option<&'v Value> {
    let Value::Build(_, state) = obj else {
        return None;
    };
    let Value::Dict(kv) = state.as_ref() else {
        return None;
    };
    kv.iter()
        .find(|(k, _)| matches!(k, Value::Str(s) if s == name))
        .map(|(_, v)| v)
}

/// The `code/` file and class name of a qualified class name.
fn code_path(qual: &str) -> Result<(String, String)> {
    let (module, cls) = qual
        .rsplit_once('.')
        .ok_or_else(|| Error::Invalid(format!("class name '{qual}' has no module")))?;
    ensure!(
        module == "__torch__" || module.starts_with("__torch__."),
        Unsupported,
        "class '{qual}' is not TorchScript code (__torch__.*)"
    );
    Ok((
        format!("code/{}.py", module.replace('.', "/")),
        cls.to_string(),
    ))
}

pub fn load(bytes: &[u8], opts: &ImportOptions) -> Result<Graph> {
    let mut archive = Archive::open(bytes)?;
    if archive.has("byteorder") {
        let order = archive.read_text("byteorder")?;
        ensure!(
            order.trim() == "little",
            Unsupported,
            "tensors stored {} endian",
            order.trim()
        );
    }
    let constants = if archive.has("constants.pkl") {
        match pickle::load(&archive.read("constants.pkl")?, "constants.pkl")? {
            Value::Tuple(t) => t,
            v => bail!(Invalid, "constants.pkl holds a {}, not a tuple", v.kind()),
        }
    } else {
        Vec::new()
    };
    let root = root(&mut archive)?;
    let name = class_of(&root)
        .ok_or_else(|| Error::Invalid("data.pkl does not hold a TorchScript module".into()))?
        .to_string();
    let mut l = Loader {
        archive: &mut archive,
        b: Builder::new(name.rsplit('.').next().unwrap_or("model")),
        constants,
        consts: HashMap::new(),
        classes: HashMap::new(),
    };
    let (file, forward) = l.method(&name, "forward")?;
    let params = &forward.params[1.min(forward.params.len())..];
    for k in opts.shapes.keys().chain(opts.bind.keys()) {
        ensure!(
            params.contains(k),
            Invalid,
            "--shape/bind names '{k}', which is not an input of forward (inputs: {})",
            params.join(", ")
        );
    }
    let mut args = Vec::new();
    for p in params {
        if let Some(t) = opts.bind.get(p) {
            let id = l.b.g.add_const(p, t.clone())?;
            args.push(V::Arg(Arg::Tensor(id)));
            continue;
        }
        let shape = opts.shapes.get(p).ok_or_else(|| {
            Error::Invalid(format!(
                "input '{p}' needs a shape: TorchScript files do not record input shapes; give it with --shape {p}=D0,D1,..."
            ))
        })?;
        let dtype = if used_as_indices(&forward, p) {
            DType::I64
        } else {
            DType::F32
        };
        let id = l.b.g.add_input(p, ValueType::new(dtype, shape.clone()))?;
        args.push(V::Arg(Arg::Tensor(id)));
    }
    let out = l.run(
        &file,
        &forward,
        V::Module(root.clone(), String::new()),
        args,
        0,
    )?;
    let mut outs = Vec::new();
    flatten_outputs(&out, &mut outs)?;
    ensure!(!outs.is_empty(), Invalid, "forward returns no tensor");
    let mut g = l.b.g;
    g.outputs = outs;
    Ok(g)
}

/// Forward's parameter names after `self` (for `--input FILE` binding).
pub fn input_names(bytes: &[u8]) -> Result<Vec<String>> {
    let mut archive = Archive::open(bytes)?;
    let root = root(&mut archive)?;
    let name = class_of(&root)
        .ok_or_else(|| Error::Invalid("data.pkl does not hold a TorchScript module".into()))?
        .to_string();
    let (file, cls) = code_path(&name)?;
    let classes = script::parse(&archive.read_text(&file)?, &file)?;
    let f = classes
        .iter()
        .find(|c| c.name == cls)
        .and_then(|c| c.methods.iter().find(|m| m.name == "forward"))
        .ok_or_else(|| Error::Invalid(format!("{file}: no {cls}.forward")))?;
    Ok(f.params.iter().skip(1).cloned().collect())
}

fn flatten_outputs(v: &Arg, out: &mut Vec<crate::ir::ValueId>) -> Result<()> {
    match v {
        Arg::Tensor(t) => out.push(*t),
        Arg::List(l) => {
            for x in l {
                flatten_outputs(x, out)?;
            }
        }
        a => bail!(
            Unsupported,
            "forward returns a {} (only tensors and tuples of tensors)",
            a.kind()
        ),
    }
    Ok(())
}

/// Whether `name` is passed as the indices of `torch.embedding` in `m`.
fn used_as_indices(m: &Method, name: &str) -> bool {
    fn walk(e: &Expr, name: &str) -> bool {
        match e {
            Expr::Call(f, args, kw) => {
                let emb = f.dotted().is_some_and(|d| d.ends_with("embedding"));
                (emb && args.get(1) == Some(&Expr::Name(name.to_string())))
                    || walk(f, name)
                    || args.iter().any(|a| walk(a, name))
                    || kw.iter().any(|(_, a)| walk(a, name))
            }
            Expr::List(v) | Expr::Tuple(v) => v.iter().any(|a| walk(a, name)),
            Expr::Attr(e, _) | Expr::Neg(e) => walk(e, name),
            Expr::Index(a, b) => walk(a, name) || walk(b, name),
            _ => false,
        }
    }
    m.body.iter().any(|(_, s)| match s {
        Stmt::Assign(_, e) | Stmt::Return(e) => walk(e, name),
    })
}

impl Loader<'_, '_> {
    fn method(&mut self, qual: &str, name: &str) -> Result<(String, Method)> {
        let (file, cls) = code_path(qual)?;
        if !self.classes.contains_key(&file) {
            let src = self.archive.read_text(&file)?;
            let parsed = script::parse(&src, &file)?;
            self.classes.insert(file.clone(), Rc::new(parsed));
        }
        let classes = &self.classes[&file];
        let c = classes
            .iter()
            .find(|c| c.name == cls)
            .ok_or_else(|| Error::Invalid(format!("{file} has no class {cls}")))?;
        let m = c
            .methods
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| Error::Invalid(format!("class {qual} has no method '{name}'")))?;
        Ok((file, m.clone()))
    }

    fn run(&mut self, file: &str, m: &Method, this: V, args: Vec<V>, depth: usize) -> Result<Arg> {
        ensure!(
            depth < MAX_CALL_DEPTH,
            Unsupported,
            "method calls nest deeper than {MAX_CALL_DEPTH} (recursion?)"
        );
        ensure!(
            args.len() + 1 == m.params.len(),
            Invalid,
            "{file}: {} takes {} arguments, {} given",
            m.name,
            m.params.len().saturating_sub(1),
            args.len()
        );
        let mut env: HashMap<String, V> = HashMap::new();
        env.insert(m.params[0].clone(), this);
        for (p, a) in m.params[1..].iter().zip(args) {
            env.insert(p.clone(), a);
        }
        for (line, s) in &m.body {
            let at = |e: Error| match e {
                Error::Invalid(msg) if !msg.starts_with("code/") => {
                    Error::Invalid(format!("{file} line {line}: {msg}"))
                }
                Error::Unsupported(msg) if !msg.contains(" line ") => {
                    Error::Unsupported(format!("{msg} (at {file} line {line})"))
                }
                e => e,
            };
            match s {
                Stmt::Assign(targets, e) => {
                    let v = self.eval(e, &env, depth).map_err(at)?;
                    match targets.len() {
                        0 => {}
                        1 => {
                            env.insert(targets[0].clone(), v);
                        }
                        n => {
                            let V::Arg(Arg::List(items)) = v else {
                                return Err(at(Error::Invalid(format!(
                                    "unpacking {n} names from a non-tuple"
                                ))));
                            };
                            ensure!(
                                items.len() == n,
                                Invalid,
                                "{file} line {line}: unpacking {n} names from {} values",
                                items.len()
                            );
                            for (t, x) in targets.iter().zip(items) {
                                env.insert(t.clone(), V::Arg(x));
                            }
                        }
                    }
                }
                Stmt::Return(e) => {
                    return match self.eval(e, &env, depth).map_err(at)? {
                        V::Arg(a) => Ok(a),
                        _ => Err(at(Error::Unsupported(
                            "returning a module or namespace".into(),
                        ))),
                    };
                }
            }
        }
        if let Some((line, msg)) = &m.unsupported {
            return Err(if msg.contains("control flow") {
                Error::Unsupported(msg.strip_prefix("unsupported: ").unwrap_or(msg).to_string())
            } else {
                Error::Invalid(format!("{file} line {line}: {msg}"))
            });
        }
        bail!(Invalid, "{file}: {} ends without a return", m.name)
    }

    fn arg(&mut self, e: &Expr, env: &HashMap<String, V>, depth: usize) -> Result<Arg> {
        match self.eval(e, env, depth)? {
            V::Arg(a) => Ok(a),
            V::Module(_, p) => bail!(Unsupported, "a module ('{p}') used as a value"),
            V::Namespace(n) => bail!(Invalid, "'{n}' used as a value"),
        }
    }

    fn eval(&mut self, e: &Expr, env: &HashMap<String, V>, depth: usize) -> Result<V> {
        Ok(V::Arg(match e {
            Expr::Int(i) => Arg::Int(*i),
            Expr::Float(f) => Arg::Float(*f),
            Expr::Bool(b) => Arg::Bool(*b),
            Expr::Str(s) => Arg::Str(s.clone()),
            Expr::None => Arg::None,
            Expr::List(v) | Expr::Tuple(v) => Arg::List(
                v.iter()
                    .map(|x| self.arg(x, env, depth))
                    .collect::<Result<_>>()?,
            ),
            Expr::Name(n) => {
                return match env.get(n) {
                    Some(v) => Ok(v.clone()),
                    None => Ok(V::Namespace(n.clone())),
                };
            }
            Expr::Attr(obj, attr) => return self.attr(obj, attr, env, depth),
            Expr::Neg(x) => match self.arg(x, env, depth)? {
                Arg::Int(i) => Arg::Int(-i),
                Arg::Float(f) => Arg::Float(-f),
                a => aten::call(&mut self.b, "neg", vec![a], Vec::new())?,
            },
            Expr::Index(x, i) => {
                let x = self.arg(x, env, depth)?;
                let i = self.arg(i, env, depth)?;
                match (x, i) {
                    (Arg::List(l), Arg::Int(i)) => {
                        let n = l.len() as i64;
                        let j = if i < 0 { i + n } else { i };
                        ensure!(
                            (0..n).contains(&j),
                            Invalid,
                            "index {i} out of range for {n} items"
                        );
                        l[j as usize].clone()
                    }
                    (x, i) => bail!(
                        Unsupported,
                        "indexing a {} with a {} (tensor indexing)",
                        x.kind(),
                        i.kind()
                    ),
                }
            }
            Expr::Call(f, args, kwargs) => return self.call(f, args, kwargs, env, depth),
        }))
    }

    fn attr(
        &mut self,
        obj: &Expr,
        attr: &str,
        env: &HashMap<String, V>,
        depth: usize,
    ) -> Result<V> {
        match self.eval(obj, env, depth)? {
            V::Namespace(ns) if ns == "CONSTANTS" => {
                let i: usize = attr
                    .strip_prefix('c')
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| {
                        Error::Invalid(format!("CONSTANTS.{attr} is not a constant name"))
                    })?;
                let key = format!("CONSTANTS.{attr}");
                if let Some(a) = self.consts.get(&key) {
                    return Ok(V::Arg(a.clone()));
                }
                let v = self.constants.get(i).cloned().ok_or_else(|| {
                    Error::Invalid(format!(
                        "CONSTANTS.{attr}: constants.pkl holds {} constants",
                        self.constants.len()
                    ))
                })?;
                let a = self.value_arg(&v, "constants/", &key)?;
                self.consts.insert(key, a.clone());
                Ok(V::Arg(a))
            }
            V::Namespace(ns) => Ok(V::Namespace(format!("{ns}.{attr}"))),
            V::Module(m, path) => {
                let sub = if path.is_empty() {
                    attr.to_string()
                } else {
                    format!("{path}.{attr}")
                };
                let v = state_of(&m, attr).ok_or_else(|| {
                    Error::Invalid(format!(
                        "module '{}' ({}) has no attribute '{attr}'",
                        if path.is_empty() { "self" } else { &path },
                        class_of(&m).unwrap_or("?")
                    ))
                })?;
                if class_of(v).is_some_and(|c| c.starts_with("__torch__.")) {
                    return Ok(V::Module(Rc::new(v.clone()), sub));
                }
                if let Some(a) = self.consts.get(&sub) {
                    return Ok(V::Arg(a.clone()));
                }
                let v = v.clone();
                let a = self.value_arg(&v, "data/", &sub)?;
                self.consts.insert(sub, a.clone());
                Ok(V::Arg(a))
            }
            V::Arg(a) => bail!(
                Unsupported,
                "attribute '{attr}' of a {} (only module attributes)",
                a.kind()
            ),
        }
    }

    /// A pickled value as an argument; tensors become graph constants.
    fn value_arg(&mut self, v: &Value, dir: &'static str, name: &str) -> Result<Arg> {
        Ok(match v {
            Value::None => Arg::None,
            Value::Bool(b) => Arg::Bool(*b),
            Value::Int(i) => Arg::Int(*i),
            Value::Float(f) => Arg::Float(*f),
            Value::Str(s) => Arg::Str(s.clone()),
            Value::Tuple(l) | Value::List(l) => Arg::List(
                l.iter()
                    .enumerate()
                    .map(|(i, x)| self.value_arg(x, dir, &format!("{name}.{i}")))
                    .collect::<Result<_>>()?,
            ),
            Value::Call(f, args) if matches!(f.as_ref(), Value::Global(g) if g.starts_with("torch.jit._pickle.")) =>
            {
                // build_intlist / build_tensorlist / restore_type_tag wrap
                // their first argument.
                let first = args.first().ok_or_else(|| {
                    Error::Invalid(format!("{name}: empty torch.jit._pickle call"))
                })?;
                self.value_arg(first, dir, name)?
            }
            v => {
                let t = Tensors::new(self.archive, dir).tensor(v)?;
                let Some(t) = t else {
                    bail!(
                        Unsupported,
                        "'{name}' is a pickled {} ({})",
                        v.kind(),
                        class_of(v).unwrap_or("?")
                    );
                };
                let id = self.b.g.add_const(&self.b.g.fresh_name(name), t)?;
                Arg::Tensor(id)
            }
        })
    }

    fn call(
        &mut self,
        f: &Expr,
        args: &[Expr],
        kwargs: &[(String, Expr)],
        env: &HashMap<String, V>,
        depth: usize,
    ) -> Result<V> {
        // Method calls on submodules: `self.conv.forward(x)`.
        if let Expr::Attr(obj, meth) = f
            && let V::Module(m, path) = self.eval(obj, env, depth)?
        {
            ensure!(
                kwargs.is_empty(),
                Unsupported,
                "keyword arguments to a module method"
            );
            let qual = class_of(&m).unwrap_or_default().to_string();
            let (file, method) = self.method(&qual, meth)?;
            let vals = args
                .iter()
                .map(|a| self.eval(a, env, depth))
                .collect::<Result<Vec<_>>>()?;
            let r = self.run(&file, &method, V::Module(m, path), vals, depth + 1)?;
            return Ok(V::Arg(r));
        }
        let name = f
            .dotted()
            .ok_or_else(|| Error::Unsupported("calling a computed value".into()))?;
        if name == "getattr" {
            // `getattr(self, "0")`: Sequential children have numeric names.
            let [obj, Expr::Str(attr)] = args else {
                bail!(Unsupported, "getattr with a computed attribute name");
            };
            return self.attr(obj, attr, env, depth);
        }
        if name == "annotate" {
            ensure!(
                args.len() == 2,
                Invalid,
                "annotate takes a type and a value"
            );
            return self.eval(&args[1], env, depth);
        }
        let op = match name.as_str() {
            "int" => "Int",
            "float" => "Float",
            "torch.device" | "ops.prim.device" => return Ok(V::Arg(Arg::Opaque("device"))),
            n => n
                .strip_prefix("torch.")
                .or_else(|| n.strip_prefix("ops.aten."))
                .or_else(|| n.strip_prefix("ops.prim."))
                .ok_or_else(|| Error::Unsupported(format!("call of '{n}'")))?,
        };
        let op = op.rsplit('.').next().unwrap_or(op).to_string();
        let pos = args
            .iter()
            .map(|a| self.arg(a, env, depth))
            .collect::<Result<Vec<_>>>()?;
        let named = kwargs
            .iter()
            .map(|(k, a)| Ok((k.clone(), self.arg(a, env, depth)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(V::Arg(aten::call(&mut self.b, &op, pos, named)?))
    }
}
