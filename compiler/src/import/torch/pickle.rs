//! A small unpickler for the subset of the pickle protocol (2 to 5) that
//! `torch.jit.save` and `torch.save` write: `data.pkl`, `constants.pkl`.
//!
//! `serde-pickle` rejects `BINPERSID`, the opcode storage references use, so
//! the reader is ours. It builds a plain tree: calls (`GLOBAL` + `REDUCE` /
//! `NEWOBJ`) and `BUILD` stay symbolic, for `archive.rs` to interpret.
//! Objects live in an arena so that `APPEND`/`SETITEM` on a memoized list or
//! dict are seen by every later `BINGET`. Every length is checked against
//! the bytes left before anything is allocated; malformed input is an
//! `Invalid` error, never a panic.

use crate::error::{Error, Result};

/// A decoded pickle value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// `module.name`, as `GLOBAL` names it.
    Global(String),
    /// `callable(*args)` (`REDUCE`, `NEWOBJ`).
    Call(Box<Value>, Vec<Value>),
    /// `obj.__setstate__(state)` (`BUILD`).
    Build(Box<Value>, Box<Value>),
    /// A persistent id (`BINPERSID`): storage references.
    Persistent(Box<Value>),
}

impl Value {
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Call(..) => "call",
            Value::Build(..) => "object",
            Value::Persistent(_) => "persistent id",
        }
    }
}

/// Deeper trees than this are rejected (they only arise from
/// self-referencing containers or hostile input).
const MAX_DEPTH: usize = 200;

enum Obj {
    Atom(Value),
    Tuple(Vec<usize>),
    List(Vec<usize>),
    Dict(Vec<(usize, usize)>),
    Call(usize, Vec<usize>),
    Build(usize, usize),
    Persistent(usize),
}

enum Slot {
    Mark,
    Obj(usize),
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    arena: Vec<Obj>,
    stack: Vec<Slot>,
    memo: std::collections::HashMap<u32, usize>,
}

/// Decodes one pickle; `what` names it in errors (e.g. `data.pkl`).
pub fn load(bytes: &[u8], what: &str) -> Result<Value> {
    let mut r = Reader {
        b: bytes,
        pos: 0,
        arena: Vec::new(),
        stack: Vec::new(),
        memo: Default::default(),
    };
    let top = r
        .run()
        .map_err(|m| Error::Invalid(format!("{what}: malformed pickle at byte {}: {m}", r.pos)))?;
    r.resolve(top, 0)
        .map_err(|m| Error::Invalid(format!("{what}: malformed pickle: {m}")))
}

type R<T> = std::result::Result<T, String>;

impl Reader<'_> {
    fn take(&mut self, n: usize) -> R<&[u8]> {
        if self.b.len() - self.pos < n {
            return Err(format!(
                "needs {n} bytes, {} left (truncated file?)",
                self.b.len() - self.pos
            ));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> R<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn line(&mut self) -> R<String> {
        let rest = &self.b[self.pos..];
        let n = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or("unterminated line in GLOBAL")?;
        let s = String::from_utf8(rest[..n].to_vec()).map_err(|_| "GLOBAL is not UTF-8")?;
        self.pos += n + 1;
        Ok(s)
    }

    fn text(&mut self, n: usize) -> R<String> {
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "string is not UTF-8".into())
    }

    fn push(&mut self, o: Obj) {
        self.arena.push(o);
        self.stack.push(Slot::Obj(self.arena.len() - 1));
    }

    fn pop(&mut self) -> R<usize> {
        match self.stack.pop() {
            Some(Slot::Obj(i)) => Ok(i),
            Some(Slot::Mark) => Err("unexpected MARK on the stack".into()),
            None => Err("stack underflow".into()),
        }
    }

    fn top(&self) -> R<usize> {
        match self.stack.last() {
            Some(Slot::Obj(i)) => Ok(*i),
            _ => Err("no object on top of the stack".into()),
        }
    }

    /// Pops everything down to the last MARK.
    fn pop_mark(&mut self) -> R<Vec<usize>> {
        let m = self
            .stack
            .iter()
            .rposition(|s| matches!(s, Slot::Mark))
            .ok_or("no MARK on the stack")?;
        let items = self
            .stack
            .drain(m + 1..)
            .map(|s| match s {
                Slot::Obj(i) => i,
                Slot::Mark => unreachable!("rposition found the last mark"),
            })
            .collect();
        self.stack.pop();
        Ok(items)
    }

    fn set_items(&mut self, dict: usize, items: &[usize]) -> R<()> {
        if !items.len().is_multiple_of(2) {
            return Err("SETITEMS with an odd number of items".into());
        }
        let Obj::Dict(d) = &mut self.arena[dict] else {
            return Err("SETITEM(S) on a non-dict".into());
        };
        d.extend(items.chunks(2).map(|kv| (kv[0], kv[1])));
        Ok(())
    }

    fn append(&mut self, list: usize, items: &[usize]) -> R<()> {
        match &mut self.arena[list] {
            Obj::List(l) => l.extend_from_slice(items),
            _ => return Err("APPEND(S) on a non-list".into()),
        }
        Ok(())
    }

    fn memo_put(&mut self, key: u32) -> R<()> {
        let top = self.top()?;
        self.memo.insert(key, top);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> R<()> {
        let i = *self
            .memo
            .get(&key)
            .ok_or_else(|| format!("memo key {key} is not set"))?;
        self.stack.push(Slot::Obj(i));
        Ok(())
    }

    fn run(&mut self) -> R<usize> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let v = self.u8()?;
                    if v > 5 {
                        return Err(format!("pickle protocol {v} is not supported"));
                    }
                }
                0x95 => {
                    self.take(8)?; // FRAME: a length hint
                }
                b'.' => return self.pop(),
                b'(' => self.stack.push(Slot::Mark),
                b'N' => self.push(Obj::Atom(Value::None)),
                0x88 => self.push(Obj::Atom(Value::Bool(true))),
                0x89 => self.push(Obj::Atom(Value::Bool(false))),
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"));
                    self.push(Obj::Atom(Value::Int(v as i64)));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Obj::Atom(Value::Int(v as i64)));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes"));
                    self.push(Obj::Atom(Value::Int(v as i64)));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.u8()? as usize
                    } else {
                        self.u32()? as usize
                    };
                    let v = self.take(n)?;
                    if n > 8 {
                        return Err(format!("LONG of {n} bytes does not fit in 64 bits"));
                    }
                    let neg = v.last().is_some_and(|&b| b & 0x80 != 0);
                    let mut buf = [if neg { 0xff } else { 0 }; 8];
                    buf[..n].copy_from_slice(v);
                    self.push(Obj::Atom(Value::Int(i64::from_le_bytes(buf))));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes"));
                    self.push(Obj::Atom(Value::Float(v)));
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.u32()? as usize,
                        0x8c => self.u8()? as usize,
                        _ => u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes"))
                            .try_into()
                            .map_err(|_| "string length overflows")?,
                    };
                    let s = self.text(n)?;
                    self.push(Obj::Atom(Value::Str(s)));
                }
                b'U' | b'T' => {
                    let n = if op == b'U' {
                        self.u8()? as usize
                    } else {
                        self.u32()? as usize
                    };
                    // Python 2 strings: torch writes ASCII here.
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.push(Obj::Atom(Value::Str(s)));
                }
                b'C' | b'B' => {
                    let n = if op == b'C' {
                        self.u8()? as usize
                    } else {
                        self.u32()? as usize
                    };
                    let v = self.take(n)?.to_vec();
                    self.push(Obj::Atom(Value::Bytes(v)));
                }
                b')' => self.push(Obj::Tuple(Vec::new())),
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Obj::Tuple(items));
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Obj::Tuple(items));
                }
                b']' => self.push(Obj::List(Vec::new())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Obj::List(items));
                }
                b'}' => self.push(Obj::Dict(Vec::new())),
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push(Obj::Dict(Vec::new()));
                    let d = self.top()?;
                    self.set_items(d, &items)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    let l = self.top()?;
                    self.append(l, &[v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let l = self.top()?;
                    self.append(l, &items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let d = self.top()?;
                    self.set_items(d, &[k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let d = self.top()?;
                    self.set_items(d, &items)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Obj::Atom(Value::Global(format!("{module}.{name}"))));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Obj::Atom(Value::Str(m)), Obj::Atom(Value::Str(n))) =
                        (&self.arena[module], &self.arena[name])
                    else {
                        return Err("STACK_GLOBAL needs two strings".into());
                    };
                    let g = format!("{m}.{n}");
                    self.push(Obj::Atom(Value::Global(g)));
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let Obj::Tuple(a) = &self.arena[args] else {
                        return Err("REDUCE/NEWOBJ arguments are not a tuple".into());
                    };
                    let a = a.clone();
                    self.push(Obj::Call(f, a));
                }
                b'b' => {
                    let state = self.pop()?;
                    let obj = self.pop()?;
                    self.push(Obj::Build(obj, state));
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.push(Obj::Persistent(pid));
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memo_put(k)?;
                }
                b'h' => {
                    let k = self.u8()? as u32;
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = self.u32()?;
                    self.memo_get(k)?;
                }
                b'0' => {
                    self.stack.pop().ok_or("POP on an empty stack")?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let t = self.top()?;
                    self.stack.push(Slot::Obj(t));
                }
                _ => return Err(format!("opcode 0x{op:02x} is not supported")),
            }
        }
    }

    fn resolve(&self, i: usize, depth: usize) -> R<Value> {
        if depth > MAX_DEPTH {
            return Err("objects nest too deeply (self-referencing container?)".into());
        }
        let r = |j: usize| self.resolve(j, depth + 1);
        let all = |v: &[usize]| v.iter().map(|&j| r(j)).collect::<R<Vec<_>>>();
        Ok(match &self.arena[i] {
            Obj::Atom(v) => v.clone(),
            Obj::Tuple(v) => Value::Tuple(all(v)?),
            Obj::List(v) => Value::List(all(v)?),
            Obj::Dict(kv) => Value::Dict(
                kv.iter()
                    .map(|&(k, v)| Ok((r(k)?, r(v)?)))
                    .collect::<R<_>>()?,
            ),
            Obj::Call(f, a) => Value::Call(Box::new(r(*f)?), all(a)?),
            Obj::Build(o, s) => Value::Build(Box::new(r(*o)?), Box::new(r(*s)?)),
            Obj::Persistent(p) => Value::Persistent(Box::new(r(*p)?)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_storage_reference_with_memo_and_appends() {
        // Hand-assembled: proto 2, a list memoized as 0, appended to after
        // the BINPUT, read back with BINGET inside a tuple, plus a
        // persistent id and a REDUCE.
        let mut p = vec![0x80, 2, b']', b'q', 0, b'(', b'K', 7, b'J'];
        p.extend((-3i32).to_le_bytes());
        p.extend([b'e', b'0', b'c']);
        p.extend(b"torch._utils\n_rebuild\n");
        p.extend([
            b'(', b'X', 1, 0, 0, 0, b'0', b'Q', b'h', 0, 0x88, b't', b'R', b'.',
        ]);
        let v = load(&p, "t").unwrap();
        assert_eq!(
            v,
            Value::Call(
                Box::new(Value::Global("torch._utils._rebuild".into())),
                vec![
                    Value::Persistent(Box::new(Value::Str("0".into()))),
                    Value::List(vec![Value::Int(7), Value::Int(-3)]),
                    Value::Bool(true),
                ]
            )
        );
    }

    #[test]
    fn truncations_and_bad_lengths_are_errors() {
        let p = [0x80, 2, b'X', 0xff, 0xff, 0xff, 0x7f, b'a'];
        assert!(load(&p, "t").is_err());
        let full = [0x80, 2, b'K', 1, b'K', 2, 0x86, b'.'];
        assert_eq!(
            load(&full, "t").unwrap(),
            Value::Tuple(vec![Value::Int(1), Value::Int(2)])
        );
        for n in 0..full.len() {
            assert!(load(&full[..n], "t").is_err(), "prefix {n}");
        }
    }
}
