//! A parser and printer for a subset of Python literal syntax.
//!
//! Dilu's traces store one Python `dict` literal per line (written with
//! Python's `repr`), e.g. `{'Time': '2024-06-19 15:46:09', 'Action': 'start', ...}`.
//! That is not JSON (single quotes, `True`/`None`, tuples), so this module
//! provides a real tokenizer plus recursive-descent parser for exactly the
//! literal subset such files use — no evaluation, no regular expressions:
//!
//! * dicts `{k: v, ...}` (insertion order kept; a repeated key keeps its first
//!   position and takes the last value, as in Python), lists `[...]`,
//!   tuples `(...)`, `()`, `(x,)` (a parenthesised single value is just that value);
//! * strings in single or double quotes with the escapes `\\ \' \" \n \t \r
//!   \xNN \uNNNN \UNNNNNNNN` (a `\uD83D\uDE00` surrogate pair is combined; other
//!   escapes are rejected rather than silently kept);
//! * integers (optionally signed, must fit in `i64`), floats (`1.5`, `.5`, `5.`,
//!   `1e-07`, `2.5E+3`), `True`, `False`, `None`.
//!
//! [`PyValue`]'s `Display` prints Python's `repr` of the value, so values can
//! be written back in the same format (see [`python_float_repr`]).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;

/// A parsed Python literal value.
#[derive(Debug, Clone, PartialEq)]
pub enum PyValue {
    /// `None`.
    None,
    /// `True` or `False`.
    Bool(bool),
    /// An integer literal that fits in `i64`.
    Int(i64),
    /// A float literal.
    Float(f64),
    /// A string literal, escapes resolved.
    Str(String),
    /// A list literal `[...]`.
    List(Vec<PyValue>),
    /// A tuple literal `(...)`.
    Tuple(Vec<PyValue>),
    /// A dict literal `{...}` as key/value pairs in insertion order.
    Dict(Vec<(PyValue, PyValue)>),
}

impl PyValue {
    /// Looks up a string key in a dict; `None` if not a dict or the key is absent.
    pub fn get(&self, key: &str) -> Option<&PyValue> {
        match self {
            PyValue::Dict(pairs) => pairs
                .iter()
                .find(|(k, _)| matches!(k, PyValue::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string content if this is a `Str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            PyValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer if this is an `Int` (floats are not converted).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            PyValue::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The numeric value if this is an `Int` or a `Float` (Python's numeric types;
    /// `bool` is deliberately not treated as a number).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            PyValue::Int(i) => Some(*i as f64),
            PyValue::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// The elements if this is a `List` or a `Tuple`.
    pub fn as_seq(&self) -> Option<&[PyValue]> {
        match self {
            PyValue::List(v) | PyValue::Tuple(v) => Some(v),
            _ => None,
        }
    }

    /// Python's name for the value's type (`'int'`, `'str'`, ...), for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            PyValue::None => "NoneType",
            PyValue::Bool(_) => "bool",
            PyValue::Int(_) => "int",
            PyValue::Float(_) => "float",
            PyValue::Str(_) => "str",
            PyValue::List(_) => "list",
            PyValue::Tuple(_) => "tuple",
            PyValue::Dict(_) => "dict",
        }
    }
}

/// Formats an `f64` exactly like Python's `repr(float)`.
///
/// Rust's `{}` already prints the shortest round-tripping digits, but differs
/// from Python in two ways this function fixes: Python always shows a fraction
/// or exponent (`1.0`, not `1`), and switches to scientific notation when the
/// decimal exponent is below -4 or at least 16 (`1e-07`, `1e+16`).
pub fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".to_owned();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    // `{:e}` gives the shortest round-trip digits as `d.ddde<exp>`, but breaks
    // exact ties (e.g. ...291.25 -> ...291.3) upwards, whereas Python rounds
    // half to even (...291.2). Rust's fixed-precision formatting is correctly
    // rounded half-to-even, so prefer it at the same length when it round-trips.
    let shortest = format!("{x:e}");
    let n_digits = shortest
        .split('e')
        .next()
        .map_or(1, |m| m.bytes().filter(u8::is_ascii_digit).count());
    let exact = format!("{:.*e}", n_digits.saturating_sub(1), x);
    let sci = if exact.parse::<f64>() == Ok(x) {
        exact
    } else {
        shortest
    };
    let (mantissa, exp) = match sci.split_once('e') {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (sci.as_str(), 0),
    };
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if negative { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        let body = if exp < 0 {
            format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits)
        } else if exp + 1 >= n {
            format!("{}{}.0", digits, "0".repeat((exp + 1 - n) as usize))
        } else {
            let (int_part, frac_part) = digits.split_at((exp + 1) as usize);
            format!("{int_part}.{frac_part}")
        };
        format!("{sign}{body}")
    } else {
        let exp_sign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{exp_sign}{:02}", exp.abs())
    }
}

/// Writes `s` as Python's `repr(str)` would: single quotes unless the string
/// contains a single quote and no double quote.
fn write_python_str(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    write!(f, "{quote}")?;
    for c in s.chars() {
        match c {
            '\\' => write!(f, "\\\\")?,
            '\n' => write!(f, "\\n")?,
            '\r' => write!(f, "\\r")?,
            '\t' => write!(f, "\\t")?,
            c if c == quote => write!(f, "\\{c}")?,
            c if (c as u32) < 0x20 || (0x7f..0xa0).contains(&(c as u32)) => {
                write!(f, "\\x{:02x}", c as u32)?
            }
            c => write!(f, "{c}")?,
        }
    }
    write!(f, "{quote}")
}

impl fmt::Display for PyValue {
    /// Prints the value as Python's `repr` would (used to write trace lines).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn seq(f: &mut fmt::Formatter<'_>, items: &[PyValue]) -> fmt::Result {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    write!(f, ", ")?;
                }
                write!(f, "{item}")?;
            }
            Ok(())
        }
        match self {
            PyValue::None => write!(f, "None"),
            PyValue::Bool(true) => write!(f, "True"),
            PyValue::Bool(false) => write!(f, "False"),
            PyValue::Int(i) => write!(f, "{i}"),
            PyValue::Float(x) => write!(f, "{}", python_float_repr(*x)),
            PyValue::Str(s) => write_python_str(f, s),
            PyValue::List(items) => {
                write!(f, "[")?;
                seq(f, items)?;
                write!(f, "]")
            }
            PyValue::Tuple(items) => {
                write!(f, "(")?;
                seq(f, items)?;
                if items.len() == 1 {
                    write!(f, ",")?;
                }
                write!(f, ")")
            }
            PyValue::Dict(pairs) => {
                write!(f, "{{")?;
                for (i, (k, v)) in pairs.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{k}: {v}")?;
                }
                write!(f, "}}")
            }
        }
    }
}

/// Why a Python literal could not be parsed. Every variant carries the 1-based
/// byte column in the input where the problem was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PyLiteralError {
    /// A token that does not fit the grammar at this point.
    #[error("column {column}: expected {expected}, found {found}")]
    Unexpected {
        /// 1-based byte column of the offending token.
        column: usize,
        /// What the grammar allowed here.
        expected: String,
        /// What was actually there.
        found: String,
    },
    /// A string literal without its closing quote.
    #[error("column {column}: unterminated string literal (expected closing {quote})")]
    UnterminatedString {
        /// 1-based byte column of the opening quote.
        column: usize,
        /// The quote character that was expected.
        quote: char,
    },
    /// A backslash escape that is not supported or malformed.
    #[error("column {column}: invalid escape {found}: expected {expected}")]
    InvalidEscape {
        /// 1-based byte column of the backslash.
        column: usize,
        /// What was expected after the backslash.
        expected: String,
        /// The escape text that was found.
        found: String,
    },
    /// Containers nested deeper than [`MAX_DEPTH`] (the parser recurses once per level, so an unbounded depth
    /// would overflow the stack).
    #[error("column {column}: more than {limit} nested brackets")]
    TooDeep {
        /// 1-based byte column of the bracket one level too deep.
        column: usize,
        /// The limit, [`MAX_DEPTH`].
        limit: usize,
    },
    /// A number that is malformed or does not fit in its type.
    #[error("column {column}: invalid number {text:?}: {reason}")]
    InvalidNumber {
        /// 1-based byte column of the number.
        column: usize,
        /// The literal text.
        text: String,
        /// Why it was rejected.
        reason: String,
    },
}

/// A lexical token with the byte offset where it starts.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LBrace,
    RBrace,
    LBracket,
    RBracket,
    LParen,
    RParen,
    Colon,
    Comma,
    Minus,
    Plus,
    /// Digits of an integer literal, without sign.
    Int(String),
    Float(f64),
    Str(String),
    Ident(String),
    Eof,
}

impl Tok {
    /// Human-readable description for "found ..." messages.
    fn describe(&self) -> String {
        match self {
            Tok::LBrace => "'{'".into(),
            Tok::RBrace => "'}'".into(),
            Tok::LBracket => "'['".into(),
            Tok::RBracket => "']'".into(),
            Tok::LParen => "'('".into(),
            Tok::RParen => "')'".into(),
            Tok::Colon => "':'".into(),
            Tok::Comma => "','".into(),
            Tok::Minus => "'-'".into(),
            Tok::Plus => "'+'".into(),
            Tok::Int(d) => format!("integer {d}"),
            Tok::Float(x) => format!("float {}", python_float_repr(*x)),
            Tok::Str(s) => format!("string {}", PyValue::Str(s.clone())),
            Tok::Ident(s) => format!("name '{s}'"),
            Tok::Eof => "end of input".into(),
        }
    }
}

/// Splits the input into tokens.
struct Lexer<'a> {
    src: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn new(src: &'a str) -> Self {
        Self {
            src,
            bytes: src.as_bytes(),
            pos: 0,
        }
    }

    fn peek_byte(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// Returns the next token and its starting byte offset.
    fn next_token(&mut self) -> Result<(Tok, usize), PyLiteralError> {
        while let Some(b) = self.peek_byte() {
            if b.is_ascii_whitespace() {
                self.pos += 1;
            } else {
                break;
            }
        }
        let start = self.pos;
        let Some(b) = self.peek_byte() else {
            return Ok((Tok::Eof, start));
        };
        let simple = match b {
            b'{' => Some(Tok::LBrace),
            b'}' => Some(Tok::RBrace),
            b'[' => Some(Tok::LBracket),
            b']' => Some(Tok::RBracket),
            b'(' => Some(Tok::LParen),
            b')' => Some(Tok::RParen),
            b':' => Some(Tok::Colon),
            b',' => Some(Tok::Comma),
            b'-' => Some(Tok::Minus),
            b'+' => Some(Tok::Plus),
            _ => None,
        };
        if let Some(tok) = simple {
            self.pos += 1;
            return Ok((tok, start));
        }
        match b {
            b'\'' | b'"' => self.string(b as char).map(|s| (Tok::Str(s), start)),
            b'0'..=b'9' | b'.' => self.number().map(|t| (t, start)),
            b if b.is_ascii_alphabetic() || b == b'_' => {
                while let Some(c) = self.peek_byte() {
                    if c.is_ascii_alphanumeric() || c == b'_' {
                        self.pos += 1;
                    } else {
                        break;
                    }
                }
                Ok((Tok::Ident(self.src[start..self.pos].to_owned()), start))
            }
            _ => {
                let found = self.src[start..].chars().next().unwrap_or('?');
                Err(PyLiteralError::Unexpected {
                    column: start + 1,
                    expected: "a value or punctuation".into(),
                    found: format!("character {found:?}"),
                })
            }
        }
    }

    /// Lexes a number starting at the current position (sign handled by the parser).
    fn number(&mut self) -> Result<Tok, PyLiteralError> {
        let start = self.pos;
        let mut int_digits = 0;
        let mut frac_digits = 0;
        let mut is_float = false;
        while matches!(self.peek_byte(), Some(b'0'..=b'9')) {
            self.pos += 1;
            int_digits += 1;
        }
        if self.peek_byte() == Some(b'.') {
            is_float = true;
            self.pos += 1;
            while matches!(self.peek_byte(), Some(b'0'..=b'9')) {
                self.pos += 1;
                frac_digits += 1;
            }
        }
        let invalid = |lexer: &Self, reason: &str| PyLiteralError::InvalidNumber {
            column: start + 1,
            text: lexer.src[start..lexer.pos].to_owned(),
            reason: reason.to_owned(),
        };
        if int_digits == 0 && frac_digits == 0 {
            return Err(invalid(self, "expected digits"));
        }
        if matches!(self.peek_byte(), Some(b'e' | b'E')) {
            is_float = true;
            self.pos += 1;
            if matches!(self.peek_byte(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            let exp_start = self.pos;
            while matches!(self.peek_byte(), Some(b'0'..=b'9')) {
                self.pos += 1;
            }
            if self.pos == exp_start {
                return Err(invalid(self, "expected digits in the exponent"));
            }
        }
        // A number running straight into letters (`12abc`) is malformed.
        if let Some(c) = self.peek_byte()
            && (c.is_ascii_alphanumeric() || c == b'_' || c == b'.')
        {
            self.pos += 1;
            return Err(invalid(self, "unexpected character in number"));
        }
        let text = &self.src[start..self.pos];
        if is_float {
            text.parse::<f64>()
                .map(Tok::Float)
                .map_err(|e| invalid(self, &e.to_string()))
        } else {
            if text.len() > 1 && text.starts_with('0') && text.bytes().any(|b| b != b'0') {
                return Err(invalid(
                    self,
                    "leading zeros are not allowed in integers (as in Python 3)",
                ));
            }
            Ok(Tok::Int(text.to_owned()))
        }
    }

    /// Reads exactly `n` hex digits after an escape and returns their value.
    fn hex_escape(
        &mut self,
        n: usize,
        esc_start: usize,
        kind: char,
    ) -> Result<u32, PyLiteralError> {
        let digits = self.bytes.get(self.pos..self.pos + n);
        match digits {
            Some(d) if d.iter().all(u8::is_ascii_hexdigit) => {
                let text = &self.src[self.pos..self.pos + n];
                self.pos += n;
                u32::from_str_radix(text, 16).map_err(|e| PyLiteralError::InvalidEscape {
                    column: esc_start + 1,
                    expected: format!("{n} hex digits"),
                    found: format!("\\{kind}{text} ({e})"),
                })
            }
            _ => {
                let end = (self.pos + n).min(self.bytes.len());
                let shown: String = self.src.get(self.pos..end).unwrap_or("").to_owned();
                Err(PyLiteralError::InvalidEscape {
                    column: esc_start + 1,
                    expected: format!("{n} hex digits after \\{kind}"),
                    found: format!("\\{kind}{shown}"),
                })
            }
        }
    }

    /// Lexes a quoted string starting at the current position.
    fn string(&mut self, quote: char) -> Result<String, PyLiteralError> {
        let open = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.src[self.pos..].chars().next() else {
                return Err(PyLiteralError::UnterminatedString {
                    column: open + 1,
                    quote,
                });
            };
            if c == quote {
                self.pos += 1;
                return Ok(out);
            }
            if c == '\n' || c == '\r' {
                return Err(PyLiteralError::UnterminatedString {
                    column: open + 1,
                    quote,
                });
            }
            if c != '\\' {
                out.push(c);
                self.pos += c.len_utf8();
                continue;
            }
            let esc_start = self.pos;
            self.pos += 1;
            let Some(e) = self.src[self.pos..].chars().next() else {
                return Err(PyLiteralError::UnterminatedString {
                    column: open + 1,
                    quote,
                });
            };
            self.pos += e.len_utf8();
            let bad_scalar = |code: u32| PyLiteralError::InvalidEscape {
                column: esc_start + 1,
                expected: "a Unicode scalar value (surrogates only as a high+low pair)".into(),
                found: format!("code point U+{code:04X}"),
            };
            match e {
                '\\' => out.push('\\'),
                '\'' => out.push('\''),
                '"' => out.push('"'),
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'x' => {
                    let v = self.hex_escape(2, esc_start, 'x')?;
                    out.push(char::from_u32(v).ok_or_else(|| bad_scalar(v))?);
                }
                'u' | 'U' => {
                    let n = if e == 'u' { 4 } else { 8 };
                    let v = self.hex_escape(n, esc_start, e)?;
                    if (0xD800..0xDC00).contains(&v) && self.src[self.pos..].starts_with("\\u") {
                        // Try to combine a UTF-16 surrogate pair.
                        let save = self.pos;
                        self.pos += 2;
                        let low = self.hex_escape(4, save, 'u')?;
                        if (0xDC00..0xE000).contains(&low) {
                            let code = 0x10000 + ((v - 0xD800) << 10) + (low - 0xDC00);
                            out.push(char::from_u32(code).ok_or_else(|| bad_scalar(code))?);
                            continue;
                        }
                        return Err(bad_scalar(v));
                    }
                    out.push(char::from_u32(v).ok_or_else(|| bad_scalar(v))?);
                }
                other => {
                    return Err(PyLiteralError::InvalidEscape {
                        column: esc_start + 1,
                        expected: r#"one of \\ \' \" \n \t \r \xNN \uNNNN \UNNNNNNNN"#.into(),
                        found: format!("\\{other}"),
                    });
                }
            }
        }
    }
}

/// How deeply dicts, lists and tuples (parenthesised values included) may nest: CPython's own limit of
/// nested brackets. A trace line needs three levels.
pub const MAX_DEPTH: usize = 200;

/// Recursive-descent parser over the token stream, with one token of lookahead.
struct Parser<'a> {
    lexer: Lexer<'a>,
    tok: Tok,
    at: usize,
    /// Containers open around the current token.
    depth: usize,
}

impl<'a> Parser<'a> {
    fn new(src: &'a str) -> Result<Self, PyLiteralError> {
        let mut lexer = Lexer::new(src);
        let (tok, at) = lexer.next_token()?;
        Ok(Self {
            lexer,
            tok,
            at,
            depth: 0,
        })
    }

    /// Consumes the current token and returns it with its offset.
    fn bump(&mut self) -> Result<(Tok, usize), PyLiteralError> {
        let (next, at) = self.lexer.next_token()?;
        let tok = std::mem::replace(&mut self.tok, next);
        let old_at = std::mem::replace(&mut self.at, at);
        Ok((tok, old_at))
    }

    fn unexpected(&self, expected: &str) -> PyLiteralError {
        PyLiteralError::Unexpected {
            column: self.at + 1,
            expected: expected.to_owned(),
            found: self.tok.describe(),
        }
    }

    fn expect(&mut self, tok: Tok, expected: &str) -> Result<(), PyLiteralError> {
        if self.tok == tok {
            self.bump()?;
            Ok(())
        } else {
            Err(self.unexpected(expected))
        }
    }

    /// Parses one value; a container counts one level of [`MAX_DEPTH`] while its items are parsed.
    fn value(&mut self) -> Result<PyValue, PyLiteralError> {
        if !matches!(self.tok, Tok::LBrace | Tok::LBracket | Tok::LParen) {
            return self.value_at_depth();
        }
        if self.depth == MAX_DEPTH {
            return Err(PyLiteralError::TooDeep {
                column: self.at + 1,
                limit: MAX_DEPTH,
            });
        }
        self.depth += 1;
        let value = self.value_at_depth();
        self.depth -= 1;
        value
    }

    fn value_at_depth(&mut self) -> Result<PyValue, PyLiteralError> {
        match &self.tok {
            Tok::LBrace => self.dict(),
            Tok::LBracket => {
                self.bump()?;
                let items = self.items(&Tok::RBracket, "']'")?;
                Ok(PyValue::List(items.0))
            }
            Tok::LParen => {
                self.bump()?;
                let (mut items, trailing_comma) = self.items(&Tok::RParen, "')'")?;
                if items.len() == 1 && !trailing_comma {
                    // `(x)` is just a parenthesised value, not a tuple.
                    return Ok(items.remove(0));
                }
                Ok(PyValue::Tuple(items))
            }
            Tok::Minus | Tok::Plus => {
                let (sign_tok, sign_at) = self.bump()?;
                let negative = sign_tok == Tok::Minus;
                match self.bump()? {
                    (Tok::Int(digits), at) => {
                        let text = if negative {
                            format!("-{digits}")
                        } else {
                            digits
                        };
                        parse_int(&text, sign_at.min(at))
                    }
                    (Tok::Float(x), _) => Ok(PyValue::Float(if negative { -x } else { x })),
                    (other, at) => Err(PyLiteralError::Unexpected {
                        column: at + 1,
                        expected: "a number after the sign".into(),
                        found: other.describe(),
                    }),
                }
            }
            Tok::Int(_) | Tok::Float(_) | Tok::Str(_) | Tok::Ident(_) => {
                let (tok, at) = self.bump()?;
                match tok {
                    Tok::Int(digits) => parse_int(&digits, at),
                    Tok::Float(x) => Ok(PyValue::Float(x)),
                    Tok::Str(s) => Ok(PyValue::Str(s)),
                    Tok::Ident(name) => match name.as_str() {
                        "True" => Ok(PyValue::Bool(true)),
                        "False" => Ok(PyValue::Bool(false)),
                        "None" => Ok(PyValue::None),
                        _ => Err(PyLiteralError::Unexpected {
                            column: at + 1,
                            expected:
                                "a literal (True, False, None, number, string, dict, list or tuple)"
                                    .into(),
                            found: format!("name '{name}'"),
                        }),
                    },
                    _ => Err(PyLiteralError::Unexpected {
                        column: at + 1,
                        expected: "a value".into(),
                        found: tok.describe(),
                    }),
                }
            }
            _ => Err(self.unexpected("a value")),
        }
    }

    /// Parses comma-separated values up to `close` (already past the opener).
    /// Returns the items and whether a trailing comma was present.
    fn items(
        &mut self,
        close: &Tok,
        close_desc: &str,
    ) -> Result<(Vec<PyValue>, bool), PyLiteralError> {
        let mut items = Vec::new();
        let mut trailing_comma = false;
        while &self.tok != close {
            items.push(self.value()?);
            trailing_comma = false;
            if self.tok == Tok::Comma {
                self.bump()?;
                trailing_comma = true;
            } else if &self.tok != close {
                return Err(self.unexpected(&format!("',' or {close_desc}")));
            }
        }
        self.bump()?;
        Ok((items, trailing_comma))
    }

    fn dict(&mut self) -> Result<PyValue, PyLiteralError> {
        self.expect(Tok::LBrace, "'{'")?;
        let mut pairs: Vec<(PyValue, PyValue)> = Vec::new();
        // Where each key is in `pairs`, so a repeated key is found without comparing it with every other.
        let mut index: HashMap<Key, usize> = HashMap::new();
        while self.tok != Tok::RBrace {
            let key_at = self.at;
            let key = self.value()?;
            if !is_hashable(&key) {
                return Err(PyLiteralError::Unexpected {
                    column: key_at + 1,
                    expected: "a hashable dict key (not a list or dict)".into(),
                    found: key.type_name().to_owned(),
                });
            }
            self.expect(Tok::Colon, "':' after dict key")?;
            let value = self.value()?;
            match index.entry(Key::of(&key)) {
                Entry::Occupied(at) => pairs[*at.get()].1 = value,
                Entry::Vacant(slot) => {
                    slot.insert(pairs.len());
                    pairs.push((key, value));
                }
            }
            if self.tok == Tok::Comma {
                self.bump()?;
            } else if self.tok != Tok::RBrace {
                return Err(self.unexpected("',' or '}'"));
            }
        }
        self.bump()?;
        Ok(PyValue::Dict(pairs))
    }
}

/// A hashable dict key, equal exactly when the [`PyValue`]s are (`==`): floats by their bits with `-0.0` taken
/// as `0.0` (a literal is never NaN, so float equality is an equivalence here).
#[derive(Debug, PartialEq, Eq, Hash)]
enum Key {
    None,
    Bool(bool),
    Int(i64),
    Float(u64),
    Str(String),
    Tuple(Vec<Key>),
}

impl Key {
    /// The key of a value [`is_hashable`] accepted.
    fn of(v: &PyValue) -> Key {
        match v {
            PyValue::None => Key::None,
            PyValue::Bool(b) => Key::Bool(*b),
            PyValue::Int(i) => Key::Int(*i),
            PyValue::Float(x) => Key::Float(if *x == 0.0 { 0 } else { x.to_bits() }),
            PyValue::Str(s) => Key::Str(s.clone()),
            PyValue::Tuple(items) => Key::Tuple(items.iter().map(Key::of).collect()),
            PyValue::List(_) | PyValue::Dict(_) => unreachable!("not a hashable key: {v}"),
        }
    }
}

/// Whether Python would accept `v` as a dict key.
fn is_hashable(v: &PyValue) -> bool {
    match v {
        PyValue::List(_) | PyValue::Dict(_) => false,
        PyValue::Tuple(items) => items.iter().all(is_hashable),
        _ => true,
    }
}

fn parse_int(text: &str, at: usize) -> Result<PyValue, PyLiteralError> {
    text.parse::<i64>()
        .map(PyValue::Int)
        .map_err(|e| PyLiteralError::InvalidNumber {
            column: at + 1,
            text: text.to_owned(),
            reason: format!("{e} (integers must fit in 64 bits)"),
        })
}

/// Parses one complete Python literal; anything after it except whitespace is an error.
///
/// This is the safe alternative to Python's `ast.literal_eval` for the trace
/// format: it never evaluates anything.
///
/// # Errors
///
/// A [`PyLiteralError`] with the 1-based byte column for malformed input,
/// unsupported syntax (names other than `True`/`False`/`None`, expressions),
/// integers outside `i64`, or trailing text.
pub fn parse_py_literal(src: &str) -> Result<PyValue, PyLiteralError> {
    let mut p = Parser::new(src)?;
    let v = p.value()?;
    if p.tok != Tok::Eof {
        return Err(p.unexpected("end of input"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> PyValue {
        PyValue::Str(x.to_owned())
    }

    #[test]
    fn parses_trace_line() {
        let line = "{'Time': '2024-06-19 15:46:09', 'Action': 'start', 'Instance': {'service_name': 'training-8bfjn3', 'type': 'training', 'gpu_num': 2, 'sm_requests': 0.55, 'sm_limits': 0.81, 'memory': [30, 30]}}";
        let v = parse_py_literal(line).unwrap();
        assert_eq!(v.get("Action"), Some(&s("start")));
        let inst = v.get("Instance").unwrap();
        assert_eq!(inst.get("gpu_num").and_then(PyValue::as_i64), Some(2));
        assert_eq!(inst.get("sm_limits").and_then(PyValue::as_f64), Some(0.81));
        assert_eq!(
            inst.get("memory"),
            Some(&PyValue::List(vec![PyValue::Int(30), PyValue::Int(30)]))
        );
        // Display reproduces Python's repr exactly.
        assert_eq!(v.to_string(), line);
    }

    #[test]
    fn nested_containers_and_order() {
        let v = parse_py_literal(
            "{'b': [1, [2, (3, 4)], {}], 'a': {'x': (), 'y': (5,)}, 1: None, (1, 'k'): True,}",
        )
        .unwrap();
        let PyValue::Dict(pairs) = &v else {
            panic!("not a dict")
        };
        let keys: Vec<String> = pairs.iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(keys, ["'b'", "'a'", "1", "(1, 'k')"]);
        assert_eq!(
            v.get("b"),
            Some(&PyValue::List(vec![
                PyValue::Int(1),
                PyValue::List(vec![
                    PyValue::Int(2),
                    PyValue::Tuple(vec![PyValue::Int(3), PyValue::Int(4)])
                ]),
                PyValue::Dict(vec![]),
            ]))
        );
        assert_eq!(
            v.get("a").unwrap().get("y"),
            Some(&PyValue::Tuple(vec![PyValue::Int(5)]))
        );
        assert_eq!(v.get("a").unwrap().get("x"), Some(&PyValue::Tuple(vec![])));
        // A parenthesised single value is not a tuple.
        assert_eq!(parse_py_literal("(7)").unwrap(), PyValue::Int(7));
        // Repeated key: first position, last value (Python semantics).
        let d = parse_py_literal("{'k': 1, 'z': 2, 'k': 3}").unwrap();
        assert_eq!(d.to_string(), "{'k': 3, 'z': 2}");
    }

    #[test]
    fn escapes() {
        let v =
            parse_py_literal(r#"'a\\b\'c\"d\ne\tf\rg\x41\u00e9\U0001F600\ud83d\ude00'"#).unwrap();
        assert_eq!(v, s("a\\b'c\"d\ne\tf\rgAé😀😀"));
        let v = parse_py_literal(r#""it's \"ok\"""#).unwrap();
        assert_eq!(v, s("it's \"ok\""));
        // Non-ASCII text passes through unchanged.
        assert_eq!(parse_py_literal("'naïve'").unwrap(), s("naïve"));
        // repr picks double quotes when only a single quote is inside.
        assert_eq!(s("it's").to_string(), "\"it's\"");
        assert_eq!(s("a'b\"c\n").to_string(), r#"'a\'b"c\n'"#);
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_py_literal("-17").unwrap(), PyValue::Int(-17));
        assert_eq!(parse_py_literal("+3").unwrap(), PyValue::Int(3));
        assert_eq!(parse_py_literal("0").unwrap(), PyValue::Int(0));
        assert_eq!(
            parse_py_literal("-9223372036854775808").unwrap(),
            PyValue::Int(i64::MIN)
        );
        assert_eq!(parse_py_literal("-0.2").unwrap(), PyValue::Float(-0.2));
        assert_eq!(
            parse_py_literal("0.5900000000000001").unwrap(),
            PyValue::Float(0.5900000000000001)
        );
        assert_eq!(parse_py_literal("1e-07").unwrap(), PyValue::Float(1e-7));
        assert_eq!(parse_py_literal("2.5E+3").unwrap(), PyValue::Float(2500.0));
        assert_eq!(parse_py_literal(".5").unwrap(), PyValue::Float(0.5));
        assert_eq!(parse_py_literal("5.").unwrap(), PyValue::Float(5.0));
        assert_eq!(
            parse_py_literal("[-1, - 2.5]").unwrap(),
            PyValue::List(vec![PyValue::Int(-1), PyValue::Float(-2.5)])
        );
    }

    #[test]
    fn keywords() {
        assert_eq!(
            parse_py_literal("[True, False, None]").unwrap(),
            PyValue::List(vec![
                PyValue::Bool(true),
                PyValue::Bool(false),
                PyValue::None
            ])
        );
    }

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (1.0, "1.0"),
            (0.5900000000000001, "0.5900000000000001"),
            (0.42000000000000004, "0.42000000000000004"),
            (0.8999999999999999, "0.8999999999999999"),
            (0.55, "0.55"),
            (-0.2, "-0.2"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (30.0, "30.0"),
            (123456.789, "123456.789"),
            (1e-7, "1e-07"),
            (0.0001, "0.0001"),
            (0.00012, "0.00012"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1e15, "1000000000000000.0"),
            (1.2345e-300, "1.2345e-300"),
            (800_633_210_442_291.0 + 0.25, "800633210442291.2"),
            (16_884_202_572_638.0 + 0.0625, "16884202572638.062"),
            (f64::INFINITY, "inf"),
        ];
        for (x, want) in cases {
            assert_eq!(python_float_repr(x), want, "{x:?}");
            if x.is_finite() {
                assert_eq!(parse_py_literal(want).unwrap(), PyValue::Float(x));
            }
        }
    }

    fn err(src: &str) -> PyLiteralError {
        parse_py_literal(src).unwrap_err()
    }

    /// A repeated key keeps its first position and takes the last value, as in Python. Keys are equal as
    /// values are: `0.0` and `-0.0` are one key, tuples compare by their items, and `1` and `1.0` are two
    /// keys (Python would merge those; trace files never mix them).
    #[test]
    fn repeated_keys_keep_their_position_and_take_the_last_value() {
        let v = parse_py_literal(
            "{'a': 1, 0.0: 2, (1, 'x'): 3, 'b': 4, 'a': 5, -0.0: 6, (1, 'x'): 7, 1: 8, 1.0: 9, (1, 'y'): 10}",
        )
        .unwrap();
        assert_eq!(
            v.to_string(),
            "{'a': 5, 0.0: 6, (1, 'x'): 7, 'b': 4, 1: 8, 1.0: 9, (1, 'y'): 10}"
        );
    }

    /// A line nested deeper than the limit is an error at the bracket that goes one level too deep, not a
    /// stack overflow (which aborted the process: a 200,000-deep line crashed the instance-trace reader).
    #[test]
    fn nesting_deeper_than_the_limit_is_refused() {
        for (open, close) in [("[", "]"), ("(", ")"), ("{1: ", "}")] {
            let deep = open.repeat(1_000_000);
            match err(&deep) {
                PyLiteralError::TooDeep { column, limit } => {
                    assert_eq!(limit, MAX_DEPTH);
                    assert_eq!(column, MAX_DEPTH * open.len() + 1, "{open}");
                }
                other => panic!("{open}: {other:?}"),
            }
            // Exactly at the limit still parses.
            let ok = format!("{}0{}", open.repeat(MAX_DEPTH), close.repeat(MAX_DEPTH));
            assert!(parse_py_literal(&ok).is_ok(), "{open}");
            let over = format!(
                "{}0{}",
                open.repeat(MAX_DEPTH + 1),
                close.repeat(MAX_DEPTH + 1)
            );
            assert_eq!(
                err(&over).to_string(),
                format!(
                    "column {}: more than {MAX_DEPTH} nested brackets",
                    MAX_DEPTH * open.len() + 1
                )
            );
        }
    }

    #[test]
    fn errors_carry_positions() {
        let e = err("{'a': 1 'b': 2}");
        assert_eq!(
            e,
            PyLiteralError::Unexpected {
                column: 9,
                expected: "',' or '}'".into(),
                found: "string 'b'".into()
            }
        );
        assert_eq!(
            e.to_string(),
            "column 9: expected ',' or '}', found string 'b'"
        );

        assert!(matches!(
            err("{'a' 1}"),
            PyLiteralError::Unexpected { column: 6, .. }
        ));
        assert!(
            matches!(err("[1, 2"), PyLiteralError::Unexpected { column: 6, ref found, .. } if found == "end of input")
        );
        assert!(matches!(
            err("'abc"),
            PyLiteralError::UnterminatedString {
                column: 1,
                quote: '\''
            }
        ));
        assert!(matches!(
            err("  \"ab'"),
            PyLiteralError::UnterminatedString {
                column: 3,
                quote: '"'
            }
        ));
        assert!(
            matches!(err(r"'a\qb'"), PyLiteralError::InvalidEscape { column: 3, ref found, .. } if found == r"\q")
        );
        assert!(matches!(
            err(r"'\x4'"),
            PyLiteralError::InvalidEscape { column: 2, .. }
        ));
        assert!(matches!(
            err(r"'\ud800'"),
            PyLiteralError::InvalidEscape { column: 2, .. }
        ));
        assert!(matches!(
            err("[1.2.3]"),
            PyLiteralError::InvalidNumber { column: 2, .. }
        ));
        assert!(matches!(
            err("1e"),
            PyLiteralError::InvalidNumber { column: 1, .. }
        ));
        assert!(matches!(
            err("[007]"),
            PyLiteralError::InvalidNumber { column: 2, .. }
        ));
        assert!(matches!(
            err("99999999999999999999"),
            PyLiteralError::InvalidNumber { column: 1, .. }
        ));
        assert!(matches!(
            err("[1, -x]"),
            PyLiteralError::Unexpected { column: 6, .. }
        ));
        assert!(
            matches!(err("{'a': nan}"), PyLiteralError::Unexpected { column: 7, ref found, .. } if found == "name 'nan'")
        );
        assert!(matches!(
            err("{[1]: 2}"),
            PyLiteralError::Unexpected { column: 2, .. }
        ));
        assert!(
            matches!(err("1 2"), PyLiteralError::Unexpected { column: 3, ref expected, .. } if expected == "end of input")
        );
        assert!(matches!(
            err("[1] @"),
            PyLiteralError::Unexpected { column: 5, .. }
        ));
        assert!(matches!(
            err(""),
            PyLiteralError::Unexpected { column: 1, .. }
        ));
        assert!(matches!(
            err("{,}"),
            PyLiteralError::Unexpected { column: 2, .. }
        ));
    }
}
