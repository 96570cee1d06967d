//! Component-model values as plain data: task arguments and results.
//!
//! [`Value`] mirrors the value types a component function can take and return (everything but
//! resources, streams and futures, which cannot leave a sandbox). It serialises for the wire between
//! host and workers; the runtime converts it to and from wasmtime's values and prints it as WAVE.

use serde::{Deserialize, Serialize};

/// A component-model value.
///
/// Displayed in WAVE, the syntax `poolhost run --invoke` reads and prints (`42`, `"text"`,
/// `[1, 2]`, `some(3)`, `{a: 1}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
