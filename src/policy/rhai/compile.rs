//! Compiling the script set into one generation of the policy.
//!
//! All `scripts/*.rhai` are parsed separately (so every parse error names its own file and
//! all of them are reported at once), checked for duplicate definitions across files, run
//! once at top level (which resolves every `import` and so compiles the plugins, with errors
//! naming the importing file and line), and finally merged into one AST per hook, whose
//! source is the file that defines the hook.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rhai::{CallFnOptions, Dynamic, Engine, Scope, AST};

use super::diag::{self, CompileReport, Diagnostic};
use super::engine::{self, Env};
use super::resolver::PluginResolver;
use super::{rhai_files, Limits};
use crate::policy::PolicyError;

/// The hooks a script may define.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Hook {
    /// `fn boot(req)`.
    Boot,
    /// `fn tftp(req)`.
    Tftp,
    /// `fn http(req)`.
    Http,
    /// `fn booted(ack)`.
    Booted,
}

impl Hook {
    pub(crate) const ALL: [Hook; 4] = [Hook::Boot, Hook::Tftp, Hook::Http, Hook::Booted];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Hook::Boot => "boot",
            Hook::Tftp => "tftp",
            Hook::Http => "http",
            Hook::Booted => "booted",
        }
    }

    fn from_name(name: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| h.name() == name)
    }

    fn param(self) -> &'static str {
        match self {
            Hook::Booted => "ack",
            _ => "req",
        }
    }
}

/// One defined hook, ready to call.
#[derive(Debug)]
pub(crate) struct HookFn {
    pub(crate) hook: Hook,
    /// The script file that defines it (as configured: `scripts/boot.rhai`).
    pub(crate) file: String,
    /// Line of its `fn`, if found.
    pub(crate) line: Option<usize>,
    /// Column of its `fn`, if found.
    pub(crate) column: Option<usize>,
    /// All scripts merged, with this hook's file as source.
    ast: AST,
}

impl HookFn {
    /// `file:line` of the hook's definition.
    pub(crate) fn location(&self) -> String {
        diag::location(&self.file, self.line, None)
    }

    /// `file:line:column` of its `fn` (for errors about what it returned).
    pub(crate) fn position(&self) -> String {
        diag::location(&self.file, self.line, self.column)
    }
}

/// One compiled generation of the policy. Immutable; swapped as a whole.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub(crate) generation: u64,
    engine: Engine,
    hooks: Vec<HookFn>,
    /// Script-defined function name → file that defines it (to locate runtime errors).
    fn_files: HashMap<String, String>,
    /// Script files with the hooks each defines.
    pub(crate) files: Vec<(PathBuf, Vec<String>)>,
    /// Text of each script file, by file name as in [`HookFn::file`] (to locate map keys).
    sources: HashMap<String, String>,
}

impl Compiled {
    pub(crate) fn hook(&self, hook: Hook) -> Option<&HookFn> {
        self.hooks.iter().find(|h| h.hook == hook)
    }

    /// Where `key` of a map returned by hook `h` is written: the first `key:` at or after the
    /// hook's line in its file, else anywhere in the scripts, else the hook's own position.
    /// A textual search, for messages only (a map built elsewhere points at the hook).
    pub(crate) fn key_location(&self, h: &HookFn, key: Option<&str>) -> String {
        let Some(key) = key else { return h.position() };
        let from = h.line.unwrap_or(1);
        if let Some((l, c)) = self.sources.get(&h.file).and_then(|t| find_key(t, key, from)) {
            return diag::location(&h.file, Some(l), Some(c));
        }
        let mut others: Vec<_> = self.sources.iter().filter(|(f, _)| **f != h.file).collect();
        others.sort();
        for (file, text) in others {
            if let Some((l, c)) = find_key(text, key, 1) {
                return diag::location(file, Some(l), Some(c));
            }
        }
        h.position()
    }

    /// Calls a hook with a fresh scope under the deadline.
    pub(crate) fn call(&self, h: &HookFn, arg: Dynamic) -> Result<Dynamic, PolicyError> {
        let mut scope = Scope::new();
        // Top-level statements (imports, constants) run before each call so that functions
        // see the imported modules; plugins come from the generation's cache.
        let options = CallFnOptions::new().eval_ast(true).rewind_scope(true);
        engine::with_deadline(|| {
            self.engine.call_fn_with_options::<Dynamic>(
                options,
                &mut scope,
                &h.ast,
                h.hook.name(),
                (arg,),
            )
        })
        .map_err(|e| {
            let l = diag::locate(&e, &h.file, &self.fn_files);
            let location = if l.line.is_none() && l.file == h.file {
                h.location()
            } else {
                l.location()
            };
            PolicyError::Runtime {
                location,
                message: l.message,
            }
        })
    }
}

/// Where a function is defined: file, and line/column of its `fn` when found.
type Def = (String, Option<(usize, usize)>);

struct Parsed {
    file: String,
    path: PathBuf,
    ast: AST,
}

/// Finds `fn name(` in the source: the line and column of the `fn` keyword.
///
/// Rhai's public AST metadata carries no positions; this textual scan only serves messages,
/// so a rare miss (e.g. `fn` split over lines) just prints the file without a line.
pub(crate) fn find_fn(text: &str, name: &str) -> Option<(usize, usize)> {
    for (i, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut from = 0;
        while let Some(off) = code[from..].find("fn") {
            let at = from + off;
            from = at + 2;
            let before_ok = at == 0 || !is_ident(code.as_bytes()[at - 1]);
            let rest = &code[at + 2..];
            let trimmed = rest.trim_start();
            if !before_ok || trimmed.len() == rest.len() {
                continue;
            }
            if let Some(after) = trimmed.strip_prefix(name) {
                if after.trim_start().starts_with('(') {
                    return Some((i + 1, at + 1));
                }
            }
        }
    }
    None
}

/// Finds a map key written as `key:` or `"key":` (not `key::`) at or after line `from`:
/// its line and column.
pub(crate) fn find_key(text: &str, key: &str, from: usize) -> Option<(usize, usize)> {
    let bare = key.trim_matches('"');
    for (i, line) in text.lines().enumerate().skip(from.saturating_sub(1)) {
        let code = line.split("//").next().unwrap_or("");
        let b = code.as_bytes();
        let mut start = 0;
        while let Some(off) = code[start..].find(bare) {
            let at = start + off;
            start = at + bare.len();
            let (mut lo, mut hi) = (at, at + bare.len());
            if lo > 0 && b[lo - 1] == b'"' && b.get(hi) == Some(&b'"') {
                lo -= 1;
                hi += 1;
            }
            if lo > 0 && is_ident(b[lo - 1]) || b.get(hi).is_some_and(|c| is_ident(*c)) {
                continue;
            }
            let rest = code[hi..].trim_start();
            if rest.starts_with(':') && !rest.starts_with("::") {
                return Some((i + 1, lo + 1));
            }
        }
    }
    None
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Compiles the whole policy. `generation` is the number the result will carry.
pub(crate) fn compile(
    scripts_dir: &Path,
    plugins_dir: &Path,
    limits: &Limits,
    env: &Env,
    generation: u64,
) -> Result<Compiled, CompileReport> {
    let mut diags: Vec<Diagnostic> = Vec::new();
    let resolver = PluginResolver::new(plugins_dir);
    let plugin_files = resolver.all_files();
    let engine = engine::build(limits, resolver, env, scripts_dir);

    let files = match rhai_files(scripts_dir) {
        Ok(f) if f.is_empty() => {
            diags.push(Diagnostic::at(
                scripts_dir,
                rhai::Position::NONE,
                "no *.rhai scripts here; hint: add e.g. boot.rhai defining `fn boot(req)`",
            ));
            Vec::new()
        }
        Ok(f) => f,
        Err(e) => {
            diags.push(Diagnostic::at(
                scripts_dir,
                rhai::Position::NONE,
                format!("cannot read the scripts directory: {e}"),
            ));
            Vec::new()
        }
    };

    // 1. Parse every script and every plugin on its own.
    let mut parsed: Vec<Parsed> = Vec::new();
    // (name, arity) → (file, line and column of its `fn`)
    let mut defs: HashMap<(String, usize), Def> = HashMap::new();
    let mut report_files = Vec::new();
    let mut sources = HashMap::new();
    for path in &files {
        let file = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                diags.push(Diagnostic::at(
                    path,
                    rhai::Position::NONE,
                    format!("cannot read: {e}"),
                ));
                continue;
            }
        };
        let mut ast = match engine.compile(&text) {
            Ok(a) => a,
            Err(e) => {
                diags.push(diag::from_parse_error_in(&file, &e, &text));
                continue;
            }
        };
        ast.set_source(file.as_str());
        sources.insert(file.clone(), text.clone());
        let mut hooks = Vec::new();
        for f in ast.iter_functions() {
            let at = find_fn(&text, f.name);
            let key = (f.name.to_string(), f.params.len());
            if let Some((first_file, first_at)) = defs.get(&key) {
                let first =
                    diag::location(first_file, first_at.map(|a| a.0), first_at.map(|a| a.1));
                let what = if Hook::from_name(f.name).is_some() {
                    "hook"
                } else {
                    "function"
                };
                diags.push(Diagnostic {
                    file: path.clone(),
                    line: at.map(|a| a.0),
                    column: at.map(|a| a.1),
                    message: format!(
                        "{what} `{}` with {} parameter(s) is also defined at {first}; scripts \
                         form one policy, so define it in one file only",
                        f.name,
                        f.params.len()
                    ),
                });
                continue;
            }
            defs.insert(key, (file.clone(), at));
            if let Some(hook) = Hook::from_name(f.name) {
                if f.params.len() != 1 {
                    diags.push(Diagnostic {
                        file: path.clone(),
                        line: at.map(|a| a.0),
                        column: at.map(|a| a.1),
                        message: format!(
                            "hook `{0}` takes exactly one parameter; hint: write `fn {0}({1})`",
                            hook.name(),
                            hook.param()
                        ),
                    });
                } else {
                    hooks.push(hook.name().to_string());
                }
            }
        }
        hooks.sort_by_key(|h| Hook::ALL.iter().position(|a| a.name() == h));
        report_files.push((path.clone(), hooks));
        parsed.push(Parsed {
            file,
            path: path.clone(),
            ast,
        });
    }
    for path in &plugin_files {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                if let Err(e) = engine.compile(&text) {
                    diags.push(diag::from_parse_error_in(&path.display().to_string(), &e, &text));
                }
            }
            Err(e) => diags.push(Diagnostic::at(
                path,
                rhai::Position::NONE,
                format!("cannot read: {e}"),
            )),
        }
    }

    let fn_files: HashMap<String, String> = defs
        .iter()
        .map(|((name, _), (file, _))| (name.clone(), file.clone()))
        .collect();

    // 2. Run each file's top level once (with every script's functions visible), so imports
    //    resolve now and their errors name the importing file and line.
    if diags.is_empty() {
        for (i, p) in parsed.iter().enumerate() {
            let mut ast = parsed
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .fold(AST::empty(), |acc, (_, o)| {
                    acc.merge(&o.ast.clone_functions_only())
                });
            ast = ast.merge(&p.ast);
            ast.set_source(p.file.as_str());
            if let Err(e) = engine::with_deadline(|| engine.run_ast(&ast)) {
                let l = diag::locate(&e, &p.file, &fn_files);
                let message = if l.file == p.file {
                    l.message
                } else {
                    format!("{} (while loading {})", l.message, p.path.display())
                };
                diags.push(Diagnostic {
                    file: l.file.into(),
                    line: l.line,
                    column: l.column,
                    message,
                });
            }
        }
    }

    if !diags.is_empty() {
        let mut seen = std::collections::HashSet::new();
        diags.retain(|d| seen.insert((d.file.clone(), d.line, d.column)));
        return Err(CompileReport { diagnostics: diags });
    }

    // 3. Merge: one AST holding every script, given the source of the hook's file per hook.
    let merged = parsed.iter().fold(AST::empty(), |acc, p| acc.merge(&p.ast));
    let mut hooks = Vec::new();
    for hook in Hook::ALL {
        if let Some((file, at)) = defs.get(&(hook.name().to_string(), 1)) {
            let mut ast = merged.clone();
            ast.set_source(file.as_str());
            hooks.push(HookFn {
                hook,
                file: file.clone(),
                line: at.map(|a| a.0),
                column: at.map(|a| a.1),
                ast,
            });
        }
    }
    Ok(Compiled {
        generation,
        engine,
        hooks,
        fn_files,
        files: report_files,
        sources,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_fn_skips_comments_and_prefixes() {
        let src = "// fn boot(req) in a comment\nfn booted(ack) {}\nprivate fn  boot (req) {\n}";
        assert_eq!(find_fn(src, "boot"), Some((3, 9)));
        assert_eq!(find_fn(src, "booted"), Some((2, 1)));
        assert_eq!(find_fn(src, "tftp"), None);
        assert_eq!(find_fn("let nfn boot(x)", "boot"), None);
    }

    #[test]
    fn find_key_skips_paths_prefixes_and_earlier_lines() {
        let src = "fn boot(req) {\n  let f = arch::x(req); // filename: no\n  #{ myfilename: 1, filename : 5, \"60\": 1 }\n}";
        assert_eq!(find_key(src, "filename", 1), Some((3, 21)));
        assert_eq!(find_key(src, "arch", 1), None);
        assert_eq!(find_key(src, "\"60\"", 1), Some((3, 35)));
        assert_eq!(find_key(src, "filename", 4), None);
    }
}
