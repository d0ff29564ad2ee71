//! Name → strategy, for every kind. Built-ins arrive through `inventory`; the registry is an ordinary
//! value so that strategies from other origins (plugins) can join it at run time.
use std::collections::BTreeMap;

use forge_api::plugin::PluginStrategy;
use forge_api::{
    Evaluator, ImportanceScorer, OptionSpec, Options, Pruner, StrategyError, StrategyInfo, StrategyKind,
};
use serde_json::Value;

use super::adapters::{Adapter, KernelAdapter};
use super::optimizers::{HostOnly, TrainOptimizer};

use crate::{bad_input, Error, Result};

/// How to build a strategy of each kind from its resolved options.
#[derive(Clone)]
pub enum Factory {
    /// An importance scorer.
    Scorer(fn(&Options) -> Result<Box<dyn ImportanceScorer>, StrategyError>),
    /// A pruner.
    Pruner(fn(&Options) -> Result<Box<dyn Pruner>, StrategyError>),
    /// An adapter.
    Adapter(fn(&Options) -> Result<Box<dyn Adapter>, StrategyError>),
    /// An optimizer (a built-in one may also step on the device).
    Optimizer(fn(&Options) -> Result<Box<dyn TrainOptimizer>, StrategyError>),
    /// An evaluator.
    Evaluator(fn(&Options) -> Result<Box<dyn Evaluator>, StrategyError>),
    /// A strategy of any kind from a plugin library.
    Plugin(PluginStrategy),
}

impl Factory {
    fn kind(&self) -> StrategyKind {
        match self {
            Factory::Scorer(_) => StrategyKind::Scorer,
            Factory::Pruner(_) => StrategyKind::Pruner,
            Factory::Adapter(_) => StrategyKind::Adapter,
            Factory::Optimizer(_) => StrategyKind::Optimizer,
            Factory::Evaluator(_) => StrategyKind::Evaluator,
            Factory::Plugin(p) => p.info.kind,
        }
    }
}

/// A strategy compiled into forge, submitted with `inventory::submit!`.
pub struct Builtin {
    /// Unique within its kind.
    pub name: &'static str,
    /// One line.
    pub description: &'static str,
    /// Its options and their defaults.
    pub options: fn() -> Vec<OptionSpec>,
    /// How to build it.
    pub factory: Factory,
}

inventory::collect!(Builtin);

/// One registered strategy.
#[derive(Clone)]
pub struct Entry {
    /// Name, description and option schema.
    pub info: StrategyInfo,
    /// `builtin`, or the path of the plugin that provides it.
    pub origin: String,
    /// How to build it.
    pub factory: Factory,
}

/// All strategies known to this run.
#[derive(Clone)]
pub struct Registry {
    entries: Vec<Entry>,
}

impl Registry {
    /// The built-in strategies.
    pub fn builtin() -> Result<Self> {
        let mut registry = Registry { entries: Vec::new() };
        for b in inventory::iter::<Builtin> {
            let info = StrategyInfo {
                kind: b.factory.kind(),
                name: b.name.to_string(),
                description: b.description.to_string(),
                options: (b.options)(),
            };
            registry.add(Entry { info, origin: "builtin".into(), factory: b.factory.clone() })?;
        }
        registry.entries.sort_by(|a, b| (a.info.kind, &a.info.name).cmp(&(b.info.kind, &b.info.name)));
        Ok(registry)
    }

    /// Adds the strategies of the plugin libraries at `paths` (see `plugin_paths`).
    pub fn with_plugins(mut self, paths: &[std::path::PathBuf]) -> Result<Self> {
        for path in paths {
            let contents = super::plugins::load(path)?;
            tracing::info!(
                "plugin {} {} from {}: {} strategies",
                contents.name,
                contents.version,
                path.display(),
                contents.strategies.len()
            );
            for strategy in contents.strategies {
                let info = strategy.info.clone();
                self.add(Entry {
                    info,
                    origin: path.display().to_string(),
                    factory: Factory::Plugin(strategy),
                })?;
            }
        }
        Ok(self)
    }

    /// The paths of the plugin libraries whose strategies this registry holds.
    pub fn plugin_origins(&self) -> Vec<&str> {
        let mut origins: Vec<&str> = self
            .entries
            .iter()
            .filter(|e| matches!(e.factory, Factory::Plugin(_)))
            .map(|e| e.origin.as_str())
            .collect();
        origins.dedup();
        origins
    }

    /// Adds a strategy; a name already taken within its kind is an error naming both origins.
    pub fn add(&mut self, entry: Entry) -> Result<()> {
        if let Some(existing) =
            self.entries.iter().find(|e| e.info.kind == entry.info.kind && e.info.name == entry.info.name)
        {
            return Err(bad_input!(
                "{} `{}` is provided twice: by {} and by {}",
                entry.info.kind.name(),
                entry.info.name,
                existing.origin,
                entry.origin
            ));
        }
        self.entries.push(entry);
        Ok(())
    }

    /// The strategies of one kind, by name.
    pub fn of_kind(&self, kind: StrategyKind) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(move |e| e.info.kind == kind)
    }

    /// Looks a strategy up; an unknown name is an error listing the known names of that kind.
    pub fn find(&self, kind: StrategyKind, name: &str) -> Result<&Entry> {
        self.of_kind(kind).find(|e| e.info.name == name).ok_or_else(|| {
            let known: Vec<&str> = self.of_kind(kind).map(|e| e.info.name.as_str()).collect();
            bad_input!("unknown {} `{name}`; known {}: {}", kind.name(), kind.plural(), known.join(", "))
        })
    }

    fn resolve(
        &self,
        kind: StrategyKind,
        name: &str,
        given: &BTreeMap<String, Value>,
    ) -> Result<(&Entry, Options)> {
        let entry = self.find(kind, name)?;
        let owner = format!("{} `{name}`", kind.name());
        let options = Options::resolve(&owner, &entry.info.options, given).map_err(Error::from)?;
        Ok((entry, options))
    }

    /// Builds scorer `name` with the given options (unknown options are errors).
    pub fn scorer(
        &self,
        name: &str,
        given: &BTreeMap<String, Value>,
    ) -> Result<(Box<dyn ImportanceScorer>, Options)> {
        let (entry, options) = self.resolve(StrategyKind::Scorer, name, given)?;
        let built = match &entry.factory {
            Factory::Scorer(build) => build(&options)?,
            Factory::Plugin(plugin) => plugin.scorer(&options)?,
            _ => unreachable!("entries of kind scorer hold scorer factories"),
        };
        Ok((built, options))
    }

    /// Builds pruner `name`.
    pub fn pruner(&self, name: &str, given: &BTreeMap<String, Value>) -> Result<(Box<dyn Pruner>, Options)> {
        let (entry, options) = self.resolve(StrategyKind::Pruner, name, given)?;
        let built = match &entry.factory {
            Factory::Pruner(build) => build(&options)?,
            Factory::Plugin(plugin) => plugin.pruner(&options)?,
            _ => unreachable!("entries of kind pruner hold pruner factories"),
        };
        Ok((built, options))
    }

    /// Builds adapter `name`.
    pub fn adapter(
        &self,
        name: &str,
        given: &BTreeMap<String, Value>,
    ) -> Result<(Box<dyn Adapter>, Options)> {
        let (entry, options) = self.resolve(StrategyKind::Adapter, name, given)?;
        let built: Box<dyn Adapter> = match &entry.factory {
            Factory::Adapter(build) => build(&options)?,
            Factory::Plugin(plugin) => {
                Box::new(KernelAdapter::new(plugin.adapter(&options)?, name, options.clone(), &entry.origin))
            }
            _ => unreachable!("entries of kind adapter hold adapter factories"),
        };
        Ok((built, options))
    }

    /// Builds plugin adapter `name`, a flat-buffer kernel joined to the graph by the host.
    pub fn kernel_adapter(&self, name: &str, given: &BTreeMap<String, Value>) -> Result<KernelAdapter> {
        let (entry, options) = self.resolve(StrategyKind::Adapter, name, given)?;
        let Factory::Plugin(plugin) = &entry.factory else {
            return Err(bad_input!("adapter `{name}` is built in, not a kernel adapter from a plugin"));
        };
        Ok(KernelAdapter::new(plugin.adapter(&options)?, name, options, &entry.origin))
    }

    /// Builds optimizer `name`.
    pub fn optimizer(
        &self,
        name: &str,
        given: &BTreeMap<String, Value>,
    ) -> Result<(Box<dyn TrainOptimizer>, Options)> {
        let (entry, options) = self.resolve(StrategyKind::Optimizer, name, given)?;
        let built = match &entry.factory {
            Factory::Optimizer(build) => build(&options)?,
            Factory::Plugin(plugin) => Box::new(HostOnly(plugin.optimizer(&options)?)),
            _ => unreachable!("entries of kind optimizer hold optimizer factories"),
        };
        Ok((built, options))
    }

    /// Builds evaluator `name`.
    pub fn evaluator(
        &self,
        name: &str,
        given: &BTreeMap<String, Value>,
    ) -> Result<(Box<dyn Evaluator>, Options)> {
        let (entry, options) = self.resolve(StrategyKind::Evaluator, name, given)?;
        let built = match &entry.factory {
            Factory::Evaluator(build) => build(&options)?,
            Factory::Plugin(plugin) => plugin.evaluator(&options)?,
            _ => unreachable!("entries of kind evaluator hold evaluator factories"),
        };
        Ok((built, options))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_names_are_unique_well_formed_and_documented() {
        let registry = Registry::builtin().unwrap();
        for entry in &registry.entries {
            let info = &entry.info;
            assert!(StrategyInfo::is_valid_name(&info.name), "bad name `{}`", info.name);
            assert!(
                !info.description.is_empty() && !info.description.contains('\n'),
                "{} needs one line",
                info.name
            );
            for option in &info.options {
                assert!(
                    StrategyInfo::is_valid_name(&option.name),
                    "bad option name `{}` of {}",
                    option.name,
                    info.name
                );
                assert!(
                    !option.description.is_empty(),
                    "option `{}` of {} is undocumented",
                    option.name,
                    info.name
                );
                assert!(
                    option.default_fits(),
                    "default of option `{}` of {} is not of its type",
                    option.name,
                    info.name
                );
                Options::resolve(&info.name, &info.options, &BTreeMap::new()).unwrap();
            }
        }
        let mut names: Vec<_> = registry.entries.iter().map(|e| (e.info.kind, e.info.name.clone())).collect();
        let count = names.len();
        names.dedup();
        assert_eq!(names.len(), count);
    }

    #[test]
    fn an_unknown_name_lists_the_known_ones() {
        let registry = Registry::builtin().unwrap();
        let err = registry.find(StrategyKind::Pruner, "magnitude").err().unwrap();
        assert_eq!(err.to_string(), "unknown pruner `magnitude`; known pruners: budget, global, per-layer");
    }

    #[test]
    fn a_second_strategy_of_the_same_name_is_refused_naming_both_origins() {
        let mut registry = Registry::builtin().unwrap();
        let mut twin = registry.find(StrategyKind::Scorer, "l2").unwrap().clone();
        twin.origin = "/tmp/libtwin.so".into();
        let err = registry.add(twin).err().unwrap();
        assert_eq!(err.to_string(), "scorer `l2` is provided twice: by builtin and by /tmp/libtwin.so");
    }
}
