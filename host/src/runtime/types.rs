//! What a component or core module exports: its task entry points, their signatures in WIT
//! syntax (core types for a core module), and how to find an entry point in an instance.

use wasmtime::component::types::{ComponentFunc, ComponentItem};
use wasmtime::component::{Component, ComponentExportIndex, Type};
use wasmtime::{Engine, ExternType, Module, ValType};

/// The interface a command component exports its `main` through (any 0.2 version).
pub(super) const RUN_INTERFACE: &str = "wasi:cli/run@0.2";

/// An exported function a task can call.
pub struct ExportFunc {
    /// The name WAVE calls it by: `name` at the top level, `interface.name` inside an exported
    /// interface (`pkg:ns/interface.name@1.0.0` for a versioned one).
    pub name: String,
    /// Its parameters, named, as component-model types (a core module's `i32` is an `s32`).
    pub params: Vec<(String, Type)>,
    /// Its result, if it has one.
    pub result: Option<Type>,
    /// A core module's function, shown with core types.
    core: bool,
}

impl ExportFunc {
    fn component(name: String, ty: &ComponentFunc) -> ExportFunc {
        ExportFunc {
            name,
            params: ty.params().map(|(name, ty)| (name.to_owned(), ty)).collect(),
            result: ty.results().next(),
            core: false,
        }
    }

    /// The signature in WIT syntax, as error messages show it: `long-time-task(name: u32)`; a
    /// core function's with core types: `add(i32, i32) -> i32`.
    pub fn signature(&self) -> String {
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(name, ty)| match self.core {
                true => core_type_name(ty).to_owned(),
                false => format!("{name}: {}", type_name(ty)),
            })
            .collect();
        let mut sig = format!("{}({})", self.name, params.join(", "));
        if let Some(result) = &self.result {
            sig.push_str(" -> ");
            sig.push_str(&match self.core {
                true => core_type_name(result).to_owned(),
                false => type_name(result),
            });
        }
        sig
    }

    /// Whether every parameter and the result can cross between host and worker as values.
    pub fn crosses(&self) -> bool {
        self.params.iter().all(|(_, ty)| crosses(ty)) && self.result.as_ref().is_none_or(crosses)
    }
}

/// The functions a core module exports that a task can call: those whose parameters and
/// result are numbers (at most one result), in export order. `_start` and `_initialize` are
/// left out: they are a command's and a reactor's entry points.
pub fn core_exports(module: &Module) -> Vec<ExportFunc> {
    let number = |ty: ValType| match ty {
        ValType::I32 => Some(Type::S32),
        ValType::I64 => Some(Type::S64),
        ValType::F32 => Some(Type::Float32),
        ValType::F64 => Some(Type::Float64),
        _ => None,
    };
    module
        .exports()
        .filter(|export| !matches!(export.name(), "_start" | "_initialize"))
        .filter_map(|export| {
            let ExternType::Func(func) = export.ty() else {
                return None;
            };
            let params = func
                .params()
                .enumerate()
                .map(|(i, ty)| number(ty).map(|ty| (format!("p{i}"), ty)))
                .collect::<Option<Vec<_>>>()?;
            let mut results = func.results();
            let result = match (results.next(), results.next()) {
                (None, _) => None,
                (Some(ty), None) => Some(number(ty)?),
                (Some(_), Some(_)) => return None,
            };
            Some(ExportFunc {
                name: export.name().to_owned(),
                params,
                result,
                core: true,
            })
        })
        .collect()
}

/// The imports of a core module, as `module::name`.
pub fn core_imports(module: &Module) -> Vec<String> {
    module
        .imports()
        .map(|import| format!("{}::{}", import.module(), import.name()))
        .collect()
}

/// Whether a core module exports a command's `_start`.
pub fn core_start(module: &Module) -> bool {
    module
        .exports()
        .any(|export| export.name() == "_start" && matches!(export.ty(), ExternType::Func(_)))
}

fn core_type_name(ty: &Type) -> &'static str {
    match ty {
        Type::S32 => "i32",
        Type::S64 => "i64",
        Type::Float32 => "f32",
        _ => "f64",
    }
}

/// Every function the component exports, top-level ones first, in export order. `wasi:cli/run`
/// is left out: it is the component's `main`, not a call.
pub fn exports(engine: &Engine, component: &Component) -> Vec<ExportFunc> {
    let mut top = Vec::new();
    let mut nested = Vec::new();
    for (name, item) in component.component_type().exports(engine) {
        match item.ty {
            ComponentItem::ComponentFunc(ty) => top.push(ExportFunc::component(name.to_owned(), &ty)),
            ComponentItem::ComponentInstance(instance) if !name.starts_with(RUN_INTERFACE) => {
                for (func, item) in instance.exports(engine) {
                    if let ComponentItem::ComponentFunc(ty) = item.ty {
                        nested.push(ExportFunc::component(wave_name(name, func), &ty));
                    }
                }
            }
            _ => {}
        }
    }
    top.extend(nested);
    top
}

/// The name of the component's `main` (`wasi:cli/run.run@0.2.x`), if it exports one.
pub fn main_export(engine: &Engine, component: &Component) -> Option<String> {
    component
        .component_type()
        .exports(engine)
        .find(|(name, item)| {
            name.starts_with(RUN_INTERFACE) && matches!(item.ty, ComponentItem::ComponentInstance(_))
        })
        .map(|(name, _)| wave_name(name, "run"))
}

/// Whether the component imports poolhost's `pool` interface (any version).
pub fn imports_pool(engine: &Engine, component: &Component) -> bool {
    component
        .component_type()
        .imports(engine)
        .any(|(name, _)| name.starts_with(POOL_INTERFACE))
}

/// The names of what the component imports (interfaces, mostly), in its order.
pub fn imports(engine: &Engine, component: &Component) -> Vec<String> {
    component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_owned())
        .collect()
}

/// The interface a driver imports its pool through.
pub(super) const POOL_INTERFACE: &str = "poolhost:pool/pool@";

/// Finds an export by the name [`exports`] gives it.
pub fn lookup(component: &Component, name: &str) -> Option<ComponentExportIndex> {
    match split_wave_name(name) {
        (Some(interface), func) => {
            let interface = component.get_export_index(None, interface.as_str())?;
            component.get_export_index(Some(&interface), func)
        }
        (None, func) => component.get_export_index(None, func),
    }
}

/// How WAVE names function `func` of exported interface `interface`: the function goes after the
/// interface name and before its version (`pkg:ns/iface.func@1.0.0`).
pub(super) fn wave_name(interface: &str, func: &str) -> String {
    match interface.split_once('@') {
        Some((name, version)) => format!("{name}.{func}@{version}"),
        None => format!("{interface}.{func}"),
    }
}

/// The inverse of [`wave_name`]: the interface's export name, if any, and the function's.
fn split_wave_name(name: &str) -> (Option<String>, &str) {
    let (unversioned, version) = match name.split_once('@') {
        Some((unversioned, version)) => (unversioned, Some(version)),
        None => (name, None),
    };
    match unversioned.rsplit_once('.') {
        Some((interface, func)) => {
            let interface = match version {
                Some(version) => format!("{interface}@{version}"),
                None => interface.to_owned(),
            };
            (Some(interface), func)
        }
        None => (None, unversioned),
    }
}

fn crosses(ty: &Type) -> bool {
    match ty {
        Type::List(list) => crosses(&list.ty()),
        Type::FixedLengthList(list) => crosses(&list.ty()),
        Type::Record(record) => record.fields().all(|field| crosses(&field.ty)),
        Type::Tuple(tuple) => tuple.types().all(|ty| crosses(&ty)),
        Type::Variant(variant) => variant.cases().all(|case| case.ty.as_ref().is_none_or(crosses)),
        Type::Option(option) => crosses(&option.ty()),
        Type::Result(result) => {
            result.ok().as_ref().is_none_or(crosses) && result.err().as_ref().is_none_or(crosses)
        }
        Type::Map(_)
        | Type::Own(_)
        | Type::Borrow(_)
        | Type::Future(_)
        | Type::Stream(_)
        | Type::ErrorContext => false,
        _ => true,
    }
}

/// A type in WIT syntax. Named types (records, variants, ...) are shown by structure: the
/// runtime does not keep their names.
fn type_name(ty: &Type) -> String {
    let opt = |ty: Option<Type>| ty.map_or_else(|| "_".to_owned(), |ty| type_name(&ty));
    match ty {
        Type::Bool => "bool".into(),
        Type::S8 => "s8".into(),
        Type::U8 => "u8".into(),
        Type::S16 => "s16".into(),
        Type::U16 => "u16".into(),
        Type::S32 => "s32".into(),
        Type::U32 => "u32".into(),
        Type::S64 => "s64".into(),
        Type::U64 => "u64".into(),
        Type::Float32 => "f32".into(),
        Type::Float64 => "f64".into(),
        Type::Char => "char".into(),
        Type::String => "string".into(),
        Type::List(list) => format!("list<{}>", type_name(&list.ty())),
        Type::FixedLengthList(list) => format!("list<{}>", type_name(&list.ty())),
        Type::Record(record) => {
            let fields: Vec<String> = record
                .fields()
                .map(|f| format!("{}: {}", f.name, type_name(&f.ty)))
                .collect();
            format!("record {{ {} }}", fields.join(", "))
        }
        Type::Tuple(tuple) => {
            let types: Vec<String> = tuple.types().map(|ty| type_name(&ty)).collect();
            format!("tuple<{}>", types.join(", "))
        }
        Type::Variant(variant) => {
            let cases: Vec<String> = variant
                .cases()
                .map(|case| match case.ty {
                    Some(ty) => format!("{}({})", case.name, type_name(&ty)),
                    None => case.name.to_owned(),
                })
                .collect();
            format!("variant {{ {} }}", cases.join(", "))
        }
        Type::Enum(e) => format!("enum {{ {} }}", e.names().collect::<Vec<_>>().join(", ")),
        Type::Flags(f) => format!("flags {{ {} }}", f.names().collect::<Vec<_>>().join(", ")),
        Type::Option(option) => format!("option<{}>", type_name(&option.ty())),
        Type::Result(result) => match (result.ok(), result.err()) {
            (None, None) => "result".into(),
            (ok, err) => format!("result<{}, {}>", opt(ok), opt(err)),
        },
        Type::Map(_) => "map".into(),
        Type::Own(_) | Type::Borrow(_) => "resource".into(),
        Type::Future(_) => "future".into(),
        Type::Stream(_) => "stream".into(),
        Type::ErrorContext => "error-context".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wave_names_round_trip() {
        assert_eq!(wave_name("math", "double"), "math.double");
        assert_eq!(wave_name("wasi:cli/run@0.2.12", "run"), "wasi:cli/run.run@0.2.12");
        assert_eq!(split_wave_name("math.double"), (Some("math".into()), "double"));
        assert_eq!(
            split_wave_name("wasi:cli/run.run@0.2.12"),
            (Some("wasi:cli/run@0.2.12".into()), "run")
        );
        assert_eq!(split_wave_name("long-time-task"), (None, "long-time-task"));
    }
}
