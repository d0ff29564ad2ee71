use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::StrategyError;

/// The type of an option's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptionKind {
    /// A non-negative integer.
    Int,
    /// A finite number.
    Float,
    /// true or false.
    Bool,
    /// Free text.
    String,
}

/// One option a strategy declares.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptionSpec {
    /// Its key (`seed`, `min-heads-per-layer`).
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: OptionKind,
    /// Value used when none is given.
    pub default: Value,
    /// What it changes.
    pub description: String,
}

impl OptionSpec {
    /// Declares an option.
    pub fn new(name: &str, kind: OptionKind, default: impl Into<Value>, description: &str) -> Self {
        OptionSpec { name: name.into(), kind, default: default.into(), description: description.into() }
    }

    /// Whether the default is a value of the option's type, or null for "unset" (the strategy then
    /// documents what it uses instead).
    pub fn default_fits(&self) -> bool {
        self.default.is_null() || self.accepts(&self.default)
    }

    /// Converts a command-line string to this option's type.
    fn parse_text(&self, text: &str) -> Option<Value> {
        match self.kind {
            OptionKind::Int => text.parse::<u64>().ok().map(Value::from),
            OptionKind::Float => text.parse::<f64>().ok().filter(|v| v.is_finite()).map(Value::from),
            OptionKind::Bool => text.parse::<bool>().ok().map(Value::from),
            OptionKind::String => Some(Value::from(text)),
        }
    }

    fn accepts(&self, value: &Value) -> bool {
        match self.kind {
            OptionKind::Int => value.is_u64(),
            OptionKind::Float => value.as_f64().is_some_and(f64::is_finite),
            OptionKind::Bool => value.is_boolean(),
            OptionKind::String => value.is_string(),
        }
    }
}

/// A strategy's options after checking against its specs: every declared option has a value of its
/// type, and nothing undeclared is present.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Options {
    values: BTreeMap<String, Value>,
}

impl Options {
    /// Checks `given` (values from a recipe, or strings from the command line) against `specs` and
    /// fills in defaults. `owner` names the strategy in messages (`scorer random`).
    pub fn resolve(
        owner: &str,
        specs: &[OptionSpec],
        given: &BTreeMap<String, Value>,
    ) -> Result<Self, StrategyError> {
        let mut values: BTreeMap<String, Value> =
            specs.iter().map(|s| (s.name.clone(), s.default.clone())).collect();
        for (key, value) in given {
            let Some(spec) = specs.iter().find(|s| &s.name == key) else {
                let known: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
                return Err(StrategyError::bad_input(format!(
                    "{owner} has no option `{key}`; its options are: {}",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                )));
            };
            let typed = match value {
                Value::String(text) if spec.kind != OptionKind::String => spec.parse_text(text),
                other => Some(other.clone()).filter(|v| spec.accepts(v)),
            };
            let typed = typed.ok_or_else(|| {
                StrategyError::bad_input(format!(
                    "option `{key}` of {owner} must be {} (got {value})",
                    match spec.kind {
                        OptionKind::Int => "a non-negative integer",
                        OptionKind::Float => "a finite number",
                        OptionKind::Bool => "true or false",
                        OptionKind::String => "a string",
                    }
                ))
            })?;
            values.insert(key.clone(), typed);
        }
        Ok(Options { values })
    }

    /// Parses `KEY=VALUE` pairs as given on the command line.
    pub fn parse_pairs(pairs: &[String]) -> Result<BTreeMap<String, Value>, StrategyError> {
        pairs
            .iter()
            .map(|pair| {
                pair.split_once('=')
                    .map(|(k, v)| (k.trim().to_string(), Value::String(v.trim().to_string())))
                    .ok_or_else(|| StrategyError::bad_input(format!("option `{pair}` is not KEY=VALUE")))
            })
            .collect()
    }

    fn get(&self, key: &str) -> &Value {
        self.values
            .get(key)
            .unwrap_or_else(|| panic!("option `{key}` was not declared by the strategy reading it"))
    }

    /// An integer option. Panics if the strategy did not declare it (a bug in the strategy).
    pub fn int(&self, key: &str) -> u64 {
        self.get(key).as_u64().expect("resolved Int options hold integers")
    }

    /// A number option.
    pub fn float(&self, key: &str) -> f64 {
        self.get(key).as_f64().expect("resolved Float options hold numbers")
    }

    /// A boolean option.
    pub fn bool(&self, key: &str) -> bool {
        self.get(key).as_bool().expect("resolved Bool options hold booleans")
    }

    /// A string option.
    pub fn string(&self, key: &str) -> &str {
        self.get(key).as_str().expect("resolved String options hold strings")
    }

    /// All values, for reports and recipes.
    pub fn values(&self) -> &BTreeMap<String, Value> {
        &self.values
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs() -> Vec<OptionSpec> {
        vec![
            OptionSpec::new("seed", OptionKind::Int, 0, "seed"),
            OptionSpec::new("scale", OptionKind::Float, 1.0, "scale"),
            OptionSpec::new("whole", OptionKind::Bool, false, "whole"),
        ]
    }

    #[test]
    fn fills_defaults_and_parses_command_line_text() {
        let given = Options::parse_pairs(&["seed=7".into(), "whole=true".into()]).unwrap();
        let o = Options::resolve("scorer random", &specs(), &given).unwrap();
        assert_eq!((o.int("seed"), o.float("scale"), o.bool("whole")), (7, 1.0, true));
    }

    #[test]
    fn an_undeclared_option_is_an_error_listing_the_declared_ones() {
        let given = Options::parse_pairs(&["sed=7".into()]).unwrap();
        let e = Options::resolve("scorer random", &specs(), &given).unwrap_err();
        assert_eq!(e.to_string(), "scorer random has no option `sed`; its options are: seed, scale, whole");
    }

    #[test]
    fn a_value_of_the_wrong_type_is_an_error() {
        let given = Options::parse_pairs(&["seed=-1".into()]).unwrap();
        let e = Options::resolve("scorer random", &specs(), &given).unwrap_err();
        assert_eq!(
            e.to_string(),
            "option `seed` of scorer random must be a non-negative integer (got \"-1\")"
        );
        assert!(Options::parse_pairs(&["seed".into()]).is_err());
    }
}
