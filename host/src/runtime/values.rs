//! Conversions between poolhost's [`Value`] and wasmtime's `Val`, and the WAVE text form of a
//! value.

use std::fmt;

use wasmtime::component::{Type, Val, types, wasm_wave};

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

/// Checks `value` against `ty` by walking both, with no text in between: `None` if it already has
/// exactly the type (nothing to copy), else the value converted to it (a library caller may pass
/// `3i32` for a `u32` parameter).
///
/// Accepts what printing the value in WAVE and parsing the text as `ty` accepted:
/// - a number for any number type it fits: integers convert when in range and to floats
///   (rounded to nearest); a float converts as its shortest decimal reads as the type, so `3.0`
///   fits a `u32`, `3.5` and `-0.0` fit no unsigned type, and `0.1f32` is `0.1` as an `f64`. A
///   NaN becomes the canonical NaN;
/// - a record's fields in any order, a missing field of an `option` type being `none`; each
///   field once, and only the type's fields (WAVE ignores unknown fields: they do not fit);
/// - an enum case for a variant case without a payload, and the reverse;
/// - for an `option<T>` or a `result<T, _>` whose `T` is neither an option nor a result, a bare
///   value of `T` as `some(…)` or `ok(…)`;
/// - flags each at most once and of the type, kept in name order (as WAVE parses them);
/// - lists and tuples element by element; bools, chars and strings as they are.
///
/// # Errors
/// One line saying what does not fit, and where: ``field `xs`, element 2: `-3` does not fit u32``.
pub fn retype(value: &Value, ty: &Type) -> Result<Option<Value>, String> {
    fit(value, ty).map_err(|misfit| misfit.to_string())
}

/// Why a value does not fit a type: what, and where in the value (innermost place first).
#[derive(Debug)]
struct Misfit {
    at: Vec<String>,
    what: String,
    /// The value is of the wrong kind altogether, rather than a wrong case, field or number.
    wrong_kind: bool,
}

impl Misfit {
    fn new(what: String) -> Misfit {
        Misfit {
            at: Vec::new(),
            what,
            wrong_kind: false,
        }
    }

    /// A value of another kind than `ty`.
    fn expected(ty: &Type, value: &Value) -> Misfit {
        Misfit {
            wrong_kind: true,
            ..Misfit::new(format!("expected {}, found {}", type_name(ty), shown(value)))
        }
    }

    fn at(mut self, place: impl fmt::Display) -> Misfit {
        self.at.push(place.to_string());
        self
    }
}

impl fmt::Display for Misfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, place) in self.at.iter().rev().enumerate() {
            f.write_str(if i == 0 { "" } else { ", " })?;
            f.write_str(place)?;
        }
        if !self.at.is_empty() {
            f.write_str(": ")?;
        }
        f.write_str(&self.what)
    }
}

/// `value` walked against `ty`: `None` if it has exactly the type, else the converted value.
fn fit(value: &Value, ty: &Type) -> Result<Option<Value>, Misfit> {
    let same = |fits: bool| {
        if fits {
            Ok(None)
        } else {
            Err(Misfit::expected(ty, value))
        }
    };
    match ty {
        Type::Bool => same(matches!(value, Value::Bool(_))),
        Type::Char => same(matches!(value, Value::Char(_))),
        Type::String => same(matches!(value, Value::String(_))),
        Type::S8 => int(value, ty, Value::S8),
        Type::U8 => int(value, ty, Value::U8),
        Type::S16 => int(value, ty, Value::S16),
        Type::U16 => int(value, ty, Value::U16),
        Type::S32 => int(value, ty, Value::S32),
        Type::U32 => int(value, ty, Value::U32),
        Type::S64 => int(value, ty, Value::S64),
        Type::U64 => int(value, ty, Value::U64),
        Type::Float32 => changed(
            value,
            Value::F32(float32(value).ok_or_else(|| Misfit::expected(ty, value))?),
        ),
        Type::Float64 => changed(
            value,
            Value::F64(float64(value).ok_or_else(|| Misfit::expected(ty, value))?),
        ),
        Type::List(list) => fit_list(value, ty, list),
        Type::Tuple(tuple) => fit_tuple(value, ty, tuple),
        Type::Record(record) => fit_record(value, ty, record),
        Type::Variant(variant) => fit_variant(value, ty, variant),
        Type::Enum(cases) => fit_enum(value, ty, cases),
        Type::Option(option) => fit_option(value, ty, option),
        Type::Result(result) => fit_result(value, ty, result),
        Type::Flags(flags) => fit_flags(value, ty, flags),
        Type::Own(_)
        | Type::Borrow(_)
        | Type::Future(_)
        | Type::Stream(_)
        | Type::ErrorContext
        | Type::Map(_)
        | Type::FixedLengthList(_) => Err(Misfit::new(format!(
            "{} values cannot cross into a worker",
            unsupported_name(ty)
        ))),
    }
}

/// `value` walked against the list type `ty`, element by element.
fn fit_list(value: &Value, ty: &Type, list: &types::List) -> Result<Option<Value>, Misfit> {
    let Value::List(items) = value else {
        return Err(Misfit::expected(ty, value));
    };
    let element = list.ty();
    let items = each(items, |i, item| {
        fit(item, &element).map_err(|e| e.at(format!("element {i}")))
    })?;
    Ok(items.map(Value::List))
}

/// `value` walked against the tuple type `ty`: as many values, each of its type.
fn fit_tuple(value: &Value, ty: &Type, tuple: &types::Tuple) -> Result<Option<Value>, Misfit> {
    let Value::Tuple(items) = value else {
        return Err(Misfit::expected(ty, value));
    };
    let types: Vec<Type> = tuple.types().collect();
    if items.len() != types.len() {
        return Err(Misfit::new(format!(
            "expected a tuple of {} values ({}), found {}",
            types.len(),
            type_name(ty),
            shown(value)
        )));
    }
    let items = each(items, |i, item| {
        fit(item, &types[i]).map_err(|e| e.at(format!("element {i}")))
    })?;
    Ok(items.map(Value::Tuple))
}

/// `value` walked against the variant type `ty`: a case of it, with the case's payload if it
/// has one (a bare case name will do for a case without).
fn fit_variant(value: &Value, ty: &Type, variant: &types::Variant) -> Result<Option<Value>, Misfit> {
    let (name, payload) = match value {
        Value::Variant(name, payload) => (name, payload.as_deref()),
        Value::Enum(name) => (name, None),
        _ => return Err(Misfit::expected(ty, value)),
    };
    let case = variant
        .cases()
        .find(|case| case.name == name)
        .ok_or_else(|| Misfit::new(format!("`{name}` is not a case of {}", type_name(ty))))?;
    let payload = fit_payload(name, case.ty.as_ref(), payload)?;
    Ok(match (payload, value) {
        (Some(payload), _) => Some(Value::Variant(name.clone(), Some(payload))),
        (None, Value::Enum(_)) => Some(Value::Variant(name.clone(), None)),
        (None, _) => None,
    })
}

/// `value` walked against the enum type `ty`: one of its cases (a variant case without a
/// payload will do).
fn fit_enum(value: &Value, ty: &Type, cases: &types::Enum) -> Result<Option<Value>, Misfit> {
    let name = match value {
        Value::Enum(name) | Value::Variant(name, None) => name,
        _ => return Err(Misfit::expected(ty, value)),
    };
    if !cases.names().any(|case| case == name) {
        return Err(Misfit::new(format!(
            "`{name}` is not a case of {}",
            type_name(ty)
        )));
    }
    Ok(matches!(value, Value::Variant(..)).then(|| Value::Enum(name.clone())))
}

/// `value` walked against the option type `ty`: `none`, `some(…)`, or a bare value of the inner
/// type, as `some(…)`.
fn fit_option(value: &Value, ty: &Type, option: &types::OptionType) -> Result<Option<Value>, Misfit> {
    let inner = option.ty();
    match value {
        Value::Option(None) => Ok(None),
        Value::Option(Some(some)) => {
            let some = fit(some, &inner).map_err(|e| e.at("`some`"))?;
            Ok(some.map(|some| Value::Option(Some(Box::new(some)))))
        }
        _ => {
            let some = flattened(value, ty, Some(inner))?;
            Ok(Some(Value::Option(Some(Box::new(some)))))
        }
    }
}

/// `value` walked against the result type `ty`: `ok(…)`, `err(…)`, or a bare value of the ok
/// type, as `ok(…)`.
fn fit_result(value: &Value, ty: &Type, result: &types::ResultType) -> Result<Option<Value>, Misfit> {
    match value {
        Value::Result(Ok(ok)) => {
            let ok = fit_payload("ok", result.ok().as_ref(), ok.as_deref())?;
            Ok(ok.map(|ok| Value::Result(Ok(Some(ok)))))
        }
        Value::Result(Err(err)) => {
            let err = fit_payload("err", result.err().as_ref(), err.as_deref())?;
            Ok(err.map(|err| Value::Result(Err(Some(err)))))
        }
        _ => {
            let ok = flattened(value, ty, result.ok())?;
            Ok(Some(Value::Result(Ok(Some(Box::new(ok))))))
        }
    }
}

/// `value` walked against the flags type `ty`: each flag one of the type's, none twice, in
/// name order.
fn fit_flags(value: &Value, ty: &Type, flags: &types::Flags) -> Result<Option<Value>, Misfit> {
    let Value::Flags(names) = value else {
        return Err(Misfit::expected(ty, value));
    };
    let mut sorted: Vec<&String> = names.iter().collect();
    sorted.sort();
    if let Some(twice) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(Misfit::new(format!("flag `{}` is set twice", twice[0])));
    }
    if let Some(name) = names.iter().find(|name| !flags.names().any(|flag| flag == *name)) {
        return Err(Misfit::new(format!(
            "`{name}` is not a flag of {}",
            type_name(ty)
        )));
    }
    let in_order = names.windows(2).all(|pair| pair[0] < pair[1]);
    Ok((!in_order).then(|| Value::Flags(sorted.into_iter().cloned().collect())))
}

/// `value` as an integer of `ty`, made by `make`.
fn int<T>(value: &Value, ty: &Type, make: fn(T) -> Value) -> Result<Option<Value>, Misfit>
where
    T: TryFrom<i128> + std::str::FromStr,
{
    let converted = match *value {
        Value::S8(v) => T::try_from(v.into()).ok(),
        Value::U8(v) => T::try_from(v.into()).ok(),
        Value::S16(v) => T::try_from(v.into()).ok(),
        Value::U16(v) => T::try_from(v.into()).ok(),
        Value::S32(v) => T::try_from(v.into()).ok(),
        Value::U32(v) => T::try_from(v.into()).ok(),
        Value::S64(v) => T::try_from(v.into()).ok(),
        Value::U64(v) => T::try_from(v.into()).ok(),
        // As WAVE read a float printed in it: its shortest decimal, which must be an integer in
        // range (`3`, but not `3.5`, `inf` or, for unsigned types, `-0`).
        Value::F32(v) => v.to_string().parse().ok(),
        Value::F64(v) => v.to_string().parse().ok(),
        _ => return Err(Misfit::expected(ty, value)),
    };
    let converted =
        converted.ok_or_else(|| Misfit::new(format!("{} does not fit {}", shown(value), type_name(ty))))?;
    changed(value, make(converted))
}

/// `value` as an `f32`: integers rounded to nearest, an `f64` as its shortest decimal reads.
fn float32(value: &Value) -> Option<f32> {
    let v = match *value {
        Value::S8(v) => v.into(),
        Value::U8(v) => v.into(),
        Value::S16(v) => v.into(),
        Value::U16(v) => v.into(),
        Value::S32(v) => v as f32,
        Value::U32(v) => v as f32,
        Value::S64(v) => v as f32,
        Value::U64(v) => v as f32,
        Value::F32(v) => v,
        Value::F64(v) if v.is_nan() => f32::NAN,
        Value::F64(v) => v.to_string().parse().ok()?,
        _ => return None,
    };
    Some(if v.is_nan() { f32::NAN } else { v })
}

/// `value` as an `f64`: integers rounded to nearest, an `f32` as its shortest decimal reads
/// (`0.1f32` is `0.1`, not `0.100000001…`).
fn float64(value: &Value) -> Option<f64> {
    let v = match *value {
        Value::S8(v) => v.into(),
        Value::U8(v) => v.into(),
        Value::S16(v) => v.into(),
        Value::U16(v) => v.into(),
        Value::S32(v) => v.into(),
        Value::U32(v) => v.into(),
        Value::S64(v) => v as f64,
        Value::U64(v) => v as f64,
        Value::F32(v) if v.is_nan() => f64::NAN,
        Value::F32(v) => v.to_string().parse().ok()?,
        Value::F64(v) => v,
        _ => return None,
    };
    Some(if v.is_nan() { f64::NAN } else { v })
}

/// `None` if `new` is `value` as it was (a NaN is always replaced by the canonical one).
fn changed(value: &Value, new: Value) -> Result<Option<Value>, Misfit> {
    Ok((new != *value).then_some(new))
}

/// `items` each walked by `fit_one`: `None` if none changed, else all of them, the unchanged
/// ones copied. Nothing is copied for a list that fits as it is.
fn each(
    items: &[Value],
    mut fit_one: impl FnMut(usize, &Value) -> Result<Option<Value>, Misfit>,
) -> Result<Option<Vec<Value>>, Misfit> {
    let mut out: Option<Vec<Value>> = None;
    for (i, item) in items.iter().enumerate() {
        match (fit_one(i, item)?, &mut out) {
            (None, None) => {}
            (new, Some(out)) => out.push(new.unwrap_or_else(|| item.clone())),
            (Some(new), None) => {
                let mut all = Vec::with_capacity(items.len());
                all.extend_from_slice(&items[..i]);
                all.push(new);
                out = Some(all);
            }
        }
    }
    Ok(out)
}

/// A record: each field of the type once, in any order, a missing field of an `option` type
/// being `none`; no other field.
fn fit_record(value: &Value, ty: &Type, record: &types::Record) -> Result<Option<Value>, Misfit> {
    let Value::Record(given) = value else {
        return Err(Misfit::expected(ty, value));
    };
    let fields: Vec<types::Field<'_>> = record.fields().collect();
    for (i, (name, _)) in given.iter().enumerate() {
        if given[..i].iter().any(|(earlier, _)| earlier == name) {
            return Err(Misfit::new(format!("field `{name}` is given twice")));
        }
        if !fields.iter().any(|field| field.name == name) {
            return Err(Misfit::new(format!("{} has no field `{name}`", type_name(ty))));
        }
    }
    // Each field of the type: converted (`Ok`), or as given (`Err`: its index among the given).
    let mut fitted = Vec::with_capacity(fields.len());
    let mut in_shape = given.len() == fields.len();
    for (i, field) in fields.iter().enumerate() {
        match given.iter().position(|(name, _)| name == field.name) {
            Some(at) => {
                let new =
                    fit(&given[at].1, &field.ty).map_err(|e| e.at(format_args!("field `{}`", field.name)))?;
                in_shape &= at == i && new.is_none();
                fitted.push(new.ok_or(at));
            }
            None if matches!(field.ty, Type::Option(_)) => {
                in_shape = false;
                fitted.push(Ok(Value::Option(None)));
            }
            None => {
                return Err(Misfit::new(format!(
                    "missing field `{}` of {}",
                    field.name,
                    type_name(ty)
                )));
            }
        }
    }
    if in_shape {
        return Ok(None);
    }
    let fields = fields.iter().zip(fitted).map(|(field, fitted)| {
        let value = fitted.unwrap_or_else(|at| given[at].1.clone());
        (field.name.to_owned(), value)
    });
    Ok(Some(Value::Record(fields.collect())))
}

/// The payload of a variant case or a result, against the case's payload type.
fn fit_payload(case: &str, ty: Option<&Type>, payload: Option<&Value>) -> Result<Option<Box<Value>>, Misfit> {
    match (ty, payload) {
        (None, None) => Ok(None),
        (Some(ty), Some(payload)) => {
            let fitted = fit(payload, ty).map_err(|e| e.at(format_args!("`{case}`")))?;
            Ok(fitted.map(Box::new))
        }
        (Some(_), None) => Err(Misfit::new(format!("`{case}` takes a payload"))),
        (None, Some(_)) => Err(Misfit::new(format!("`{case}` takes no payload"))),
    }
}

/// `value` given bare for an `option<T>` or `result<T, _>` (`outer`), as `some(value)` or
/// `ok(value)`: WAVE reads it so when `T` is neither an option nor a result.
fn flattened(value: &Value, outer: &Type, inner: Option<Type>) -> Result<Value, Misfit> {
    let inner = inner
        .filter(|inner| !matches!(inner, Type::Option(_) | Type::Result(_)))
        .ok_or_else(|| Misfit::expected(outer, value))?;
    match fit(value, &inner) {
        Ok(fitted) => Ok(fitted.unwrap_or_else(|| value.clone())),
        // Not a `T` either: say what was expected in the first place.
        Err(misfit) if misfit.wrong_kind && misfit.at.is_empty() => Err(Misfit::expected(outer, value)),
        Err(misfit) => Err(misfit),
    }
}

/// A type for a message: in WIT syntax, cut short past 80 characters.
fn type_name(ty: &Type) -> String {
    const MAX: usize = 80;
    let mut name = match ty {
        Type::Own(_)
        | Type::Borrow(_)
        | Type::Future(_)
        | Type::Stream(_)
        | Type::ErrorContext
        | Type::Map(_) => unsupported_name(ty).to_owned(),
        _ => wasm_wave::wasm::DisplayType(ty).to_string(),
    };
    if name.len() > MAX {
        let mut end = MAX;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
        name.push('…');
    }
    name
}

fn unsupported_name(ty: &Type) -> &'static str {
    match ty {
        Type::Own(_) | Type::Borrow(_) => "resource",
        Type::Future(_) => "future",
        Type::Stream(_) => "stream",
        Type::ErrorContext => "error-context",
        Type::Map(_) => "map",
        Type::FixedLengthList(_) => "fixed-length list",
        _ => "other",
    }
}

/// A value for a message, short: numbers, bools and chars in WAVE, strings cut short, other
/// values by their kind.
fn shown(value: &Value) -> String {
    const MAX_CHARS: usize = 24;
    let head = |payload: &Option<Box<Value>>| if payload.is_some() { "(…)" } else { "" };
    match value {
        Value::String(text) if text.chars().count() > MAX_CHARS => {
            let start: String = text.chars().take(MAX_CHARS).collect();
            let start = Value::String(start).to_string();
            format!(
                "a string of {} bytes, `{}…\"`",
                text.len(),
                &start[..start.len() - 1]
            )
        }
        Value::List(items) => format!("a list of {} values", items.len()),
        Value::Tuple(items) => format!("a tuple of {} values", items.len()),
        Value::Record(_) => "a record".into(),
        Value::Variant(name, payload) => format!("case `{name}{}`", head(payload)),
        Value::Enum(name) => format!("`{name}`"),
        Value::Option(some) => format!("`{}`", if some.is_some() { "some(…)" } else { "none" }),
        Value::Result(Ok(ok)) => format!("`ok{}`", head(ok)),
        Value::Result(Err(err)) => format!("`err{}`", head(err)),
        Value::Flags(names) => format!("flags `{{{}}}`", names.join(", ")),
        scalar => format!("`{scalar}`"),
    }
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

    /// `value` as a value of type `ty`, converted or as it was.
    fn typed(value: &Value, ty: &Type) -> Result<Value, String> {
        Ok(retype(value, ty)?.unwrap_or_else(|| value.clone()))
    }

    /// What `typed` did before it was structural: the value printed in WAVE and parsed as `ty`.
    fn typed_by_text(value: &Value, ty: &Type) -> Result<Value, String> {
        let text = value.to_string();
        let val: Val = wasm_wave::from_str(ty, &text).map_err(|e| format!("`{text}`: {}", wave_error(&e)))?;
        from_val(val)
    }

    /// A component importing one function per type the tests check values against, `t-NAME`
    /// taking one parameter of the type; its nominal types are imported under their names.
    const TYPES: &str = r#"(component
        (import "res" (type $Res (sub resource)))
        (type $r (record (field "a" u32) (field "b" (option string)) (field "c" (list s8))))
        (import "r" (type $R (eq $r)))
        (type $v (variant (case "a") (case "b" u32) (case "none") (case "c" (option u32))))
        (import "v" (type $V (eq $v)))
        (type $e (enum "x" "y" "ok"))
        (import "e" (type $E (eq $e)))
        (type $f (flags "a" "b" "c" "true"))
        (import "f" (type $F (eq $f)))
        (type $k (record (field "some" bool) (field "none" (option u32))))
        (import "k" (type $K (eq $k)))
        (type $n (record (field "r" $R) (field "v" (list $V)) (field "f" $F) (field "t" (tuple s8 char))))
        (import "n" (type $N (eq $n)))
        (import "t-bool" (func (param "x" bool)))
        (import "t-s8" (func (param "x" s8)))
        (import "t-u8" (func (param "x" u8)))
        (import "t-s16" (func (param "x" s16)))
        (import "t-u16" (func (param "x" u16)))
        (import "t-s32" (func (param "x" s32)))
        (import "t-u32" (func (param "x" u32)))
        (import "t-s64" (func (param "x" s64)))
        (import "t-u64" (func (param "x" u64)))
        (import "t-f32" (func (param "x" f32)))
        (import "t-f64" (func (param "x" f64)))
        (import "t-char" (func (param "x" char)))
        (import "t-string" (func (param "x" string)))
        (import "t-list" (func (param "x" (list u32))))
        (import "t-list-list" (func (param "x" (list (list s8)))))
        (import "t-tuple" (func (param "x" (tuple u32 string))))
        (import "t-tuple1" (func (param "x" (tuple f64))))
        (import "t-record" (func (param "x" $R)))
        (import "t-keywords" (func (param "x" $K)))
        (import "t-nested" (func (param "x" $N)))
        (import "t-variant" (func (param "x" $V)))
        (import "t-enum" (func (param "x" $E)))
        (import "t-flags" (func (param "x" $F)))
        (import "t-option" (func (param "x" (option u32))))
        (import "t-option-option" (func (param "x" (option (option u32)))))
        (import "t-option-list" (func (param "x" (option (list u32)))))
        (import "t-option-variant" (func (param "x" (option $V))))
        (import "t-option-enum" (func (param "x" (option $E))))
        (import "t-option-record" (func (param "x" (option $R))))
        (import "t-option-result" (func (param "x" (option (result u32)))))
        (import "t-result" (func (param "x" (result u32 (error string)))))
        (import "t-result-bare" (func (param "x" (result))))
        (import "t-result-err" (func (param "x" (result (error string)))))
        (import "t-result-option" (func (param "x" (result (option u32)))))
        (import "t-result-f64" (func (param "x" (result f64))))
        (import "t-list-option-record" (func (param "x" (list (option $R)))))
        (import "t-own" (func (param "x" (own $Res))))
        (import "t-fixed" (func (param "x" (list u32 2))))
    )"#;

    /// The types of [`TYPES`], by name (`u32`, `record`, ...).
    fn types() -> &'static [(String, Type)] {
        static TYPES_BY_NAME: std::sync::OnceLock<Vec<(String, Type)>> = std::sync::OnceLock::new();
        TYPES_BY_NAME.get_or_init(|| {
            let mut config = wasmtime::Config::new();
            config.wasm_component_model_fixed_length_lists(true);
            let engine = wasmtime::Engine::new(&config).unwrap();
            let bytes = wat::parse_str(TYPES).unwrap();
            let component = wasmtime::component::Component::new(&engine, &bytes).unwrap();
            let component_type = component.component_type();
            let imports = component_type.imports(&engine);
            imports
                .filter_map(|(name, item)| match item.ty {
                    wasmtime::component::types::ComponentItem::ComponentFunc(func) => {
                        let (_, ty) = func.params().next().unwrap();
                        Some((name.strip_prefix("t-").unwrap().to_owned(), ty))
                    }
                    _ => None,
                })
                .collect()
        })
    }

    fn ty(name: &str) -> Type {
        let found = types().iter().find(|(n, _)| n == name);
        found.unwrap_or_else(|| panic!("no type {name}")).1.clone()
    }

    fn some(value: Value) -> Value {
        Value::Option(Some(Box::new(value)))
    }

    fn variant(case: &str, payload: Option<Value>) -> Value {
        Value::Variant(case.into(), payload.map(Box::new))
    }

    fn record(fields: &[(&str, Value)]) -> Value {
        Value::Record(fields.iter().map(|(n, v)| ((*n).to_owned(), v.clone())).collect())
    }

    fn flags(names: &[&str]) -> Value {
        Value::Flags(names.iter().map(|&n| n.to_owned()).collect())
    }

    fn s8s(values: &[i8]) -> Value {
        Value::List(values.iter().copied().map(Value::S8).collect())
    }

    /// Values of every kind, fitting and not fitting the types of [`TYPES`].
    fn samples() -> Vec<Value> {
        let r = record(&[("a", Value::U32(1)), ("b", some("x".into())), ("c", s8s(&[-1]))]);
        let mut values = vec![
            Value::Bool(true),
            Value::S8(-1),
            Value::U8(255),
            Value::S16(-300),
            Value::U16(u16::MAX),
            Value::S32(3),
            Value::S32(-3),
            Value::S32(i32::MIN),
            Value::U32(4_000_000_000),
            Value::S64(i64::MIN),
            Value::S64((1 << 53) + 1),
            Value::S64((1 << 24) + 1),
            Value::U64(u64::MAX),
            Value::U64((1 << 63) + 1025),
            Value::F32(3.0),
            Value::F32(3.5),
            Value::F32(-0.0),
            Value::F32(0.1),
            Value::F32(f32::NAN),
            Value::F32(-f32::NAN),
            Value::F32(f32::INFINITY),
            Value::F32(1e10),
            Value::F32(1.844_674_4e19),
            Value::F32(f32::MAX),
            Value::F32(f32::from_bits(1)),
            Value::F64(9.223_372_036_854_776e18),
            Value::F64(0.1),
            Value::F64(1e300),
            Value::F64(-2.5),
            Value::F64(1e-7),
            Value::F64(255.0),
            Value::F64(256.0),
            Value::F64(-0.0),
            Value::F64(f64::NEG_INFINITY),
            Value::F64(f64::from_bits(0x7ff8_0000_0000_0001)),
            Value::F64(f64::from(f32::MAX) * 1.000_000_1),
            Value::F64(3.402_823_5e38),
            Value::F64(1e-46),
            Value::Char('x'),
            Value::Char('\''),
            Value::Char('\u{301}'),
            "x".into(),
            "a \"quoted\"\n\u{7f}é😀\\ text".into(),
            Value::List(vec![]),
            Value::List(vec![Value::S32(1), Value::S32(2)]),
            Value::List(vec![Value::S32(1), Value::S32(-1)]),
            Value::List(vec![Value::U32(1)]),
            Value::List(vec![s8s(&[1, -2]), Value::List(vec![Value::U64(3)])]),
            Value::Tuple(vec![Value::U32(1), "s".into()]),
            Value::Tuple(vec![Value::S32(1), "s".into()]),
            Value::Tuple(vec![Value::S32(1), "s".into(), "t".into()]),
            Value::Tuple(vec![Value::F32(1.5)]),
            Value::Tuple(vec![Value::S32(1)]),
            Value::Tuple(vec![]),
            r.clone(),
            record(&[("c", Value::List(vec![])), ("a", Value::S64(7))]),
            record(&[("a", Value::U32(1)), ("b", Value::Option(None)), ("c", s8s(&[]))]),
            record(&[("a", Value::U32(1)), ("b", "bare".into()), ("c", s8s(&[]))]),
            record(&[("b", some("x".into())), ("c", s8s(&[]))]),
            record(&[("a", Value::S32(-1)), ("c", s8s(&[]))]),
            record(&[("a", Value::U32(1)), ("c", Value::List(vec![Value::U16(300)]))]),
            record(&[("some", Value::Bool(false)), ("none", Value::U8(2))]),
            record(&[("some", Value::Bool(false))]),
            record(&[]),
            record(&[
                ("t", Value::Tuple(vec![Value::S8(1), Value::Char('c')])),
                ("f", flags(&["true", "a"])),
                (
                    "v",
                    Value::List(vec![
                        variant("b", Some(Value::S16(2))),
                        Value::Enum("none".into()),
                    ]),
                ),
                ("r", r.clone()),
            ]),
            record(&[
                ("r", r.clone()),
                (
                    "v",
                    Value::List(vec![
                        variant("c", Some(Value::U32(1))),
                        variant("c", Some(Value::Option(None))),
                    ]),
                ),
                ("f", flags(&[])),
                ("t", Value::Tuple(vec![Value::S8(1), Value::Char('c')])),
            ]),
            variant("a", None),
            variant("b", Some(Value::S32(3))),
            variant("b", Some(Value::S32(-3))),
            variant("b", None),
            variant("a", Some(Value::U32(1))),
            variant("none", None),
            variant("c", Some(Value::U32(4))),
            variant("x", None),
            variant("zz", None),
            Value::Enum("x".into()),
            Value::Enum("ok".into()),
            Value::Enum("a".into()),
            Value::Enum("b".into()),
            Value::Enum("none".into()),
            Value::Option(None),
            some(Value::U32(3)),
            some(Value::S64(-3)),
            some(Value::Option(None)),
            some(some(Value::U8(3))),
            some(Value::List(vec![Value::S32(1)])),
            some(r.clone()),
            Value::Result(Ok(Some(Box::new(Value::S32(1))))),
            Value::Result(Ok(None)),
            Value::Result(Err(Some(Box::new("e".into())))),
            Value::Result(Err(Some(Box::new(Value::U32(1))))),
            Value::Result(Err(None)),
            Value::Result(Ok(Some(Box::new(Value::Option(None))))),
            flags(&[]),
            flags(&["a"]),
            flags(&["c", "a"]),
            flags(&["a", "b", "c", "true"]),
            flags(&["a", "a"]),
            flags(&["z"]),
        ];
        let lists: Vec<Value> = values
            .iter()
            .map(|v| Value::List(vec![v.clone(), v.clone()]))
            .collect();
        let options: Vec<Value> = values.iter().map(|v| some(v.clone())).collect();
        values.extend(lists);
        values.extend(options);
        values
    }

    /// Values compared by their debug text: NaNs are equal.
    fn same(a: &Result<Value, String>, b: &Result<Value, String>) -> bool {
        match (a, b) {
            (Ok(a), Ok(b)) => format!("{a:?}") == format!("{b:?}"),
            (Err(_), Err(_)) => true,
            _ => false,
        }
    }

    /// Where the structural check deliberately differs from the text round trip: a record field
    /// the type does not have, which WAVE ignored.
    fn unknown_field(structural: &Result<Value, String>) -> bool {
        matches!(structural, Err(e) if e.contains("has no field"))
    }

    #[test]
    fn typed_accepts_what_the_wave_round_trip_accepted() {
        let mut accepted = 0;
        for (name, ty) in types() {
            for value in samples() {
                let structural = typed(&value, ty);
                let by_text = typed_by_text(&value, ty);
                if unknown_field(&structural) {
                    continue;
                }
                assert!(
                    same(&structural, &by_text),
                    "{value:?} as {name}: structurally {structural:?}, through text {by_text:?}"
                );
                if let Ok(typed) = structural {
                    accepted += 1;
                    // Converted once, a value has its type exactly: nothing more to convert.
                    assert_eq!(
                        retype(&typed, ty).map(|v| v.is_some()),
                        Ok(typed_nan(&typed)),
                        "{typed:?}"
                    );
                }
            }
        }
        assert!(accepted > 150, "{accepted}");
    }

    /// Whether `value` holds a NaN, which is replaced by the canonical NaN each time.
    fn typed_nan(value: &Value) -> bool {
        match value {
            Value::F32(v) => v.is_nan(),
            Value::F64(v) => v.is_nan(),
            Value::List(items) | Value::Tuple(items) => items.iter().any(typed_nan),
            Value::Record(fields) => fields.iter().any(|(_, v)| typed_nan(v)),
            Value::Variant(_, Some(v))
            | Value::Option(Some(v))
            | Value::Result(Ok(Some(v)) | Err(Some(v))) => typed_nan(v),
            _ => false,
        }
    }

    /// Random values, of the names and numbers the test types use.
    fn arbitrary_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let name = prop::sample::select(vec![
            "a", "b", "c", "x", "ok", "none", "some", "true", "r", "v", "f", "t",
        ]);
        let leaf = prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            any::<i8>().prop_map(Value::S8),
            (-300i64..300).prop_map(Value::S64),
            any::<u64>().prop_map(Value::U64),
            any::<i32>().prop_map(Value::S32),
            any::<f32>().prop_map(Value::F32),
            any::<f64>().prop_map(Value::F64),
            (-3i32..3).prop_map(|v| Value::F64(f64::from(v) / 2.0)),
            any::<char>().prop_map(Value::Char),
            "[a-z\"\\\\]{0,3}".prop_map(Value::String),
            name.clone().prop_map(|n| Value::Enum(n.into())),
            prop::collection::vec(name.clone(), 0..3)
                .prop_map(|names| Value::Flags(names.into_iter().map(String::from).collect())),
        ];
        leaf.prop_recursive(4, 24, 4, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::List),
                prop::collection::vec(inner.clone(), 1..3).prop_map(Value::Tuple),
                prop::collection::btree_map(name.clone(), inner.clone(), 0..4).prop_map(|fields| {
                    Value::Record(fields.into_iter().map(|(n, v)| (n.into(), v)).collect())
                }),
                (name.clone(), prop::option::of(inner.clone()))
                    .prop_map(|(n, v)| Value::Variant(n.into(), v.map(Box::new))),
                prop::option::of(inner.clone()).prop_map(|v| Value::Option(v.map(Box::new))),
                (any::<bool>(), prop::option::of(inner)).prop_map(|(ok, v)| {
                    let v = v.map(Box::new);
                    Value::Result(if ok { Ok(v) } else { Err(v) })
                }),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        #[test]
        fn random_values_fit_as_through_wave(value in arbitrary_value()) {
            for (name, ty) in types() {
                let structural = typed(&value, ty);
                let by_text = typed_by_text(&value, ty);
                if !unknown_field(&structural) {
                    proptest::prop_assert!(
                        same(&structural, &by_text),
                        "{:?} as {}: structurally {:?}, through text {:?}", value, name, structural, by_text
                    );
                }
            }
        }
    }

    #[test]
    fn typed_widens_and_checks() {
        // Numbers.
        assert_eq!(typed(&Value::S32(3), &Type::U32), Ok(Value::U32(3)));
        assert_eq!(typed(&Value::U32(3), &Type::U32), Ok(Value::U32(3)));
        assert_eq!(retype(&Value::U32(3), &Type::U32), Ok(None));
        assert_eq!(typed(&Value::S8(-3), &Type::S64), Ok(Value::S64(-3)));
        assert_eq!(typed(&Value::U64(255), &Type::U8), Ok(Value::U8(255)));
        assert_eq!(typed(&Value::S32(3), &Type::Float64), Ok(Value::F64(3.0)));
        assert_eq!(
            typed(&Value::U64(u64::MAX), &Type::Float32),
            Ok(Value::F32(1.844_674_4e19))
        );
        assert_eq!(typed(&Value::F64(3.0), &Type::U32), Ok(Value::U32(3)));
        assert_eq!(typed(&Value::F32(0.1), &Type::Float64), Ok(Value::F64(0.1)));
        assert_eq!(typed(&Value::F64(-0.0), &Type::S8), Ok(Value::S8(0)));
        assert_eq!(
            typed(&Value::S32(-3), &Type::U32),
            Err("`-3` does not fit u32".into())
        );
        assert_eq!(
            typed(&Value::U64(256), &Type::U8),
            Err("`256` does not fit u8".into())
        );
        assert_eq!(
            typed(&Value::S64(i64::MIN), &Type::S32),
            Err("`-9223372036854775808` does not fit s32".into())
        );
        assert_eq!(
            typed(&Value::F64(3.5), &Type::S32),
            Err("`3.5` does not fit s32".into())
        );
        assert_eq!(
            typed(&Value::F64(-0.0), &Type::U8),
            Err("`-0` does not fit u8".into())
        );
        assert_eq!(
            typed(&Value::F64(f64::INFINITY), &Type::U64),
            Err("`inf` does not fit u64".into())
        );
        let Ok(Value::F32(nan)) = typed(&Value::F64(-f64::NAN), &Type::Float32) else {
            panic!()
        };
        assert_eq!(nan.to_bits(), f32::NAN.to_bits());
        // Other scalars, as they are.
        assert_eq!(typed(&"x".into(), &Type::String), Ok("x".into()));
        assert_eq!(typed(&Value::Char('c'), &Type::Char), Ok(Value::Char('c')));
        assert_eq!(typed(&Value::Bool(true), &Type::Bool), Ok(Value::Bool(true)));
        assert_eq!(
            typed(&"x".into(), &Type::U32),
            Err("expected u32, found `\"x\"`".into())
        );
        assert_eq!(
            typed(&Value::Char('c'), &Type::String),
            Err("expected string, found `'c'`".into())
        );
        assert_eq!(
            typed(&Value::S32(1), &Type::Bool),
            Err("expected bool, found `1`".into())
        );
        let long = Value::String("y".repeat(30 << 20));
        assert_eq!(
            typed(&long, &Type::Char),
            Err(format!(
                "expected char, found a string of {} bytes, `\"{}…\"`",
                30 << 20,
                "y".repeat(24)
            ))
        );
    }

    #[test]
    fn typed_checks_lists_tuples_and_records() {
        let (list, tuple, rec) = (ty("list"), ty("tuple"), ty("record"));
        assert_eq!(typed(&Value::List(vec![]), &list), Ok(Value::List(vec![])));
        assert_eq!(
            typed(&Value::List(vec![Value::U32(1), Value::S8(2)]), &list),
            Ok(Value::List(vec![Value::U32(1), Value::U32(2)]))
        );
        assert_eq!(
            typed(&Value::List(vec![Value::U32(1), Value::S8(-2)]), &list),
            Err("element 1: `-2` does not fit u32".into())
        );
        assert_eq!(
            typed(&Value::U32(1), &list),
            Err("expected list<u32>, found `1`".into())
        );
        assert_eq!(
            typed(&Value::List(vec![s8s(&[1]), s8s(&[2, 3])]), &ty("list-list")),
            Ok(Value::List(vec![s8s(&[1]), s8s(&[2, 3])]))
        );
        assert_eq!(
            typed(
                &Value::List(vec![s8s(&[1]), Value::List(vec![Value::S8(2), Value::S32(300)])]),
                &ty("list-list")
            ),
            Err("element 1, element 1: `300` does not fit s8".into())
        );

        let pair = Value::Tuple(vec![Value::S32(1), "s".into()]);
        assert_eq!(
            typed(&pair, &tuple),
            Ok(Value::Tuple(vec![Value::U32(1), "s".into()]))
        );
        assert_eq!(
            typed(&Value::Tuple(vec![Value::S32(1)]), &tuple),
            Err("expected a tuple of 2 values (tuple<u32, string>), found a tuple of 1 values".into())
        );
        assert_eq!(
            typed(&Value::Tuple(vec![Value::S32(1), Value::S32(1)]), &tuple),
            Err("element 1: expected string, found `1`".into())
        );
        assert!(typed(&Value::List(vec![Value::U32(1), "s".into()]), &tuple).is_err());

        // Fields in the type's order, a missing option field `none`.
        let exact = record(&[("a", Value::U32(1)), ("b", Value::Option(None)), ("c", s8s(&[]))]);
        assert_eq!(retype(&exact, &rec), Ok(None));
        assert_eq!(
            typed(&record(&[("c", s8s(&[])), ("a", Value::U8(1))]), &rec),
            Ok(exact.clone())
        );
        assert_eq!(
            typed(
                &record(&[("a", Value::U32(1)), ("c", s8s(&[])), ("b", "x".into())]),
                &rec
            ),
            Ok(record(&[
                ("a", Value::U32(1)),
                ("b", some("x".into())),
                ("c", s8s(&[]))
            ]))
        );
        assert_eq!(
            typed(&record(&[("a", Value::U32(1))]), &rec),
            Err("missing field `c` of record { a: u32, b: option<string>, c: list<s8> }".into())
        );
        assert_eq!(
            typed(
                &record(&[("a", Value::U32(1)), ("c", s8s(&[])), ("d", Value::Option(None))]),
                &rec
            ),
            Err("record { a: u32, b: option<string>, c: list<s8> } has no field `d`".into())
        );
        assert_eq!(
            typed(
                &record(&[("a", Value::U32(1)), ("a", Value::U32(1)), ("c", s8s(&[]))]),
                &rec
            ),
            Err("field `a` is given twice".into())
        );
        assert_eq!(
            typed(
                &record(&[("a", Value::U32(1)), ("c", Value::List(vec![Value::S64(-200)]))]),
                &rec
            ),
            Err("field `c`, element 0: `-200` does not fit s8".into())
        );
        assert!(typed(&flags(&[]), &rec).is_err());
        assert_eq!(
            typed(&record(&[("some", Value::Bool(true))]), &ty("keywords")),
            Ok(record(&[
                ("some", Value::Bool(true)),
                ("none", Value::Option(None))
            ]))
        );
    }

    #[test]
    fn typed_checks_variants_enums_options_results_and_flags() {
        let (var, en, fl) = (ty("variant"), ty("enum"), ty("flags"));
        assert_eq!(retype(&variant("b", Some(Value::U32(3))), &var), Ok(None));
        assert_eq!(
            typed(&variant("b", Some(Value::S8(3))), &var),
            Ok(variant("b", Some(Value::U32(3))))
        );
        assert_eq!(
            typed(&Value::Enum("none".into()), &var),
            Ok(variant("none", None))
        );
        assert_eq!(
            typed(&variant("c", Some(Value::U32(4))), &var),
            Ok(variant("c", Some(some(Value::U32(4)))))
        );
        assert_eq!(
            typed(&variant("zz", None), &var),
            Err("`zz` is not a case of variant { a, b(u32), none, c(option<u32>) }".into())
        );
        assert_eq!(
            typed(&variant("b", None), &var),
            Err("`b` takes a payload".into())
        );
        assert_eq!(
            typed(&variant("a", Some(Value::U32(1))), &var),
            Err("`a` takes no payload".into())
        );
        assert_eq!(
            typed(&variant("b", Some(Value::S32(-1))), &var),
            Err("`b`: `-1` does not fit u32".into())
        );
        assert!(typed(&Value::Option(None), &var).is_err());

        assert_eq!(retype(&Value::Enum("ok".into()), &en), Ok(None));
        assert_eq!(typed(&variant("y", None), &en), Ok(Value::Enum("y".into())));
        assert_eq!(
            typed(&Value::Enum("a".into()), &en),
            Err("`a` is not a case of enum { x, y, ok }".into())
        );
        assert_eq!(
            typed(&variant("x", Some(Value::U32(1))), &en),
            Err("expected enum { x, y, ok }, found case `x(…)`".into())
        );

        let (opt, opt_opt) = (ty("option"), ty("option-option"));
        assert_eq!(retype(&Value::Option(None), &opt), Ok(None));
        assert_eq!(typed(&some(Value::S32(3)), &opt), Ok(some(Value::U32(3))));
        assert_eq!(typed(&Value::S32(3), &opt), Ok(some(Value::U32(3))));
        assert_eq!(
            typed(&some(Value::S32(-3)), &opt),
            Err("`some`: `-3` does not fit u32".into())
        );
        assert_eq!(
            typed(&"x".into(), &opt),
            Err("expected option<u32>, found `\"x\"`".into())
        );
        assert_eq!(
            typed(&some(Value::Option(None)), &opt_opt),
            Ok(some(Value::Option(None)))
        );
        assert_eq!(
            typed(&Value::U32(3), &opt_opt),
            Err("expected option<option<u32>>, found `3`".into())
        );
        assert!(typed(&Value::Enum("none".into()), &ty("option-enum")).is_err());
        assert_eq!(
            typed(&Value::Enum("ok".into()), &ty("option-enum")),
            Ok(some(Value::Enum("ok".into())))
        );
        assert_eq!(
            typed(&Value::Enum("none".into()), &ty("option-variant")),
            Ok(some(variant("none", None)))
        );

        let res = ty("result");
        let ok = |v: Value| Value::Result(Ok(Some(Box::new(v))));
        let err = |v: Value| Value::Result(Err(Some(Box::new(v))));
        assert_eq!(retype(&ok(Value::U32(1)), &res), Ok(None));
        assert_eq!(typed(&ok(Value::S64(1)), &res), Ok(ok(Value::U32(1))));
        assert_eq!(typed(&Value::S64(1), &res), Ok(ok(Value::U32(1))));
        assert_eq!(typed(&err("e".into()), &res), Ok(err("e".into())));
        assert_eq!(
            typed(&err(Value::U32(1)), &res),
            Err("`err`: expected string, found `1`".into())
        );
        assert_eq!(
            typed(&Value::Result(Ok(None)), &res),
            Err("`ok` takes a payload".into())
        );
        assert_eq!(
            typed(&Value::Result(Ok(None)), &ty("result-bare")),
            Ok(Value::Result(Ok(None)))
        );
        assert_eq!(
            typed(&ok(Value::U32(1)), &ty("result-bare")),
            Err("`ok` takes no payload".into())
        );
        assert_eq!(
            typed(&Value::Result(Ok(None)), &ty("result-err")),
            Ok(Value::Result(Ok(None)))
        );
        assert_eq!(
            typed(&"e".into(), &ty("result-err")),
            Err("expected result<_, string>, found `\"e\"`".into())
        );
        assert_eq!(
            typed(&Value::U32(1), &ty("result-option")),
            Err("expected result<option<u32>>, found `1`".into())
        );

        assert_eq!(retype(&flags(&["a", "c"]), &fl), Ok(None));
        assert_eq!(
            typed(&flags(&["true", "c", "a"]), &fl),
            Ok(flags(&["a", "c", "true"]))
        );
        assert_eq!(typed(&flags(&[]), &fl), Ok(flags(&[])));
        assert_eq!(
            typed(&flags(&["a", "z"]), &fl),
            Err("`z` is not a flag of flags { a, b, c, true }".into())
        );
        assert_eq!(
            typed(&flags(&["a", "a"]), &fl),
            Err("flag `a` is set twice".into())
        );
        assert!(typed(&record(&[]), &fl).is_err());
    }

    #[test]
    fn typed_walks_nested_values() {
        let r = record(&[("a", Value::U32(1)), ("b", Value::Option(None)), ("c", s8s(&[1]))]);
        let nested = record(&[
            ("r", r.clone()),
            (
                "v",
                Value::List(vec![variant("a", None), variant("c", Some(Value::S8(2)))]),
            ),
            ("f", flags(&["b"])),
            ("t", Value::Tuple(vec![Value::S8(-1), Value::Char('c')])),
        ]);
        let fitted = record(&[
            ("r", r.clone()),
            (
                "v",
                Value::List(vec![variant("a", None), variant("c", Some(some(Value::U32(2))))]),
            ),
            ("f", flags(&["b"])),
            ("t", Value::Tuple(vec![Value::S8(-1), Value::Char('c')])),
        ]);
        assert_eq!(typed(&nested, &ty("nested")), Ok(fitted.clone()));
        assert_eq!(retype(&fitted, &ty("nested")), Ok(None));
        let bad = record(&[
            ("r", r.clone()),
            (
                "v",
                Value::List(vec![variant("a", None), variant("c", Some(Value::S8(-2)))]),
            ),
            ("f", flags(&["b"])),
            ("t", Value::Tuple(vec![Value::S8(-1), Value::Char('c')])),
        ]);
        assert_eq!(
            typed(&bad, &ty("nested")),
            Err("field `v`, element 1, `c`: `-2` does not fit u32".into())
        );
        let lor = ty("list-option-record");
        assert_eq!(
            typed(
                &Value::List(vec![
                    Value::Option(None),
                    record(&[("c", s8s(&[])), ("a", Value::U8(1))])
                ]),
                &lor
            ),
            Ok(Value::List(vec![
                Value::Option(None),
                some(record(&[
                    ("a", Value::U32(1)),
                    ("b", Value::Option(None)),
                    ("c", s8s(&[]))
                ]))
            ]))
        );
        assert_eq!(
            typed(&Value::List(vec![some(record(&[("a", Value::U32(1))]))]), &lor),
            Err(
                "element 0, `some`: missing field `c` of record { a: u32, b: option<string>, c: list<s8> }"
                    .into()
            )
        );
    }

    #[test]
    fn typed_refuses_what_cannot_cross() {
        assert_eq!(
            typed(&Value::U32(1), &ty("own")),
            Err("resource values cannot cross into a worker".into())
        );
        assert_eq!(
            typed(&Value::List(vec![Value::U32(1), Value::U32(2)]), &ty("fixed")),
            Err("fixed-length list values cannot cross into a worker".into())
        );
        assert!(typed_by_text(&Value::List(vec![Value::U32(1), Value::U32(2)]), &ty("fixed")).is_err());
    }
}
