//! A parser for the TorchScript source in an archive's `code/` folder: the
//! Python subset `torch.jit.save` prints for traced (and frozen) modules.
//!
//! A file holds classes whose methods are straight-line code: assignments
//! (with tuple unpacking), `return`, calls with keyword arguments, attribute
//! chains (`self.conv.weight`, `CONSTANTS.c0`, `torch.relu`), literals,
//! lists, tuples, subscripts and unary minus. Scripted control flow (`if`,
//! `for`, `while`, ...) is rejected with its file and line; the importer
//! evaluates only what it parses here.

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Name(String),
    Attr(Box<Expr>, String),
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    None,
    List(Vec<Expr>),
    Tuple(Vec<Expr>),
    Call(Box<Expr>, Vec<Expr>, Vec<(String, Expr)>),
    Index(Box<Expr>, Box<Expr>),
    Neg(Box<Expr>),
}

impl Expr {
    /// `a.b.c` for a chain of names, else None.
    pub fn dotted(&self) -> Option<String> {
        match self {
            Expr::Name(n) => Some(n.clone()),
            Expr::Attr(e, a) => Some(format!("{}.{a}", e.dotted()?)),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub enum Stmt {
    /// `a = e` or `a, b, = e` (several targets unpack a tuple).
    Assign(Vec<String>, Expr),
    Return(Expr),
}

#[derive(Clone, Debug)]
pub struct Method {
    pub name: String,
    /// Parameter names, `self` first.
    pub params: Vec<String>,
    /// Statements with their 1-based line numbers.
    pub body: Vec<(usize, Stmt)>,
    /// The `def` line, or the first unsupported statement: methods with
    /// control flow are kept so that only calling them is an error.
    pub unsupported: Option<(usize, String)>,
}

#[derive(Clone, Debug)]
pub struct Class {
    pub name: String,
    pub methods: Vec<Method>,
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Name(String),
    Int(i64),
    Float(f64),
    Str(String),
    Op(&'static str),
    Newline,
}

/// A logical line: its indentation, first physical line, and tokens.
struct Line {
    indent: usize,
    line: usize,
    toks: Vec<Tok>,
}

const OPS: [&str; 22] = [
    "->", "**", "//", "==", "!=", "<=", ">=", "(", ")", "[", "]", ",", ":", ".", "=", "-", "+",
    "*", "/", "<", ">", "%",
];

fn lex(src: &str, file: &str) -> Result<Vec<Line>> {
    let err = |line: usize, m: String| Error::Invalid(format!("{file} line {line}: {m}"));
    let mut lines = Vec::new();
    let mut depth = 0usize;
    let mut cur: Option<Line> = None;
    for (i, raw) in src.lines().enumerate() {
        let ln = i + 1;
        let body = raw.trim_start();
        if depth == 0 && (body.is_empty() || body.starts_with('#')) {
            continue;
        }
        let cur_line = cur.get_or_insert_with(|| Line {
            indent: raw.len() - body.len(),
            line: ln,
            toks: Vec::new(),
        });
        let b = body.as_bytes();
        let mut p = 0;
        while p < b.len() {
            let c = b[p] as char;
            if c == ' ' || c == '\t' {
                p += 1;
            } else if c == '#' {
                break;
            } else if c.is_ascii_alphabetic() || c == '_' {
                let s = p;
                while p < b.len() && (b[p].is_ascii_alphanumeric() || b[p] == b'_') {
                    p += 1;
                }
                cur_line.toks.push(Tok::Name(body[s..p].to_string()));
            } else if c.is_ascii_digit()
                || (c == '.' && p + 1 < b.len() && b[p + 1].is_ascii_digit())
            {
                let s = p;
                let mut float = false;
                while p < b.len() {
                    let d = b[p];
                    if d.is_ascii_digit() {
                        p += 1;
                    } else if d == b'.' || d == b'e' || d == b'E' {
                        float = true;
                        p += 1;
                        if (d == b'e' || d == b'E') && p < b.len() && (b[p] == b'-' || b[p] == b'+')
                        {
                            p += 1;
                        }
                    } else {
                        break;
                    }
                }
                let t = &body[s..p];
                cur_line.toks.push(if float {
                    Tok::Float(
                        t.parse()
                            .map_err(|_| err(ln, format!("bad number '{t}'")))?,
                    )
                } else {
                    // i64::MAX appears as a slice end; larger literals do not.
                    Tok::Int(
                        t.parse()
                            .map_err(|_| err(ln, format!("bad integer '{t}'")))?,
                    )
                });
            } else if c == '"' || c == '\'' {
                let mut s = String::new();
                p += 1;
                loop {
                    let Some(&d) = b.get(p) else {
                        return Err(err(ln, "unterminated string".into()));
                    };
                    p += 1;
                    if d as char == c {
                        break;
                    }
                    if d == b'\\' {
                        let Some(&e) = b.get(p) else {
                            return Err(err(ln, "unterminated string".into()));
                        };
                        p += 1;
                        s.push(match e {
                            b'n' => '\n',
                            b't' => '\t',
                            e => e as char,
                        });
                    } else {
                        // Multi-byte UTF-8 passes through byte by byte.
                        let start = p - 1;
                        let n = match d {
                            0..=0x7f => 1,
                            0xc0..=0xdf => 2,
                            0xe0..=0xef => 3,
                            _ => 4,
                        };
                        let end = (start + n).min(b.len());
                        s.push_str(&String::from_utf8_lossy(&b[start..end]));
                        p = end;
                    }
                }
                cur_line.toks.push(Tok::Str(s));
            } else {
                let op = OPS
                    .iter()
                    .find(|o| body[p..].starts_with(**o))
                    .ok_or_else(|| err(ln, format!("unexpected character '{c}'")))?;
                match *op {
                    "(" | "[" => depth += 1,
                    ")" | "]" => {
                        depth = depth
                            .checked_sub(1)
                            .ok_or_else(|| err(ln, format!("unbalanced '{op}'")))?
                    }
                    _ => {}
                }
                cur_line.toks.push(Tok::Op(op));
                p += op.len();
            }
        }
        if depth == 0 {
            let mut l = cur.take().expect("a line is open");
            l.toks.push(Tok::Newline);
            lines.push(l);
        }
    }
    if let Some(l) = cur {
        return Err(err(l.line, "unbalanced brackets at end of file".into()));
    }
    Ok(lines)
}

/// Positional and keyword arguments of a call.
type CallArgs = (Vec<Expr>, Vec<(String, Expr)>);

struct P<'a> {
    toks: &'a [Tok],
    pos: usize,
    line: usize,
    file: &'a str,
}

impl P<'_> {
    fn err(&self, m: impl std::fmt::Display) -> Error {
        Error::Invalid(format!("{} line {}: {m}", self.file, self.line))
    }

    fn peek(&self) -> &Tok {
        self.toks.get(self.pos).unwrap_or(&Tok::Newline)
    }

    fn next(&mut self) -> Tok {
        let t = self.peek().clone();
        self.pos += 1;
        t
    }

    fn eat(&mut self, op: &str) -> bool {
        if matches!(self.peek(), Tok::Op(o) if *o == op) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, op: &str) -> Result<()> {
        if self.eat(op) {
            Ok(())
        } else {
            Err(self.err(format!("expected '{op}', found {:?}", self.peek())))
        }
    }

    fn name(&mut self) -> Result<String> {
        match self.next() {
            Tok::Name(n) => Ok(n),
            t => Err(self.err(format!("expected a name, found {t:?}"))),
        }
    }

    fn expr(&mut self) -> Result<Expr> {
        let e = self.unary()?;
        if let Tok::Op(o @ ("+" | "-" | "*" | "/" | "//" | "**" | "==" | "!=" | "<" | ">" | "%")) =
            self.peek()
        {
            return Err(Error::Unsupported(format!(
                "{} line {}: the operator '{o}' (only calls of torch ops are supported)",
                self.file, self.line
            )));
        }
        Ok(e)
    }

    fn unary(&mut self) -> Result<Expr> {
        if self.eat("-") {
            return Ok(match self.unary()? {
                Expr::Int(i) => Expr::Int(-i),
                Expr::Float(f) => Expr::Float(-f),
                e => Expr::Neg(Box::new(e)),
            });
        }
        let mut e = self.atom()?;
        loop {
            if self.eat(".") {
                let a = self.name()?;
                e = Expr::Attr(Box::new(e), a);
            } else if self.eat("(") {
                let (args, kwargs) = self.call_args()?;
                e = Expr::Call(Box::new(e), args, kwargs);
            } else if self.eat("[") {
                let mut items = self.items("]")?;
                e = Expr::Index(
                    Box::new(e),
                    Box::new(if items.len() == 1 {
                        items.pop().expect("one item")
                    } else {
                        Expr::Tuple(items)
                    }),
                );
            } else {
                return Ok(e);
            }
        }
    }

    fn atom(&mut self) -> Result<Expr> {
        Ok(match self.next() {
            Tok::Int(i) => Expr::Int(i),
            Tok::Float(f) => Expr::Float(f),
            Tok::Str(s) => {
                let mut s = s;
                while let Tok::Str(more) = self.peek() {
                    s.push_str(more);
                    self.pos += 1;
                }
                Expr::Str(s)
            }
            Tok::Name(n) => match n.as_str() {
                "None" => Expr::None,
                "True" => Expr::Bool(true),
                "False" => Expr::Bool(false),
                "inf" => Expr::Float(f64::INFINITY),
                "nan" => Expr::Float(f64::NAN),
                _ => Expr::Name(n),
            },
            Tok::Op("[") => Expr::List(self.items("]")?),
            Tok::Op("(") => {
                let start = self.pos;
                let items = self.items(")")?;
                // `(e)` is grouping; `(e,)` and `(a, b)` are tuples.
                let trailing = matches!(self.toks.get(self.pos - 2), Some(Tok::Op(",")));
                if items.len() == 1 && !trailing && self.pos - start > 1 {
                    items.into_iter().next().expect("one item")
                } else {
                    Expr::Tuple(items)
                }
            }
            t => return Err(self.err(format!("unexpected {t:?}"))),
        })
    }

    fn items(&mut self, close: &str) -> Result<Vec<Expr>> {
        let mut v = Vec::new();
        while !self.eat(close) {
            v.push(self.expr()?);
            if !self.eat(",") {
                self.expect(close)?;
                break;
            }
        }
        Ok(v)
    }

    fn call_args(&mut self) -> Result<CallArgs> {
        let (mut args, mut kwargs) = (Vec::new(), Vec::new());
        while !self.eat(")") {
            let kw = matches!(
                (self.peek(), self.toks.get(self.pos + 1)),
                (Tok::Name(_), Some(Tok::Op("=")))
            );
            if kw {
                let k = self.name()?;
                self.expect("=")?;
                kwargs.push((k, self.expr()?));
            } else {
                if !kwargs.is_empty() {
                    return Err(self.err("positional argument after keyword arguments"));
                }
                args.push(self.expr()?);
            }
            if !self.eat(",") {
                self.expect(")")?;
                break;
            }
        }
        Ok((args, kwargs))
    }

    fn end(&mut self) -> Result<()> {
        match self.peek() {
            Tok::Newline => Ok(()),
            t => Err(self.err(format!("unexpected {t:?} at end of statement"))),
        }
    }
}

const CONTROL: [&str; 9] = [
    "if", "elif", "else", "for", "while", "with", "try", "break", "continue",
];

/// Parses one `code/` file into its classes.
pub fn parse(src: &str, file: &str) -> Result<Vec<Class>> {
    let lines = lex(src, file)?;
    let mut classes: Vec<Class> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let l = &lines[i];
        let mut p = P {
            toks: &l.toks,
            pos: 0,
            line: l.line,
            file,
        };
        match p.peek() {
            Tok::Name(k) if k == "class" => {
                p.next();
                let name = p.name()?;
                classes.push(Class {
                    name,
                    methods: Vec::new(),
                });
                i += 1;
            }
            Tok::Name(k) if k == "def" => {
                let indent = l.indent;
                let end = lines[i + 1..]
                    .iter()
                    .position(|m| m.indent <= indent)
                    .map_or(lines.len(), |n| i + 1 + n);
                let m = method(&mut p, &lines[i + 1..end], file)?;
                match classes.last_mut() {
                    Some(c) => c.methods.push(m),
                    None => return Err(p.err("a function outside a class")),
                }
                i = end;
            }
            // Class-level declarations (`__parameters__ = []`, `training :
            // bool`, imports, `__annotations__`) carry nothing the importer
            // needs: the pickled object has the attribute values.
            _ => i += 1,
        }
    }
    Ok(classes)
}

fn method(p: &mut P, body: &[Line], file: &str) -> Result<Method> {
    p.next();
    let name = p.name()?;
    p.expect("(")?;
    let mut params = Vec::new();
    while !p.eat(")") {
        params.push(p.name()?);
        if p.eat(":") {
            p.expr()?; // the type annotation
        }
        if p.eat("=") {
            p.expr()?; // a default value
        }
        if !p.eat(",") {
            p.expect(")")?;
            break;
        }
    }
    if p.eat("->") {
        p.expr()?;
    }
    p.expect(":")?;
    let mut m = Method {
        name,
        params,
        body: Vec::new(),
        unsupported: None,
    };
    for l in body {
        let mut q = P {
            toks: &l.toks,
            pos: 0,
            line: l.line,
            file,
        };
        match statement(&mut q) {
            Ok(s) => m.body.push((l.line, s)),
            Err(e) => {
                m.unsupported = Some((l.line, e.to_string()));
                break;
            }
        }
    }
    Ok(m)
}

fn statement(p: &mut P) -> Result<Stmt> {
    if let Tok::Name(k) = p.peek() {
        if CONTROL.contains(&k.as_str()) {
            return Err(Error::Unsupported(format!(
                "control flow ('{k}') at {} line {}",
                p.file, p.line
            )));
        }
        if k == "return" {
            p.next();
            let e = tuple_expr(p)?;
            p.end()?;
            return Ok(Stmt::Return(e));
        }
        if k == "pass" {
            return Err(p.err("'pass' as a method body"));
        }
    }
    let mut targets = Vec::new();
    let is_assign = p.toks.contains(&Tok::Op("="));
    if is_assign {
        loop {
            targets.push(p.name()?);
            if p.eat(":") {
                p.expr()?; // an annotation: `x : int = ...`
            }
            if p.eat("=") {
                break;
            }
            p.expect(",")?;
            if p.eat("=") {
                break;
            }
        }
    } else {
        // A bare expression statement (e.g. a side-effect call).
        let e = tuple_expr(p)?;
        p.end()?;
        return Ok(Stmt::Assign(Vec::new(), e));
    }
    let e = tuple_expr(p)?;
    p.end()?;
    Ok(Stmt::Assign(targets, e))
}

/// `a, b` without brackets (a return value or an assignment source).
fn tuple_expr(p: &mut P) -> Result<Expr> {
    let first = p.expr()?;
    if !matches!(p.peek(), Tok::Op(",")) {
        return Ok(first);
    }
    let mut items = vec![first];
    while p.eat(",") {
        if matches!(p.peek(), Tok::Newline) {
            break;
        }
        items.push(p.expr()?);
    }
    Ok(Expr::Tuple(items))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "class M(Module):
  __parameters__ = []
  training : bool
  def forward(self: __torch__.M,
    x: Tensor,
    y: Optional[Tensor]=None) -> Tuple[Tensor, Tensor]:
    _0 = torch._convolution(x, CONSTANTS.c0, None, [2, 2], [0, 0],
        [1, 1], False, [0, 0], 1, False, False, True, True)
    _1, _2, = torch.split(_0, 3, -1)
    _3 = torch.hardtanh_(_1, 0., 6.)
    _4 = torch.gelu(_2, approximate=\"tanh\")
    return (_3, self.conv.weight)
  def other(self: __torch__.M) -> int:
    if self.training:
      return 1
    return 2
";

    #[test]
    fn parses_traced_code() {
        let c = parse(SRC, "code/__torch__.py").unwrap();
        assert_eq!(c.len(), 1);
        let f = &c[0].methods[0];
        assert_eq!(f.params, ["self", "x", "y"]);
        assert_eq!(f.body.len(), 5);
        assert_eq!(f.body[0].0, 7);
        let Stmt::Assign(t, Expr::Call(callee, args, _)) = &f.body[1].1 else {
            panic!("{:?}", f.body[1]);
        };
        assert_eq!(t, &["_1", "_2"]);
        assert_eq!(callee.dotted().as_deref(), Some("torch.split"));
        assert_eq!(args[2], Expr::Int(-1));
        let Stmt::Assign(_, Expr::Call(_, args, _)) = &f.body[2].1 else {
            panic!()
        };
        assert_eq!(args[1], Expr::Float(0.0));
        let Stmt::Assign(_, Expr::Call(_, _, kw)) = &f.body[3].1 else {
            panic!()
        };
        assert_eq!(kw, &[("approximate".to_string(), Expr::Str("tanh".into()))]);
        let Stmt::Return(Expr::Tuple(r)) = &f.body[4].1 else {
            panic!()
        };
        assert_eq!(r[1].dotted().as_deref(), Some("self.conv.weight"));
        let other = &c[0].methods[1];
        let (line, msg) = other.unsupported.as_ref().unwrap();
        assert_eq!(*line, 14);
        assert!(
            msg.contains("control flow ('if') at code/__torch__.py line 14"),
            "{msg}"
        );
    }

    #[test]
    fn malformed_source_is_an_error() {
        for bad in [
            "class M:\n  def f(self:\n",
            "class M:\n  def f(self) -> T:\n    x = 'a\n",
        ] {
            assert!(parse(bad, "f.py").is_err(), "{bad:?}");
        }
    }
}
