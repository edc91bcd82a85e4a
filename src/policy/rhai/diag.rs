//! Diagnostics: compile errors with `file:line:column`, and runtime errors mapped back to the
//! script or plugin file they happened in.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use super::resolver::ImportError;
use rhai::{EvalAltResult, LexError, ParseError, ParseErrorType, Position};

/// One problem found while compiling the policy, located in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The script or plugin file (as configured, e.g. `scripts/boot.rhai`), or the directory
    /// when the problem is not in one file.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// What is wrong and, where we can tell, how to fix it (`…; hint: …`).
    pub message: String,
}

impl Diagnostic {
    /// A diagnostic at a Rhai position in `file` (`Position::NONE` gives no line/column).
    pub(crate) fn at(file: impl Into<PathBuf>, pos: Position, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.into(),
            line: pos.line(),
            column: pos.position(),
            message: message.into(),
        }
    }

    /// `file:line:column` (shorter when line or column are unknown).
    pub fn location(&self) -> String {
        location(&self.file.display().to_string(), self.line, self.column)
    }
}

pub(crate) fn location(file: &str, line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("{file}:{l}:{c}"),
        (Some(l), None) => format!("{file}:{l}"),
        _ => file.to_string(),
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location(), self.message)
    }
}

/// Every problem found by one compile of the policy. The previous policy (if any) stays active.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CompileReport {
    /// All problems, in file order.
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for CompileReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CompileReport {}

/// What `check` found in a policy that compiles: each script file with the hooks it defines.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CheckReport {
    /// `(script file, hooks it defines)`, in load order (sorted by file name).
    pub files: Vec<(PathBuf, Vec<String>)>,
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (file, hooks)) in self.files.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            if hooks.is_empty() {
                write!(f, "{}: ok (no hooks)", file.display())?;
            } else {
                write!(f, "{}: ok (hooks: {})", file.display(), hooks.join(", "))?;
            }
        }
        Ok(())
    }
}

/// A compile diagnostic from a Rhai parse error in `file`.
pub(crate) fn from_parse_error(file: &str, err: &ParseError) -> Diagnostic {
    let mut message = err.0.to_string();
    if let Some(hint) = parse_hint(&err.0) {
        message.push_str("; hint: ");
        message.push_str(&hint);
    }
    Diagnostic::at(file, err.position(), message)
}

/// Keywords a misspelt word before a parse error is compared with.
const KEYWORDS: &[&str] = &[
    "return", "let", "const", "if", "else", "fn", "for", "while", "loop", "import", "switch",
    "throw", "break", "continue", "private", "export", "true", "false", "do", "until",
];

/// [`from_parse_error`], with hints that need the file's text: an error at the very end of
/// the file (an unclosed block), and a misspelt keyword just before the error (`retrun x`).
pub(crate) fn from_parse_error_in(file: &str, err: &ParseError, text: &str) -> Diagnostic {
    let mut d = from_parse_error(file, err);
    let pos = err.position();
    let (Some(line), col) = (pos.line(), pos.position().unwrap_or(1)) else { return d };
    let base = err.0.to_string();
    let at_end = text.lines().skip(line - 1).collect::<String>().trim().is_empty()
        || line > text.lines().count();
    if at_end && matches!(*err.0, ParseErrorType::MissingToken(..) | ParseErrorType::UnexpectedEOF) {
        d.message = format!(
            "{base}; hint: the file ends inside a block or expression: look for an unclosed \
             `{{`, `(` or `[` above"
        );
        return d;
    }
    if let Some(code) = text.lines().nth(line - 1) {
        let before: String = code.chars().take(col.saturating_sub(1)).collect();
        let word: String = before
            .trim_end()
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        if !word.is_empty() && !KEYWORDS.contains(&word.as_str()) {
            if let Some(k) = nearest(&word, KEYWORDS).filter(|k| k.len() > 2) {
                d.message = format!("{base}; hint: `{word}` is not a keyword: did you mean `{k}`?");
            }
        }
    }
    d
}

fn parse_hint(err: &ParseErrorType) -> Option<String> {
    if err.to_string().contains("'eval'") {
        return Some(
            "`eval` is disabled in pixie scripts: write the code directly, or put shared code \
             in plugins/ and `import` it"
                .into(),
        );
    }
    Some(match err {
        ParseErrorType::MissingToken(tok, _) => format!("insert `{tok}` here"),
        ParseErrorType::UnexpectedEOF => {
            "the file ends in the middle of something: look for an unclosed `{`, `(` or `[`".into()
        }
        ParseErrorType::BadInput(LexError::UnterminatedString) => {
            "close the string with `\"`".into()
        }
        ParseErrorType::Reserved(word) => format!("`{word}` is a reserved word; pick another name"),
        ParseErrorType::FnDuplicatedDefinition(name, n) => {
            format!("`{name}` with {n} parameter(s) is defined twice in this file; remove one")
        }
        ParseErrorType::FnMissingBody(_) => "add a body: `fn name(req) { ... }`".into(),
        ParseErrorType::FnMissingParams(_) => "add a parameter list: `fn name(req)`".into(),
        ParseErrorType::VariableUndefined(name) => format!("declare it first: `let {name} = ...;`"),
        ParseErrorType::ExprTooDeep => {
            "expressions nest deeper than the configured limit; split it up with `let`".into()
        }
        _ => return None,
    })
}

/// Where a runtime error happened and what it says, with Rhai's wrappers
/// (`ErrorInFunctionCall`, `ErrorInModule`) unwrapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Located {
    /// The file the innermost error is in.
    pub(crate) file: String,
    /// Its position there.
    pub(crate) line: Option<usize>,
    /// Its column there.
    pub(crate) column: Option<usize>,
    /// The innermost error's message (without Rhai's own position suffix), plus the call chain.
    pub(crate) message: String,
}

impl Located {
    /// `file:line:column`.
    pub(crate) fn location(&self) -> String {
        location(&self.file, self.line, self.column)
    }
}

/// Walks a Rhai runtime error down to the innermost cause.
///
/// `file` is the source the outermost error is relative to (the hook's script file, or the
/// importing file for module errors). `fn_files` maps the names of functions defined in the
/// policy's own scripts to their file, because all scripts are merged into one AST whose
/// errors otherwise carry one source name. Errors inside plugin functions carry the plugin's
/// module id (its path), which wins.
pub(crate) fn locate(
    err: &EvalAltResult,
    file: &str,
    fn_files: &HashMap<String, String>,
) -> Located {
    let outer = file.to_string();
    let mut file = file.to_string();
    let mut chain: Vec<String> = Vec::new();
    let mut cur = err;
    // The last non-NONE position seen: system errors (limits, deadline) are re-positioned to
    // the call site on the way out, so the innermost error may have none.
    let mut last_pos = (Position::NONE, file.clone());
    loop {
        if !cur.position().is_none() {
            last_pos = (cur.position(), file.clone());
        }
        match cur {
            EvalAltResult::ErrorInFunctionCall(name, src, inner, _) => {
                chain.push(format!("in `{name}()`"));
                let in_plugin =
                    !src.is_empty() && *src != outer && !fn_files.values().any(|f| f == src);
                if in_plugin {
                    file = src.clone();
                } else if let Some(f) = fn_files.get(name.as_str()) {
                    file = f.clone();
                } else if !src.is_empty() {
                    file = src.clone();
                }
                cur = inner;
            }
            EvalAltResult::ErrorInModule(name, inner, _) => {
                chain.push(format!("in module `{name}`"));
                if !name.is_empty() {
                    file = name.clone();
                }
                cur = inner;
            }
            _ => break,
        }
    }
    let (pos, pos_file) = if cur.position().is_none() {
        last_pos
    } else {
        (cur.position(), file.clone())
    };
    // "in module `plugins/p.rhai`" says nothing when the location already names that file.
    if chain.last() == Some(&format!("in module `{pos_file}`")) {
        chain.pop();
    }
    let mut message = describe(cur);
    if !chain.is_empty() {
        chain.reverse();
        message.push_str(" (");
        message.push_str(&chain.join(", called "));
        message.push(')');
    }
    Located {
        file: pos_file,
        line: pos.line(),
        column: pos.position(),
        message,
    }
}

/// The message of one (non-wrapper) error, without Rhai's ` (line L, position C)` suffix, with
/// pixie's wording for the limits.
pub(crate) fn describe(err: &EvalAltResult) -> String {
    match err {
        EvalAltResult::ErrorTerminated(token, _) => {
            let t = token.to_string();
            if t.is_empty() {
                "script terminated".into()
            } else {
                t
            }
        }
        EvalAltResult::ErrorTooManyOperations(_) => {
            "script exceeded the operation limit (limits.max_operations); look for a loop that \
             never ends"
                .into()
        }
        EvalAltResult::ErrorStackOverflow(_) => {
            "function calls nest deeper than the limit (limits.max_call_depth); look for \
             unbounded recursion"
                .into()
        }
        EvalAltResult::ErrorDataTooLarge(what, _) => {
            format!("{what} too large (limits.max_string_size / max_array_size / max_map_size)")
        }
        EvalAltResult::ErrorRuntime(value, _) if value.is::<ImportError>() => {
            value.clone().cast::<ImportError>().0
        }
        EvalAltResult::ErrorRuntime(value, _) if value.is_string() => {
            format!("script threw: {value}")
        }
        EvalAltResult::ErrorParsing(p, _) => match parse_hint(p) {
            Some(h) => format!("{p}; hint: {h}"),
            None => p.to_string(),
        },
        other => {
            let text = other.to_string();
            let suffix = format!(" ({})", other.position());
            match text.strip_suffix(&suffix) {
                Some(t) if !other.position().is_none() => t.to_string(),
                _ => text,
            }
        }
    }
}

/// Levenshtein distance (for "did you mean" suggestions).
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The candidate closest to `name`, if it is close enough to be a plausible typo.
pub(crate) fn nearest<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let lower = name.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (distance(&lower, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnostic_prints_file_line_column() {
        let d = Diagnostic {
            file: "scripts/boot.rhai".into(),
            line: Some(3),
            column: Some(17),
            message: "Expecting ';'".into(),
        };
        assert_eq!(d.to_string(), "scripts/boot.rhai:3:17: Expecting ';'");
        let d = Diagnostic {
            line: None,
            column: None,
            ..d
        };
        assert_eq!(d.to_string(), "scripts/boot.rhai: Expecting ';'");
    }

    #[test]
    fn nearest_suggests_typos_only() {
        let keys = ["filename", "next_server", "server_name", "options"];
        assert_eq!(nearest("filenme", &keys), Some("filename"));
        assert_eq!(nearest("FileName", &keys), Some("filename"));
        assert_eq!(nearest("option", &keys), Some("options"));
        assert_eq!(nearest("zzzzzz", &keys), None);
    }
}
