//! `torch.export` archives (`torch.export.save`, `.pt2`): `models/*.json`
//! is the serialized `ExportedProgram` (a graph of canonical ATen ops with
//! named, typed arguments and per-value tensor metadata); parameters,
//! buffers and tensor constants are raw little-endian files under
//! `data/weights/` and `data/constants/`, described by their
//! `*_config.json`. Nodes map through the shared aten table.

use std::collections::HashMap;

use serde_json::Value as J;

use super::archive::{Archive, strided};
use super::aten::{self, Arg, Builder};
use crate::error::{Error, Result};
use crate::import::ImportOptions;
use crate::ir::{DType, Graph, Tensor, ValueType};

/// `torch._export.serde.schema.ScalarType`.
fn scalar_type(code: i64) -> Result<DType> {
    Ok(match code {
        1 => DType::U8,
        2 => DType::I8,
        3 => DType::I16,
        4 => DType::I32,
        5 => DType::I64,
        6 => DType::F16,
        7 => DType::F32,
        8 => DType::F64,
        12 => DType::Bool,
        13 => DType::BF16,
        c => bail!(Unsupported, "torch.export scalar type {c}"),
    })
}

fn field<'j>(j: &'j J, key: &str, what: &str) -> Result<&'j J> {
    j.get(key)
        .ok_or_else(|| Error::Invalid(format!("{what}: missing '{key}'")))
}

fn str_of<'j>(j: &'j J, what: &str) -> Result<&'j str> {
    j.as_str()
        .ok_or_else(|| Error::Invalid(format!("{what}: expected a string")))
}

fn arr<'j>(j: &'j J, what: &str) -> Result<&'j Vec<J>> {
    j.as_array()
        .ok_or_else(|| Error::Invalid(format!("{what}: expected a list")))
}

fn int_of(j: &J, what: &str) -> Result<i64> {
    j.as_i64()
        .ok_or_else(|| Error::Invalid(format!("{what}: expected an integer")))
}

/// Static sizes of a `TensorMeta`; symbolic ones are None.
fn sizes(meta: &J, what: &str) -> Result<Vec<Option<usize>>> {
    arr(field(meta, "sizes", what)?, what)?
        .iter()
        .map(|s| match s.get("as_int") {
            Some(n) => {
                Ok(Some(usize::try_from(int_of(n, what)?).map_err(|_| {
                    Error::Invalid(format!("{what}: negative size"))
                })?))
            }
            None => Ok(None),
        })
        .collect()
}

fn static_sizes(meta: &J, what: &str) -> Result<Vec<usize>> {
    sizes(meta, what)?
        .into_iter()
        .map(|s| s.ok_or_else(|| Error::Unsupported(format!("{what}: symbolic size"))))
        .collect()
}

/// The name of the graph value a `{"as_tensor": {"name": ..}}`-style
/// argument refers to.
fn arg_name<'j>(j: &'j J, what: &str) -> Result<&'j str> {
    let inner = j.get("as_tensor").unwrap_or(j);
    str_of(field(inner, "name", what)?, what)
}

struct Program {
    json: J,
    file: String,
}

fn program(archive: &mut Archive) -> Result<Program> {
    let mut models: Vec<String> = archive
        .names()
        .into_iter()
        .filter(|n| n.starts_with("models/") && n.ends_with(".json") && n.matches('/').count() == 1)
        .collect();
    models.sort();
    let file = match models.as_slice() {
        [one] => one.clone(),
        [] => bail!(Invalid, "the .pt2 archive has no models/*.json program"),
        many => bail!(
            Unsupported,
            ".pt2 archives with several programs ({})",
            many.join(", ")
        ),
    };
    let json = serde_json::from_slice(&archive.read(&file)?)
        .map_err(|e| Error::Invalid(format!("{file}: not JSON: {e}")))?;
    Ok(Program { json, file })
}

/// User input names, in order.
fn user_inputs(p: &Program) -> Result<Vec<String>> {
    let sig = field(
        field(&p.json, "graph_module", &p.file)?,
        "signature",
        &p.file,
    )
    .or_else(|_| field(&p.json, "signature", &p.file))?;
    let mut names = Vec::new();
    for s in arr(field(sig, "input_specs", &p.file)?, &p.file)? {
        if let Some(u) = s.get("user_input") {
            names.push(arg_name(field(u, "arg", &p.file)?, &p.file)?.to_string());
        }
    }
    Ok(names)
}

pub fn input_names(bytes: &[u8]) -> Result<Vec<String>> {
    let mut archive = Archive::open(bytes)?;
    user_inputs(&program(&mut archive)?)
}

/// Reads the stored tensors named in `data/{dir}/model_{dir}_config.json`
/// (or the older `*_config.json`), keyed by fully qualified name.
fn stored(archive: &mut Archive, dir: &str) -> Result<HashMap<String, (String, J)>> {
    let config = archive
        .names()
        .into_iter()
        .find(|n| n.starts_with(&format!("data/{dir}/")) && n.ends_with("_config.json"));
    let Some(config) = config else {
        return Ok(HashMap::new());
    };
    let j: J = serde_json::from_slice(&archive.read(&config)?)
        .map_err(|e| Error::Invalid(format!("{config}: not JSON: {e}")))?;
    let mut out = HashMap::new();
    if let Some(map) = j.get("config").and_then(J::as_object) {
        for (fqn, e) in map {
            if e.get("use_pickle").and_then(J::as_bool) == Some(true) {
                bail!(
                    Unsupported,
                    "'{fqn}' is stored pickled (tensor subclasses or non-tensor constants)"
                );
            }
            let path = str_of(field(e, "path_name", &config)?, &config)?;
            let meta = field(e, "tensor_meta", &config)?.clone();
            out.insert(fqn.clone(), (format!("data/{dir}/{path}"), meta));
        }
    }
    Ok(out)
}

fn read_tensor(archive: &mut Archive, path: &str, meta: &J) -> Result<Tensor> {
    let dtype = scalar_type(int_of(field(meta, "dtype", path)?, path)?)?;
    let size = static_sizes(meta, path)?;
    let stride = arr(field(meta, "strides", path)?, path)?
        .iter()
        .map(|s| {
            let v = int_of(field(s, "as_int", path)?, path)?;
            usize::try_from(v).map_err(|_| Error::Unsupported(format!("{path}: negative stride")))
        })
        .collect::<Result<Vec<_>>>()?;
    let offset = match meta.get("storage_offset").and_then(|o| o.get("as_int")) {
        Some(o) => usize::try_from(int_of(o, path)?)
            .map_err(|_| Error::Invalid(format!("{path}: negative offset")))?,
        None => 0,
    };
    let raw = archive.read(path)?;
    strided(dtype, &raw, offset, &size, &stride, path)
}

pub fn load(bytes: &[u8], opts: &ImportOptions) -> Result<Graph> {
    let mut archive = Archive::open(bytes)?;
    let p = program(&mut archive)?;
    let file = p.file.clone();
    let gm = field(&p.json, "graph_module", &file)?;
    let graph = field(gm, "graph", &file)?;
    let metas = field(graph, "tensor_values", &file)?
        .as_object()
        .ok_or_else(|| Error::Invalid(format!("{file}: tensor_values is not a map")))?;
    let weights = stored(&mut archive, "weights")?;
    let constants = stored(&mut archive, "constants")?;
    let users = user_inputs(&p)?;
    for k in opts.shapes.keys().chain(opts.bind.keys()) {
        ensure!(
            users.contains(k),
            Invalid,
            "--shape/bind names '{k}', which is not a user input (inputs: {})",
            users.join(", ")
        );
    }
    let mut b = Builder::new(file.trim_start_matches("models/").trim_end_matches(".json"));
    let mut env: HashMap<String, Arg> = HashMap::new();
    let sig = field(gm, "signature", &file)?;
    for spec in arr(field(sig, "input_specs", &file)?, &file)? {
        let (kind, body) = spec
            .as_object()
            .and_then(|o| o.iter().next())
            .ok_or_else(|| Error::Invalid(format!("{file}: empty input spec")))?;
        let what = format!("{file}: input spec {kind}");
        match kind.as_str() {
            "user_input" => {
                let name = arg_name(field(body, "arg", &what)?, &what)?;
                let meta = metas
                    .get(name)
                    .ok_or_else(|| Error::Invalid(format!("{what}: no metadata for '{name}'")))?;
                let dtype = scalar_type(int_of(field(meta, "dtype", &what)?, &what)?)?;
                let recorded = sizes(meta, &what)?;
                let id = if let Some(t) = opts.bind.get(name) {
                    b.g.add_const(name, t.clone())?
                } else {
                    let shape = match opts.shapes.get(name) {
                        Some(s) => {
                            ensure!(
                                s.len() == recorded.len()
                                    && s.iter().zip(&recorded).all(|(g, r)| r.is_none_or(|r| r == *g)),
                                Invalid,
                                "input '{name}': --shape {s:?} does not match the exported shape {:?}",
                                recorded
                            );
                            s.clone()
                        }
                        None => recorded
                            .iter()
                            .map(|d| {
                                d.ok_or_else(|| {
                                    Error::Invalid(format!(
                                        "input '{name}' has a dynamic dimension; give it with --shape {name}=D0,D1,..."
                                    ))
                                })
                            })
                            .collect::<Result<_>>()?,
                    };
                    b.g.add_input(name, ValueType::new(dtype, shape))?
                };
                env.insert(name.to_string(), Arg::Tensor(id));
            }
            "parameter" | "buffer" | "tensor_constant" => {
                let name = arg_name(field(body, "arg", &what)?, &what)?;
                let key = match kind.as_str() {
                    "parameter" => "parameter_name",
                    "buffer" => "buffer_name",
                    _ => "tensor_constant_name",
                };
                let fqn = str_of(field(body, key, &what)?, &what)?;
                let (path, meta) = weights
                    .get(fqn)
                    .or_else(|| constants.get(fqn))
                    .ok_or_else(|| Error::Invalid(format!("{what}: no stored tensor '{fqn}'")))?
                    .clone();
                let t = read_tensor(&mut archive, &path, &meta)?;
                let id = b.g.add_const(&b.g.fresh_name(fqn), t)?;
                env.insert(name.to_string(), Arg::Tensor(id));
            }
            "constant_input" => {
                let name = str_of(field(body, "name", &what)?, &what)?;
                let v = arg(field(body, "value", &what)?, &env, &what)?;
                env.insert(name.to_string(), v);
            }
            k => bail!(Unsupported, "{file}: input kind '{k}'"),
        }
    }
    for (i, n) in arr(field(graph, "nodes", &file)?, &file)?
        .iter()
        .enumerate()
    {
        let target = str_of(field(n, "target", &file)?, &file)?;
        let name = n.get("name").and_then(J::as_str).unwrap_or("?");
        let at = format!("{file} node {i} '{name}' ({target})");
        let result = node(&mut b, n, target, &env, &at).map_err(|e| match e {
            Error::Invalid(m) => Error::Invalid(format!("{at}: {m}")),
            Error::Unsupported(m) => Error::Unsupported(format!("{m} (at {at})")),
            e => e,
        })?;
        bind_outputs(n, result, &mut env, &at)?;
    }
    let mut outs = Vec::new();
    for spec in arr(field(sig, "output_specs", &file)?, &file)? {
        if let Some(u) = spec.get("user_output") {
            let what = format!("{file}: output spec");
            let a = field(u, "arg", &what)?;
            match arg(a, &env, &what)? {
                Arg::Tensor(t) => outs.push(t),
                a => bail!(Unsupported, "{what}: a {} output", a.kind()),
            }
        } else if let Some(k) = spec.as_object().and_then(|o| o.keys().next()) {
            bail!(
                Unsupported,
                "{file}: output kind '{k}' (export the model in eval mode, without mutation)"
            );
        }
    }
    ensure!(
        !outs.is_empty(),
        Invalid,
        "{file}: the program has no user outputs"
    );
    b.g.outputs = outs;
    Ok(b.g)
}

fn node(b: &mut Builder, n: &J, target: &str, env: &HashMap<String, Arg>, at: &str) -> Result<Arg> {
    let mut pos = Vec::new();
    let mut named = Vec::new();
    for input in arr(field(n, "inputs", at)?, at)? {
        let v = arg(field(input, "arg", at)?, env, at)?;
        let kw = input.get("kind").and_then(J::as_i64) == Some(2);
        match input.get("name").and_then(J::as_str) {
            Some(k) if kw || !named.is_empty() => named.push((k.to_string(), v)),
            _ => pos.push(v),
        }
    }
    if target == "_operator.getitem" {
        return match (pos.first(), pos.get(1)) {
            (Some(Arg::List(l)), Some(Arg::Int(i))) => l
                .get(*i as usize)
                .cloned()
                .ok_or_else(|| Error::Invalid(format!("getitem index {i} out of range"))),
            _ => bail!(Invalid, "getitem of a non-list"),
        };
    }
    let Some(rest) = target.strip_prefix("torch.ops.aten.") else {
        bail!(Unsupported, "op '{target}' (only torch.ops.aten.* ops)");
    };
    let op = rest.split('.').next().unwrap_or(rest);
    // Positional arguments bound by name too when the schema names match:
    // .pt2 omits defaulted arguments, so positions can skip.
    aten::call(b, op, pos, named)
}

fn bind_outputs(n: &J, result: Arg, env: &mut HashMap<String, Arg>, at: &str) -> Result<()> {
    let outs = arr(field(n, "outputs", at)?, at)?;
    match outs.as_slice() {
        [one] if one.get("as_tensor").is_some() => {
            env.insert(arg_name(one, at)?.to_string(), result);
        }
        [one] if one.get("as_tensors").is_some() => {
            let names = arr(&one["as_tensors"], at)?;
            let Arg::List(items) = result else {
                bail!(Invalid, "{at}: one result for {} outputs", names.len());
            };
            for (nm, v) in names.iter().zip(items) {
                env.insert(str_of(field(nm, "name", at)?, at)?.to_string(), v);
            }
        }
        many => {
            let items = match result {
                Arg::List(items) => items,
                one => vec![one],
            };
            for (o, v) in many.iter().zip(items) {
                if o.get("as_tensor").is_some() {
                    env.insert(arg_name(o, at)?.to_string(), v);
                } else if let Some(nm) = o.get("as_sym_int").and_then(|s| s.get("as_name")) {
                    env.insert(str_of(nm, at)?.to_string(), v);
                }
            }
        }
    }
    Ok(())
}

fn arg(j: &J, env: &HashMap<String, Arg>, at: &str) -> Result<Arg> {
    let (kind, v) = j
        .as_object()
        .and_then(|o| o.iter().next())
        .ok_or_else(|| Error::Invalid(format!("{at}: an argument is not an object")))?;
    let lookup = |name: &str| {
        env.get(name)
            .cloned()
            .ok_or_else(|| Error::Invalid(format!("{at}: value '{name}' is not defined")))
    };
    Ok(match kind.as_str() {
        "as_none" => Arg::None,
        "as_tensor" => lookup(str_of(field(v, "name", at)?, at)?)?,
        "as_tensors" => Arg::List(
            arr(v, at)?
                .iter()
                .map(|t| lookup(str_of(field(t, "name", at)?, at)?))
                .collect::<Result<_>>()?,
        ),
        "as_optional_tensors" => Arg::List(
            arr(v, at)?
                .iter()
                .map(|t| match t.get("as_tensor") {
                    Some(t) => lookup(str_of(field(t, "name", at)?, at)?),
                    None => Ok(Arg::None),
                })
                .collect::<Result<_>>()?,
        ),
        "as_int" => Arg::Int(int_of(v, at)?),
        "as_float" => Arg::Float(
            v.as_f64()
                .ok_or_else(|| Error::Invalid(format!("{at}: bad float")))?,
        ),
        "as_bool" => Arg::Bool(
            v.as_bool()
                .ok_or_else(|| Error::Invalid(format!("{at}: bad bool")))?,
        ),
        "as_string" => Arg::Str(str_of(v, at)?.to_string()),
        "as_ints" => Arg::List(
            arr(v, at)?
                .iter()
                .map(|x| int_of(x, at).map(Arg::Int))
                .collect::<Result<_>>()?,
        ),
        "as_floats" => Arg::List(
            arr(v, at)?
                .iter()
                .map(|x| {
                    x.as_f64()
                        .map(Arg::Float)
                        .ok_or_else(|| Error::Invalid(format!("{at}: bad float")))
                })
                .collect::<Result<_>>()?,
        ),
        "as_bools" => Arg::List(
            arr(v, at)?
                .iter()
                .map(|x| {
                    x.as_bool()
                        .map(Arg::Bool)
                        .ok_or_else(|| Error::Invalid(format!("{at}: bad bool")))
                })
                .collect::<Result<_>>()?,
        ),
        "as_strings" => Arg::List(
            arr(v, at)?
                .iter()
                .map(|x| str_of(x, at).map(|s| Arg::Str(s.into())))
                .collect::<Result<_>>()?,
        ),
        "as_sym_int" | "as_sym_float" | "as_sym_bool" => {
            match v.as_object().and_then(|o| o.iter().next()) {
                Some((k, x)) if k == "as_name" => lookup(str_of(x, at)?)?,
                Some((k, x)) if k == "as_int" => Arg::Int(int_of(x, at)?),
                Some((k, x)) if k == "as_float" => Arg::Float(x.as_f64().unwrap_or(f64::NAN)),
                Some((k, x)) if k == "as_bool" => Arg::Bool(x.as_bool().unwrap_or(false)),
                _ => bail!(Invalid, "{at}: bad symbolic value"),
            }
        }
        "as_sym_ints" => Arg::List(
            arr(v, at)?
                .iter()
                .map(|x| arg(&serde_json::json!({ "as_sym_int": x }), env, at))
                .collect::<Result<_>>()?,
        ),
        "as_scalar_type" => Arg::Dtype(scalar_type(int_of(v, at)?)?),
        "as_memory_format" => Arg::Opaque("memory_format"),
        "as_layout" => Arg::Opaque("layout"),
        "as_device" => Arg::Opaque("device"),
        k => bail!(Unsupported, "{at}: argument kind '{k}'"),
    })
}
