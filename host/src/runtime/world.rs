//! What a component declares, read from its bytes without compiling it: its WIT world (the
//! functions it exports, with their signatures, and what it imports), whether it uses the
//! component model's async ABI, and which of its imports poolhost does not provide.
//!
//! Reading a world takes milliseconds where compiling takes seconds (an 18 MB Python component:
//! 0.1 s against 9 s), so `poolhost inspect` describes a component with it, even one poolhost
//! cannot run, and [`super::Program`] refuses a component it cannot run before compiling it.
//! Function bodies are not validated here; compiling does that.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use wasmparser::{CanonicalFunction, CanonicalOption, Parser, Payload};
use wit_parser::decoding::{DecodedWasm, decode};
use wit_parser::{Function, Handle, Resolve, Type, TypeDefKind, TypeId, WorldId, WorldItem};

use super::types::{POOL_INTERFACE, RUN_INTERFACE, wave_name};

/// A component's WIT world, as read from its bytes.
pub struct World {
    resolve: Resolve,
    world: WorldId,
    async_abi: bool,
}

/// Why a component cannot run, found before compiling it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unrunnable {
    /// It uses the component model's async ABI (async exports or imports, streams, futures,
    /// tasks), which poolhost does not run.
    AsyncAbi,
    /// It imports interfaces, or functions of interfaces, poolhost does not provide.
    Missing(Vec<String>),
}

impl std::fmt::Display for Unrunnable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unrunnable::AsyncAbi => write!(
                f,
                "it uses the component model's async ABI, which poolhost does not run; build it \
                 with synchronous exports (componentize-qjs: `--sync`; wit-bindgen: no `async` \
                 functions)"
            ),
            Unrunnable::Missing(missing) => {
                write!(
                    f,
                    "it imports what poolhost does not provide: {}",
                    missing.join(", ")
                )?;
                // A known toolchain default: a build for the next WASI.
                if missing
                    .iter()
                    .any(|m| m.starts_with("wasi:") && m.contains("@0.3."))
                {
                    write!(
                        f,
                        " (it was built for WASI 0.3; poolhost runs WASI 0.2 components: build \
                         for wasm32-wasip2)"
                    )?;
                }
                Ok(())
            }
        }
    }
}

impl World {
    /// Reads the world of the component `binary`.
    ///
    /// # Errors
    /// The decoder's reason, in one line, when the bytes are not a valid component (or are a
    /// core module).
    pub fn read(binary: &[u8]) -> Result<World, String> {
        let one_line = |e: anyhow::Error| format!("{e:#}").replace('\n', " ");
        match decode(binary).map_err(one_line)? {
            DecodedWasm::Component(resolve, world) => Ok(World {
                resolve,
                world,
                async_abi: uses_async_abi(binary),
            }),
            DecodedWasm::WitPackage(..) => Err("it is a WIT package, not a component".into()),
        }
    }

    /// Why poolhost cannot run the component, if it cannot: the async ABI, or imports it does
    /// not provide.
    pub fn unrunnable(&self) -> Option<Unrunnable> {
        if self.async_abi || self.functions().any(is_async) {
            return Some(Unrunnable::AsyncAbi);
        }
        let missing = self.missing();
        (!missing.is_empty()).then_some(Unrunnable::Missing(missing))
    }

    /// The signatures of the functions a task can call, in WIT syntax with the WAVE names
    /// `poolhost run --invoke` calls them by: top-level functions first, then those of exported
    /// interfaces (`math.double(x: u64) -> u64`). `wasi:cli/run` is left out: it is `main`.
    pub fn exports(&self) -> Vec<String> {
        let mut top = Vec::new();
        let mut nested = Vec::new();
        for (key, item) in &self.world().exports {
            match item {
                WorldItem::Function(func) => top.push(self.signature(&func.name, func)),
                WorldItem::Interface { id, .. } => {
                    let name = self.resolve.name_world_key(key);
                    if name.starts_with(RUN_INTERFACE) {
                        continue;
                    }
                    for func in self.resolve.interfaces[*id].functions.values() {
                        nested.push(self.signature(&wave_name(&name, &func.name), func));
                    }
                }
                WorldItem::Type { .. } => {}
            }
        }
        top.extend(nested);
        top
    }

    /// Whether it exports `wasi:cli/run`, a `main`.
    pub fn has_main(&self) -> bool {
        self.world()
            .exports
            .keys()
            .any(|key| self.resolve.name_world_key(key).starts_with(RUN_INTERFACE))
    }

    /// Whether it imports poolhost's `pool` interface (a driver, if it also has a `main`).
    pub fn drives(&self) -> bool {
        self.imports().iter().any(|name| name.starts_with(POOL_INTERFACE))
    }

    /// The names of what it imports, interfaces mostly, in its order.
    pub fn imports(&self) -> Vec<String> {
        let world = self.world();
        world
            .imports
            .iter()
            .filter(|(_, item)| !matches!(item, WorldItem::Type { .. }))
            .map(|(key, _)| self.resolve.name_world_key(key))
            .collect()
    }

    fn world(&self) -> &wit_parser::World {
        &self.resolve.worlds[self.world]
    }

    /// What it imports that poolhost does not provide: whole interfaces
    /// (`wasi:keyvalue/store@0.2.0`), or single functions of interfaces it does provide
    /// (`wasi:cli/exit@0.2.4#exit-with-code`) when the component was built against a newer
    /// version than poolhost's. An interface of plain types (records, enums, ...) needs nothing
    /// from the host, whoever defines it, as wasmtime's linker sees it.
    fn missing(&self) -> Vec<String> {
        let provided = provided();
        let mut missing = Vec::new();
        for (key, item) in &self.world().imports {
            let name = self.resolve.name_world_key(key);
            match item {
                WorldItem::Type { id, .. } if self.is_resource(*id) => missing.push(name),
                WorldItem::Type { .. } => {}
                WorldItem::Function(_) => missing.push(name),
                WorldItem::Interface { id, .. } => {
                    let interface = &self.resolve.interfaces[*id];
                    let needs_host = !interface.functions.is_empty()
                        || interface.types.values().any(|ty| self.is_resource(*ty));
                    if !needs_host {
                        continue;
                    }
                    let (unversioned, version) = split_version(&name);
                    let Some(ours) = provided
                        .get(unversioned)
                        .filter(|ours| compatible(version, &ours.version))
                    else {
                        missing.push(name);
                        continue;
                    };
                    missing.extend(
                        interface
                            .functions
                            .keys()
                            .filter(|func| !ours.functions.contains(*func))
                            .map(|func| format!("{name}#{func}")),
                    );
                }
            }
        }
        missing
    }

    fn is_resource(&self, id: TypeId) -> bool {
        matches!(self.resolve.types[id].kind, TypeDefKind::Resource)
    }

    /// Every function it imports or exports, those of interfaces included.
    fn functions(&self) -> impl Iterator<Item = &Function> {
        let world = self.world();
        world
            .imports
            .values()
            .chain(world.exports.values())
            .flat_map(|item| {
                let funcs: Box<dyn Iterator<Item = &Function>> = match item {
                    WorldItem::Function(func) => Box::new(std::iter::once(func)),
                    WorldItem::Interface { id, .. } => {
                        Box::new(self.resolve.interfaces[*id].functions.values())
                    }
                    WorldItem::Type { .. } => Box::new(std::iter::empty()),
                };
                funcs
            })
    }

    /// `name(param: type, ...) -> result`, types by their WIT names.
    fn signature(&self, name: &str, func: &Function) -> String {
        let params: Vec<String> = func
            .params
            .iter()
            .map(|param| format!("{}: {}", param.name, self.type_name(&param.ty)))
            .collect();
        let mut signature = format!("{name}({})", params.join(", "));
        if let Some(result) = &func.result {
            signature.push_str(" -> ");
            signature.push_str(&self.type_name(result));
        }
        signature
    }

    /// A type as WIT writes it: named types by name, anonymous ones by structure.
    fn type_name(&self, ty: &Type) -> String {
        match ty {
            Type::Bool => "bool".into(),
            Type::U8 => "u8".into(),
            Type::U16 => "u16".into(),
            Type::U32 => "u32".into(),
            Type::U64 => "u64".into(),
            Type::S8 => "s8".into(),
            Type::S16 => "s16".into(),
            Type::S32 => "s32".into(),
            Type::S64 => "s64".into(),
            Type::F32 => "f32".into(),
            Type::F64 => "f64".into(),
            Type::Char => "char".into(),
            Type::String => "string".into(),
            Type::ErrorContext => "error-context".into(),
            Type::Id(id) => self.defined_name(*id),
        }
    }

    fn defined_name(&self, id: TypeId) -> String {
        let def = &self.resolve.types[id];
        if let Some(name) = &def.name {
            return name.clone();
        }
        let opt = |ty: &Option<Type>| ty.as_ref().map_or("_".to_owned(), |ty| self.type_name(ty));
        match &def.kind {
            TypeDefKind::List(ty) => format!("list<{}>", self.type_name(ty)),
            TypeDefKind::FixedLengthList(ty, n) => format!("list<{}, {n}>", self.type_name(ty)),
            TypeDefKind::Map(k, v) => format!("map<{}, {}>", self.type_name(k), self.type_name(v)),
            TypeDefKind::Option(ty) => format!("option<{}>", self.type_name(ty)),
            TypeDefKind::Result(r) => match (&r.ok, &r.err) {
                (None, None) => "result".into(),
                (ok, None) => format!("result<{}>", opt(ok)),
                (ok, err) => format!("result<{}, {}>", opt(ok), opt(err)),
            },
            TypeDefKind::Tuple(t) => {
                let types: Vec<String> = t.types.iter().map(|ty| self.type_name(ty)).collect();
                format!("tuple<{}>", types.join(", "))
            }
            TypeDefKind::Handle(Handle::Own(id)) => self.defined_name(*id),
            TypeDefKind::Handle(Handle::Borrow(id)) => format!("borrow<{}>", self.defined_name(*id)),
            TypeDefKind::Future(ty) => format!("future<{}>", opt(ty)),
            TypeDefKind::Stream(ty) => format!("stream<{}>", opt(ty)),
            TypeDefKind::Type(ty) => self.type_name(ty),
            TypeDefKind::Record(_) => "record".into(),
            TypeDefKind::Resource => "resource".into(),
            TypeDefKind::Flags(_) => "flags".into(),
            TypeDefKind::Variant(_) => "variant".into(),
            TypeDefKind::Enum(_) => "enum".into(),
            TypeDefKind::Unknown => "unknown".into(),
        }
    }
}

fn is_async(func: &Function) -> bool {
    use wit_parser::FunctionKind::*;
    matches!(func.kind, AsyncFreestanding | AsyncMethod(_) | AsyncStatic(_))
}

/// Whether the component uses the async ABI: a canonical built-in of the async ABI (tasks,
/// waitables, streams, futures, contexts; or of threads, which poolhost does not run either), or
/// a function lifted or lowered with `async`.
fn uses_async_abi(binary: &[u8]) -> bool {
    for payload in Parser::new(0).parse_all(binary) {
        let Ok(Payload::ComponentCanonicalSection(section)) = payload else {
            continue;
        };
        for func in section.into_iter().flatten() {
            let options = match &func {
                CanonicalFunction::Lift { options, .. } | CanonicalFunction::Lower { options, .. } => options,
                CanonicalFunction::ResourceNew { .. }
                | CanonicalFunction::ResourceDrop { .. }
                | CanonicalFunction::ResourceRep { .. } => continue,
                _ => return true,
            };
            if options
                .iter()
                .any(|o| matches!(o, CanonicalOption::Async | CanonicalOption::Callback(_)))
            {
                return true;
            }
        }
    }
    false
}

/// An interface poolhost provides: its version and the names of its functions.
struct Provided {
    version: Option<String>,
    functions: HashSet<String>,
}

/// What poolhost provides, by interface name without version: the imports of its `driver`
/// world, WASI 0.2 included, and of `wasi:http`'s `imports` world (its client), read once from
/// the WIT in `wit/` that the host is built from.
fn provided() -> &'static HashMap<String, Provided> {
    static PROVIDED: OnceLock<HashMap<String, Provided>> = OnceLock::new();
    PROVIDED.get_or_init(|| {
        let mut resolve = Resolve::default();
        let mut push =
            |path: &str, text: &str| resolve.push_str(path, text).expect("poolhost's own WIT parses");
        // Dependencies first: each package may use only those pushed before it.
        push("io.wit", include_str!("../../../wit/deps/io.wit"));
        push("clocks.wit", include_str!("../../../wit/deps/clocks.wit"));
        push("random.wit", include_str!("../../../wit/deps/random.wit"));
        push("filesystem.wit", include_str!("../../../wit/deps/filesystem.wit"));
        push("sockets.wit", include_str!("../../../wit/deps/sockets.wit"));
        push("cli.wit", include_str!("../../../wit/deps/cli.wit"));
        let http = push("http.wit", include_str!("../../../wit/deps/http.wit"));
        let pool = push("pool.wit", include_str!("../../../wit/pool.wit"));
        let worlds = [(pool, "driver"), (http, "imports")].map(|(package, world)| {
            resolve
                .select_world(&[package], Some(world))
                .expect("poolhost's WIT has the world")
        });
        worlds
            .iter()
            .flat_map(|world| &resolve.worlds[*world].imports)
            .filter_map(|(key, item)| {
                let WorldItem::Interface { id, .. } = item else {
                    return None;
                };
                let name = resolve.name_world_key(key);
                let (unversioned, version) = split_version(&name);
                let functions = resolve.interfaces[*id].functions.keys().cloned().collect();
                Some((
                    unversioned.to_owned(),
                    Provided {
                        version: version.map(str::to_owned),
                        functions,
                    },
                ))
            })
            .collect()
    })
}

fn split_version(name: &str) -> (&str, Option<&str>) {
    match name.split_once('@') {
        Some((name, version)) => (name, Some(version)),
        None => (name, None),
    }
}

/// Whether an import of `version` is met by poolhost's `ours`, as wasmtime's linker matches
/// them: the same version, or one of the same major version (for 0.x, the same minor; for
/// 0.0.x, no other), neither a prerelease.
fn compatible(version: Option<&str>, ours: &Option<String>) -> bool {
    let parse = |v: &str| semver::Version::parse(v).ok();
    match (version.map(parse), ours.as_deref().map(parse)) {
        (None, None) => true,
        (Some(Some(theirs)), Some(Some(ours))) if theirs == ours => true,
        (Some(Some(theirs)), Some(Some(ours))) => {
            theirs.pre.is_empty()
                && ours.pre.is_empty()
                && theirs.major == ours.major
                && match theirs.major {
                    0 => theirs.minor == ours.minor && theirs.minor != 0,
                    _ => true,
                }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poolhosts_own_wit_provides_wasi_and_the_pool() {
        let provided = provided();
        for name in [
            "wasi:cli/environment",
            "wasi:filesystem/types",
            "poolhost:pool/queue",
        ] {
            assert!(provided.contains_key(name), "{name}");
        }
        assert!(
            provided["poolhost:pool/queue"]
                .functions
                .contains("[method]queue.get-many")
        );
    }

    #[test]
    fn a_wasi_0_3_build_is_told_what_to_build_instead() {
        let told = |name: &str| Unrunnable::Missing(vec![name.into()]).to_string();
        assert!(told("wasi:cli/environment@0.3.0").ends_with("build for wasm32-wasip2)"));
        assert!(!told("acme:kv/store@0.3.0").contains("WASI 0.3"));
    }

    #[test]
    fn versions_match_as_the_linker_matches_them() {
        let ours = Some("0.2.12".to_owned());
        assert!(compatible(Some("0.2.0"), &ours));
        assert!(compatible(Some("0.2.15"), &ours));
        assert!(!compatible(Some("0.3.0"), &ours));
        assert!(!compatible(None, &ours));
        assert!(!compatible(Some("0.2.0-rc-2023-11-10"), &ours));
        assert!(!compatible(Some("0.0.2"), &Some("0.0.1".into())));
        assert!(compatible(Some("0.0.1"), &Some("0.0.1".into())));
        assert!(compatible(Some("1.4.0"), &Some("1.0.0".into())));
        assert!(!compatible(Some("2.0.0"), &Some("1.0.0".into())));
    }
}
