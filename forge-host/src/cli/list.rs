//! `forge list`: every strategy of every kind, with its options and origin.
use clap::Args;
use forge_api::StrategyKind;
use serde_json::{json, Map, Value};

use crate::strategies::Registry;
use crate::Result;

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: ListArgs, registry: &Registry) -> Result<()> {
    let mut report = Map::new();
    for kind in StrategyKind::ALL {
        let entries: Vec<Value> = registry
            .of_kind(kind)
            .map(|e| json!({"name": e.info.name, "description": e.info.description, "origin": e.origin, "options": e.info.options}))
            .collect();
        report.insert(kind.plural().into(), entries.into());
    }
    super::emit(&Value::Object(report), args.json, |_| {
        let mut text = String::new();
        for kind in StrategyKind::ALL {
            text += &format!("{}:\n", kind.plural());
            let mut any = false;
            for e in registry.of_kind(kind) {
                any = true;
                let origin = if e.origin == "builtin" { String::new() } else { format!(" [{}]", e.origin) };
                text += &format!("  {:<12} {}{origin}\n", e.info.name, e.info.description);
                for o in &e.info.options {
                    let kind = format!("{:?}", o.kind).to_lowercase();
                    text += &format!("      {}={} ({kind}) {}\n", o.name, o.default, o.description);
                }
            }
            if !any {
                text += "  (none yet)\n";
            }
        }
        text.trim_end().to_string()
    });
    Ok(())
}
