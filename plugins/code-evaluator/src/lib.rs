//! `code-syntax`: what a code team checks before shipping a smaller model — does it still write code
//! that holds together? Prompts are the starts of evaluation windows; the model continues each one
//! greedily, and the continuation is scanned, with the prompt's open brackets and strings carried in:
//! a closing bracket that does not match the innermost open one is a mismatch, and a `"` string still
//! open at the end of a line is unterminated (Rust and Python allow that only in `"""` or raw strings,
//! which the scanner follows). The model's uncertainty about bracket tokens on the same windows is
//! reported beside it.
use forge_api::plugin::Export;
use forge_api::{EvalContext, Evaluator, Metrics, OptionKind, OptionSpec, Options, StrategyError};

struct CodeSyntax {
    samples: usize,
    prompt_tokens: usize,
    new_tokens: usize,
}

impl Export for CodeSyntax {
    const NAME: &'static str = "code-syntax";
    const DESCRIPTION: &'static str =
        "share of greedy code continuations whose brackets and string literals stay balanced; needs data";

    fn options() -> Vec<OptionSpec> {
        vec![
            OptionSpec::new(
                "samples",
                OptionKind::Int,
                16,
                "prompts, taken from evenly spaced evaluation windows",
            ),
            OptionSpec::new("prompt-tokens", OptionKind::Int, 64, "tokens of each window used as the prompt"),
            OptionSpec::new("new-tokens", OptionKind::Int, 64, "tokens generated per prompt"),
        ]
    }

    fn new(options: &Options) -> Result<Self, StrategyError> {
        let get = |key| options.int(key) as usize;
        if get("samples") == 0 || get("prompt-tokens") < 2 || get("new-tokens") == 0 {
            return Err(StrategyError::bad_input(
                "code-syntax needs samples ≥ 1, prompt-tokens ≥ 2 and new-tokens ≥ 1",
            ));
        }
        Ok(CodeSyntax {
            samples: get("samples"),
            prompt_tokens: get("prompt-tokens"),
            new_tokens: get("new-tokens"),
        })
    }
}

/// Counts syntax slips in the part of a text after `from` (a char index), with the state of the
/// text before it carried in.
#[derive(Default, Debug, PartialEq)]
struct Slips {
    mismatched_brackets: usize,
    unterminated_strings: usize,
}

/// Where the scanner is: inside a `"""` string, a `"` string, a `//` comment, or code.
#[derive(Clone, Copy, PartialEq)]
enum Inside {
    Code,
    TripleString,
    String,
    Comment,
}

struct Scanner {
    chars: Vec<char>,
    stack: Vec<char>,
    inside: Inside,
    slips: Slips,
}

impl Scanner {
    fn triple_at(&self, i: usize) -> bool {
        self.chars.get(i..i + 3) == Some(&['"', '"', '"'][..])
    }

    /// Reads the character at `i` inside a string or comment; returns how many more to skip.
    fn in_literal(&mut self, i: usize, counted: bool) -> usize {
        let c = self.chars[i];
        match self.inside {
            Inside::String | Inside::TripleString if c == '\\' => return 1,
            Inside::TripleString if self.triple_at(i) => {
                self.inside = Inside::Code;
                return 2;
            }
            Inside::String if c == '"' => self.inside = Inside::Code,
            Inside::String if c == '\n' => {
                self.slips.unterminated_strings += counted as usize;
                self.inside = Inside::Code;
            }
            Inside::Comment if c == '\n' => self.inside = Inside::Code,
            _ => {}
        }
        0
    }

    /// Reads the character at `i` in code; returns how many more to skip.
    fn in_code(&mut self, i: usize, counted: bool) -> usize {
        let c = self.chars[i];
        match c {
            '/' if self.chars.get(i + 1) == Some(&'/') => self.inside = Inside::Comment,
            '"' if self.triple_at(i) => {
                self.inside = Inside::TripleString;
                return 2;
            }
            '"' => self.inside = Inside::String,
            '(' | '[' | '{' => self.stack.push(c),
            ')' => self.close('(', counted),
            ']' => self.close('[', counted),
            '}' => self.close('{', counted),
            _ => {}
        }
        0
    }

    /// A closer with no opener on the stack closes something from before the window. One that skips
    /// openers closes the nearest match; one with no match is stray.
    fn close(&mut self, open: char, counted: bool) {
        if let Some(at) = self.stack.iter().rposition(|&c| c == open) {
            self.slips.mismatched_brackets += (counted && at + 1 != self.stack.len()) as usize;
            self.stack.truncate(at);
        } else if !self.stack.is_empty() {
            self.slips.mismatched_brackets += counted as usize;
        }
    }
}

fn scan(text: &str, from: usize) -> Slips {
    let mut s = Scanner {
        chars: text.chars().collect(),
        stack: Vec::new(),
        inside: Inside::Code,
        slips: Slips::default(),
    };
    let mut i = 0;
    while i < s.chars.len() {
        let counted = i >= from;
        i += 1 + if s.inside == Inside::Code { s.in_code(i, counted) } else { s.in_literal(i, counted) };
    }
    s.slips
}

fn is_bracket_token(text: &str) -> bool {
    text.contains(['(', ')', '[', ']', '{', '}'])
}

impl Evaluator for CodeSyntax {
    fn evaluate(&self, ctx: &mut dyn EvalContext) -> Result<Metrics, StrategyError> {
        let windows = ctx.windows()?;
        if windows.is_empty() {
            return Err(StrategyError::bad_input(
                "code-syntax found no evaluation windows: give it code data",
            ));
        }
        let step = (windows.len() / self.samples).max(1);
        let chosen: Vec<&Vec<u32>> = windows.iter().step_by(step).take(self.samples).collect();
        let (mut well_formed, mut mismatched, mut unterminated) = (0usize, 0usize, 0usize);
        for window in &chosen {
            let prompt = &window[..self.prompt_tokens.min(window.len())];
            let new = ctx.generate(prompt, self.new_tokens)?;
            let prompt_text = ctx.decode(prompt)?;
            let whole = ctx.decode(&[prompt, &new[..]].concat())?;
            // Decoding the whole keeps characters that straddle the prompt's last token intact.
            let from = if whole.starts_with(&prompt_text) { prompt_text.chars().count() } else { 0 };
            let slips = scan(&whole, from);
            well_formed += (slips == Slips::default()) as usize;
            mismatched += slips.mismatched_brackets;
            unterminated += slips.unterminated_strings;
        }
        let owned: Vec<Vec<u32>> = chosen.iter().map(|w| w.to_vec()).collect();
        let logprobs = ctx.next_token_logprobs(&owned)?;
        let (mut nll, mut count) = (0f64, 0usize);
        for (window, row) in owned.iter().zip(&logprobs) {
            for (token, lp) in window[1..].iter().zip(row) {
                if is_bracket_token(&ctx.decode(&[*token])?) {
                    nll -= *lp as f64;
                    count += 1;
                }
            }
        }
        let n = chosen.len() as f64;
        Ok(Metrics::from([
            ("well-formed".to_string(), serde_json::json!(well_formed as f64 / n)),
            ("mismatched-brackets".to_string(), serde_json::json!(mismatched as f64 / n)),
            ("unterminated-strings".to_string(), serde_json::json!(unterminated as f64 / n)),
            ("bracket-nll".to_string(), serde_json::json!(if count == 0 { 0.0 } else { nll / count as f64 })),
        ]))
    }
}

forge_api::export_plugin! {
    name: "code-evaluator",
    version: env!("CARGO_PKG_VERSION"),
    strategies: [evaluator(CodeSyntax)],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slips_are_counted_only_after_the_prompt_with_its_state_carried_in() {
        let prompt = "fn f(a: [u8; 2]) {\n    g(";
        let text = format!("{prompt}a[0]);\n}}");
        assert_eq!(scan(&text, prompt.chars().count()), Slips::default());
        // `]` closes the prompt's `(`.
        let text = format!("{prompt}a]);\n");
        assert_eq!(scan(&text, prompt.chars().count()).mismatched_brackets, 1);
        // The same slip inside the prompt is not the continuation's.
        assert_eq!(scan(&text, text.chars().count()), Slips::default());
    }

    #[test]
    fn strings_hide_brackets_and_must_close_on_their_line() {
        assert_eq!(scan("x = \"(]\" + \"a\\\"b\"\n", 0), Slips::default());
        assert_eq!(scan("x = \"open\ny = 1\n", 0).unterminated_strings, 1);
        assert_eq!(scan("s = \"\"\"doc (\nmore\"\"\"\n", 0), Slips::default());
        assert_eq!(scan("// a ) comment\nf()\n", 0), Slips::default());
    }
}
