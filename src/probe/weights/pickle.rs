//! A small, defensive Python pickle interpreter: just enough of the pickle virtual machine to
//! read PyTorch checkpoints (protocols 0 to 5, the opcodes `torch.save` emits).
//!
//! Nothing is executed: `GLOBAL` pushes a name, `REDUCE` / `NEWOBJ` record a call that the
//! caller may interpret later. The only call evaluated here is `collections.OrderedDict()`,
//! because state dicts are built by filling one with `SETITEMS`.
//!
//! The input is one in-memory byte slice, so every length read from it is checked against the
//! bytes that remain before anything is allocated: a corrupt header cannot ask for more memory
//! than the file holds. Values are shared with `Rc` (memo references are O(1)) and copied on
//! write; nesting depth and the total copying work are bounded so that a hostile file can
//! neither overflow the stack (on drop) nor make the reader quadratic.

use std::collections::HashMap;
use std::rc::Rc;

/// Errors of this module are plain messages; the public API adds the file path.
pub(crate) type Fallible<T> = std::result::Result<T, String>;

/// Deepest nesting of containers accepted. State dicts need about 6 levels.
const MAX_DEPTH: u32 = 100;

/// A Python object as far as this reader understands it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// A larger integer: little-endian two's complement bytes, without redundant sign bytes.
    BigInt(Rc<[u8]>),
    /// A float.
    Float(f64),
    /// A text string (also Python 2 `str`, decoded as Latin-1 as Python 3 does).
    Str(Rc<str>),
    /// A byte string.
    Bytes(Rc<[u8]>),
    /// A reference to a global name, `module.name`: never resolved.
    Global(Rc<(String, String)>),
    /// A tuple (also frozensets).
    Tuple(Rc<Seq>),
    /// A list (also sets).
    List(Rc<Seq>),
    /// A dict, keys and values in insertion order (duplicates kept: the reader decides).
    Dict(Rc<Map>),
    /// `func(*args)` recorded, not evaluated; `state` is what `BUILD` gave it.
    Call(Rc<Call>),
    /// A persistent reference (`persistent_load(id)`): PyTorch's storages.
    Persistent(Rc<Call>),
}

/// Items of a tuple or list.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Seq {
    depth: u32,
    /// The items.
    pub items: Vec<Value>,
}

/// Items of a dict.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Map {
    depth: u32,
    /// The `(key, value)` pairs in insertion order.
    pub items: Vec<(Value, Value)>,
}

/// A recorded call (also used for persistent ids, with `func` = `None`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Call {
    depth: u32,
    /// The callable.
    pub func: Value,
    /// Its arguments (normally a tuple).
    pub args: Value,
    /// State set by `BUILD`, if any.
    pub state: Option<Value>,
}

impl Value {
    fn depth(&self) -> u32 {
        match self {
            Value::Tuple(s) | Value::List(s) => s.depth,
            Value::Dict(m) => m.depth,
            Value::Call(c) | Value::Persistent(c) => c.depth,
            _ => 0,
        }
    }

    /// The text of a `Str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value of an `Int`.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The items of a tuple or list.
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(s) | Value::List(s) => Some(&s.items),
            _ => None,
        }
    }

    /// `(module, name)` of a `Global`.
    pub fn as_global(&self) -> Option<(&str, &str)> {
        match self {
            Value::Global(g) => Some((&g.0, &g.1)),
            _ => None,
        }
    }

    /// A short description for error messages (never the whole value).
    pub fn kind(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(b) => format!("bool {b}"),
            Value::Int(i) => format!("int {i}"),
            Value::BigInt(_) => "a big int".into(),
            Value::Float(f) => format!("float {f}"),
            Value::Str(s) if s.len() <= 40 => format!("str {s:?}"),
            Value::Str(_) => "a long str".into(),
            Value::Bytes(b) => format!("{} bytes", b.len()),
            Value::Global(g) => format!("{}.{}", g.0, g.1),
            Value::Tuple(s) => format!("a tuple of {}", s.items.len()),
            Value::List(s) => format!("a list of {}", s.items.len()),
            Value::Dict(m) => format!("a dict of {}", m.items.len()),
            Value::Call(c) => format!("a call of {}", c.func.kind()),
            Value::Persistent(_) => "a persistent id".into(),
        }
    }
}

fn check_depth(depth: u32) -> Fallible<u32> {
    if depth > MAX_DEPTH {
        Err(format!("objects nested deeper than {MAX_DEPTH} levels"))
    } else {
        Ok(depth)
    }
}

fn seq(items: Vec<Value>) -> Fallible<Rc<Seq>> {
    let depth = check_depth(1 + items.iter().map(Value::depth).max().unwrap_or(0))?;
    Ok(Rc::new(Seq { depth, items }))
}

fn map(items: Vec<(Value, Value)>) -> Fallible<Rc<Map>> {
    let depth = items
        .iter()
        .map(|(k, v)| k.depth().max(v.depth()))
        .max()
        .unwrap_or(0);
    Ok(Rc::new(Map {
        depth: check_depth(1 + depth)?,
        items,
    }))
}

fn call(func: Value, args: Value) -> Fallible<Rc<Call>> {
    let depth = check_depth(1 + func.depth().max(args.depth()))?;
    Ok(Rc::new(Call {
        depth,
        func,
        args,
        state: None,
    }))
}

/// Decodes a little-endian two's complement integer of any width.
fn decode_long(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Int(0);
    }
    // Drop sign-extension bytes so that equal numbers compare equal whatever their encoding.
    let negative = bytes[bytes.len() - 1] & 0x80 != 0;
    let fill = if negative { 0xff } else { 0x00 };
    let mut len = bytes.len();
    while len > 1 && bytes[len - 1] == fill && (bytes[len - 2] & 0x80 != 0) == negative {
        len -= 1;
    }
    let bytes = &bytes[..len];
    if len <= 8 {
        let mut buf = [fill; 8];
        buf[..len].copy_from_slice(bytes);
        Value::Int(i64::from_le_bytes(buf))
    } else {
        Value::BigInt(bytes.into())
    }
}

/// Python 2 `str` and pickle protocol-0 text are Latin-1 byte strings.
fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

/// Decodes the body of a protocol-0 `STRING` opcode: a quoted Python `repr` of a byte string.
fn unquote_string(line: &[u8]) -> Fallible<Vec<u8>> {
    match (line.first(), line.last()) {
        (Some(&a), Some(&b)) if line.len() >= 2 && a == b && (a == b'\'' || a == b'"') => {}
        _ => return Err("STRING argument is not quoted".into()),
    }
    let body = &line[1..line.len() - 1];
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        i += 1;
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let e = *body.get(i).ok_or("STRING ends inside an escape")?;
        i += 1;
        match e {
            b'\\' | b'\'' | b'"' => out.push(e),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'x' => {
                let hex = body
                    .get(i..i + 2)
                    .ok_or("STRING ends inside a \\x escape")?;
                let hex = std::str::from_utf8(hex).map_err(|_| "bad \\x escape in STRING")?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| "bad \\x escape in STRING")?);
                i += 2;
            }
            other => return Err(format!("unsupported escape \\{} in STRING", other as char)),
        }
    }
    Ok(out)
}

/// Decodes protocol-0 `UNICODE` text (Python's raw-unicode-escape codec).
fn raw_unicode_escape(bytes: &[u8]) -> Fallible<String> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let width = match (c, bytes.get(i + 1)) {
            (b'\\', Some(b'u')) => 4,
            (b'\\', Some(b'U')) => 8,
            _ => 0,
        };
        if width == 0 {
            out.push(c as char);
            i += 1;
            continue;
        }
        let hex = bytes
            .get(i + 2..i + 2 + width)
            .ok_or("UNICODE ends inside an escape")?;
        let hex = std::str::from_utf8(hex).map_err(|_| "bad escape in UNICODE")?;
        let code = u32::from_str_radix(hex, 16).map_err(|_| "bad escape in UNICODE")?;
        out.push(char::from_u32(code).ok_or("bad code point in UNICODE")?);
        i += 2 + width;
    }
    Ok(out)
}

/// Reads one pickle from a byte slice.
pub(crate) struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// Stack heights at each open `MARK` (CPython's "metastack").
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    /// Items copied by copy-on-write so far, bounded by a multiple of the input length.
    copied: usize,
    copy_budget: usize,
}

impl<'a> Unpickler<'a> {
    /// Reads the pickle that starts at `pos` in `data`. Returns the object and the position just
    /// after its `STOP` opcode (where the next pickle of a stream starts).
    pub fn load(data: &'a [u8], pos: usize) -> Fallible<(Value, usize)> {
        let mut vm = Unpickler {
            data,
            pos,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            copied: 0,
            // Copy-on-write copies are rare in real files (only an empty container put in the
            // memo and then filled); this allows plenty while keeping the worst case linear.
            copy_budget: 16 * data.len().saturating_sub(pos) + 65_536,
        };
        let value = vm
            .run()
            .map_err(|e| format!("pickle at byte {}: {e}", vm.pos))?;
        Ok((value, vm.pos))
    }

    fn take(&mut self, n: usize) -> Fallible<&'a [u8]> {
        let data: &'a [u8] = self.data;
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= data.len())
            .ok_or_else(|| {
                format!(
                    "truncated: {n} bytes needed, {} left",
                    data.len() - self.pos.min(data.len())
                )
            })?;
        let out = &data[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn byte(&mut self) -> Fallible<u8> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Fallible<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn len_u32(&mut self) -> Fallible<usize> {
        Ok(u32::from_le_bytes(self.array()?) as usize)
    }

    fn len_u64(&mut self) -> Fallible<usize> {
        let n = u64::from_le_bytes(self.array()?);
        // Anything larger than the input cannot be satisfied; `take` reports it as truncation.
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn line(&mut self) -> Fallible<&'a [u8]> {
        let data: &'a [u8] = self.data;
        let rest = &data[self.pos.min(data.len())..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("truncated: newline expected")?;
        self.pos += n + 1;
        let line = &rest[..n];
        // Files written on Windows in text mode may carry `\r\n`.
        Ok(line.strip_suffix(b"\r").unwrap_or(line))
    }

    fn line_str(&mut self) -> Fallible<&'a str> {
        std::str::from_utf8(self.line()?).map_err(|_| "non-UTF-8 text argument".to_string())
    }

    fn push(&mut self, v: Value) {
        self.stack.push(v);
    }

    fn pop(&mut self) -> Fallible<Value> {
        // Items below the innermost MARK belong to an outer frame.
        if self.stack.len() <= self.marks.last().copied().unwrap_or(0) {
            return Err("stack underflow".into());
        }
        self.stack.pop().ok_or_else(|| "stack underflow".into())
    }

    fn top(&mut self) -> Fallible<&mut Value> {
        if self.stack.len() <= self.marks.last().copied().unwrap_or(0) {
            return Err("stack underflow".into());
        }
        self.stack
            .last_mut()
            .ok_or_else(|| "stack underflow".into())
    }

    fn pop_mark(&mut self) -> Fallible<Vec<Value>> {
        let mark = self.marks.pop().ok_or("no MARK to pop to")?;
        Ok(self.stack.split_off(mark))
    }

    /// Charges the copy a copy-on-write mutation of a shared container is about to make.
    fn charge(&mut self, shared: bool, len: usize) -> Fallible<()> {
        if shared {
            self.copied = self.copied.saturating_add(len + 1);
            if self.copied > self.copy_budget {
                return Err("too much copying of shared containers (corrupt pickle?)".into());
            }
        }
        Ok(())
    }

    /// Appends items to the list on top of the stack.
    fn extend_list(&mut self, items: Vec<Value>) -> Fallible<()> {
        let extra = check_depth(1 + items.iter().map(Value::depth).max().unwrap_or(0))?;
        let (shared, len) = match self.top()? {
            Value::List(l) => (Rc::strong_count(l) > 1, l.items.len()),
            other => return Err(format!("APPEND to {}, not a list", other.kind())),
        };
        self.charge(shared, len)?;
        if let Value::List(l) = self.top()? {
            let l = Rc::make_mut(l);
            l.depth = l.depth.max(extra);
            l.items.extend(items);
        }
        Ok(())
    }

    /// Sets items of the dict on top of the stack.
    fn extend_dict(&mut self, flat: Vec<Value>) -> Fallible<()> {
        if flat.len() % 2 != 0 {
            return Err("SETITEMS with an odd number of items".into());
        }
        let extra = check_depth(1 + flat.iter().map(Value::depth).max().unwrap_or(0))?;
        let (shared, len) = match self.top()? {
            Value::Dict(d) => (Rc::strong_count(d) > 1, d.items.len()),
            other => return Err(format!("SETITEM on {}, not a dict", other.kind())),
        };
        self.charge(shared, len)?;
        if let Value::Dict(d) = self.top()? {
            let d = Rc::make_mut(d);
            d.depth = d.depth.max(extra);
            let mut it = flat.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                d.items.push((k, v));
            }
        }
        Ok(())
    }

    fn memo_get(&self, id: u32) -> Fallible<Value> {
        self.memo
            .get(&id)
            .cloned()
            .ok_or_else(|| format!("memo entry {id} is missing"))
    }

    fn memo_put(&mut self, id: u32) -> Fallible<()> {
        let v = self.top()?.clone();
        self.memo.insert(id, v);
        Ok(())
    }

    fn text_u32(&mut self) -> Fallible<u32> {
        let s = self.line_str()?;
        s.trim()
            .parse()
            .map_err(|_| format!("bad memo index {s:?}"))
    }

    /// `func(*args)`: records the call, except `OrderedDict()` which becomes an empty dict.
    fn reduce(&mut self, func: Value, args: Value) -> Fallible<Value> {
        if let Some(("collections", "OrderedDict")) = func.as_global() {
            match args.as_seq() {
                Some([]) => return Ok(Value::Dict(map(Vec::new())?)),
                // Protocol 0/1 may build it from a list of pairs.
                Some([Value::List(pairs)]) => {
                    let mut items = Vec::with_capacity(pairs.items.len());
                    for p in &pairs.items {
                        match p.as_seq() {
                            Some([k, v]) => items.push((k.clone(), v.clone())),
                            _ => return Err("OrderedDict built from a non-pair".into()),
                        }
                    }
                    return Ok(Value::Dict(map(items)?));
                }
                _ => {}
            }
        }
        Ok(Value::Call(call(func, args)?))
    }

    fn run(&mut self) -> Fallible<Value> {
        loop {
            let op = self.byte()?;
            match op {
                // PROTO
                0x80 => {
                    let v = self.byte()?;
                    if v > 5 {
                        return Err(format!("unsupported pickle protocol {v}"));
                    }
                }
                // FRAME: a length hint only.
                0x95 => {
                    self.take(8)?;
                }
                // STOP
                b'.' => return self.pop(),
                // MARK, POP, POP_MARK, DUP
                b'(' => self.marks.push(self.stack.len()),
                // POP on an empty frame drops the frame's MARK, as CPython does.
                b'0' => {
                    if self.stack.len() > self.marks.last().copied().unwrap_or(0) {
                        self.pop()?;
                    } else {
                        self.pop_mark()?;
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v);
                }
                // NONE, NEWTRUE, NEWFALSE
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                // INT (text; I01 / I00 are booleans)
                b'I' => {
                    let s = self.line_str()?;
                    let v = match s {
                        "01" => Value::Bool(true),
                        "00" => Value::Bool(false),
                        _ => Value::Int(s.parse().map_err(|_| format!("bad INT {s:?}"))?),
                    };
                    self.push(v);
                }
                // BININT, BININT1, BININT2
                b'J' => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.push(Value::Int(v.into()));
                }
                b'K' => {
                    let v = self.byte()?;
                    self.push(Value::Int(v.into()));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.push(Value::Int(v.into()));
                }
                // LONG (text)
                b'L' => {
                    let s = self.line_str()?;
                    let digits = s.strip_suffix('L').unwrap_or(s);
                    let v = digits
                        .parse()
                        .map_err(|_| format!("unsupported LONG {s:?}"))?;
                    self.push(Value::Int(v));
                }
                // LONG1, LONG4
                0x8a => {
                    let n = self.byte()? as usize;
                    let v = decode_long(self.take(n)?);
                    self.push(v);
                }
                0x8b => {
                    let n = self.len_u32()?;
                    let v = decode_long(self.take(n)?);
                    self.push(v);
                }
                // FLOAT (text), BINFLOAT (big-endian, unlike the integers)
                b'F' => {
                    let s = self.line_str()?;
                    let v = s.trim().parse().map_err(|_| format!("bad FLOAT {s:?}"))?;
                    self.push(Value::Float(v));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.array()?);
                    self.push(Value::Float(v));
                }
                // STRING (protocol 0 quoted repr), BINSTRING, SHORT_BINSTRING: Python 2 str
                b'S' => {
                    let line = self.line()?;
                    let bytes = unquote_string(line)?;
                    self.push(Value::Str(latin1(&bytes).into()));
                }
                b'T' => {
                    let n = self.len_u32()?;
                    let s = latin1(self.take(n)?);
                    self.push(Value::Str(s.into()));
                }
                b'U' => {
                    let n = self.byte()? as usize;
                    let s = latin1(self.take(n)?);
                    self.push(Value::Str(s.into()));
                }
                // UNICODE (text), BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
                b'V' => {
                    let s = raw_unicode_escape(self.line()?)?;
                    self.push(Value::Str(s.into()));
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.len_u32()?,
                        0x8c => self.byte()? as usize,
                        _ => self.len_u64()?,
                    };
                    let s = std::str::from_utf8(self.take(n)?)
                        .map_err(|_| "string is not valid UTF-8".to_string())?;
                    self.push(Value::Str(s.into()));
                }
                // BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => self.len_u32()?,
                        b'C' => self.byte()? as usize,
                        _ => self.len_u64()?,
                    };
                    let b = self.take(n)?;
                    self.push(Value::Bytes(b.into()));
                }
                // EMPTY_TUPLE, TUPLE, TUPLE1, TUPLE2, TUPLE3
                b')' => self.push(Value::Tuple(seq(Vec::new())?)),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(seq(items)?));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(seq(items)?));
                }
                // EMPTY_LIST, LIST, APPEND, APPENDS
                b']' => self.push(Value::List(seq(Vec::new())?)),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(seq(items)?));
                }
                b'a' => {
                    let v = self.pop()?;
                    self.extend_list(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.extend_list(items)?;
                }
                // EMPTY_DICT, DICT, SETITEM, SETITEMS
                b'}' => self.push(Value::Dict(map(Vec::new())?)),
                b'd' => {
                    let flat = self.pop_mark()?;
                    self.push(Value::Dict(map(Vec::new())?));
                    self.extend_dict(flat)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.extend_dict(vec![k, v])?;
                }
                b'u' => {
                    let flat = self.pop_mark()?;
                    self.extend_dict(flat)?;
                }
                // EMPTY_SET, ADDITEMS, FROZENSET: kept as list / tuple.
                0x8f => self.push(Value::List(seq(Vec::new())?)),
                0x90 => {
                    let items = self.pop_mark()?;
                    self.extend_list(items)?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(seq(items)?));
                }
                // GLOBAL, STACK_GLOBAL
                b'c' => {
                    let module = self.line_str()?.to_string();
                    let name = self.line_str()?.to_string();
                    self.push(Value::Global(Rc::new((module, name))));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module.as_str(), name.as_str()) {
                        (Some(m), Some(n)) => {
                            self.push(Value::Global(Rc::new((m.to_string(), n.to_string()))))
                        }
                        _ => return Err("STACK_GLOBAL of non-strings".into()),
                    }
                }
                // REDUCE, NEWOBJ, NEWOBJ_EX
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = self.reduce(func, args)?;
                    self.push(v);
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.push(Value::Call(call(cls, args)?));
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.push(Value::Call(call(cls, args)?));
                }
                // BUILD: state goes to a recorded call; a dict's state is its attributes
                // (OrderedDict's `_metadata`), which the weights do not need.
                b'b' => {
                    let state = self.pop()?;
                    let extra = check_depth(1 + state.depth())?;
                    let shared = match self.top()? {
                        Value::Call(c) => Rc::strong_count(c) > 1,
                        _ => false,
                    };
                    self.charge(shared, 1)?;
                    if let Value::Call(c) = self.top()? {
                        let c = Rc::make_mut(c);
                        c.depth = c.depth.max(extra);
                        c.state = Some(state);
                    }
                }
                // PUT, BINPUT, LONG_BINPUT, MEMOIZE
                b'p' => {
                    let id = self.text_u32()?;
                    self.memo_put(id)?;
                }
                b'q' => {
                    let id = self.byte()?.into();
                    self.memo_put(id)?;
                }
                b'r' => {
                    let id = u32::from_le_bytes(self.array()?);
                    self.memo_put(id)?;
                }
                0x94 => {
                    let id = u32::try_from(self.memo.len()).map_err(|_| "memo too large")?;
                    self.memo_put(id)?;
                }
                // GET, BINGET, LONG_BINGET
                b'g' => {
                    let id = self.text_u32()?;
                    let v = self.memo_get(id)?;
                    self.push(v);
                }
                b'h' => {
                    let id = self.byte()?.into();
                    let v = self.memo_get(id)?;
                    self.push(v);
                }
                b'j' => {
                    let id = u32::from_le_bytes(self.array()?);
                    let v = self.memo_get(id)?;
                    self.push(v);
                }
                // PERSID (text id), BINPERSID
                b'P' => {
                    let id = self.line_str()?;
                    let v = Value::Persistent(call(Value::None, Value::Str(id.into()))?);
                    self.push(v);
                }
                b'Q' => {
                    let id = self.pop()?;
                    self.push(Value::Persistent(call(Value::None, id)?));
                }
                other => {
                    return Err(format!("unsupported or invalid opcode 0x{other:02x}"));
                }
            }
        }
    }
}

impl Value {
    /// The id of a persistent reference.
    pub fn persistent_id(&self) -> Option<&Value> {
        match self {
            Value::Persistent(c) => Some(&c.args),
            _ => None,
        }
    }

    /// The pairs of a dict.
    pub fn as_dict(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Dict(m) => Some(&m.items),
            _ => None,
        }
    }

    /// The recorded call.
    pub fn as_call(&self) -> Option<&Call> {
        match self {
            Value::Call(c) => Some(c),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(bytes: &[u8]) -> Fallible<Value> {
        Unpickler::load(bytes, 0).map(|(v, _)| v)
    }

    #[test]
    fn long1_decodes_torch_magic_number_as_big_int() {
        // The first pickle of every legacy PyTorch file.
        let bytes = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";
        let v = load(bytes).unwrap();
        assert_eq!(v, Value::BigInt(Rc::from(&bytes[4..14])));
    }

    #[test]
    fn long1_small_and_negative_values_are_ints() {
        assert_eq!(load(b"\x8a\x02\xff\x00.").unwrap(), Value::Int(255));
        assert_eq!(load(b"\x8a\x01\xff.").unwrap(), Value::Int(-1));
        assert_eq!(load(b"\x8a\x00.").unwrap(), Value::Int(0));
        // Redundant sign bytes beyond 8 bytes still give an Int.
        assert_eq!(
            load(b"\x8a\x0a\xfe\xff\xff\xff\xff\xff\xff\xff\xff\xff.").unwrap(),
            Value::Int(-2)
        );
    }

    #[test]
    fn ordered_dict_keeps_insertion_order_and_ignores_build_state() {
        // OrderedDict(); d['b'] = 1; d['a'] = 2 with a `_metadata` BUILD state.
        let bytes = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01(X\x01\x00\x00\x00bK\x01X\x01\x00\x00\x00aK\x02u}X\x09\x00\x00\x00_metadataK\x00sb.";
        let v = load(bytes).unwrap();
        let items = v.as_dict().unwrap();
        let keys: Vec<_> = items.iter().map(|(k, _)| k.as_str().unwrap()).collect();
        assert_eq!(keys, ["b", "a"]);
    }

    #[test]
    fn memo_get_shares_tuples() {
        let v = load(b"(K\x01K\x02tq\x00h\x00\x86.").unwrap();
        let items = v.as_seq().unwrap();
        assert_eq!(items[0], items[1]);
        assert_eq!(items[0].as_seq().unwrap().len(), 2);
    }

    #[test]
    fn oversized_lengths_are_truncation_errors_not_allocations() {
        let err = load(b"X\xff\xff\xff\xff").unwrap_err();
        assert!(err.contains("truncated"), "{err}");
        let err = load(b"\x8d\xff\xff\xff\xff\xff\xff\xff\xff").unwrap_err();
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn deep_nesting_is_rejected() {
        let mut bytes = b")".to_vec();
        bytes.extend(std::iter::repeat_n(0x85u8, 500));
        bytes.push(b'.');
        let err = load(&bytes).unwrap_err();
        assert!(err.contains("nested deeper"), "{err}");
    }

    #[test]
    fn mark_protects_outer_frame_from_pops() {
        let err = load(b"K\x01(.").unwrap_err();
        assert!(err.contains("underflow"), "{err}");
    }

    #[test]
    fn unknown_opcode_and_missing_stop_are_errors() {
        assert!(load(b"\xff").unwrap_err().contains("opcode 0xff"));
        assert!(load(b"K\x01").unwrap_err().contains("truncated"));
        assert!(load(b"").unwrap_err().contains("truncated"));
    }

    #[test]
    fn protocol0_text_opcodes() {
        let v = load(b"(I7\nF1.5\nS'a\\x41'\nVx\\u00e9\nL12L\nI01\nt.").unwrap();
        let items = v.as_seq().unwrap();
        assert_eq!(items[0], Value::Int(7));
        assert_eq!(items[1], Value::Float(1.5));
        assert_eq!(items[2].as_str(), Some("aA"));
        assert_eq!(items[3].as_str(), Some("x\u{e9}"));
        assert_eq!(items[4], Value::Int(12));
        assert_eq!(items[5], Value::Bool(true));
    }
}
