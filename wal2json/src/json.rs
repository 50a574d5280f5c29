//! A small pull scanner for the JSON wal2json writes: it walks one object in place and hands
//! out byte ranges of keys and values, so that values go straight from the received payload
//! into Arrow builders — no tree, no `String` per value. Only strings with escapes are copied
//! (into a caller's scratch buffer) when their bytes are needed.
//!
//! The Parquet sink reads its checkpoint files with it too.
//!
//! Every read is bounds-checked: malformed or truncated input is a [`JsonError`] with the
//! offset where it went wrong, never a panic.

use std::fmt;
use std::ops::Range;

/// Malformed JSON: what was expected, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonError {
    /// Byte offset in the message.
    pub offset: usize,
    /// What went wrong.
    pub what: &'static str,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.what, self.offset)
    }
}

impl std::error::Error for JsonError {}

/// The scanner's result type.
pub type Result<T> = std::result::Result<T, JsonError>;

/// A string in the message: the bytes between its quotes, and whether they hold escapes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Str {
    /// The bytes between the quotes.
    pub raw: Range<usize>,
    /// Whether they hold escapes (then [`str_bytes`] unescapes them).
    pub escaped: bool,
}

/// A scalar value in the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scalar {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number's text.
    Number(Range<usize>),
    /// A string.
    Str(Str),
}

/// What the next value is, before reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// `{`.
    Object,
    /// `[`.
    Array,
    /// Anything else.
    Scalar,
}

/// Walks one JSON text.
#[derive(Debug)]
pub struct Scanner<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Scanner<'a> {
    /// A scanner at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Scanner<'a> {
        Scanner { buf, pos: 0 }
    }

    /// The text being scanned.
    pub fn buf(&self) -> &'a [u8] {
        self.buf
    }

    fn err<T>(&self, what: &'static str) -> Result<T> {
        Err(JsonError { offset: self.pos, what })
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.buf.get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.buf.get(self.pos).copied()
    }

    /// The next non-blank byte, not consumed.
    pub fn peek_byte(&mut self) -> Option<u8> {
        self.peek()
    }

    fn expect(&mut self, b: u8, what: &'static str) -> Result<()> {
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            self.err(what)
        }
    }

    /// Checks that only whitespace follows.
    pub fn end(&mut self) -> Result<()> {
        match self.peek() {
            None => Ok(()),
            Some(_) => self.err("text after the JSON value"),
        }
    }

    /// What the next value is.
    pub fn next_is(&mut self) -> Result<Next> {
        match self.peek() {
            Some(b'{') => Ok(Next::Object),
            Some(b'[') => Ok(Next::Array),
            Some(_) => Ok(Next::Scalar),
            None => self.err("unexpected end of input"),
        }
    }

    /// Enters an object: call [`next_key`](Self::next_key) until it returns `None`.
    pub fn begin_object(&mut self) -> Result<()> {
        self.expect(b'{', "expected an object")
    }

    /// The next key of the current object (after its value was read), or `None` at its end.
    /// `first` says whether no key was read yet.
    pub fn next_key(&mut self, first: bool) -> Result<Option<Str>> {
        match self.peek() {
            Some(b'}') => {
                self.pos += 1;
                return Ok(None);
            }
            Some(b',') if !first => self.pos += 1,
            Some(_) if first => {}
            Some(_) => return self.err("expected ',' or '}' in an object"),
            None => return self.err("unexpected end of input in an object"),
        }
        let key = self.string()?;
        self.expect(b':', "expected ':' after an object key")?;
        Ok(Some(key))
    }

    /// Enters an array: call [`next_item`](Self::next_item) before each item.
    pub fn begin_array(&mut self) -> Result<()> {
        self.expect(b'[', "expected an array")
    }

    /// Whether another item follows in the current array (consuming the separator), `first`
    /// saying whether none was read yet.
    pub fn next_item(&mut self, first: bool) -> Result<bool> {
        match self.peek() {
            Some(b']') => {
                self.pos += 1;
                Ok(false)
            }
            Some(b',') if !first => {
                self.pos += 1;
                Ok(true)
            }
            Some(_) if first => Ok(true),
            Some(_) => self.err("expected ',' or ']' in an array"),
            None => self.err("unexpected end of input in an array"),
        }
    }

    /// Reads a string.
    pub fn string(&mut self) -> Result<Str> {
        self.expect(b'"', "expected a string")?;
        let start = self.pos;
        let mut escaped = false;
        loop {
            let Some(&b) = self.buf.get(self.pos) else {
                return self.err("unterminated string");
            };
            match b {
                b'"' => {
                    self.pos += 1;
                    return Ok(Str { raw: start..self.pos - 1, escaped });
                }
                b'\\' => {
                    escaped = true;
                    // The escaped character is checked when the string is decoded; here it
                    // only must not end the string.
                    self.pos += 2;
                }
                0..0x20 => return self.err("control character in a string"),
                _ => self.pos += 1,
            }
        }
    }

    /// Reads a scalar value (string, number, `true`, `false`, `null`).
    pub fn scalar(&mut self) -> Result<Scalar> {
        match self.peek() {
            Some(b'"') => Ok(Scalar::Str(self.string()?)),
            Some(b'n') => self.literal(b"null", Scalar::Null),
            Some(b't') => self.literal(b"true", Scalar::Bool(true)),
            Some(b'f') => self.literal(b"false", Scalar::Bool(false)),
            Some(b'-' | b'0'..=b'9') => Ok(Scalar::Number(self.number()?)),
            Some(_) => self.err("expected a value"),
            None => self.err("unexpected end of input"),
        }
    }

    fn literal(&mut self, word: &'static [u8], value: Scalar) -> Result<Scalar> {
        if self.buf.get(self.pos..self.pos + word.len()) == Some(word) {
            self.pos += word.len();
            Ok(value)
        } else {
            self.err("invalid literal")
        }
    }

    /// A number, checked against JSON's grammar.
    fn number(&mut self) -> Result<Range<usize>> {
        let start = self.pos;
        let digits = |s: &mut Self| {
            let from = s.pos;
            while s.buf.get(s.pos).is_some_and(u8::is_ascii_digit) {
                s.pos += 1;
            }
            s.pos > from
        };
        if self.buf.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        if !digits(self) {
            return self.err("malformed number");
        }
        if self.buf.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if !digits(self) {
                return self.err("malformed number");
            }
        }
        if let Some(b'e' | b'E') = self.buf.get(self.pos) {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.buf.get(self.pos) {
                self.pos += 1;
            }
            if !digits(self) {
                return self.err("malformed number");
            }
        }
        Ok(start..self.pos)
    }

    /// A number as `u32` (type OIDs, transaction IDs, origin IDs).
    pub fn u32(&mut self) -> Result<u32> {
        let at = self.pos;
        let range = self.number()?;
        std::str::from_utf8(&self.buf[range])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(JsonError { offset: at, what: "expected an unsigned 32-bit number" })
    }

    /// A boolean.
    pub fn bool(&mut self) -> Result<bool> {
        match self.scalar()? {
            Scalar::Bool(b) => Ok(b),
            _ => self.err("expected true or false"),
        }
    }

    /// Skips any value.
    pub fn skip(&mut self) -> Result<()> {
        match self.next_is()? {
            Next::Scalar => self.scalar().map(drop),
            Next::Object => {
                self.begin_object()?;
                let mut first = true;
                while self.next_key(first)?.is_some() {
                    first = false;
                    self.skip()?;
                }
                Ok(())
            }
            Next::Array => {
                self.begin_array()?;
                let mut first = true;
                while self.next_item(first)? {
                    first = false;
                    self.skip()?;
                }
                Ok(())
            }
        }
    }
}

/// The bytes of a string: borrowed from the message when it has no escapes, otherwise
/// unescaped into `scratch`.
pub fn str_bytes<'s>(buf: &'s [u8], s: &Str, scratch: &'s mut Vec<u8>) -> Result<&'s [u8]> {
    let raw = buf.get(s.raw.clone()).ok_or(JsonError { offset: s.raw.start, what: "bad span" })?;
    if !s.escaped {
        return Ok(raw);
    }
    scratch.clear();
    unescape(raw, s.raw.start, scratch)?;
    Ok(scratch)
}

/// Whether string `s` equals `text`, without copying when it has no escapes.
pub fn str_eq(buf: &[u8], s: &Str, text: &str, scratch: &mut Vec<u8>) -> bool {
    if !s.escaped {
        return buf.get(s.raw.clone()) == Some(text.as_bytes());
    }
    str_bytes(buf, s, scratch).is_ok_and(|b| b == text.as_bytes())
}

/// A string as an owned `String` (invalid UTF-8 replaced).
pub fn str_owned(buf: &[u8], s: &Str, scratch: &mut Vec<u8>) -> Result<String> {
    Ok(String::from_utf8_lossy(str_bytes(buf, s, scratch)?).into_owned())
}

fn unescape(raw: &[u8], base: usize, out: &mut Vec<u8>) -> Result<()> {
    let bad = |at: usize, what| Err(JsonError { offset: base + at, what });
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        let Some(&e) = raw.get(i + 1) else { return bad(i, "dangling escape") };
        i += 2;
        let c = match e {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let Some(hi) = hex4(raw, i) else { return bad(i, "bad \\u escape") };
                i += 4;
                let code = if (0xD800..0xDC00).contains(&hi) {
                    // A surrogate pair: the low half must follow.
                    let lo =
                        (raw.get(i..i + 2) == Some(b"\\u")).then(|| hex4(raw, i + 2)).flatten();
                    match lo {
                        Some(lo) if (0xDC00..0xE000).contains(&lo) => {
                            i += 6;
                            0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                        }
                        _ => return bad(i, "unpaired surrogate in \\u escape"),
                    }
                } else {
                    hi
                };
                let Some(ch) = char::from_u32(code) else {
                    return bad(i, "invalid \\u escape");
                };
                let mut utf8 = [0; 4];
                out.extend_from_slice(ch.encode_utf8(&mut utf8).as_bytes());
                continue;
            }
            _ => return bad(i - 1, "unknown escape"),
        };
        out.push(c);
    }
    Ok(())
}

fn hex4(raw: &[u8], at: usize) -> Option<u32> {
    let digits = raw.get(at..at + 4)?;
    let text = std::str::from_utf8(digits).ok()?;
    u32::from_str_radix(text, 16).ok().filter(|_| digits.iter().all(u8::is_ascii_hexdigit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(text: &str) -> Result<Vec<String>> {
        let mut s = Scanner::new(text.as_bytes());
        let mut out = Vec::new();
        let mut scratch = Vec::new();
        s.begin_object()?;
        let mut first = true;
        while let Some(k) = s.next_key(first)? {
            first = false;
            out.push(str_owned(text.as_bytes(), &k, &mut scratch)?);
            match s.next_is()? {
                Next::Scalar => match s.scalar()? {
                    Scalar::Str(v) => out.push(str_owned(text.as_bytes(), &v, &mut scratch)?),
                    Scalar::Number(r) => out.push(text[r].to_owned()),
                    other => out.push(format!("{other:?}")),
                },
                _ => {
                    s.skip()?;
                    out.push("<skipped>".into());
                }
            }
        }
        s.end()?;
        Ok(out)
    }

    #[test]
    fn reads_keys_scalars_and_escapes() {
        let got = walk(
            r#"{"a":"x\"y\\z\n\u00e9\ud83d\ude00","n":-12.5e+3,"t":true,"f":false,"z":null,
               "o":{"k":[1,{"x":[]}]},"e":""}"#,
        )
        .unwrap();
        assert_eq!(
            got,
            [
                "a",
                "x\"y\\z\né😀",
                "n",
                "-12.5e+3",
                "t",
                "Bool(true)",
                "f",
                "Bool(false)",
                "z",
                "Null",
                "o",
                "<skipped>",
                "e",
                ""
            ]
        );
        assert_eq!(walk("{}").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn malformed_input_is_an_error_with_its_offset() {
        for (text, offset) in [
            (r#"{"a":1"#, 6),
            (r#"{"a" 1}"#, 5),
            (r#"{"a":01x}"#, 7),
            (r#"{"a":-}"#, 6),
            (r#"{"a":"\q"}"#, 7),
            (r#"{"a":"\ud800"}"#, 12),
            (r#"{"a":tru}"#, 5),
            (r#"{"a":1} x"#, 8),
            (r#"{"a":[1 2]}"#, 8),
            ("{\"a\":\"\u{1}\"}", 6),
        ] {
            let e = walk(text).unwrap_err();
            assert_eq!(e.offset, offset, "{text}: {e}");
        }
    }

    #[test]
    fn no_prefix_or_corruption_panics() {
        let text =
            br#"{"action":"I","columns":[{"name":"a\"b","value":"\u00e9x"},{"v":[1,2.5e3,null]}]}"#;
        for cut in 0..text.len() {
            let _ = walk(&String::from_utf8_lossy(&text[..cut]));
        }
        for i in 0..text.len() {
            for b in [b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b'u', 0] {
                let mut t = text.to_vec();
                t[i] = b;
                let _ = walk(&String::from_utf8_lossy(&t));
            }
        }
    }
}
