//! The host side of a component or a WASI preview 1 core module: read it, compile it once (or
//! find it in the compile cache), check that its imports can be met, describe its exports, turn
//! call text into checked [`Call`]s, and write the precompiled artefact the workers load.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::component::wasm_wave::untyped::UntypedFuncCall;
use wasmtime::component::{Component, Val};
use wasmtime::{Engine, Module, Precompiled};

use super::cache::CompileCache;
use super::types::{self, ExportFunc};
use super::values;
use super::world::{Unrunnable, World};
use crate::task::{Call, Target};
use crate::value::Value;

/// A component loaded, checked and compiled by the host, ready to be run by a pool.
///
/// Cheap to clone: clones share the compiled component and its artefact, which is deleted when the
/// last clone is dropped.
#[derive(Clone)]
pub struct Program(Arc<Inner>);

struct Inner {
    name: String,
    exports: Vec<ExportFunc>,
    main: Option<String>,
    /// Whether the component imports the pool interface (a driver, if it also has a `main`).
    drives: bool,
    metered: bool,
    /// A component (`false`: a core module).
    component: bool,
    imports: Vec<String>,
    /// The bytes it was loaded from (binary or text), for a cluster's hosts to fetch.
    source: Arc<[u8]>,
    cached: Option<Cached>,
    artifact: PathBuf,
    // Owns the private directory the artefact lives in; deleting it on drop.
    _dir: tempfile::TempDir,
}

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read `{path}`: {cause}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        cause: std::io::Error,
    },
    /// The bytes are neither WebAssembly binary nor WebAssembly text.
    #[error("`{path}` is not WebAssembly: {detail}")]
    NotWasm {
        /// The file.
        path: String,
        /// The first line of the text parser's complaint.
        detail: String,
    },
    /// A core module imports poolhost interfaces, which only components can.
    #[error(
        "`{path}` is a core WebAssembly module importing `{import}`: core modules get WASI \
         preview 1 only; to use the poolhost interfaces build a component, for the \
         `wasm32-wasip2` target (`cargo build --target wasm32-wasip2`) or with \
         `wasm-tools component new`"
    )]
    CoreImportsPoolhost {
        /// The file.
        path: String,
        /// The first poolhost import.
        import: String,
    },
    /// The component does not validate or compile.
    #[error("`{path}` is not a valid component: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// The runtime's reason.
        message: String,
    },
    /// The component uses what poolhost does not run or provide, seen before compiling it: the
    /// async ABI, or imports poolhost does not have.
    #[error("`{path}` cannot run here: {reason}")]
    Unrunnable {
        /// The file.
        path: String,
        /// Why.
        reason: Unrunnable,
    },
    /// The component imports something poolhost does not provide.
    #[error("`{path}` needs an import poolhost does not provide: {message}")]
    Imports {
        /// The file.
        path: String,
        /// Which import.
        message: String,
    },
    /// The compiled artefact could not be written for the workers.
    #[error("cannot write the compiled component for the workers: {0}")]
    Artifact(String),
}

/// Why a call does not fit the component.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The call text is not WAVE.
    #[error("invalid call `{}`: {message}", call.escape_debug())]
    Syntax {
        /// The call text.
        call: String,
        /// What is wrong and where.
        message: String,
    },
    /// No export has this name.
    #[error("no export named `{}`; the component exports: {}", name.escape_debug(), list_or_none(.exports))]
    UnknownExport {
        /// The name asked for.
        name: String,
        /// The signatures of the exports there are.
        exports: Vec<String>,
    },
    /// The arguments do not fit the export's parameters.
    #[error("`{}` does not match `{}`: {message}", call.escape_debug(), shorten(.signature))]
    Mismatch {
        /// The call.
        call: String,
        /// The export's signature.
        signature: String,
        /// What does not fit.
        message: String,
    },
    /// The export takes or returns something that cannot cross into a worker.
    #[error(
        "`{}` takes or returns a resource, stream, future or map, which cannot cross into a worker",
        shorten(.signature)
    )]
    Unsupported {
        /// The export's signature.
        signature: String,
    },
    /// A run of `main` was asked of a component without one.
    #[error("the program has no `main`: it exports neither `wasi:cli/run` nor `_start`")]
    NoMain,
}

fn list_or_none(exports: &[String]) -> String {
    if exports.is_empty() {
        return "nothing callable".into();
    }
    let short: Vec<_> = exports.iter().map(|export| shorten(export)).collect();
    short.join(", ")
}

/// The longest signature an error message shows whole; longer ones (componentize-py's `init`,
/// whose record type runs to a thousand characters) are cut, with `…`.
const SHOWN_SIGNATURE: usize = 120;

fn shorten(signature: &str) -> std::borrow::Cow<'_, str> {
    match signature.char_indices().nth(SHOWN_SIGNATURE) {
        Some((end, _)) => format!("{}…", &signature[..end]).into(),
        None => signature.into(),
    }
}

/// How a [`Program`] was found in the compile cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cached {
    /// The cache entry.
    pub path: PathBuf,
    /// Whether it was there already (`false`: compiled now and stored).
    pub hit: bool,
}

/// Loads programs with options: fuel metering, a compile cache. [`Program::load`] is
/// `Program::loader().load(path)`.
#[derive(Clone, Debug, Default)]
pub struct Loader {
    metered: bool,
    cache: Option<CompileCache>,
}

impl Loader {
    /// Compile with fuel metering, so tasks can be given a fuel budget
    /// ([`crate::TaskOptions::fuel`]). Metering makes every task a little slower.
    pub fn metered(mut self, metered: bool) -> Self {
        self.metered = metered;
        self
    }

    /// Keep compiled code in `cache` and load it from there when it is already compiled.
    pub fn cache(mut self, cache: CompileCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Reads, compiles (or loads from the cache) and checks the component (binary or
    /// WebAssembly text) at `path`.
    ///
    /// # Errors
    /// See [`LoadError`]: each variant names the file and says what is wrong. A cache that
    /// cannot be read or written is not an error: the component is compiled, with a warning.
    pub fn load(&self, path: impl AsRef<Path>) -> Result<Program, LoadError> {
        self.load_announcing(path.as_ref(), &mut |_| {})
    }

    /// As [`Loader::load`], calling `compiled` with the artefact the workers load as soon as it
    /// is in place, before the host deserializes and checks it; again, with another path, if it
    /// had to be replaced (a cache entry found unusable). The last path is the [`Program`]'s.
    pub(crate) fn load_announcing(
        &self,
        path: &Path,
        compiled: &mut dyn FnMut(&Path),
    ) -> Result<Program, LoadError> {
        let name = path.display().to_string();
        let bytes = fs::read(path).map_err(|cause| LoadError::Read {
            path: name.clone(),
            cause,
        })?;
        Program::compile(&name, &bytes, self.metered, self.cache.as_ref(), compiled)
    }

    /// As [`Loader::load`], for a component given as bytes; `name` is used in messages.
    ///
    /// # Errors
    /// As [`Loader::load`].
    pub fn from_bytes(&self, name: &str, bytes: &[u8]) -> Result<Program, LoadError> {
        Program::compile(name, bytes, self.metered, self.cache.as_ref(), &mut |_| {})
    }

    /// Whether programs are loaded with fuel metering.
    pub(crate) fn is_metered(&self) -> bool {
        self.metered
    }
}

/// What a component or core module is, without compiling it (a core module, small, is compiled,
/// and nothing is cached): what `poolhost inspect` shows.
#[derive(Clone, Debug, serde::Serialize)]
#[non_exhaustive]
pub struct Description {
    /// A component (`false`: a core WebAssembly module, WASI preview 1).
    pub component: bool,
    /// The signatures of the functions a task can call, in WIT syntax.
    pub exports: Vec<String>,
    /// What it imports: interfaces by their full names, or a core module's `module::name`s.
    pub imports: Vec<String>,
    /// Whether it has a `main` (`wasi:cli/run`, or a core module's `_start`).
    pub main: bool,
    /// Whether it imports the pool interface: with a `main`, a driver.
    pub drives: bool,
    /// Why poolhost cannot run it, if it cannot.
    pub unrunnable: Option<String>,
}

impl Description {
    /// Reads the component (or core module), binary or text, at `path` and describes it.
    ///
    /// # Errors
    /// [`LoadError::Read`] and [`LoadError::NotWasm`]; for a core module, as [`Program::load`].
    pub fn read(path: impl AsRef<Path>) -> Result<Description, LoadError> {
        let name = path.as_ref().display().to_string();
        let bytes = fs::read(path.as_ref()).map_err(|cause| LoadError::Read {
            path: name.clone(),
            cause,
        })?;
        let (binary, component) = binary(&name, &bytes)?;
        // A core module (small), or a valid component the WIT decoder cannot express (one that
        // exports a type at the top level, say), is described from its compiled form, uncached.
        let world = match component {
            true => World::read(&binary).ok(),
            false => None,
        };
        let Some(world) = world else {
            return Ok(Description::of(&Program::loader().from_bytes(&name, &binary)?));
        };
        Ok(Description {
            component: true,
            exports: world.exports(),
            imports: world.imports(),
            main: world.has_main(),
            drives: world.drives(),
            unrunnable: world.unrunnable().map(|reason| reason.to_string()),
        })
    }

    /// A compiled program's description.
    fn of(program: &Program) -> Description {
        Description {
            component: program.is_component(),
            exports: program.exports(),
            imports: program.imports().to_vec(),
            main: program.has_main(),
            drives: program.0.drives,
            unrunnable: None,
        }
    }

    /// Whether it is a driver: it has a `main` and imports the pool interface.
    pub fn is_driver(&self) -> bool {
        self.main && self.drives
    }
}

impl Program {
    /// Reads, compiles and checks the component (binary or WebAssembly text) at `path`.
    ///
    /// # Errors
    /// See [`LoadError`]: each variant names the file and says what is wrong.
    pub fn load(path: impl AsRef<Path>) -> Result<Program, LoadError> {
        Program::loader().load(path)
    }

    /// As [`Program::load`], compiled with fuel metering so tasks can be given a fuel budget
    /// ([`crate::TaskOptions::fuel`]). Metering makes every task a little slower.
    ///
    /// # Errors
    /// As [`Program::load`].
    pub fn load_metered(path: impl AsRef<Path>) -> Result<Program, LoadError> {
        Program::loader().metered(true).load(path)
    }

    /// Compiles and checks a component given as bytes (binary or text); `name` is used in messages.
    ///
    /// # Errors
    /// As [`Program::load`].
    pub fn from_bytes(name: &str, bytes: &[u8]) -> Result<Program, LoadError> {
        Program::loader().from_bytes(name, bytes)
    }

    /// A [`Loader`], for metering or a compile cache.
    pub fn loader() -> Loader {
        Loader::default()
    }

    fn compile(
        name: &str,
        bytes: &[u8],
        metered: bool,
        cache: Option<&CompileCache>,
        compiled: &mut dyn FnMut(&Path),
    ) -> Result<Program, LoadError> {
        let path = name.to_owned();
        let (binary, component) = binary(&path, bytes)?;
        let invalid = |e: wasmtime::Error| LoadError::Invalid {
            path: path.clone(),
            message: format!("{e:#}"),
        };
        let engine = Engine::new(&super::base_config(metered)).map_err(invalid)?;
        // Mode 0700 whatever the umask: only this user can put a file where the workers will
        // load code from (without a mode, tempfile leaves it to the umask: 0777 under 000).
        let dir = tempfile::Builder::new()
            .prefix("poolhost-")
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir()
            .map_err(|e| LoadError::Artifact(e.to_string()))?;
        let mut artifact = dir.path().join("task.cwasm");

        let entry = cache.map(|cache| (cache, cache.entry(&engine, &binary)));
        let mut found = None;
        if let Some((_, entry)) = &entry
            && entry.exists()
        {
            found = from_cache(name, &engine, entry, &artifact, compiled);
            if found.is_none() {
                // Workers may be loading the unusable file already: the code compiled now goes
                // to another path, so that they see the difference in their `Init`.
                artifact = dir.path().join("recompiled.cwasm");
            }
        }
        let (code, cached) = match found {
            Some(found) => found,
            None => {
                // Seconds of compiling are not spent on a component that cannot run. Bytes the
                // reader cannot make sense of are left to the compiler, which says why.
                if component
                    && let Ok(world) = World::read(&binary)
                    && let Some(reason) = world.unrunnable()
                {
                    return Err(LoadError::Unrunnable {
                        path: path.clone(),
                        reason,
                    });
                }
                let started = std::time::Instant::now();
                let code = match component {
                    true => Component::new(&engine, &binary).map(Code::Component),
                    false => Module::new(&engine, &binary).map(Code::Module),
                };
                let code = code.map_err(invalid)?;
                tracing::info!("compiled `{name}` in {:.1?}", started.elapsed());
                let cached = store(name, &code, &artifact, entry)?;
                compiled(&artifact);
                (code, cached)
            }
        };
        let Described {
            exports,
            main,
            imports,
            drives,
        } = describe(&engine, &code, &path)?;
        let inner = Inner {
            exports,
            main,
            drives,
            imports,
            component: matches!(code, Code::Component(_)),
            cached,
            metered,
            name: path,
            source: Arc::from(bytes),
            artifact,
            _dir: dir,
        };
        Ok(Program(Arc::new(inner)))
    }

    /// The bytes the component was loaded from, binary or text.
    pub(crate) fn source(&self) -> &[u8] {
        &self.0.source
    }

    /// The name the component was loaded under (its path).
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The signatures of the exported functions a task can call, in WIT syntax.
    pub fn exports(&self) -> Vec<String> {
        self.0.exports.iter().map(ExportFunc::signature).collect()
    }

    /// Whether it is a component (`false`: a core WebAssembly module, WASI preview 1).
    pub fn is_component(&self) -> bool {
        self.0.component
    }

    /// What the component imports: WASI and poolhost interfaces, by their full names; for a
    /// core module, `module::name` of each import.
    pub fn imports(&self) -> &[String] {
        &self.0.imports
    }

    /// The compile cache entry the program was loaded from or stored in, if it was loaded with
    /// a cache ([`Loader::cache`]).
    pub fn cached(&self) -> Option<&Cached> {
        self.0.cached.as_ref()
    }

    /// Whether the component was compiled with fuel metering ([`Program::load_metered`]).
    pub fn metered(&self) -> bool {
        self.0.metered
    }

    /// Whether the component is a driver: it has a `main` and imports the pool interface, so
    /// its `main` is the parent program of its own pool (see [`crate::driver`]).
    pub fn is_driver(&self) -> bool {
        self.0.drives && self.has_main()
    }

    /// Whether the component exports `wasi:cli/run`, so [`Call::main`] can run it.
    pub fn has_main(&self) -> bool {
        self.0.main.is_some()
    }

    /// Parses a call written in WAVE, as `wasmtime run --invoke` reads it: `long-time-task(3)`,
    /// `greet("world")`, `iface#f([1, 2])`.
    ///
    /// # Errors
    /// [`CallError::Syntax`] for text that is not a WAVE call, [`CallError::UnknownExport`]
    /// (listing the exports), [`CallError::Mismatch`] (showing the signature) or
    /// [`CallError::Unsupported`].
    pub fn parse_call(&self, text: &str) -> Result<Call, CallError> {
        let text = text.trim();
        let parsed = UntypedFuncCall::parse(text).map_err(|e| CallError::Syntax {
            call: text.to_owned(),
            message: values::wave_error(&e),
        })?;
        let export = self.export(parsed.name())?;
        let types = export.params.iter().map(|(_, ty)| ty);
        let vals: Vec<Val> = parsed.to_wasm_params(types).map_err(|e| CallError::Mismatch {
            call: text.to_owned(),
            signature: export.signature(),
            message: values::wave_error(&e),
        })?;
        let args = vals.into_iter().map(values::from_val).collect::<Result<_, _>>();
        let args = args.map_err(|_| CallError::Unsupported {
            signature: export.signature(),
        })?;
        Ok(Call {
            target: Target::Export(export.name.clone()),
            args,
        })
    }

    /// Checks `call` against the component: the export exists and the arguments fit its
    /// parameters. Returns the call with each argument given its parameter's exact type.
    ///
    /// Arguments are checked once against the signature as they are parsed or submitted: a call
    /// from [`Program::parse_call`] passes through a structural check without being printed or
    /// parsed again, and arguments that already have their parameters' types are not copied.
    /// What fits is what fits in WAVE text (see `values::retype`): `3i32` for a `u32`, a bare
    /// value for an `option`, record fields in any order.
    ///
    /// # Errors
    /// As [`Program::parse_call`], and [`CallError::NoMain`].
    pub fn prepare(&self, call: Call) -> Result<Call, CallError> {
        let name = match &call.target {
            Target::Main if !self.has_main() => return Err(CallError::NoMain),
            Target::Main if call.args.iter().all(|arg| matches!(arg, Value::String(_))) => return Ok(call),
            Target::Main => {
                return Err(CallError::Mismatch {
                    call: call.to_string(),
                    signature: "main(args: list<string>)".into(),
                    message: "a job's arguments are strings".into(),
                });
            }
            Target::Export(name) => name,
        };
        let export = self.export(name)?;
        let mismatch = |message: String| CallError::Mismatch {
            call: call.to_string(),
            signature: export.signature(),
            message,
        };
        if call.args.len() != export.params.len() {
            return Err(mismatch(format!(
                "{} arguments given, {} expected",
                call.args.len(),
                export.params.len()
            )));
        }
        // Checked by reference, so that a mismatch shows the call as given; converted only
        // where a type differs.
        let retyped = call
            .args
            .iter()
            .zip(&export.params)
            .map(|(arg, (param, ty))| {
                values::retype(arg, ty).map_err(|e| mismatch(format!("parameter `{param}`: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let args = call
            .args
            .into_iter()
            .zip(retyped)
            .map(|(arg, retyped)| retyped.unwrap_or(arg))
            .collect();
        Ok(Call {
            target: call.target,
            args,
        })
    }

    fn export(&self, name: &str) -> Result<&ExportFunc, CallError> {
        let export =
            self.0
                .exports
                .iter()
                .find(|e| e.name == name)
                .ok_or_else(|| CallError::UnknownExport {
                    name: name.to_owned(),
                    exports: self.exports(),
                })?;
        if !export.crosses() {
            return Err(CallError::Unsupported {
                signature: export.signature(),
            });
        }
        Ok(export)
    }

    /// The precompiled component the workers load, in a private temporary directory that is
    /// removed when the last clone of the program is dropped.
    pub fn artifact(&self) -> &Path {
        &self.0.artifact
    }
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program")
            .field("name", &self.0.name)
            .finish_non_exhaustive()
    }
}

/// Compiled code: a component, or a core module (WASI preview 1).
pub(super) enum Code {
    Component(Component),
    Module(Module),
}

impl Code {
    fn serialize(&self) -> wasmtime::Result<Vec<u8>> {
        match self {
            Code::Component(component) => component.serialize(),
            Code::Module(module) => module.serialize(),
        }
    }
}

/// The binary of `bytes` (WebAssembly text is translated), and whether it is a component (or a
/// core module).
fn binary<'a>(path: &str, bytes: &'a [u8]) -> Result<(std::borrow::Cow<'a, [u8]>, bool), LoadError> {
    let binary = wat::parse_bytes(bytes).map_err(|e| LoadError::NotWasm {
        path: path.to_owned(),
        detail: e.to_string().lines().next().unwrap_or_default().to_owned(),
    })?;
    // The 4 bytes after the magic number: version 1 for core modules, 0xd + layer 1 for
    // components.
    let component = match binary.get(4..8) {
        Some([0x0d, 0x00, 0x01, 0x00]) => true,
        Some([0x01, 0x00, 0x00, 0x00]) => false,
        _ => {
            return Err(LoadError::NotWasm {
                path: path.to_owned(),
                detail: "unknown WebAssembly version".into(),
            });
        }
    };
    Ok((binary, component))
}

/// Loads the compiled code of `name` from its cache `entry`, linked (or copied) to `artifact`
/// for the workers, which are told of it; `None` if the entry is unusable, which is then
/// compiled again.
fn from_cache(
    name: &str,
    engine: &Engine,
    entry: &Path,
    artifact: &Path,
    compiled: &mut dyn FnMut(&Path),
) -> Option<(Code, Option<Cached>)> {
    // The workers load a link to the entry (a copy across file systems), so removing the cache
    // while a pool runs cannot take the code from under a replacement worker.
    let loaded = fs::hard_link(entry, artifact)
        .or_else(|_| super::cache::write_private(artifact, &fs::read(entry)?))
        .map_err(wasmtime::Error::from)
        .and_then(|()| {
            compiled(artifact);
            deserialize(engine, artifact)
        });
    match loaded {
        Ok(loaded) => {
            tracing::info!("compile cache hit for `{name}`: {}", entry.display());
            let cached = Cached {
                path: entry.to_owned(),
                hit: true,
            };
            Some((loaded, Some(cached)))
        }
        Err(e) => {
            tracing::warn!(
                "compiling `{name}` again: its cache entry {} is unusable: {e:#}",
                entry.display()
            );
            let _ = fs::remove_file(artifact);
            None
        }
    }
}

/// Writes the freshly compiled `code` of `name` to `artifact` for the workers, and stores it in
/// the compile cache `entry`, if there is one; says where it is cached.
fn store(
    name: &str,
    code: &Code,
    artifact: &Path,
    entry: Option<(&CompileCache, PathBuf)>,
) -> Result<Option<Cached>, LoadError> {
    let artifact_error = |e: &dyn std::fmt::Display| LoadError::Artifact(e.to_string());
    let serialized = code.serialize().map_err(|e| artifact_error(&e))?;
    super::cache::write_private(artifact, &serialized).map_err(|e| artifact_error(&e))?;
    let Some((cache, entry)) = entry else {
        return Ok(None);
    };
    match cache.store(&entry, &serialized) {
        Ok(()) => {
            tracing::info!("compile cache stored `{name}`: {}", entry.display());
            Ok(Some(Cached {
                path: entry,
                hit: false,
            }))
        }
        Err(e) => {
            tracing::warn!("cannot store `{name}` in the compile cache: {e}");
            Ok(None)
        }
    }
}

/// What the workers will find in a program's code.
struct Described {
    exports: Vec<ExportFunc>,
    main: Option<String>,
    imports: Vec<String>,
    /// It imports the pool interface (a driver, if it also has a `main`).
    drives: bool,
}

/// What the workers will find in `code`: its exports, its `main`, its imports, and whether it
/// drives a pool. Checks that its imports can be linked.
fn describe(engine: &Engine, code: &Code, path: &str) -> Result<Described, LoadError> {
    let imports_error = |e: wasmtime::Error| LoadError::Imports {
        path: path.to_owned(),
        message: format!("{e:#}"),
    };
    match code {
        Code::Component(component) => {
            super::linker(engine)
                .and_then(|linker| linker.instantiate_pre(component))
                .map_err(imports_error)?;
            Ok(Described {
                exports: types::exports(engine, component),
                main: types::main_export(engine, component),
                imports: types::imports(engine, component),
                drives: types::imports_pool(engine, component),
            })
        }
        Code::Module(module) => {
            if let Some(import) = module.imports().find(|i| i.module().starts_with("poolhost:")) {
                return Err(LoadError::CoreImportsPoolhost {
                    path: path.to_owned(),
                    import: format!("{}::{}", import.module(), import.name()),
                });
            }
            super::core_linker(engine)
                .and_then(|linker| linker.instantiate_pre(module))
                .map_err(imports_error)?;
            Ok(Described {
                exports: types::core_exports(module),
                main: types::core_start(module).then(|| "_start".to_owned()),
                imports: types::core_imports(module),
                drives: false,
            })
        }
    }
}

/// Loads an artefact [`Program`] wrote, or linked from the compile cache: a component or a
/// core module, as its header says.
#[allow(unsafe_code)]
pub(super) fn deserialize(engine: &Engine, artifact: &Path) -> wasmtime::Result<Code> {
    let kind = Engine::detect_precompiled_file(artifact)?;
    // SAFETY: wasmtime runs deserialized bytes as native code without validating them, so they
    // must come from `Component::serialize`. `artifact` is a file in a private (0700) directory
    // the host process created itself, handed to a worker (its own child) over the worker's
    // private IPC socket. The host put it there either by writing `Component::serialize`'s
    // output, or by linking an entry of the compile cache: a directory `CompileCache::open`
    // checked is owned by this user and writable by nobody else, whose entries poolhost writes
    // only from `Component::serialize`. The engine's configuration is checked against the
    // artefact's header by wasmtime, which refuses a mismatch cleanly.
    unsafe {
        match kind {
            Some(Precompiled::Module) => Module::deserialize_file(engine, artifact).map(Code::Module),
            _ => Component::deserialize_file(engine, artifact).map(Code::Component),
        }
    }
}
