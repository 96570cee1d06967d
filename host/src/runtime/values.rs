//! Conversions between poolhost's [`Value`] and wasmtime's `Val`, and the WAVE text form of a
//! value.

use std::fmt;

use wasmtime::component::{Type, Val, wasm_wave};

use crate::value::Value;

/// The core wasm value for a number: `s32`/`s64`/`f32`/`f64` are `i32`/`i64`/`f32`/`f64`.
///
/// # Errors
/// For any other value: core functions take numbers only.
pub fn to_core_val(value: &Value) -> Result<wasmtime::Val, String> {
    Ok(match value {
        Value::S32(v) => wasmtime::Val::I32(*v),
        Value::S64(v) => wasmtime::Val::I64(*v),
        Value::F32(v) => wasmtime::Val::F32(v.to_bits()),
        Value::F64(v) => wasmtime::Val::F64(v.to_bits()),
        other => return Err(format!("a core function takes numbers, not `{other}`")),
    })
}

/// A core wasm number as a [`Value`].
///
/// # Errors
/// For a reference or vector result, which core task functions cannot return.
pub fn from_core_val(val: wasmtime::Val) -> Result<Value, String> {
    Ok(match val {
        wasmtime::Val::I32(v) => Value::S32(v),
        wasmtime::Val::I64(v) => Value::S64(v),
        wasmtime::Val::F32(bits) => Value::F32(f32::from_bits(bits)),
        wasmtime::Val::F64(bits) => Value::F64(f64::from_bits(bits)),
        _ => return Err("a core function returned something other than a number".into()),
    })
}

/// The wasmtime value for `value`. Total: every [`Value`] has a `Val`.
pub fn to_val(value: &Value) -> Val {
    let boxed = |v: &Option<Box<Value>>| v.as_deref().map(|v| Box::new(to_val(v)));
    match value {
        Value::Bool(v) => Val::Bool(*v),
        Value::S8(v) => Val::S8(*v),
        Value::U8(v) => Val::U8(*v),
        Value::S16(v) => Val::S16(*v),
        Value::U16(v) => Val::U16(*v),
        Value::S32(v) => Val::S32(*v),
        Value::U32(v) => Val::U32(*v),
        Value::S64(v) => Val::S64(*v),
        Value::U64(v) => Val::U64(*v),
        Value::F32(v) => Val::Float32(*v),
        Value::F64(v) => Val::Float64(*v),
        Value::Char(v) => Val::Char(*v),
        Value::String(v) => Val::String(v.clone()),
        Value::List(v) => Val::List(v.iter().map(to_val).collect()),
        Value::Record(v) => Val::Record(v.iter().map(|(k, v)| (k.clone(), to_val(v))).collect()),
        Value::Tuple(v) => Val::Tuple(v.iter().map(to_val).collect()),
        Value::Variant(case, payload) => Val::Variant(case.clone(), boxed(payload)),
        Value::Enum(case) => Val::Enum(case.clone()),
        Value::Option(v) => Val::Option(boxed(v)),
        Value::Result(Ok(v)) => Val::Result(Ok(boxed(v))),
        Value::Result(Err(v)) => Val::Result(Err(boxed(v))),
        Value::Flags(v) => Val::Flags(v.clone()),
    }
}

/// The poolhost value for `val`.
///
/// # Errors
/// For values that cannot leave the sandbox (resources, streams, futures, maps).
pub fn from_val(val: Val) -> Result<Value, String> {
    let boxed = |v: Option<Box<Val>>| v.map(|v| from_val(*v).map(Box::new)).transpose();
    let list = |v: Vec<Val>| v.into_iter().map(from_val).collect::<Result<Vec<_>, _>>();
    Ok(match val {
        Val::Bool(v) => Value::Bool(v),
        Val::S8(v) => Value::S8(v),
        Val::U8(v) => Value::U8(v),
        Val::S16(v) => Value::S16(v),
        Val::U16(v) => Value::U16(v),
        Val::S32(v) => Value::S32(v),
        Val::U32(v) => Value::U32(v),
        Val::S64(v) => Value::S64(v),
        Val::U64(v) => Value::U64(v),
        Val::Float32(v) => Value::F32(v),
        Val::Float64(v) => Value::F64(v),
        Val::Char(v) => Value::Char(v),
        Val::String(v) => Value::String(v),
        Val::List(v) | Val::FixedLengthList(v) => Value::List(list(v)?),
        Val::Record(fields) => Value::Record(
            fields
                .into_iter()
                .map(|(k, v)| Ok((k, from_val(v)?)))
                .collect::<Result<_, String>>()?,
        ),
        Val::Tuple(v) => Value::Tuple(list(v)?),
        Val::Variant(case, payload) => Value::Variant(case, boxed(payload)?),
        Val::Enum(case) => Value::Enum(case),
        Val::Option(v) => Value::Option(boxed(v)?),
        Val::Result(Ok(v)) => Value::Result(Ok(boxed(v)?)),
        Val::Result(Err(v)) => Value::Result(Err(boxed(v)?)),
        Val::Flags(v) => Value::Flags(v),
        Val::Map(_) | Val::Resource(_) | Val::Future(_) | Val::Stream(_) | Val::ErrorContext(_) => {
            return Err(
                "the result holds a map, resource, stream or future, which cannot leave the sandbox".into(),
            );
        }
    })
}

/// `value` re-read as a value of type `ty`, through its WAVE text: checks that it fits the type
/// and gives numbers the type's width (a library caller may pass `3i32` for a `u32` parameter).
pub fn typed(value: &Value, ty: &Type) -> Result<Value, String> {
    let text = value.to_string();
    let val: Val = wasm_wave::from_str(ty, &text).map_err(|e| format!("`{text}`: {}", wave_error(&e)))?;
    from_val(val)
}

/// A WAVE parse error in one line, its place as a column of the text (1-based).
pub fn wave_error(error: &wasm_wave::parser::ParserError) -> String {
    let column = error.span().start + 1;
    match error.detail() {
        Some(detail) => format!("{}: {detail} at column {column}", error.kind()),
        None => format!("{} at column {column}", error.kind()),
    }
}

/// Shows the value in WAVE, the syntax of `poolhost run --invoke`.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Value::String(text) = self {
            // A string result may be tens of megabytes: written in runs, without a copy.
            return write_wave_string(f, text);
        }
        match wasm_wave::to_string(&to_val(self)) {
            Ok(text) => f.write_str(&text),
            Err(_) => write!(f, "{self:?}"),
        }
    }
}

/// Writes `text` as a WAVE string, escaped exactly as `wasm_wave` escapes it (quotes,
/// backslashes, tabs and newlines, control and other unprintable characters), but with runs of
/// printable ASCII written whole rather than a character at a time.
fn write_wave_string(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    f.write_str("\"")?;
    let plain = |c: char| c.is_ascii() && !c.is_ascii_control() && !matches!(c, '\\' | '"' | '\'');
    let mut rest = text;
    while !rest.is_empty() {
        let run = rest.find(|c: char| !plain(c)).unwrap_or(rest.len());
        f.write_str(&rest[..run])?;
        rest = &rest[run..];
        let mut chars = rest.chars();
        if let Some(c) = chars.next() {
            if "\\\"\'\t\r\n".contains(c) {
                write!(f, "{}", c.escape_default())?;
            } else if c.is_control() {
                write!(f, "{}", c.escape_unicode())?;
            } else {
                write!(f, "{}", c.escape_debug())?;
            }
            rest = chars.as_str();
        }
    }
    f.write_str("\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_print_as_wasm_wave_prints_them() {
        for text in [
            "",
            "plain",
            "a\"b\\c'd\te\rf\ng",
            "\u{7}\u{7f}é😀\u{301}x\u{200b}",
            "\u{301}start",
        ] {
            let wave = wasm_wave::to_string(&Val::String(text.into())).unwrap();
            assert_eq!(Value::String(text.into()).to_string(), wave, "{text:?}");
        }
    }

    #[test]
    fn values_print_as_wave() {
        let v = Value::Record(vec![
            ("name".into(), "a\"b".into()),
            ("n".into(), Value::Option(Some(Box::new(Value::U32(3))))),
            ("xs".into(), Value::List(vec![Value::S8(-1), Value::S8(2)])),
        ]);
        assert_eq!(v.to_string(), r#"{name: "a\"b", n: some(3), xs: [-1, 2]}"#);
        assert_eq!(Value::Result(Err(None)).to_string(), "err");
        assert_eq!(Value::Flags(vec!["a".into(), "b".into()]).to_string(), "{a, b}");
    }

    #[test]
    fn values_round_trip_through_val() {
        let v = Value::Tuple(vec![
            Value::Char('ß'),
            Value::F64(1.5),
            Value::Variant("x".into(), Some(Box::new(Value::U64(u64::MAX)))),
            Value::Enum("e".into()),
        ]);
        assert_eq!(from_val(to_val(&v)).unwrap(), v);
    }

    #[test]
    fn typed_widens_and_checks() {
        assert_eq!(typed(&Value::S32(3), &Type::U32), Ok(Value::U32(3)));
        assert!(typed(&Value::S32(-3), &Type::U32).is_err());
        assert!(typed(&Value::String("x".into()), &Type::U32).is_err());
    }
}
