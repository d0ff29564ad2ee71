//! What every plugin strategy shares whatever its kind: its description, creation from options and
//! destruction — on the plugin's side ([`Export`], [`entry`]) and on the host's ([`read_plugin`],
//! [`PluginStrategy`]).
use std::ffi::c_void;
use std::sync::OnceLock;

use super::abi::*;
use super::boundary::{request, serve};
use crate::{OptionSpec, Options, StrategyError, StrategyInfo, StrategyKind};

/// What a plugin strategy says about itself; implement it beside the strategy's kind trait
/// ([`crate::ImportanceScorer`], [`crate::Pruner`], [`crate::Evaluator`] or [`crate::Optimizer`])
/// and list the type in [`crate::export_plugin!`].
pub trait Export: Sized + 'static {
    /// Unique within its kind: lower case, digits and `-`.
    const NAME: &'static str;
    /// One line, shown by `forge list`.
    const DESCRIPTION: &'static str;
    /// The options it takes, with defaults; anything else given is refused by the host.
    fn options() -> Vec<OptionSpec> {
        Vec::new()
    }
    /// Builds the strategy from its resolved options.
    fn new(options: &Options) -> Result<Self, StrategyError>;
}

unsafe extern "C" fn create<T: Export>(
    options_json: ForgeStr,
    instance: *mut *mut c_void,
    error: *const ForgeSink,
) -> ForgeStatus {
    serve(error, || {
        let given = serde_json::from_str(options_json.to_str()?)
            .map_err(|e| StrategyError::failed(format!("options are not a JSON object: {e}")))?;
        let options = Options::resolve(T::NAME, &T::options(), &given)?;
        *instance = Box::into_raw(Box::new(T::new(&options)?)) as *mut c_void;
        Ok(())
    })
}

unsafe extern "C" fn destroy<T>(instance: *mut c_void) {
    // A panic in a destructor must not unwind into the host either.
    let _ = std::panic::catch_unwind(|| drop(Box::from_raw(instance as *mut T)));
}

/// The kind-independent part of a strategy's table entry; the kind modules fill in their methods.
pub(crate) fn describe<T: Export>(kind: u32) -> ForgeStrategy {
    let options = serde_json::to_string(&T::options()).expect("option specs are plain data");
    ForgeStrategy {
        kind,
        name: ForgeStr::new(T::NAME),
        description: ForgeStr::new(T::DESCRIPTION),
        // Built once per process by `entry` and never freed: libraries are never unloaded.
        options_json: ForgeStr::new(Box::leak(options.into_boxed_str())),
        create: create::<T>,
        destroy: destroy::<T>,
        scorer: std::ptr::null(),
        pruner: std::ptr::null(),
        evaluator: std::ptr::null(),
        optimizer: std::ptr::null(),
        adapter: std::ptr::null(),
    }
}

/// A plugin's table, built once by its entry function.
pub struct PluginTable {
    plugin: ForgePlugin,
    _strategies: Vec<*const ForgeStrategy>,
}

// SAFETY: the table is immutable once built and points only to data leaked for the process's life.
unsafe impl Send for PluginTable {}
unsafe impl Sync for PluginTable {}

/// The body of `forge_plugin_entry`, which [`crate::export_plugin!`] writes: builds the table on the
/// first call; a panic while building returns null, which the host reports.
pub fn entry(
    table: &'static OnceLock<PluginTable>,
    name: &'static str,
    version: &'static str,
    strategies: fn() -> Vec<ForgeStrategy>,
) -> *const ForgePlugin {
    let built = std::panic::catch_unwind(|| {
        table.get_or_init(|| {
            let pointers: Vec<*const ForgeStrategy> =
                strategies().into_iter().map(|s| Box::leak(Box::new(s)) as *const ForgeStrategy).collect();
            PluginTable {
                plugin: ForgePlugin {
                    abi_major: ABI_MAJOR,
                    abi_minor: ABI_MINOR,
                    name: ForgeStr::new(name),
                    version: ForgeStr::new(version),
                    strategies: pointers.as_ptr(),
                    count: pointers.len(),
                },
                _strategies: pointers,
            }
        })
    });
    match built {
        Ok(table) => &table.plugin,
        Err(_) => std::ptr::null(),
    }
}

/// Exports a plugin's strategies under the entry symbol the host looks for.
///
/// ```ignore
/// forge_api::export_plugin! {
///     name: "entropy",
///     version: env!("CARGO_PKG_VERSION"),
///     strategies: [scorer(EntropyScorer)],
/// }
/// ```
/// Each strategy is `scorer(T)`, `pruner(T)`, `evaluator(T)`, `optimizer(T)` or `adapter(T)`, where `T` implements
/// [`Export`] and the trait of that kind.
#[macro_export]
macro_rules! export_plugin {
    (name: $name:expr, version: $version:expr, strategies: [$($kind:ident($ty:ty)),* $(,)?] $(,)?) => {
        /// The plugin's entry point (forge plugin ABI).
        #[no_mangle]
        pub extern "C" fn forge_plugin_entry() -> *const $crate::plugin::abi::ForgePlugin {
            static TABLE: ::std::sync::OnceLock<$crate::plugin::PluginTable> = ::std::sync::OnceLock::new();
            fn strategies() -> ::std::vec::Vec<$crate::plugin::abi::ForgeStrategy> {
                ::std::vec![$($crate::plugin::export::$kind::<$ty>()),*]
            }
            $crate::plugin::entry(&TABLE, $name, $version, strategies)
        }
    };
}

/// A strategy read from a plugin's table, as the host sees it.
#[derive(Clone)]
pub struct PluginStrategy {
    /// Kind, name, description and options.
    pub info: StrategyInfo,
    /// The ABI minor its plugin was built for: what it may be given and read.
    pub(crate) abi_minor: u32,
    origin: &'static str,
    raw: &'static ForgeStrategy,
}

// SAFETY: the table entry is immutable and lives for the process; the ABI requires a plugin's
// functions to be callable from any thread (never concurrently on one instance, which the host's
// `Instance` ownership guarantees).
unsafe impl Send for PluginStrategy {}
unsafe impl Sync for PluginStrategy {}

/// What a plugin's table holds.
pub struct PluginContents {
    /// The plugin's name.
    pub name: String,
    /// The plugin's version.
    pub version: String,
    /// Its strategies.
    pub strategies: Vec<PluginStrategy>,
}

fn kind_of(code: u32) -> Option<StrategyKind> {
    Some(match code {
        FORGE_KIND_SCORER => StrategyKind::Scorer,
        FORGE_KIND_PRUNER => StrategyKind::Pruner,
        FORGE_KIND_ADAPTER => StrategyKind::Adapter,
        FORGE_KIND_OPTIMIZER => StrategyKind::Optimizer,
        FORGE_KIND_EVALUATOR => StrategyKind::Evaluator,
        _ => return None,
    })
}

/// Reads and checks the table a plugin's entry function returned: its ABI version first, then each
/// strategy's name, kind, methods and option schema. Errors are user-facing (the host prefixes the
/// library's path).
///
/// `origin` (the library's path) prefixes every error its strategies return later.
///
/// # Safety
/// `table` must be null or what a `forge_plugin_entry` returned: readable for the process's life.
pub unsafe fn read_plugin(table: *const ForgePlugin, origin: &str) -> Result<PluginContents, StrategyError> {
    // Strategies keep the origin for the process's life, as they keep the library.
    let origin: &'static str = Box::leak(origin.to_string().into_boxed_str());
    let table = table.as_ref().ok_or_else(|| {
        StrategyError::bad_input(
            "its forge_plugin_entry returned null (a Rust plugin panicked while building its table)",
        )
    })?;
    if table.abi_major != ABI_MAJOR || table.abi_minor > ABI_MINOR {
        return Err(StrategyError::bad_input(format!(
            "it was built for forge plugin ABI {}.{}, and this forge speaks ABI {ABI_MAJOR}.{ABI_MINOR}: \
             rebuild it against this forge's forge-api crate (or include/forge_plugin.h)",
            table.abi_major, table.abi_minor
        )));
    }
    let text = |s: ForgeStr, what: &str| {
        s.to_str()
            .map(str::to_string)
            .map_err(|_| StrategyError::bad_input(format!("its {what} is not UTF-8")))
    };
    let mut strategies = Vec::new();
    for i in 0..table.count {
        let raw = (*table.strategies.add(i))
            .as_ref()
            .ok_or_else(|| StrategyError::bad_input(format!("its strategy {i} is a null pointer")))?;
        let name = text(raw.name, "strategy name")?;
        if !StrategyInfo::is_valid_name(&name) {
            return Err(StrategyError::bad_input(format!(
                "its strategy name `{name}` is not lower case letters, digits and `-`"
            )));
        }
        let kind = kind_of(raw.kind).ok_or_else(|| {
            StrategyError::bad_input(format!("strategy `{name}` has unknown kind {}", raw.kind))
        })?;
        let has_methods = match kind {
            StrategyKind::Scorer => !raw.scorer.is_null(),
            StrategyKind::Pruner => !raw.pruner.is_null(),
            StrategyKind::Evaluator => !raw.evaluator.is_null(),
            StrategyKind::Optimizer => !raw.optimizer.is_null(),
            StrategyKind::Adapter => !raw.adapter.is_null(),
        };
        if !has_methods {
            return Err(StrategyError::bad_input(format!(
                "{} `{name}` has no {} methods",
                kind.name(),
                kind.name()
            )));
        }
        let options_json = text(raw.options_json, "option schema")?;
        let options: Vec<OptionSpec> = serde_json::from_str(&options_json).map_err(|e| {
            StrategyError::bad_input(format!(
                "the option schema of {} `{name}` is not valid: {e}",
                kind.name()
            ))
        })?;
        if let Some(bad) = options.iter().find(|o| !o.default_fits()) {
            return Err(StrategyError::bad_input(format!(
                "the default of option `{}` of {} `{name}` is not of its type",
                bad.name,
                kind.name()
            )));
        }
        let description = text(raw.description, "strategy description")?;
        strategies.push(PluginStrategy {
            info: StrategyInfo { kind, name, description, options },
            abi_minor: table.abi_minor,
            origin,
            raw,
        });
    }
    Ok(PluginContents {
        name: text(table.name, "name")?,
        version: text(table.version, "version")?,
        strategies,
    })
}

/// A live strategy object in a plugin; destroyed by the plugin when dropped.
pub(crate) struct Instance {
    pub(crate) raw: &'static ForgeStrategy,
    pub(crate) ptr: *mut c_void,
    strategy: PluginStrategy,
}

impl Instance {
    /// Calls into the plugin; any failure, the plugin's or a host callback's, comes back as bad input
    /// naming the strategy and its library: a plugin's fault is for its user or author to fix.
    pub(crate) fn call(
        &self,
        call: impl FnOnce(*const ForgeSink) -> ForgeStatus,
    ) -> Result<(), StrategyError> {
        request(call).map_err(|e| self.blame(e))
    }

    /// Names the strategy and its library in an error.
    pub(crate) fn blame(&self, e: StrategyError) -> StrategyError {
        self.strategy.blame(e)
    }

    /// Whether its plugin speaks ABI 1.1 or later: units beyond query heads.
    pub(crate) fn knows_units(&self) -> bool {
        self.strategy.abi_minor >= 1
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from this strategy's `create` and is destroyed once.
        unsafe { (self.raw.destroy)(self.ptr) }
    }
}

impl PluginStrategy {
    /// Creates an instance from options already resolved against `info.options`.
    pub(crate) fn instantiate(&self, options: &Options) -> Result<Instance, StrategyError> {
        let json = serde_json::to_string(options.values()).expect("option values are JSON");
        let mut ptr = std::ptr::null_mut();
        // SAFETY: the table was checked by `read_plugin`; `json` outlives the call.
        request(|error| unsafe { (self.raw.create)(ForgeStr::new(&json), &mut ptr, error) })
            .map_err(|e| self.blame(e))?;
        Ok(Instance { raw: self.raw, ptr, strategy: self.clone() })
    }

    fn blame(&self, e: StrategyError) -> StrategyError {
        StrategyError::bad_input(format!(
            "{} `{}` of plugin {}: {e}",
            self.info.kind.name(),
            self.info.name,
            self.origin
        ))
    }
}
