//! PostgreSQL's text output, parsed back into the values the wal2arrow plugin reads from
//! binary Datums.
//!
//! wal2json hands over every column value as its type's output-function text. The replication
//! session pins the settings that shape that text — `DateStyle=ISO`, `TimeZone=UTC`,
//! `IntervalStyle=iso_8601`, `bytea_output=hex`, `lc_monetary=C`, `extra_float_digits=3` — so
//! each parser here accepts exactly the forms PostgreSQL prints under them, and returns `None`
//! (or `false`) for anything else rather than guess. The results equal what the plugin's
//! conversions in [`wal2arrow_schema::types`] and [`wal2arrow_schema::numeric`] make of the
//! stored value, infinities and saturation included.
//!
//! The forms, as PostgreSQL 15 prints them (checked against a server):
//!
//! | type | text |
//! |---|---|
//! | `date` | `2024-01-31`, `0044-03-15 BC`, `10000-01-01`, `infinity`, `-infinity` |
//! | `time` | `12:34:56`, `12:34:56.5` (trailing zeros dropped), `24:00:00` |
//! | `timetz` | `12:34:56.5+05:30`, `24:00:00-15:59:59`, `12:00:00+00:19:32` |
//! | `timestamp` | `2024-01-31 12:34:56.5`, `0044-03-15 12:00:00 BC` |
//! | `timestamptz` | `2024-01-31 12:34:56.5+00`, `0044-03-15 12:00:00+00 BC` (era after zone) |
//! | `interval` | `P1Y2M3DT4H5M6.789S`, `PT0S`, `P-1Y-2M3DT-4H-5M-6.789S`, `PT-0.5S` |
//! | `money` | `$1,234.56`, `-$1,234.56` |
//! | `numeric` | `-1234.50`, `0.00000000000000000001`, `NaN`, `Infinity` — never an exponent |
//! | `float4`, `float8` | `1.5e+300`, `1e-05`, `-0`, `NaN`, `Infinity`, `-Infinity` |
//! | `bytea` | `\x0102` (wal2json strips the `\x` from plain `bytea` columns) |
//! | `uuid` | `a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11` |
//! | `bool` | `t`, `f` |
//! | arrays | `{1,2}`, `[0:2]={1,2,3}`, `{{1,2},{3,4}}`, `{"a b",NULL,"NULL"}`, `{}` |
//!
//! Integers and floats need no parser of their own: `i16`/`i32`/`i64`/`u32::from_str` read
//! PostgreSQL's integer text, and `f64::from_str`/`f32::from_str` read its float text —
//! shortest round-trip digits with an `e+XX`/`e-XX` exponent, and `NaN`, `Infinity`,
//! `-Infinity`, which Rust's float parser accepts as they are (it ignores case) — to the very
//! bits the server stores (`NaN` to the canonical quiet NaN, as PostgreSQL's own `NaN` is).
//! A `float4` must be parsed with `f32::from_str` directly: through `f64` it rounds twice, and
//! `7.038531e-26` (and its negation) lands on the neighbouring `f32`.
//!
//! Dates and timestamps are proleptic Gregorian, astronomical year numbering underneath (1 BC
//! is year 0, 2 BC is year −1). PostgreSQL's range — 4714-11-24 BC (Julian day 0) to
//! 5874897-12-31 for dates, to 294276-12-31 23:59:59.999999 for timestamps — is enforced: text
//! outside it cannot have come from the server.

use wal2arrow_schema::types::{PG_EPOCH_DAYS, PG_EPOCH_MICROS, days_from_civil};

/// Microseconds in a day.
const DAY_US: i64 = 86_400_000_000;
/// Microseconds in an hour.
const HOUR_US: i64 = 3_600_000_000;
/// Microseconds in a minute.
const MINUTE_US: i64 = 60_000_000;
/// Microseconds in a second.
const SECOND_US: i64 = 1_000_000;

/// PostgreSQL's first date, 4714-11-24 BC (Julian day 0), in its days since 2000-01-01.
const PG_DATE_MIN: i64 = -2_451_545;
/// PostgreSQL's last date, 5874897-12-31, in its days since 2000-01-01.
const PG_DATE_MAX: i64 = 2_145_031_948;
/// PostgreSQL's first timestamp, 4714-11-24 00:00:00 BC, in its µs since 2000-01-01
/// (`MIN_TIMESTAMP`).
const PG_TIMESTAMP_MIN: i128 = -211_813_488_000_000_000;
/// The first timestamp past PostgreSQL's range, 294277-01-01 00:00:00, in its µs since
/// 2000-01-01 (`END_TIMESTAMP`).
const PG_TIMESTAMP_END: i128 = 9_223_371_331_200_000_000;
/// The largest time-zone displacement PostgreSQL accepts, 15:59:59, in seconds.
const MAX_TZ_SECONDS: i32 = 15 * 3600 + 59 * 60 + 59;
/// The most dimensions a PostgreSQL array can have (`MAXDIM`).
const MAX_DIMS: usize = 6;

/// A read position in a byte string: the scalar parsers' tokenizer. It never allocates and
/// never indexes out of bounds.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(s: &'a str) -> Self {
        Cursor { bytes: s.as_bytes(), pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    /// Consumes `b` if it is next.
    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        if hit {
            self.pos += 1;
        }
        hit
    }

    /// Consumes `s` if it comes next.
    fn eat_str(&mut self, s: &[u8]) -> bool {
        let hit = self.bytes.get(self.pos..).is_some_and(|rest| rest.starts_with(s));
        if hit {
            self.pos += s.len();
        }
        hit
    }

    /// Exactly `n` decimal digits (`n` ≤ 9), as a number.
    fn fixed(&mut self, n: usize) -> Option<u32> {
        let digits = self.bytes.get(self.pos..self.pos.checked_add(n)?)?;
        let mut v = 0u32;
        for &d in digits {
            if !d.is_ascii_digit() {
                return None;
            }
            v = v.checked_mul(10)?.checked_add(u32::from(d - b'0'))?;
        }
        self.pos += n;
        Some(v)
    }

    /// One or more decimal digits: their value (`None` past `u64`) and how many there were.
    fn digits(&mut self) -> Option<(u64, usize)> {
        let start = self.pos;
        let mut v = 0u64;
        while let Some(d) = self.peek().filter(u8::is_ascii_digit) {
            v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            self.pos += 1;
        }
        let n = self.pos - start;
        (n > 0).then_some((v, n))
    }

    /// An optional `.` and 1 to 6 fractional digits of a second, as microseconds.
    fn fraction_us(&mut self) -> Option<i64> {
        if !self.eat(b'.') {
            return Some(0);
        }
        let (v, n) = self.digits()?;
        let scale = 10u64.checked_pow(6u32.checked_sub(u32::try_from(n).ok()?)?)?;
        i64::try_from(v.checked_mul(scale)?).ok()
    }

    /// `YYYY-MM-DD` with a year of four or more digits (no zero padding beyond four): the
    /// year as printed (before any ` BC`), month and day, not yet checked against the calendar.
    fn ymd(&mut self) -> Option<(i64, u32, u32)> {
        let first = self.peek()?;
        let (year, n) = self.digits()?;
        // ISO output pads years to four digits and no further; more than 7 digits is past
        // PostgreSQL's last year.
        if !(4..=7).contains(&n) || (n > 4 && first == b'0') {
            return None;
        }
        if !self.eat(b'-') {
            return None;
        }
        let month = self.fixed(2)?;
        if !self.eat(b'-') {
            return None;
        }
        let day = self.fixed(2)?;
        Some((i64::try_from(year).ok()?, month, day))
    }

    /// `HH:MM:SS[.ffffff]` as microseconds since midnight; `24:00:00` only if `allow_24`.
    fn hms(&mut self, allow_24: bool) -> Option<i64> {
        let h = self.fixed(2)?;
        if !self.eat(b':') {
            return None;
        }
        let m = self.fixed(2)?;
        if !self.eat(b':') {
            return None;
        }
        let s = self.fixed(2)?;
        let frac = self.fraction_us()?;
        if m > 59 || s > 59 {
            return None;
        }
        let us =
            i64::from(h) * HOUR_US + i64::from(m) * MINUTE_US + i64::from(s) * SECOND_US + frac;
        (h < 24 || (allow_24 && us == DAY_US)).then_some(us)
    }

    /// A zone offset `±HH[:MM[:SS]]`, in seconds east of UTC.
    fn offset(&mut self) -> Option<i32> {
        let negative = match self.peek()? {
            b'+' => false,
            b'-' => true,
            _ => return None,
        };
        self.pos += 1;
        let h = self.fixed(2)?;
        let (mut m, mut s) = (0, 0);
        if self.eat(b':') {
            m = self.fixed(2)?;
            if self.eat(b':') {
                s = self.fixed(2)?;
            }
        }
        if m > 59 || s > 59 {
            return None;
        }
        let secs = i32::try_from(h * 3600 + m * 60 + s).ok()?;
        if secs > MAX_TZ_SECONDS {
            return None;
        }
        Some(if negative { -secs } else { secs })
    }
}

/// Whether astronomical `year` is a Gregorian leap year.
fn is_leap(year: i64) -> bool {
    year.rem_euclid(4) == 0 && (year.rem_euclid(100) != 0 || year.rem_euclid(400) == 0)
}

/// The number of days in `month` (1–12) of astronomical `year`.
fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a date as printed (year before any ` BC`), `None` if the date
/// does not exist or lies outside PostgreSQL's range.
fn epoch_days(printed_year: i64, bc: bool, month: u32, day: u32) -> Option<i64> {
    if printed_year < 1 || !(1..=12).contains(&month) {
        return None;
    }
    let year = if bc { 1 - printed_year } else { printed_year };
    if day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let pg = days - i64::from(PG_EPOCH_DAYS);
    (PG_DATE_MIN..=PG_DATE_MAX).contains(&pg).then_some(days)
}

/// A `date`'s text as Arrow `Date32`: days since 1970-01-01, `infinity` and `-infinity` as
/// `i32::MAX` and `i32::MIN` — what `date_to_arrow` makes of the stored value.
pub(crate) fn parse_date(s: &str) -> Option<i32> {
    match s {
        "infinity" => return Some(i32::MAX),
        "-infinity" => return Some(i32::MIN),
        _ => {}
    }
    let mut c = Cursor::new(s);
    let (year, month, day) = c.ymd()?;
    let bc = c.eat_str(b" BC");
    if !c.at_end() {
        return None;
    }
    i32::try_from(epoch_days(year, bc, month, day)?).ok()
}

/// A `time`'s text (`HH:MM:SS[.ffffff]`, up to `24:00:00`) as microseconds since midnight.
pub(crate) fn parse_time(s: &str) -> Option<i64> {
    let mut c = Cursor::new(s);
    let us = c.hms(true)?;
    c.at_end().then_some(us)
}

/// A `timetz`'s text (`HH:MM:SS[.ffffff]±HH[:MM[:SS]]`) as (microseconds since midnight,
/// offset in seconds *east* of UTC): `12:00:00+05:30` is `(43_200_000_000, 19_800)`, the
/// plugin's `timetz_offset` of the stored zone.
pub(crate) fn parse_timetz(s: &str) -> Option<(i64, i32)> {
    let mut c = Cursor::new(s);
    let us = c.hms(true)?;
    let offset = c.offset()?;
    c.at_end().then_some((us, offset))
}

/// A `timestamp`'s or `timestamptz`'s text (`YYYY-MM-DD HH:MM:SS[.ffffff][±HH[:MM[:SS]]][ BC]`)
/// as microseconds since 1970-01-01 UTC, the offset (if any) subtracted.
///
/// `infinity` and `-infinity` are `i64::MAX` and `i64::MIN`; timestamps after
/// 294247-01-10 04:00:54.775807 UTC saturate to `i64::MAX`, as `timestamp_to_arrow` does.
pub(crate) fn parse_timestamp(s: &str) -> Option<i64> {
    match s {
        "infinity" => return Some(i64::MAX),
        "-infinity" => return Some(i64::MIN),
        _ => {}
    }
    let mut c = Cursor::new(s);
    let (year, month, day) = c.ymd()?;
    if !c.eat(b' ') {
        return None;
    }
    let time = c.hms(false)?;
    let offset = if matches!(c.peek(), Some(b'+' | b'-')) { c.offset()? } else { 0 };
    // PostgreSQL puts the era after the zone: `0044-03-15 12:00:00+00 BC`.
    let bc = c.eat_str(b" BC");
    if !c.at_end() {
        return None;
    }
    // The calendar check only: the range applies to the UTC instant, below.
    if year < 1 || !(1..=12).contains(&month) {
        return None;
    }
    let astronomical = if bc { 1 - year } else { year };
    if day < 1 || day > days_in_month(astronomical, month) {
        return None;
    }
    let days = days_from_civil(astronomical, month, day);
    let utc = i128::from(days) * i128::from(DAY_US) + i128::from(time)
        - i128::from(offset) * i128::from(SECOND_US);
    let pg = utc - i128::from(PG_EPOCH_MICROS);
    if !(PG_TIMESTAMP_MIN..PG_TIMESTAMP_END).contains(&pg) {
        return None;
    }
    // In range, `utc` is far above i64::MIN; above i64::MAX it saturates.
    Some(i64::try_from(utc).unwrap_or(i64::MAX))
}

/// An `interval`'s ISO 8601 text (`IntervalStyle=iso_8601`) as PostgreSQL stores it:
/// (months, days, microseconds).
///
/// PostgreSQL prints `P[nY][nM][nD][T[nH][nM][n[.ffffff]S]]` with each field signed on its
/// own (`P-1Y-2M3DT-4H-5M-6.789S`), hours unbounded by days (`PT100H`), and `PT0S` for zero.
/// Years fold into months (×12) and hours and minutes into microseconds; anything that does
/// not fit the stored `i32`/`i32`/`i64` is `None`. PostgreSQL 17's `infinity` and
/// `-infinity` are all fields at their maximum or minimum, as it stores them.
pub(crate) fn parse_interval(s: &str) -> Option<(i32, i32, i64)> {
    match s {
        "infinity" => return Some((i32::MAX, i32::MAX, i64::MAX)),
        "-infinity" => return Some((i32::MIN, i32::MIN, i64::MIN)),
        _ => {}
    }
    let mut c = Cursor::new(s);
    if !c.eat(b'P') {
        return None;
    }
    let (mut months, mut days, mut micros) = (0i128, 0i128, 0i128);
    // The last field read: 1–3 for Y, M, D; 4 for `T`; 5–7 for H, M, S.
    let mut stage = 0u8;
    let mut fields = 0u32;
    while !c.at_end() {
        if c.eat(b'T') {
            if stage >= 4 {
                return None;
            }
            stage = 4;
            continue;
        }
        let negative = c.eat(b'-');
        let (int, _) = c.digits()?;
        let frac = if c.peek() == Some(b'.') { Some(c.fraction_us()?) } else { None };
        let in_time = stage >= 4;
        let (rank, unit_us) = match (c.peek()?, in_time) {
            (b'Y', false) => (1, 0),
            (b'M', false) => (2, 0),
            (b'D', false) => (3, 0),
            (b'H', true) => (5, HOUR_US),
            (b'M', true) => (6, MINUTE_US),
            (b'S', true) => (7, SECOND_US),
            _ => return None,
        };
        c.pos += 1;
        if rank <= stage || (frac.is_some() && rank != 7) {
            return None;
        }
        stage = rank;
        fields += 1;
        let magnitude = i128::from(int);
        let value = if negative { -magnitude } else { magnitude };
        match rank {
            1 => months += value * 12,
            2 => months += value,
            3 => days += value,
            _ => {
                let frac = i128::from(frac.unwrap_or(0));
                micros += value * i128::from(unit_us) + if negative { -frac } else { frac };
            }
        }
    }
    // `P` alone or a `T` with nothing after it is not an interval.
    if fields == 0 || stage == 4 {
        return None;
    }
    Some((i32::try_from(months).ok()?, i32::try_from(days).ok()?, i64::try_from(micros).ok()?))
}

/// The value of one hexadecimal digit (either case).
fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A `uuid`'s text, the 8-4-4-4-12 hexadecimal form (either case), as its 16 bytes.
pub(crate) fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    let mut i = 0;
    for byte in &mut out {
        if matches!(i, 8 | 13 | 18 | 23) {
            if b.get(i) != Some(&b'-') {
                return None;
            }
            i += 1;
        }
        let hi = hex_value(*b.get(i)?)?;
        let lo = hex_value(*b.get(i + 1)?)?;
        *byte = hi << 4 | lo;
        i += 2;
    }
    Some(out)
}

/// A `bytea`'s hex text, with or without its leading `\x` (wal2json strips it from `bytea`
/// columns but not from domains over `bytea` or array elements): appends the bytes to `out`.
/// `false` on anything but pairs of hex digits, with `out` possibly partly written.
pub(crate) fn parse_bytea_hex(s: &str, out: &mut Vec<u8>) -> bool {
    let hex = s.strip_prefix("\\x").unwrap_or(s).as_bytes();
    let (pairs, rest) = hex.as_chunks::<2>();
    if !rest.is_empty() {
        return false;
    }
    out.reserve(pairs.len());
    for &[hi, lo] in pairs {
        match (hex_value(hi), hex_value(lo)) {
            (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
            _ => return false,
        }
    }
    true
}

/// A `money`'s text in the C locale (`$1,234.56`, `-$1,234.56`) as the stored count of cents:
/// `-$92,233,720,368,547,758.08` is `i64::MIN`.
pub(crate) fn parse_money(s: &str) -> Option<i64> {
    let mut c = Cursor::new(s);
    let negative = c.eat(b'-');
    if !c.eat(b'$') {
        return None;
    }
    // Thousands in groups of three after a first group of one to three digits.
    let (mut units, n) = c.digits()?;
    if n > 3 {
        return None;
    }
    while c.eat(b',') {
        units = units.checked_mul(1000)?.checked_add(u64::from(c.fixed(3)?))?;
    }
    if !c.eat(b'.') {
        return None;
    }
    let cents = c.fixed(2)?;
    if !c.at_end() {
        return None;
    }
    let magnitude = i128::from(units) * 100 + i128::from(cents);
    i64::try_from(if negative { -magnitude } else { magnitude }).ok()
}

/// A `numeric`'s text times 10^`scale`, if that is an integer that fits an `i128`: the
/// `Decimal128` value at that scale, equal to `PgNumeric::to_i128(scale)` of the stored value.
///
/// `numeric_out` prints plain digits (`-1234.50`, `0.00000000000000000001`, `12000`) and
/// never an exponent; an exponent (`1.5e+300`) is accepted all the same, since the value it
/// denotes is exact. A value with nonzero digits below 10^-`scale` (for a negative scale,
/// below 10^|`scale`|) is `None`, as are `NaN`, `Infinity` and `-Infinity`.
pub(crate) fn parse_decimal(s: &str, scale: i8) -> Option<i128> {
    let b = s.as_bytes();
    let (negative, rest) = match b.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, b),
    };
    let (mantissa, exponent) = match rest.iter().position(|&c| c == b'e' || c == b'E') {
        Some(p) => {
            let exp = rest.get(p + 1..)?;
            let (neg, digits) = match exp.split_first() {
                Some((b'-', d)) => (true, d),
                Some((b'+', d)) => (false, d),
                _ => (false, exp),
            };
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let mut e = 0i64;
            for &d in digits {
                e = e.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
                if e > i64::from(i32::MAX) {
                    return None;
                }
            }
            (rest.get(..p)?, if neg { -e } else { e })
        }
        None => (rest, 0),
    };
    let (int, frac) = match mantissa.iter().position(|&c| c == b'.') {
        Some(p) => (mantissa.get(..p)?, mantissa.get(p + 1..)?),
        None => (mantissa, &[][..]),
    };
    if (int.is_empty() && frac.is_empty()) || !int.iter().chain(frac).all(u8::is_ascii_digit) {
        return None;
    }
    // The digit at index i (integer digits, then fraction digits) stands for
    // digit × 10^(int.len() − 1 − i + exponent + scale) in the result. Digits at negative
    // powers must be zero; the others, a run of consecutive powers, form the integer.
    let top = i64::try_from(int.len()).ok()? - 1 + exponent + i64::from(scale);
    let mut acc: i128 = 0;
    let mut last_power = 0i64;
    for (i, &d) in int.iter().chain(frac).enumerate() {
        let power = top - i64::try_from(i).ok()?;
        let d = d - b'0';
        if power >= 0 {
            acc = acc.checked_mul(10)?.checked_add(i128::from(d))?;
            last_power = power;
        } else if d != 0 {
            return None;
        }
    }
    if acc != 0 && last_power > 0 {
        acc = acc.checked_mul(10i128.checked_pow(u32::try_from(last_power).ok()?)?)?;
    }
    Some(if negative { -acc } else { acc })
}

/// A `bool`'s text: `t` or `f` as PostgreSQL prints it, `true` or `false` as wal2json does.
pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "t" | "true" => Some(true),
        "f" | "false" => Some(false),
        _ => None,
    }
}

/// Whether `b` is one of the bytes `array_out` quotes as white space.
fn is_array_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// An optionally negative decimal `i32`, read at `*i` (the bounds in an array's decoration).
fn array_bound(b: &[u8], i: &mut usize) -> Option<i64> {
    let negative = b.get(*i) == Some(&b'-');
    if negative {
        *i += 1;
    }
    let start = *i;
    let mut v = 0i64;
    while let Some(d) = b.get(*i).filter(|d| d.is_ascii_digit()) {
        v = v.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
        if v > 1 << 31 {
            return None;
        }
        *i += 1;
    }
    (*i > start).then_some(if negative { -v } else { v })
}

/// An array's text (`array_out`): calls `element` once per element in row-major order — with
/// `None` for an unquoted `NULL` (any case), else the element's text with quotes and
/// backslash escapes removed — and returns the dimensions, outermost first (`{}` has none).
///
/// `delim` separates elements: `,` for every built-in type but `box`, which uses `;`. The
/// dimension decoration PostgreSQL prints when a lower bound is not one (`[0:2]=`,
/// `[1:2][1:3]=`) is checked against the elements and otherwise ignored. `None` if the text
/// is not a well-formed rectangular array of at most six dimensions, or as soon as `element`
/// returns `false`.
pub(crate) fn parse_array(
    s: &str,
    delim: u8,
    element: &mut impl FnMut(Option<&str>) -> bool,
) -> Option<Vec<usize>> {
    let b = s.as_bytes();
    let mut i = 0;
    // The decoration: [lower:upper] per dimension, then `=`.
    let mut bounds = [(0i64, 0i64); MAX_DIMS];
    let mut nbounds = 0;
    while b.get(i) == Some(&b'[') {
        i += 1;
        let lower = array_bound(b, &mut i)?;
        if b.get(i) != Some(&b':') {
            return None;
        }
        i += 1;
        let upper = array_bound(b, &mut i)?;
        if b.get(i) != Some(&b']') {
            return None;
        }
        i += 1;
        *bounds.get_mut(nbounds)? = (lower, upper);
        nbounds += 1;
    }
    if nbounds > 0 {
        if b.get(i) != Some(&b'=') {
            return None;
        }
        i += 1;
    }
    if b.get(i) != Some(&b'{') {
        return None;
    }
    if b.get(i..) == Some(&b"{}"[..]) {
        return (nbounds == 0).then(Vec::new);
    }
    i += 1;

    let mut sizes: [Option<usize>; MAX_DIMS] = [None; MAX_DIMS];
    let mut counts = [0usize; MAX_DIMS];
    let mut ndims: Option<usize> = None;
    let mut depth = 1usize;
    let mut scratch = String::new();
    let mut after_item = false;
    loop {
        let c = *b.get(i)?;
        if after_item {
            if c == delim {
                after_item = false;
                i += 1;
            } else if c == b'}' {
                let level = depth.checked_sub(1)?;
                let n = *counts.get(level)?;
                let size = sizes.get_mut(level)?;
                match size {
                    None => *size = Some(n),
                    Some(expected) if *expected != n => return None,
                    Some(_) => {}
                }
                i += 1;
                depth = level;
                if depth == 0 {
                    break;
                }
                *counts.get_mut(depth - 1)? += 1;
            } else {
                return None;
            }
            continue;
        }
        if c == b'{' {
            // A sub-array: only above the elements' level.
            if ndims.is_some_and(|n| depth >= n) || depth >= MAX_DIMS {
                return None;
            }
            *counts.get_mut(depth)? = 0;
            depth += 1;
            i += 1;
            continue;
        }
        // An element: all of them at the same depth.
        match ndims {
            None => ndims = Some(depth),
            Some(n) if n != depth => return None,
            Some(_) => {}
        }
        let go_on = if c == b'"' {
            scratch.clear();
            i += 1;
            let mut run = i;
            loop {
                match *b.get(i)? {
                    b'"' => {
                        scratch.push_str(s.get(run..i)?);
                        i += 1;
                        break;
                    }
                    b'\\' => {
                        scratch.push_str(s.get(run..i)?);
                        // The next character is literal; skip its first byte so that an
                        // escaped quote or backslash is not seen again.
                        run = i + 1;
                        b.get(run)?;
                        i += 2;
                    }
                    _ => i += 1,
                }
            }
            element(Some(&scratch))
        } else {
            let start = i;
            while let Some(&c) = b.get(i) {
                if c == delim || c == b'}' {
                    break;
                }
                if c == b'{' || c == b'"' || c == b'\\' || is_array_space(c) {
                    return None;
                }
                i += 1;
            }
            let text = s.get(start..i)?;
            if text.is_empty() {
                return None;
            }
            element(if text.eq_ignore_ascii_case("NULL") { None } else { Some(text) })
        };
        if !go_on {
            return None;
        }
        *counts.get_mut(depth - 1)? += 1;
        after_item = true;
    }
    if i != b.len() {
        return None;
    }
    let ndims = ndims?;
    let dims = sizes.get(..ndims)?.iter().copied().collect::<Option<Vec<usize>>>()?;
    if nbounds > 0 {
        if nbounds != ndims {
            return None;
        }
        for (&(lower, upper), &n) in bounds.iter().zip(&dims) {
            if upper - lower + 1 != i64::try_from(n).ok()? {
                return None;
            }
        }
    }
    Some(dims)
}

/// Interval field bits of a type modifier (`INTERVAL_MASK` in PostgreSQL's `datetime.h`).
mod interval_mask {
    pub(super) const MONTH: i32 = 1 << 1;
    pub(super) const YEAR: i32 = 1 << 2;
    pub(super) const DAY: i32 = 1 << 3;
    pub(super) const HOUR: i32 = 1 << 10;
    pub(super) const MINUTE: i32 = 1 << 11;
    pub(super) const SECOND: i32 = 1 << 12;
    /// No field restriction (`INTERVAL_FULL_RANGE`).
    pub(super) const FULL: i32 = 0x7FFF;
}

/// An unsigned decimal `i32` with nothing else (no sign, no spaces).
fn plain_uint(s: &str) -> Option<i32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The `atttypmod` that `format_type(oid, typmod)` printed `type_text` from, for the built-in
/// types with modifiers: `numeric(12,2)` is `(12 << 16 | 2) + 4`, `character varying(20)` is
/// 24, `time(3) with time zone` is 3, `interval day to second(3)` is
/// `(DAY|HOUR|MINUTE|SECOND) << 16 | 3`, and so on. An array's `[]` keeps its element's
/// modifier.
///
/// Text without a modifier — `integer`, `text`, `numeric`, `interval`, `bpchar`, a quoted or
/// schema-qualified name — is `-1`. Any other parenthesized form (a modifier we cannot
/// invert, or a malformed one) is `None`.
pub(crate) fn parse_typmod(type_text: &str) -> Option<i32> {
    let mut t = type_text;
    while let Some(element) = t.strip_suffix("[]") {
        t = element;
    }
    if t.is_empty() {
        return None;
    }
    // numeric(p,s): precision 1–1000, scale −1000–1000 (PostgreSQL 15) stored as 11 bits.
    if let Some(args) = t.strip_prefix("numeric(").and_then(|r| r.strip_suffix(')')) {
        let (p, s) = args.split_once(',').unwrap_or((args, "0"));
        let precision = plain_uint(p)?;
        let scale = match s.strip_prefix('-') {
            Some(m) => -plain_uint(m)?,
            None => plain_uint(s)?,
        };
        if !(1..=1000).contains(&precision) || !(-1000..=1000).contains(&scale) {
            return None;
        }
        return Some(((precision << 16) | (scale & 0x7ff)) + 4);
    }
    // Lengths: `VARHDRSZ` added for the character types.
    for (prefix, header, max) in [
        ("character varying(", 4, 10_485_760),
        ("character(", 4, 10_485_760),
        ("bit varying(", 0, 83_886_080),
        ("bit(", 0, 83_886_080),
    ] {
        if let Some(n) = t.strip_prefix(prefix).and_then(|r| r.strip_suffix(')')) {
            let n = plain_uint(n)?;
            return (1..=max).contains(&n).then_some(n + header);
        }
    }
    // time(p) and timestamp(p), with or without time zone: the precision, 0–6.
    for prefix in ["time(", "timestamp("] {
        if let Some((p, zone)) = t.strip_prefix(prefix).and_then(|r| r.split_once(')')) {
            let p = plain_uint(p)?;
            let zone_ok = zone == " without time zone" || zone == " with time zone";
            return (zone_ok && p <= 6).then_some(p);
        }
    }
    // interval[ fields][(p)]: fields << 16 | precision, 0xFFFF for no precision.
    if let Some(rest) = t.strip_prefix("interval")
        && (rest.is_empty() || rest.starts_with(' ') || rest.starts_with('('))
    {
        use interval_mask::*;
        let (fields, precision) = match rest.strip_suffix(')') {
            Some(r) => {
                let (fields, p) = r.rsplit_once('(')?;
                (fields, Some(plain_uint(p)?))
            }
            None => (rest, None),
        };
        let mask = match fields {
            "" => FULL,
            " year" => YEAR,
            " month" => MONTH,
            " day" => DAY,
            " hour" => HOUR,
            " minute" => MINUTE,
            " second" => SECOND,
            " year to month" => YEAR | MONTH,
            " day to hour" => DAY | HOUR,
            " day to minute" => DAY | HOUR | MINUTE,
            " day to second" => DAY | HOUR | MINUTE | SECOND,
            " hour to minute" => HOUR | MINUTE,
            " hour to second" => HOUR | MINUTE | SECOND,
            " minute to second" => MINUTE | SECOND,
            _ => return None,
        };
        return match precision {
            None if mask == FULL => Some(-1),
            None => Some((mask << 16) | 0xFFFF),
            Some(p) if p <= 6 && (mask == FULL || mask & SECOND != 0) => Some((mask << 16) | p),
            Some(_) => None,
        };
    }
    // Anything else has no modifier we know: fine without parentheses (outside quoted
    // identifiers), not with them.
    let mut quoted = false;
    for c in t.bytes() {
        match c {
            b'"' => quoted = !quoted,
            b'(' | b')' if !quoted => return None,
            _ => {}
        }
    }
    (!quoted).then_some(-1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wal2arrow_schema::numeric::PgNumeric;
    use wal2arrow_schema::types::{date_to_arrow, timestamp_to_arrow, timetz_offset};

    // Every table below pairs PostgreSQL 15's text output (DateStyle=ISO, TimeZone as noted,
    // IntervalStyle=iso_8601, lc_monetary=C, extra_float_digits=3, bytea_output=hex) with the
    // stored value the server's binary send function reported for the same datum.

    /// `(text, date_send)`: days since 2000-01-01.
    const DATES: &[(&str, i32)] = &[
        ("2024-01-31", 8796),
        ("0044-03-15 BC", -746117),
        ("10000-01-01", 2921940),
        ("4714-11-24 BC", -2451545),
        ("5874897-12-31", 2145031948),
        ("0001-01-01", -730119),
        ("0001-12-31 BC", -730120),
        ("0001-01-01 BC", -730485),
        ("0005-02-29 BC", -731887),
        ("2000-02-29", 59),
        ("1900-02-28", -36466),
        ("1970-01-01", -10957),
        ("1969-12-31", -10958),
        ("0099-12-31", -693961),
        ("1600-03-01", -146037),
        ("2000-01-01", 0),
        ("1999-12-31", -1),
        ("2100-03-01", 36584),
        ("0400-02-29", -584329),
        ("0001-03-01 BC", -730425),
        ("1000000-06-15", 364512181),
        ("4714-12-31 BC", -2451508),
        ("4363513-02-03", 1593009945),
        ("2126473-07-31", 775948042),
        ("5502158-03-31", 2008891548),
        ("373464-07-13", 135674634),
        ("549481-12-08", 199963671),
        ("1252726-12-05", 456818629),
        ("1892-06-10", -39285),
        ("1811-03-12", -68961),
        ("1960-02-05", -14575),
        ("2102-10-07", 37534),
        ("1955-04-27", -16320),
        ("2275-01-18", 100459),
        ("infinity", i32::MAX),
        ("-infinity", i32::MIN),
    ];

    #[test]
    fn dates_match_the_stored_days() {
        for &(text, pg_days) in DATES {
            assert_eq!(parse_date(text), Some(date_to_arrow(pg_days)), "{text}");
        }
        // The server's own `d - '1970-01-01'` for a few.
        assert_eq!(parse_date("2024-01-31"), Some(19753));
        assert_eq!(parse_date("0044-03-15 BC"), Some(-735160));
        assert_eq!(parse_date("4714-11-24 BC"), Some(-2440588));
        assert_eq!(parse_date("5874897-12-31"), Some(2145042905));
    }

    #[test]
    fn impossible_dates_are_rejected() {
        for text in [
            "4714-11-23 BC", // before Julian day 0 (the server: "date out of range")
            "5874898-01-01", // after the last date
            "0000-01-01",    // there is no year 0 AD
            "0000-01-01 BC",
            "0004-02-29 BC", // 4 BC is astronomical −3, not a leap year
            "1900-02-29",
            "2023-02-29",
            "2024-04-31",
            "2024-13-01",
            "2024-00-10",
            "2024-01-00",
            "44-03-15",    // two-digit years are the input parser's guesswork
            "00044-03-15", // never padded past four digits
            "2024-1-31",
            "2024-01-31 ",
            "2024-01-31 bc",
            "2024-01-31 AD",
            " 2024-01-31",
            "2024-01-31 12:00:00",
            "Infinity",
            "+infinity",
            "",
        ] {
            assert_eq!(parse_date(text), None, "{text}");
        }
    }

    /// `(text, time_send)`.
    const TIMES: &[(&str, i64)] = &[
        ("00:00:00", 0),
        ("24:00:00", 86400000000),
        ("23:59:59.999999", 86399999999),
        ("12:34:56.5", 45296500000),
        ("12:34:56.000001", 45296000001),
        ("01:02:03.12", 3723120000),
    ];

    #[test]
    fn times_match_the_stored_microseconds() {
        for &(text, us) in TIMES {
            assert_eq!(parse_time(text), Some(us), "{text}");
        }
        for text in [
            "24:00:00.000001",
            "24:00:01",
            "25:00:00",
            "12:60:00",
            "12:00:60",
            "12:00",
            "1:00:00",
            "12:00:00.",
            "12:00:00.1234567",
            "12:00:00+00",
            "12:00:00 ",
            "",
        ] {
            assert_eq!(parse_time(text), None, "{text}");
        }
    }

    /// `(text, timetz_send time, timetz_send zone)`: the zone is seconds *west* of UTC.
    const TIMETZS: &[(&str, i64, i32)] = &[
        ("00:00:00+00", 0, 0),
        ("24:00:00-15:59:59", 86400000000, 57599),
        ("12:34:56.5+05:30", 45296500000, -19800),
        ("12:00:00-00:00:01", 43200000000, 1),
        ("12:00:00+15:59:59", 43200000000, -57599),
        ("23:59:59.999999-03", 86399999999, 10800),
        ("01:02:03+01:02:03", 3723000000, -3723),
        ("12:00:00+00:19:32", 43200000000, -1172),
    ];

    #[test]
    fn timetz_matches_the_stored_time_and_zone() {
        for &(text, us, zone) in TIMETZS {
            assert_eq!(parse_timetz(text), Some((us, timetz_offset(zone))), "{text}");
        }
        assert_eq!(parse_timetz("12:34:56.5+05:30"), Some((45_296_500_000, 19_800)));
        assert_eq!(parse_timetz("00:00:00-00"), Some((0, 0)));
        for text in [
            "12:00:00+16", // beyond ±15:59:59 (the server: "displacement out of range")
            "12:00:00+15:60",
            "12:00:00+05:30:60",
            "12:00:00+5",
            "12:00:00+0530",
            "12:00:00",
            "12:00:00+05:",
            "24:00:00.1+00",
            "12:00:00 +00",
            "12:00:00+00 BC",
        ] {
            assert_eq!(parse_timetz(text), None, "{text}");
        }
    }

    /// `(text, timestamp_send)` for `timestamp`: µs since 2000-01-01.
    const TIMESTAMPS: &[(&str, i64)] = &[
        ("2024-01-31 12:34:56.5", 760019696500000),
        ("0044-03-15 12:00:00 BC", -64464465600000000),
        ("10000-01-01 00:00:00", 252455616000000000),
        ("4714-11-24 00:00:00 BC", -211813488000000000),
        ("294276-12-31 23:59:59.999999", 9223371331199999999),
        ("294247-01-10 04:00:54.775807", 9222425352054775807),
        ("294247-01-10 04:00:54.775806", 9222425352054775806),
        ("294247-01-10 04:00:54.775808", 9222425352054775808),
        ("1970-01-01 00:00:00", -946684800000000),
        ("1969-12-31 23:59:59.999999", -946684800000001),
        ("2000-01-01 00:00:00", 0),
        ("0001-01-01 00:00:00", -63082281600000000),
        ("0001-12-31 23:59:59.999999 BC", -63082281600000001),
        ("1900-02-28 01:02:03.000001", -3150658676999999),
        ("2024-02-29 23:59:59.12", 762566399120000),
        ("2186-11-10 16:47:30.1056", 5896774050105600),
        ("2179-03-26 04:57:44.2368", 5656021064236800),
        ("1691-07-28 10:34:00.3648", -9733008359635200),
        ("1735-11-10 14:13:03.5328", -8335475216467200),
        ("1818-04-26 14:58:28.848", -5733363691152000),
        ("2213-02-21 16:08:19.7664", 6726125299766400),
        ("infinity", i64::MAX),
        ("-infinity", i64::MIN),
    ];

    /// `(text, timestamptz_send)` for `timestamptz`, printed with TimeZone UTC,
    /// Europe/Amsterdam, Asia/Kolkata and America/St_Johns (local mean time offsets with
    /// seconds before 1900s standardization).
    const TIMESTAMPTZS: &[(&str, i64)] = &[
        ("2024-01-31 12:34:56.5+00", 760019696500000),
        ("0044-03-15 12:00:00+00 BC", -64464465600000000),
        ("4714-11-24 00:00:00+00 BC", -211813488000000000),
        ("294276-12-31 23:59:59.999999+00", 9223371331199999999),
        ("1970-01-01 00:00:00+00", -946684800000000),
        ("1900-06-01 12:00:00+00:19:32", -3142585172000000),
        ("0044-03-15 12:00:00+00:19:32 BC", -64464466772000000),
        ("2024-06-01 12:00:00.25+02", 770551200250000),
        ("2024-01-01 00:00:00+01", 757378800000000),
        ("2024-06-01 12:00:00+05:30", 770538600000000),
        ("1900-01-01 00:00:00+05:21:10", -3155692870000000),
        ("4714-11-24 12:00:00+05:53:28 BC", -211813466008000000),
        ("2024-06-01 12:00:00-02:30", 770567400000000),
        ("1880-01-01 00:00:00-03:30:52", -3786812948000000),
    ];

    #[test]
    fn timestamps_match_the_stored_microseconds() {
        for &(text, pg) in TIMESTAMPS.iter().chain(TIMESTAMPTZS) {
            assert_eq!(parse_timestamp(text), Some(timestamp_to_arrow(pg)), "{text}");
        }
        // The server's `extract(epoch from t) * 1000000`.
        assert_eq!(parse_timestamp("4714-11-24 00:00:00 BC"), Some(-210_866_803_200_000_000));
        assert_eq!(parse_timestamp("2024-01-31 07:04:56.5+00"), Some(1_706_684_696_500_000));
        // Arrow's last instant is exact; one µs later saturates, as the plugin does.
        assert_eq!(parse_timestamp("294247-01-10 04:00:54.775807"), Some(i64::MAX));
        assert_eq!(parse_timestamp("294247-01-10 04:00:54.775806"), Some(i64::MAX - 1));
        assert_eq!(parse_timestamp("294247-01-10 04:00:54.775808"), Some(i64::MAX));
        assert_eq!(parse_timestamp("294276-12-31 23:59:59.999999+00"), Some(i64::MAX));
        assert_eq!(
            parse_timestamp("1970-01-01 05:30:00+05:30"),
            Some(0),
            "the offset is subtracted"
        );
    }

    #[test]
    fn impossible_timestamps_are_rejected() {
        for text in [
            "4714-11-23 23:59:59.999999 BC", // before PostgreSQL's first instant
            "4714-11-24 00:00:00+01 BC",     // the same instant, via the offset
            "294277-01-01 00:00:00",         // END_TIMESTAMP itself
            "294276-12-31 23:59:59.999999-01", // past it in UTC
            "2024-01-31 24:00:00",
            "2024-01-31T12:00:00",
            "2024-01-31 12:00",
            "2024-01-31",
            "2024-01-31 12:00:00 BC+00", // the era comes last
            "2024-01-31 12:00:00+00 UTC",
            "2024-01-31 12:00:00+16",
            "2024-01-31 12:00:00.1234567",
            "2024-02-30 12:00:00",
            "0000-01-01 00:00:00",
            "Infinity",
            "",
        ] {
            assert_eq!(parse_timestamp(text), None, "{text}");
        }
    }

    /// `(text, interval_send months, days, microseconds)`.
    const INTERVALS: &[(&str, i32, i32, i64)] = &[
        ("P1Y2M3DT4H5M6.789S", 14, 3, 14706789000),
        ("PT0S", 0, 0, 0),
        ("P-1Y-2M3DT-4H-5M-6.789S", -14, 3, -14706789000),
        ("PT-0.5S", 0, 0, -500000),
        ("PT100H", 0, 0, 360000000000),
        ("P-178956970Y-8M", -2147483648, 0, 0),
        ("P178956970Y7M", 2147483647, 0, 0),
        ("P2147483647D", 0, 2147483647, 0),
        ("P-2147483648D", 0, -2147483648, 0),
        ("PT-2562047788H-54.775808S", 0, 0, -9223372036854775808),
        ("PT2562047788H54.775807S", 0, 0, 9223372036854775807),
        ("PT0.000001S", 0, 0, 1),
        ("PT-0.000001S", 0, 0, -1),
        ("P1DT-0.000001S", 0, 1, -1),
        ("PT5M", 0, 0, 300000000),
        ("P1M", 1, 0, 0),
        ("P-1D", 0, -1, 0),
        ("PT1H0.000001S", 0, 0, 3600000001),
        ("PT-59M", 0, 0, -3540000000),
        ("P-1Y", -12, 0, 0),
        ("P11M", 11, 0, 0),
        ("P-11M", -11, 0, 0),
        ("P2YT1S", 24, 0, 1000000),
        ("PT59.999999S", 0, 0, 59999999),
        ("P3DT25H", 0, 3, 90000000000),
        ("P-7DT3H", 0, -7, 10800000000),
        ("PT59S", 0, 0, 59000000),
        // PostgreSQL 17's infinities, stored as every field at its extreme.
        ("infinity", i32::MAX, i32::MAX, i64::MAX),
        ("-infinity", i32::MIN, i32::MIN, i64::MIN),
    ];

    #[test]
    fn intervals_match_the_stored_fields() {
        for &(text, months, days, us) in INTERVALS {
            assert_eq!(parse_interval(text), Some((months, days, us)), "{text}");
        }
        for text in [
            "P-178956970Y-9M", // one month below i32::MIN
            "P178956970Y8M",
            "P2147483648D",
            "PT2562047788H54.775808S", // one µs above i64::MAX
            "PT-2562047788H-54.775809S",
            "P",
            "PT",
            "P1DT",
            "T1H",
            "P1H",   // hours need the T
            "PT1D",  // days go before it
            "P1M1Y", // out of order
            "P1Y1Y", // repeated
            "PT1S1M",
            "P1.5Y", // only seconds have fractions
            "PT1.5M",
            "PT1.1234567S",
            "PT1.S",
            "PT.5S",
            "PT+1S",
            "PT--1S",
            "P1Y ",
            "p1y",
            "1 day",
            "PTT1S",
            "",
        ] {
            assert_eq!(parse_interval(text), None, "{text}");
        }
    }

    /// `(text, cash_send)`.
    const MONEY: &[(&str, i64)] = &[
        ("$1,234.56", 123456),
        ("-$1,234.56", -123456),
        ("$0.00", 0),
        ("-$92,233,720,368,547,758.08", -9223372036854775808),
        ("$92,233,720,368,547,758.07", 9223372036854775807),
        ("$0.01", 1),
        ("-$0.01", -1),
        ("$1,000.00", 100000),
        ("$999.99", 99999),
        ("$1,000,000.00", 100000000),
        ("-$100.00", -10000),
        ("$12.30", 1230),
    ];

    #[test]
    fn money_matches_the_stored_cents() {
        for &(text, cents) in MONEY {
            assert_eq!(parse_money(text), Some(cents), "{text}");
        }
        for text in [
            "$92,233,720,368,547,758.08",
            "-$92,233,720,368,547,758.09",
            "$1234.56",
            "$1,23.45",
            "$1,2345.67",
            "$,123.45",
            "$1,234.5",
            "$1,234.567",
            "$1,234",
            "1,234.56",
            "$-1.00",
            "-$-1.00",
            "($1.00)",
            "$ 1.00",
            "$1.00 ",
            "",
        ] {
            assert_eq!(parse_money(text), None, "{text}");
        }
    }

    /// `(text, uuid_send)`.
    const UUIDS: &[(&str, &str)] = &[
        ("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc999c0b4ef8bb6d6bb9bd380a11"),
        ("00000000-0000-0000-0000-000000000000", "00000000000000000000000000000000"),
        ("ffffffff-ffff-ffff-ffff-ffffffffffff", "ffffffffffffffffffffffffffffffff"),
        ("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "a0eebc999c0b4ef8bb6d6bb9bd380a11"),
    ];

    fn unhex(s: &str) -> Vec<u8> {
        let mut v = Vec::new();
        assert!(parse_bytea_hex(s, &mut v), "{s}");
        v
    }

    #[test]
    fn uuids_match_the_stored_bytes() {
        for &(text, bytes) in UUIDS {
            assert_eq!(parse_uuid(text).map(|u| u.to_vec()), Some(unhex(bytes)), "{text}");
        }
        for text in [
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111",
            "a0eebc99-9c0b-4ef8-bb6d6-bb9bd380a11",
            "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1é",
            "",
        ] {
            assert_eq!(parse_uuid(text), None, "{text}");
        }
    }

    #[test]
    fn bytea_hex_with_or_without_its_prefix() {
        let cases: &[(&str, &[u8])] = &[
            ("\\x", &[]),
            ("", &[]),
            ("\\x00ff10ab", &[0x00, 0xff, 0x10, 0xab]),
            ("00ff10ab", &[0x00, 0xff, 0x10, 0xab]),
            ("\\x616263", b"abc"),
            ("616263", b"abc"),
            ("DEADbeef", &[0xde, 0xad, 0xbe, 0xef]),
        ];
        for &(text, bytes) in cases {
            let mut out = vec![9];
            assert!(parse_bytea_hex(text, &mut out), "{text}");
            assert_eq!(&out[1..], bytes, "appended after what was there: {text}");
        }
        for text in ["\\x0", "0", "\\x0g", "zz", "\\X00", "\\\\x00", "\\x 00", "x00", "\\x00\n"] {
            assert!(!parse_bytea_hex(text, &mut Vec::new()), "{text}");
        }
    }

    /// `(text, scale, numeric_send)` of `numeric(p, s)` values: the scale is the column's.
    const NUMERICS: &[(&str, i8, &str)] = &[
        ("-1234.50", 2, "000200004000000204d21388"),
        ("0.00000000000000000001", 20, "0001fffb000000140001"),
        ("12000", -3, "0002000100000000000107d0"),
        (
            "99999999999999999999999999999999999999",
            0,
            "000a0009000000000063270f270f270f270f270f270f270f270f270f",
        ),
        (
            "-99999999999999999999999999999999999999",
            0,
            "000a0009400000000063270f270f270f270f270f270f270f270f270f",
        ),
        (
            "0.99999999999999999999999999999999999999",
            38,
            "000affff00000026270f270f270f270f270f270f270f270f270f26ac",
        ),
        ("-0.00000000000000000000000000000000000001", 38, "0001fff6400000260064"),
        ("0.00", 2, "0000000000000002"),
        ("-0.50", 2, "0001ffff400000021388"),
        ("0.10000000000000000000", 20, "0001ffff0000001403e8"),
        ("100", -2, "00010000000000000064"),
        ("99999000000000000000000000000000000000000", -36, "0002000a000000000009270f"),
        ("10000000000000000000000000000000000000000", -40, "0001000a000000000001"),
        ("10000", 0, "00010001000000000001"),
        ("1.0001", 4, "000200000000000400010001"),
        (
            "12345678901234567890.123456789012345678",
            18,
            "000a00040000001204d2162e23340d801ed204d2162e23340d801e78",
        ),
        ("-0.0042", 4, "0001ffff40000004002a"),
        ("100000000", 0, "00010002000000000001"),
        ("7", 0, "00010000000000000007"),
        ("3.14159", 5, "0003000000000005000305872328"),
        ("-2.5", 1, "000200004000000100021388"),
        ("20000", -4, "00010001000000000002"),
        ("734550721251906000.000000", 6, "0005000400000006004911c61c2c14461770"),
        ("640283923127707000.000000", 6, "00050004000000060040011b240f0ad21b58"),
        ("803264107021650000.000000", 6, "000400040000000600500cc0042e0875"),
        ("931589426258701000.000000", 6, "0005000400000006005d063510a616ee03e8"),
        ("-625921500893006000000000000000.0000", 4, "0005000740000004003e1721139024541770"),
        ("-567299749012234000000000000000.0000", 4, "000500074000000400381c831d4204c70fa0"),
        ("-857861532984143000000000000000.0000", 4, "000500074000000400551eb514d120de0bb8"),
        ("-732556388337185000000000000000.0000", 4, "0005000740000004004909fc0f2b0e861388"),
        ("NaN", 0, "000000000000c0000000"),
        ("Infinity", 0, "000000000000d0000000"),
        ("-Infinity", 0, "000000000000f0000000"),
    ];

    /// The stored (long-form) numeric the plugin reads, from `numeric_send`'s big-endian
    /// ndigits, weight, sign, dscale and digits.
    fn stored_numeric(send_hex: &str) -> Vec<u8> {
        let b = unhex(send_hex);
        let be = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let ndigits = usize::from(be(0));
        let mut stored = (be(4) | be(6)).to_ne_bytes().to_vec();
        stored.extend(be(2).to_ne_bytes());
        for d in 0..ndigits {
            stored.extend(be(8 + 2 * d).to_ne_bytes());
        }
        stored
    }

    #[test]
    fn decimals_match_the_plugins_reading_of_the_stored_numeric_at_every_scale() {
        for &(text, _, send) in NUMERICS {
            let stored = stored_numeric(send);
            let n = PgNumeric::parse(&stored).expect(text);
            for scale in (-45..=45).chain([i8::MIN, i8::MAX]) {
                assert_eq!(parse_decimal(text, scale), n.to_i128(scale), "{text} at {scale}");
            }
        }
        // At the columns' own scales.
        let at = |t: &str, s: i8| parse_decimal(t, s);
        assert_eq!(at("-1234.50", 2), Some(-123_450));
        assert_eq!(at("0.00000000000000000001", 20), Some(1));
        assert_eq!(at("12000", -3), Some(12));
        assert_eq!(at("99999999999999999999999999999999999999", 0), Some(10i128.pow(38) - 1));
        assert_eq!(at("0.99999999999999999999999999999999999999", 38), Some(10i128.pow(38) - 1));
        assert_eq!(at("-0.00000000000000000000000000000000000001", 38), Some(-1));
        assert_eq!(at("99999000000000000000000000000000000000000", -36), Some(99_999));
        assert_eq!(at("10000000000000000000000000000000000000000", -40), Some(1));
        assert_eq!(at("0.00", 2), Some(0));
        // Inexact at the scale, non-numbers, exponent forms.
        assert_eq!(at("12345", -3), None);
        assert_eq!(at("1.005", 2), None);
        assert_eq!(at("1.5e+300", 2), None);
        assert_eq!(at("1.5e3", 0), Some(1500));
        assert_eq!(at("15E-1", 1), Some(15));
        assert_eq!(at("-1.25e-1", 3), Some(-125));
        assert_eq!(at("0e999999", 2), Some(0));
        assert_eq!(at("170141183460469231731687303715884105727", 0), Some(i128::MAX));
        assert_eq!(at("170141183460469231731687303715884105728", 0), None);
        for text in [
            "",
            "-",
            "+",
            ".",
            "-.",
            "1e",
            "1e+",
            "e5",
            "1..2",
            "1.2.3",
            "1,5",
            " 1",
            "1 ",
            "0x10",
            "NaN",
            "Infinity",
            "-Infinity",
            "inf",
            "1e99999999999",
        ] {
            assert_eq!(parse_decimal(text, 2), None, "{text}");
        }
    }

    /// `(text, float8send)`.
    const FLOAT8S: &[(&str, u64)] = &[
        ("1.5e+300", 0x7e41eb2d66005835),
        ("0.1", 0x3fb999999999999a),
        ("-0", 0x8000000000000000),
        ("NaN", 0x7ff8000000000000),
        ("Infinity", 0x7ff0000000000000),
        ("-Infinity", 0xfff0000000000000),
        ("5e-324", 0x0000000000000001),
        ("1.7976931348623157e+308", 0x7fefffffffffffff),
        ("1.2345678901234568e+20", 0x441ac53a7e04bcda),
        ("1e+16", 0x4341c37937e08000),
        ("1e+15", 0x430c6bf526340000),
        ("0.0001", 0x3f1a36e2eb1c432d),
        ("1e-05", 0x3ee4f8b588e368f1),
        ("2.2250738585072014e-308", 0x0010000000000000),
        ("3.141592653589793", 0x400921fb54442d18),
        ("-1.5", 0xbff8000000000000),
        ("100", 0x4059000000000000),
        ("-2.225073858507201e-308", 0x800fffffffffffff),
    ];

    /// `(text, float4send)`.
    const FLOAT4S: &[(&str, u32)] = &[
        ("3.4028235e+38", 0x7f7fffff),
        ("0.1", 0x3dcccccd),
        ("1e-45", 0x00000001),
        ("-0", 0x80000000),
        ("NaN", 0x7fc00000),
        ("1.1754944e-38", 0x00800000),
        ("1.6777216e+07", 0x4b800000),
        ("1e+07", 0x4b189680),
        ("123456.7", 0x47f1205a),
        ("Infinity", 0x7f800000),
        ("-Infinity", 0xff800000),
        ("-3.4028235e+38", 0xff7fffff),
        ("7.038531e-26", 0x15ae43fd),
        ("-7.038531e-26", 0x95ae43fd),
    ];

    #[test]
    fn std_reads_postgres_float_text_to_the_stored_bits() {
        for &(text, bits) in FLOAT8S {
            assert_eq!(text.parse::<f64>().map(f64::to_bits), Ok(bits), "{text}");
        }
        for &(text, bits) in FLOAT4S {
            assert_eq!(text.parse::<f32>().map(f32::to_bits), Ok(bits), "{text}");
        }
        // Through f64 the float4 text rounds twice and can land on the neighbouring f32: of
        // all 2³² floats printed shortest, exactly these two (checked exhaustively).
        let via_f64 = |t: &str| t.parse::<f64>().map(|f| (f as f32).to_bits());
        assert_eq!(via_f64("7.038531e-26"), Ok(0x15ae43fe));
        assert_eq!(via_f64("-7.038531e-26"), Ok(0x95ae43fe));
        assert_eq!("-32768".parse::<i16>(), Ok(i16::MIN));
        assert_eq!("-9223372036854775808".parse::<i64>(), Ok(i64::MIN));
        assert_eq!("4294967295".parse::<u32>(), Ok(u32::MAX));
    }

    #[test]
    fn bools() {
        for (text, v) in [("t", true), ("f", false), ("true", true), ("false", false)] {
            assert_eq!(parse_bool(text), Some(v));
        }
        for text in ["T", "TRUE", "yes", "1", "on", ""] {
            assert_eq!(parse_bool(text), None, "{text}");
        }
    }

    /// Runs [`parse_array`], collecting the elements (`None` for NULL).
    fn array(s: &str, delim: u8) -> Option<(Vec<usize>, Vec<Option<String>>)> {
        let mut elements = Vec::new();
        let dims = parse_array(s, delim, &mut |e| {
            elements.push(e.map(str::to_owned));
            true
        })?;
        Some((dims, elements))
    }

    #[test]
    fn arrays_as_the_server_prints_them() {
        let s = |v: &str| Some(v.to_owned());
        // Each literal is array_out's; the dimensions and elements are the server's
        // array_dims() and unnest().
        let text = "{\"a b\",\"x\\\"y\",\"back\\\\slash\",NULL,\"NULL\",\"null\",\
                    \"\",\"{}\",\",\",é,\
                    \"tab\there\",plain,\"new\nline\",\"\\\\\\\"\",\"Null\",NULLx,\" lead\",\
                    \"trail \",a=b,[1:2]}";
        let (dims, elements) = array(text, b',').unwrap();
        assert_eq!(dims, [20]);
        assert_eq!(
            elements,
            [
                s("a b"),
                s("x\"y"),
                s("back\\slash"),
                None,
                s("NULL"),
                s("null"),
                s(""),
                s("{}"),
                s(","),
                s("é"),
                s("tab\there"),
                s("plain"),
                s("new\nline"),
                s("\\\""),
                s("Null"),
                s("NULLx"),
                s(" lead"),
                s("trail "),
                s("a=b"),
                s("[1:2]"),
            ]
        );
        /// Literal, delimiter, dimensions, elements.
        type Case<'a> = (&'a str, u8, &'a [usize], &'a [Option<&'a str>]);
        let cases: &[Case] = &[
            ("[0:2]={a,b,c}", b',', &[3], &[Some("a"), Some("b"), Some("c")]),
            (
                "{{a,b,c},{d,e,f}}",
                b',',
                &[2, 3],
                &[Some("a"), Some("b"), Some("c"), Some("d"), Some("e"), Some("f")],
            ),
            ("{}", b',', &[], &[]),
            ("[-2:-1]={x,y}", b',', &[2], &[Some("x"), Some("y")]),
            (
                "{{{1},{2}},{{3},{4}}}",
                b',',
                &[2, 2, 1],
                &[Some("1"), Some("2"), Some("3"), Some("4")],
            ),
            ("[2:2][3:4]={{1,2}}", b',', &[1, 2], &[Some("1"), Some("2")]),
            ("{{NULL,NULL},{NULL,\"NULL\"}}", b',', &[2, 2], &[None, None, None, Some("NULL")]),
            ("{\"\\\\x0102\",\"\\\\x\"}", b',', &[2], &[Some("\\x0102"), Some("\\x")]),
            ("{\"(1,\\\"a b\\\")\"}", b',', &[1], &[Some("(1,\"a b\")")]),
            (
                "[1:1][1:1][1:1][1:1][1:1][0:0]={{{{{{z}}}}}}",
                b',',
                &[1, 1, 1, 1, 1, 1],
                &[Some("z")],
            ),
            ("{(1,1),(0,0);(2,2),(1,1)}", b';', &[2], &[Some("(1,1),(0,0)"), Some("(2,2),(1,1)")]),
            (
                "{\"2024-01-01 12:00:00+00\",\"0044-03-15 12:00:00+00 BC\"}",
                b',',
                &[2],
                &[Some("2024-01-01 12:00:00+00"), Some("0044-03-15 12:00:00+00 BC")],
            ),
            ("{P1D,PT-1H}", b',', &[2], &[Some("P1D"), Some("PT-1H")]),
            ("{1.5,NULL}", b',', &[2], &[Some("1.5"), None]),
            ("{\"a  \"}", b',', &[1], &[Some("a  ")]),
            ("{$1.00}", b',', &[1], &[Some("$1.00")]),
            (
                "{1970-01-01,\"0044-03-15 BC\"}",
                b',',
                &[2],
                &[Some("1970-01-01"), Some("0044-03-15 BC")],
            ),
            ("{t,f}", b',', &[2], &[Some("t"), Some("f")]),
            ("{NaN,Infinity}", b',', &[2], &[Some("NaN"), Some("Infinity")]),
            ("{\"é\\\"ü\"}", b',', &[1], &[Some("é\"ü")]),
            ("{\"\\é\"}", b',', &[1], &[Some("é")]),
            ("{null,Null,nULL}", b',', &[3], &[None, None, None]),
        ];
        for &(text, delim, dims, elements) in cases {
            let want: Vec<Option<String>> = elements.iter().map(|e| e.map(str::to_owned)).collect();
            assert_eq!(array(text, delim), Some((dims.to_vec(), want)), "{text}");
        }
    }

    #[test]
    fn malformed_arrays_are_rejected() {
        for text in [
            "",
            "{",
            "}",
            "{{}}",        // the server: "Unexpected \"}\" character"
            "{{1,2},{3}}", // "sub-arrays with matching dimensions"
            "{{1},2}",
            "{1,{2}}",
            "{{{{{{{1}}}}}}}", // seven dimensions
            "{1,}",
            "{,1}",
            "{1,,2}",
            "{1 ,2}",
            "{ 1}",
            "{a b}",
            "{\"a\"b}",
            "{a\"b\"}",
            "{a\\,b}",
            "{\"a}",
            "{\"a\\\"}",
            "{1}}",
            "{1},{2}",
            "{1} ",
            " {1}",
            "[1:3]={1,2}", // the decoration disagrees
            "[1:2]={{1,2}}",
            "[1:2][1:1]={1,2}",
            "[0:0]={}",
            "[0:2]{1,2,3}",
            "[0:2=]{1,2,3}",
            "[a:b]={1}",
            "[1:1][1:1][1:1][1:1][1:1][1:1][1:1]={{{{{{{1}}}}}}}",
            "1,2",
        ] {
            assert_eq!(array(text, b','), None, "{text}");
        }
        // `;` only separates for box: with `,` it is part of the element, and vice versa.
        assert_eq!(array("{1;2}", b','), Some((vec![1], vec![Some("1;2".to_owned())])));
        assert_eq!(array("{1,2}", b';'), Some((vec![1], vec![Some("1,2".to_owned())])));
    }

    #[test]
    fn arrays_stop_when_the_element_callback_says_so() {
        let mut seen = 0;
        let r = parse_array("{1,2,3}", b',', &mut |_| {
            seen += 1;
            seen < 2
        });
        assert_eq!(r, None);
        assert_eq!(seen, 2);
    }

    /// `(format_type(atttypid, atttypmod), atttypmod)` from pg_attribute.
    const TYPMODS: &[(&str, i32)] = &[
        ("numeric(12,2)", 786438),
        ("numeric(5,-3)", 329729),
        ("numeric(7,0)", 458756),
        ("numeric", -1),
        ("numeric(38,38)", 2490410),
        ("numeric(1000,0)", 65536004),
        ("numeric(3,5)", 196617),
        ("character varying(20)", 24),
        ("character varying", -1),
        ("character(5)", 9),
        ("character(1)", 5),
        ("bpchar", -1),
        ("bit(4)", 4),
        ("bit(1)", 1),
        ("\"bit\"", -1),
        ("bit varying(8)", 8),
        ("bit varying", -1),
        ("time(3) without time zone", 3),
        ("time without time zone", -1),
        ("time(3) with time zone", 3),
        ("time with time zone", -1),
        ("timestamp(0) without time zone", 0),
        ("timestamp without time zone", -1),
        ("timestamp(0) with time zone", 0),
        ("timestamp with time zone", -1),
        ("timestamp(6) with time zone", 6),
        ("interval(3)", 2147418115),
        ("interval", -1),
        ("interval year to month", 458751),
        ("interval day to second(3)", 470286339),
        ("interval year", 327679),
        ("interval month", 196607),
        ("interval day", 589823),
        ("interval hour", 67174399),
        ("interval minute", 134283263),
        ("interval second", 268500991),
        ("interval second(2)", 268435458),
        ("interval day to hour", 67698687),
        ("interval day to minute", 201916415),
        ("interval day to second", 470351871),
        ("interval hour to minute", 201392127),
        ("interval hour to second", 469827583),
        ("interval hour to second(0)", 469762048),
        ("interval minute to second", 402718719),
        ("interval minute to second(6)", 402653190),
        ("numeric(12,2)[]", 786438),
        ("character varying(20)[]", 24),
        ("integer", -1),
        ("text", -1),
        ("\"char\"", -1),
        ("\"My Type\"", -1),
        ("\"My Type\"[]", -1),
        ("time(0) with time zone", 0),
        ("real", -1),
        ("double precision", -1),
        ("character varying(10485760)", 10485764),
        ("numeric(1,-1000)", 66588),
        ("numeric(1000,1000)", 65537004),
        ("timestamp(6) without time zone[]", 6),
        ("interval(0)", 2147418112),
        ("boolean", -1),
        ("bigint[]", -1),
        ("numeric(5,-1)[]", 329731),
    ];

    #[test]
    fn typmods_invert_format_type() {
        for &(text, typmod) in TYPMODS {
            assert_eq!(parse_typmod(text), Some(typmod), "{text}");
        }
        // Declared `numeric(7)` prints as `numeric(7,0)`; the short form reads the same.
        assert_eq!(parse_typmod("numeric(7)"), Some(458756));
        // wal2json writes a type name that starts with `"` into the JSON as is, so `"bit"`
        // and `"char"` arrive unquoted.
        assert_eq!(parse_typmod("bit"), Some(-1));
        assert_eq!(parse_typmod("char"), Some(-1));
        assert_eq!(parse_typmod("public.\"odd(name)\""), Some(-1));
        assert_eq!(parse_typmod("intervals"), Some(-1));
        for text in [
            "",
            "[]",
            "numeric(0,0)",
            "numeric(1001,0)",
            "numeric(5,1001)",
            "numeric(5, 2)",
            "numeric(+5,2)",
            "numeric()",
            "numeric(5,2",
            "character varying(0)",
            "character varying(10485761)",
            "character varying(x)",
            "bit(0)",
            "time(7) without time zone",
            "time(3)",
            "time(3) with timezone",
            "timestamp(-1) with time zone",
            "interval(7)",
            "interval year(3)",
            "interval day to hour(2)",
            "interval week",
            "interval day to second(3",
            "public.mytype(3)",
            "\"unbalanced",
            "geometry(Point,4326)",
        ] {
            assert_eq!(parse_typmod(text), None, "{text}");
        }
    }

    /// Calls every parser on `s`; only panics matter.
    fn feed_everything(s: &str) {
        let _ = parse_date(s);
        let _ = parse_time(s);
        let _ = parse_timetz(s);
        let _ = parse_timestamp(s);
        let _ = parse_interval(s);
        let _ = parse_uuid(s);
        let _ = parse_bytea_hex(s, &mut Vec::new());
        let _ = parse_money(s);
        for scale in [i8::MIN, -38, -1, 0, 1, 2, 38, i8::MAX] {
            let _ = parse_decimal(s, scale);
        }
        let _ = parse_bool(s);
        let _ = parse_typmod(s);
        for delim in [b',', b';'] {
            let _ = parse_array(s, delim, &mut |_| true);
        }
    }

    #[test]
    fn no_input_panics() {
        let mut valid: Vec<&str> = Vec::new();
        valid.extend(DATES.iter().map(|r| r.0));
        valid.extend(TIMES.iter().map(|r| r.0));
        valid.extend(TIMETZS.iter().map(|r| r.0));
        valid.extend(TIMESTAMPS.iter().map(|r| r.0));
        valid.extend(TIMESTAMPTZS.iter().map(|r| r.0));
        valid.extend(INTERVALS.iter().map(|r| r.0));
        valid.extend(MONEY.iter().map(|r| r.0));
        valid.extend(UUIDS.iter().map(|r| r.0));
        valid.extend(NUMERICS.iter().map(|r| r.0));
        valid.extend(FLOAT8S.iter().map(|r| r.0));
        valid.extend(TYPMODS.iter().map(|r| r.0));
        valid.extend([
            "\\x00ff10ab",
            "{\"a b\",\"x\\\"y\",NULL,é,{}}",
            "[1:1][1:1][1:1][1:1][1:1][0:0]={{{{{{z}}}}}}",
            "[-2147483648:2147483647]={1}",
            "{{1,2},{3,4}}",
            "{\"\\é\"}",
        ]);
        for v in &valid {
            for (i, _) in v.char_indices().chain([(v.len(), ' ')]) {
                feed_everything(&v[..i]);
                feed_everything(&v[i..]);
            }
        }
        // Pseudo-random strings over the bytes the formats are made of.
        let alphabet: Vec<char> =
            "0123456789-+:.,; PTYMDHSBCinfty$e{}[]=\"\\xaNUL()é".chars().collect();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut s = String::new();
        for _ in 0..50_000 {
            s.clear();
            let len = next() % 40;
            for _ in 0..len {
                s.push(alphabet[(next() % alphabet.len() as u64) as usize]);
            }
            feed_everything(&s);
        }
        // Long runs of digits and nesting.
        feed_everything(&"9".repeat(10_000));
        feed_everything(&format!("0.{}1", "0".repeat(10_000)));
        feed_everything(&format!("{}1{}", "{".repeat(100), "}".repeat(100)));
        feed_everything(&"[1:1]".repeat(100));
    }
}
