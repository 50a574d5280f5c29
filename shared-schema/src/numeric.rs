//! PostgreSQL `numeric` values as stored, decoded into `Decimal128` integers.
//!
//! A stored numeric (after its varlena header) is one of ([`numeric.c`][src]):
//!
//! - *short*: a `u16` header — `0b10` flag, sign bit, 6-bit display scale, 7-bit weight —
//!   then base-10000 digits (`i16`, native byte order);
//! - *long*: a `u16` sign and display scale, an `i16` weight, then the digits;
//! - *special*: a `u16` header alone, for `NaN`, `Infinity` and `-Infinity`.
//!
//! The value is `Σ digit[i] × 10000^(weight − i)`. Reading it directly avoids the text round
//! trip through `numeric_out`.
//!
//! [src]: https://github.com/postgres/postgres/blob/REL_15_STABLE/src/backend/utils/adt/numeric.c

const SIGN_MASK: u16 = 0xC000;
const NEG: u16 = 0x4000;
const SHORT: u16 = 0x8000;
const SPECIAL: u16 = 0xC000;
const NAN: u16 = 0xC000;
const PINF: u16 = 0xD000;
const NINF: u16 = 0xF000;
const EXT_SIGN_MASK: u16 = 0xF000;
const SHORT_SIGN_MASK: u16 = 0x2000;
const SHORT_WEIGHT_SIGN_MASK: u16 = 0x0040;
const SHORT_WEIGHT_MASK: u16 = 0x003F;

/// A decoded stored numeric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PgNumeric<'a> {
    /// `NaN`
    NaN,
    /// `Infinity`
    PosInfinity,
    /// `-Infinity`
    NegInfinity,
    /// A finite value.
    Finite {
        /// Below zero.
        negative: bool,
        /// Base-10000 exponent of the first digit.
        weight: i16,
        /// The base-10000 digits as stored: pairs of native-endian bytes.
        digits: &'a [u8],
    },
}

impl<'a> PgNumeric<'a> {
    /// Decodes the bytes after the varlena header. `None` if they are not a stored numeric.
    pub fn parse(data: &'a [u8]) -> Option<PgNumeric<'a>> {
        let header = u16::from_ne_bytes(data.get(..2)?.try_into().ok()?);
        match header & SIGN_MASK {
            SPECIAL => match header & EXT_SIGN_MASK {
                NAN => Some(PgNumeric::NaN),
                PINF => Some(PgNumeric::PosInfinity),
                NINF => Some(PgNumeric::NegInfinity),
                _ => None,
            },
            SHORT => {
                let weight_bits = header & SHORT_WEIGHT_MASK;
                let weight = if header & SHORT_WEIGHT_SIGN_MASK != 0 {
                    (weight_bits | !SHORT_WEIGHT_MASK) as i16
                } else {
                    weight_bits as i16
                };
                let digits = &data[2..];
                digits.len().is_multiple_of(2).then_some(PgNumeric::Finite {
                    negative: header & SHORT_SIGN_MASK != 0,
                    weight,
                    digits,
                })
            }
            sign => {
                let weight = i16::from_ne_bytes(data.get(2..4)?.try_into().ok()?);
                let digits = &data[4..];
                digits.len().is_multiple_of(2).then_some(PgNumeric::Finite {
                    negative: sign == NEG,
                    weight,
                    digits,
                })
            }
        }
    }

    /// The value times 10^`scale`, if that is an integer that fits an `i128`: the
    /// `Decimal128` representation at that scale. `None` for `NaN` and infinities, and for
    /// values with more fractional digits than `scale` (which a column declared with that
    /// scale never holds).
    pub fn to_i128(&self, scale: i8) -> Option<i128> {
        let PgNumeric::Finite { negative, weight, digits } = *self else { return None };
        let mut acc: i128 = 0;
        // Digit i stands for digit × 10^(4 × (weight − i) + scale).
        for (i, pair) in digits.chunks_exact(2).enumerate() {
            let d = i16::from_ne_bytes([pair[0], pair[1]]);
            if !(0..10_000).contains(&d) {
                return None;
            }
            let exp = 4 * (i32::from(weight) - i as i32) + i32::from(scale);
            let term = if exp >= 0 {
                i128::from(d).checked_mul(10i128.checked_pow(exp as u32)?)?
            } else {
                let div = 10i128.checked_pow((-exp) as u32).unwrap_or(i128::MAX);
                if i128::from(d) % div != 0 {
                    return None;
                }
                i128::from(d) / div
            };
            acc = acc.checked_add(term)?;
        }
        Some(if negative { -acc } else { acc })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits(ds: &[i16]) -> Vec<u8> {
        ds.iter().flat_map(|d| d.to_ne_bytes()).collect()
    }

    fn short(negative: bool, dscale: u16, weight: i16, ds: &[i16]) -> Vec<u8> {
        let w = (weight as u16) & (SHORT_WEIGHT_MASK | SHORT_WEIGHT_SIGN_MASK);
        let h = SHORT | if negative { SHORT_SIGN_MASK } else { 0 } | (dscale << 7) | w;
        let mut v = h.to_ne_bytes().to_vec();
        v.extend(digits(ds));
        v
    }

    fn long(negative: bool, dscale: u16, weight: i16, ds: &[i16]) -> Vec<u8> {
        let h = if negative { NEG } else { 0 } | dscale;
        let mut v = h.to_ne_bytes().to_vec();
        v.extend(weight.to_ne_bytes());
        v.extend(digits(ds));
        v
    }

    #[test]
    fn decodes_short_and_long_forms() {
        // 12345.67: digits 1 2345 6700, weight 1.
        let n = short(false, 2, 1, &[1, 2345, 6700]);
        assert_eq!(PgNumeric::parse(&n).unwrap().to_i128(2), Some(1_234_567));
        assert_eq!(PgNumeric::parse(&n).unwrap().to_i128(4), Some(123_456_700));
        assert_eq!(
            PgNumeric::parse(&n).unwrap().to_i128(1),
            None,
            "12345.67 at scale 1 is inexact"
        );
        // -0.0042: digit 42 at weight -1.
        let n = short(true, 4, -1, &[42]);
        assert_eq!(PgNumeric::parse(&n).unwrap().to_i128(4), Some(-42));
        // 1e30 in the long form, scale -3 (a PostgreSQL 15 negative scale).
        let n = long(false, 0, 7, &[1]);
        assert_eq!(PgNumeric::parse(&n).unwrap().to_i128(0), Some(10i128.pow(28)));
        assert_eq!(PgNumeric::parse(&n).unwrap().to_i128(-3), Some(10i128.pow(25)));
        // Zero has no digits.
        assert_eq!(PgNumeric::parse(&short(false, 0, 0, &[])).unwrap().to_i128(2), Some(0));
        // 38 nines at scale 0: the largest numeric(38, 0).
        let nines: Vec<i16> = std::iter::once(99).chain(std::iter::repeat_n(9999, 9)).collect();
        let n = long(false, 0, 9, &nines);
        assert_eq!(PgNumeric::parse(&n).unwrap().to_i128(0), Some(10i128.pow(38) - 1));
    }

    #[test]
    fn specials_and_garbage() {
        assert_eq!(PgNumeric::parse(&NAN.to_ne_bytes()), Some(PgNumeric::NaN));
        assert_eq!(PgNumeric::parse(&PINF.to_ne_bytes()), Some(PgNumeric::PosInfinity));
        assert_eq!(PgNumeric::parse(&NINF.to_ne_bytes()), Some(PgNumeric::NegInfinity));
        assert_eq!(PgNumeric::NaN.to_i128(0), None);
        assert_eq!(PgNumeric::parse(&[]), None);
        assert_eq!(PgNumeric::parse(&0xE000u16.to_ne_bytes()), None, "no such special");
        let odd = [short(false, 0, 0, &[1]), vec![0]].concat();
        assert_eq!(PgNumeric::parse(&odd), None);
        let bad_digit = short(false, 0, 0, &[10_000]);
        assert_eq!(PgNumeric::parse(&bad_digit).unwrap().to_i128(0), None);
        let huge = long(false, 0, 40, &[1]);
        assert_eq!(PgNumeric::parse(&huge).unwrap().to_i128(0), None, "overflows i128");
    }
}
