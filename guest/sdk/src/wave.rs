//! Reading WAVE results back into Rust values: the other half of [`crate::ToWave`].

use std::fmt;

/// A result that is not WAVE of the type asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaveError {
    /// What was expected, and where.
    pub message: String,
}

impl fmt::Display for WaveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for WaveError {}

/// Reads `text` as WAVE of type `T`.
///
/// ```
/// use poolhost_guest::from_wave;
/// assert_eq!(from_wave::<Vec<Option<u32>>>("[some(1), none]"), Ok(vec![Some(1), None]));
/// assert_eq!(from_wave::<(String, char)>(r#"("a\nb", 'c')"#), Ok(("a\nb".to_owned(), 'c')));
/// ```
///
/// # Errors
/// [`WaveError`] naming what was expected and the column.
pub fn from_wave<T: FromWave>(text: &str) -> Result<T, WaveError> {
    let mut reader = Reader { text, pos: 0 };
    let value = T::read(&mut reader)?;
    reader.skip_space();
    if reader.pos < text.len() {
        return Err(reader.error("the end of the value"));
    }
    Ok(value)
}

/// A type that can be read from WAVE.
pub trait FromWave: Sized {
    /// Reads one value.
    ///
    /// # Errors
    /// If the text there is not a value of this type.
    fn read(reader: &mut Reader<'_>) -> Result<Self, WaveError>;

    /// The value of a payload that is not there (`ok` without `(...)`): only `()` has one.
    fn absent() -> Option<Self> {
        None
    }
}

/// The text being read, and where.
pub struct Reader<'a> {
    text: &'a str,
    pos: usize,
}

impl Reader<'_> {
    fn error(&self, expected: &str) -> WaveError {
        WaveError {
            message: format!(
                "expected {expected} at column {} of `{}`",
                self.pos + 1,
                self.text
            ),
        }
    }

    fn skip_space(&mut self) {
        while self.rest().starts_with(|c: char| c.is_whitespace()) {
            self.pos += 1;
        }
    }

    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    /// Consumes `token` (after spaces) if it is next.
    fn eat(&mut self, token: &str) -> bool {
        self.skip_space();
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: &str) -> Result<(), WaveError> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(self.error(&format!("`{token}`")))
        }
    }

    /// The next word of number or label characters.
    fn word(&mut self) -> &str {
        self.skip_space();
        let start = self.pos;
        while self
            .rest()
            .starts_with(|c: char| c.is_ascii_alphanumeric() || "-+._".contains(c))
        {
            self.pos += 1;
        }
        &self.text[start..self.pos]
    }

    /// A quoted string or char, escapes resolved.
    fn quoted(&mut self, quote: char) -> Result<String, WaveError> {
        self.skip_space();
        if !self.rest().starts_with(quote) {
            return Err(self.error(&format!("`{quote}`")));
        }
        self.pos += 1;
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((at, c)) = chars.next() {
            match c {
                c if c == quote => {
                    self.pos += at + 1;
                    return Ok(out);
                }
                '\\' => match chars.next().map(|(_, c)| c) {
                    Some('n') => out.push('\n'),
                    Some('r') => out.push('\r'),
                    Some('t') => out.push('\t'),
                    Some(c @ ('\\' | '"' | '\'')) => out.push(c),
                    Some('u') => {
                        let hex: String = chars
                            .by_ref()
                            .map(|(_, c)| c)
                            .skip(1)
                            .take_while(|&c| c != '}')
                            .collect();
                        let c = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32);
                        out.push(c.ok_or_else(|| self.error("a unicode escape"))?);
                    }
                    _ => return Err(self.error("an escape")),
                },
                c => out.push(c),
            }
        }
        Err(self.error(&format!("the closing `{quote}`")))
    }
}

macro_rules! from_wave_number {
    ($($ty:ty),*) => {
        $(impl FromWave for $ty {
            fn read(reader: &mut Reader<'_>) -> Result<Self, WaveError> {
                let word = reader.word().to_owned();
                let value = match word.as_str() {
                    "nan" => "NaN",
                    "inf" => "inf",
                    "-inf" => "-inf",
                    other => other,
                };
                value.parse().map_err(|_| reader.error(stringify!($ty)))
            }
        })*
    };
}

from_wave_number!(u8, u16, u32, u64, i8, i16, i32, i64, f32, f64);

impl FromWave for bool {
    fn read(reader: &mut Reader<'_>) -> Result<Self, WaveError> {
        match reader.word() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(reader.error("`true` or `false`")),
        }
    }
}

impl FromWave for char {
    fn read(reader: &mut Reader<'_>) -> Result<Self, WaveError> {
        let text = reader.quoted('\'')?;
        let mut chars = text.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => Ok(c),
            _ => Err(reader.error("one character")),
        }
    }
}

impl FromWave for String {
    fn read(reader: &mut Reader<'_>) -> Result<Self, WaveError> {
        reader.quoted('"')
    }
}

impl FromWave for () {
    fn read(reader: &mut Reader<'_>) -> Result<Self, WaveError> {
        reader.expect("(")?;
        reader.expect(")")
    }

    fn absent() -> Option<Self> {
        Some(())
    }
}

impl<T: FromWave> FromWave for Vec<T> {
    fn read(reader: &mut Reader<'_>) -> Result<Self, WaveError> {
        reader.expect("[")?;
        let mut items = Vec::new();
        while !reader.eat("]") {
            items.push(T::read(reader)?);
            if !reader.eat(",") {
                reader.expect("]")?;
                break;
            }
        }
        Ok(items)
    }
}

/// Reads `case(payload)`, or `case` alone for a payload type that may be absent.
fn payload<T: FromWave>(reader: &mut Reader<'_>) -> Result<T, WaveError> {
    if reader.eat("(") {
        let value = T::read(reader)?;
        reader.expect(")")?;
        Ok(value)
    } else {
        T::absent().ok_or_else(|| reader.error("`(`"))
    }
}

impl<T: FromWave> FromWave for Option<T> {
    fn read(reader: &mut Reader<'_>) -> Result<Self, WaveError> {
        match reader.word() {
            "none" => Ok(None),
            "some" => payload(reader).map(Some),
            _ => Err(reader.error("`some` or `none`")),
        }
    }
}

impl<T: FromWave, E: FromWave> FromWave for Result<T, E> {
    fn read(reader: &mut Reader<'_>) -> Result<Self, WaveError> {
        match reader.word() {
            "ok" => payload(reader).map(Ok),
            "err" => payload(reader).map(Err),
            _ => Err(reader.error("`ok` or `err`")),
        }
    }
}

macro_rules! from_wave_tuple {
    ($first:ident $(, $rest:ident)*) => {
        impl<$first: FromWave $(, $rest: FromWave)*> FromWave for ($first, $($rest,)*) {
            fn read(reader: &mut Reader<'_>) -> Result<Self, WaveError> {
                reader.expect("(")?;
                let value = ($first::read(reader)?, $({ reader.expect(",")?; $rest::read(reader)? },)*);
                reader.eat(",");
                reader.expect(")")?;
                Ok(value)
            }
        }
    };
}

from_wave_tuple!(A);
from_wave_tuple!(A, B);
from_wave_tuple!(A, B, C);
from_wave_tuple!(A, B, C, D);
from_wave_tuple!(A, B, C, D, E);
from_wave_tuple!(A, B, C, D, E, F);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::ToWave;

    fn round_trip<T: ToWave + FromWave + PartialEq + fmt::Debug>(value: T) {
        let mut text = String::new();
        value.write_wave(&mut text);
        assert_eq!(from_wave::<T>(&text), Ok(value), "through `{text}`");
    }

    #[test]
    fn values_round_trip() {
        round_trip(42u32);
        round_trip(-7i64);
        round_trip(1.5f64);
        round_trip(true);
        round_trip('ß');
        round_trip("tab\there \"quoted\" \\ \u{1}".to_owned());
        round_trip(vec![Some(1u8), None]);
        round_trip(Ok::<(u32, String), String>((1, "x".into())));
        round_trip(Err::<u8, Vec<char>>(vec!['a']));
        round_trip(vec![(1i32, 'a'), (2, 'b')]);
    }

    #[test]
    fn payload_free_cases_and_edges() {
        assert_eq!(from_wave::<Result<(), ()>>("ok"), Ok(Ok(())));
        assert_eq!(from_wave::<Vec<u32>>(" [ ] "), Ok(vec![]));
        assert_eq!(from_wave::<Vec<u32>>("[1, 2,]"), Ok(vec![1, 2]));
        assert!(from_wave::<f64>("nan").unwrap().is_nan());
        assert_eq!(from_wave::<f32>("-inf"), Ok(f32::NEG_INFINITY));
        assert!(from_wave::<u8>("256").is_err());
        assert!(from_wave::<u32>("1 2").unwrap_err().message.contains("column 3"));
        assert!(from_wave::<Option<u32>>("some").is_err());
    }
}
