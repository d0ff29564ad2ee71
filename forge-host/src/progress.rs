//! Progress bars on stderr, hidden with `--quiet` (and by indicatif when stderr is not a terminal),
//! so `--json` output on stdout stays one clean object.
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar over `total` units of `unit`, or a hidden one when `quiet`.
pub fn bar(total: u64, unit: &str, quiet: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(total),
        if quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() },
    );
    let template =
        format!("{{spinner}} {{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{per_sec}}, eta {{eta}})");
    bar.set_style(
        ProgressStyle::with_template(&template).expect("the template is valid").progress_chars("=> "),
    );
    bar
}
