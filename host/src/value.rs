//! Component-model values as plain data: task arguments and results.
//!
//! [`Value`] mirrors the value types a component function can take and return (everything but
//! resources, streams and futures, which cannot leave a sandbox). It serialises for the wire between
//! host and workers; the runtime converts it to and from wasmtime's values and prints it as WAVE.
//!
//! Decoding a value is recursive, so bytes from outside (a worker's result, a cluster's task) are
//! decoded at most [`MAX_DEPTH`] levels deep: deeper bytes are an error, not a stack overflow.

use std::cell::Cell;

use serde::{Deserialize, Deserializer, Serialize};

/// The deepest a decoded value may nest: deeper than any component-model type allows
/// (wasmparser caps a component type's depth at 100), and shallow enough that decoding it stays
/// well within a thread's stack.
pub const MAX_DEPTH: u32 = 128;

/// A component-model value.
///
/// Displayed in WAVE, the syntax `poolhost run --invoke` reads and prints (`42`, `"text"`,
/// `[1, 2]`, `some(3)`, `{a: 1}`).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[allow(missing_docs)] // the variants are the component model's own types, named as in WIT
pub enum Value {
    Bool(bool),
    S8(i8),
    U8(u8),
    S16(i16),
    U16(u16),
    S32(i32),
    U32(u32),
    S64(i64),
    U64(u64),
    F32(f32),
    F64(f64),
    Char(char),
    String(String),
    List(Vec<Value>),
    /// Field names and values, in the record type's field order.
    Record(Vec<(String, Value)>),
    Tuple(Vec<Value>),
    /// The case name and its payload, if the case has one.
    Variant(String, Option<Box<Value>>),
    /// The case name.
    Enum(String),
    Option(Option<Box<Value>>),
    /// `ok` or `err`, each with its payload if the result type has one.
    Result(Result<Option<Box<Value>>, Option<Box<Value>>>),
    /// The names of the flags that are set.
    Flags(Vec<String>),
}

/// [`Value`]'s shape for decoding: the same variants in the same order, so the same bytes, with
/// each nested value decoded through [`Value`]'s own `Deserialize`, which counts the depth.
#[derive(Deserialize)]
#[serde(rename = "Value")]
enum Decoded {
    Bool(bool),
    S8(i8),
    U8(u8),
    S16(i16),
    U16(u16),
    S32(i32),
    U32(u32),
    S64(i64),
    U64(u64),
    F32(f32),
    F64(f64),
    Char(char),
    String(String),
    List(Vec<Value>),
    Record(Vec<(String, Value)>),
    Tuple(Vec<Value>),
    Variant(String, Option<Box<Value>>),
    Enum(String),
    Option(Option<Box<Value>>),
    Result(Result<Option<Box<Value>>, Option<Box<Value>>>),
    Flags(Vec<String>),
}

impl From<Decoded> for Value {
    fn from(decoded: Decoded) -> Value {
        match decoded {
            Decoded::Bool(v) => Value::Bool(v),
            Decoded::S8(v) => Value::S8(v),
            Decoded::U8(v) => Value::U8(v),
            Decoded::S16(v) => Value::S16(v),
            Decoded::U16(v) => Value::U16(v),
            Decoded::S32(v) => Value::S32(v),
            Decoded::U32(v) => Value::U32(v),
            Decoded::S64(v) => Value::S64(v),
            Decoded::U64(v) => Value::U64(v),
            Decoded::F32(v) => Value::F32(v),
            Decoded::F64(v) => Value::F64(v),
            Decoded::Char(v) => Value::Char(v),
            Decoded::String(v) => Value::String(v),
            Decoded::List(v) => Value::List(v),
            Decoded::Record(v) => Value::Record(v),
            Decoded::Tuple(v) => Value::Tuple(v),
            Decoded::Variant(name, v) => Value::Variant(name, v),
            Decoded::Enum(v) => Value::Enum(v),
            Decoded::Option(v) => Value::Option(v),
            Decoded::Result(v) => Value::Result(v),
            Decoded::Flags(v) => Value::Flags(v),
        }
    }
}

thread_local! {
    /// How deep the value being decoded on this thread is.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Takes a level off the depth when the level's decoding ends, however it ends.
struct Level;

impl Drop for Level {
    fn drop(&mut self) {
        DEPTH.with(|depth| depth.set(depth.get() - 1));
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
        let depth = DEPTH.with(|depth| {
            depth.set(depth.get() + 1);
            depth.get()
        });
        let _level = Level;
        if depth > MAX_DEPTH {
            return Err(serde::de::Error::custom(format_args!(
                "a value nested more than {MAX_DEPTH} deep"
            )));
        }
        Decoded::deserialize(deserializer).map(Value::from)
    }
}

impl Value {
    /// About how many bytes of memory the value takes: its own size and what it holds.
    pub(crate) fn weight(&self) -> usize {
        let own = std::mem::size_of::<Value>();
        let boxed = |value: &Option<Box<Value>>| value.as_deref().map_or(0, Value::weight);
        own + match self {
            Value::String(text) | Value::Enum(text) => text.len(),
            Value::List(values) | Value::Tuple(values) => values.iter().map(Value::weight).sum(),
            Value::Record(fields) => fields
                .iter()
                .map(|(name, value)| name.len() + value.weight())
                .sum(),
            Value::Variant(name, value) => name.len() + boxed(value),
            Value::Option(value) => boxed(value),
            Value::Result(Ok(value) | Err(value)) => boxed(value),
            Value::Flags(names) => names.iter().map(String::len).sum(),
            _ => 0,
        }
    }
}

macro_rules! from_primitive {
    ($($ty:ty => $variant:ident),* $(,)?) => {
        $(impl From<$ty> for Value {
            fn from(v: $ty) -> Self {
                Value::$variant(v)
            }
        })*
    };
}

from_primitive! {
    bool => Bool, i8 => S8, u8 => U8, i16 => S16, u16 => U16, i32 => S32, u32 => U32,
    i64 => S64, u64 => U64, f32 => F32, f64 => F64, char => Char, String => String,
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::String(v.to_owned())
    }
}

impl<T: Into<Value>> From<Vec<T>> for Value {
    fn from(v: Vec<T>) -> Self {
        Value::List(v.into_iter().map(Into::into).collect())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        Value::Option(v.map(|v| Box::new(v.into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> Value {
        (0..depth).fold(Value::Bool(true), |inner, _| Value::Option(Some(Box::new(inner))))
    }

    #[test]
    fn values_decode_as_deep_as_types_go_and_no_deeper() {
        for depth in [0, 1, 100, MAX_DEPTH as usize - 1] {
            let bytes = postcard::to_allocvec(&nested(depth)).unwrap();
            assert_eq!(postcard::from_bytes::<Value>(&bytes).unwrap(), nested(depth));
        }
        let bytes = postcard::to_allocvec(&nested(MAX_DEPTH as usize)).unwrap();
        assert!(postcard::from_bytes::<Value>(&bytes).is_err());
        // Every variant decodes to itself.
        let all = Value::Record(vec![
            ("a".into(), Value::List(vec![Value::S8(-1), Value::U8(1)])),
            (
                "b".into(),
                Value::Tuple(vec![Value::S16(-2), Value::U16(2), Value::S32(-3)]),
            ),
            (
                "c".into(),
                Value::Variant("v".into(), Some(Box::new(Value::U32(3)))),
            ),
            ("d".into(), Value::Enum("e".into())),
            ("e".into(), Value::Result(Err(Some(Box::new(Value::S64(-4)))))),
            ("f".into(), Value::Flags(vec!["x".into()])),
            (
                "g".into(),
                Value::Tuple(vec![Value::U64(4), Value::F32(0.5), Value::F64(0.25)]),
            ),
            (
                "h".into(),
                Value::Tuple(vec![Value::Char('z'), Value::String("s".into())]),
            ),
        ]);
        let bytes = postcard::to_allocvec(&all).unwrap();
        assert_eq!(postcard::from_bytes::<Value>(&bytes).unwrap(), all);
    }

    #[test]
    fn bytes_nested_a_million_deep_are_an_error_not_a_stack_overflow() {
        let leaf = postcard::to_allocvec(&Value::Bool(true)).unwrap();
        let one = postcard::to_allocvec(&nested(1)).unwrap();
        let level = &one[..one.len() - leaf.len()];
        let mut bytes = level.repeat(1_000_000);
        bytes.extend_from_slice(&leaf);
        assert!(postcard::from_bytes::<Value>(&bytes).is_err());
        // The depth is back to zero for the next value decoded on this thread.
        let bytes = postcard::to_allocvec(&nested(3)).unwrap();
        assert_eq!(postcard::from_bytes::<Value>(&bytes).unwrap(), nested(3));
    }
}
