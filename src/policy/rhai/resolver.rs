//! `import "name"` for scripts: resolves only to `plugins/name.rhai`, never outside `plugins/`.
//!
//! Rhai's `FileModuleResolver` follows `../x` and absolute paths; this one refuses any name
//! containing `..`, starting with `/`, containing `\` or NUL, or whose file resolves (after
//! following symlinks) outside the plugins directory. A resolver belongs to one compiled
//! generation of the policy, so its cache of compiled plugins is dropped on reload.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rhai::{Engine, EvalAltResult, Module, ModuleResolver, Position, Scope};

/// Why an `import` failed, as the payload of a Rhai runtime error.
///
/// Not `ErrorModuleNotFound`: Rhai treats that as "try the next resolver" and replaces the
/// message with the bare module name.
#[derive(Debug, Clone)]
pub(crate) struct ImportError(pub(crate) String);

fn import_error(message: String, pos: Position) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(
        rhai::Dynamic::from(ImportError(message)),
        pos,
    ))
}

/// A compiled plugin (`rhai::Shared<Module>` is `Arc` under the `sync` feature).
type SharedModule = Arc<Module>;

thread_local! {
    /// Plugins being loaded on this thread (outermost first): an import cycle check.
    static LOADING: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Resolves `import "name"` to `<plugins_dir>/name.rhai`, compiled once per generation.
#[derive(Debug)]
pub(crate) struct PluginResolver {
    /// The plugins directory as configured (for messages: `plugins/arch.rhai`).
    dir: PathBuf,
    /// Compiled plugins by display path. std Mutex: nothing awaits while it is held, and it is
    /// never held while a plugin compiles (plugins may import plugins).
    cache: Mutex<HashMap<String, SharedModule>>,
    /// The same modules by the name written in `import`: scripts re-run their imports on every
    /// call, and this answers those without touching the file system (a change to a plugin
    /// file starts a new generation with a new resolver, so nothing here goes stale).
    by_name: Mutex<HashMap<String, SharedModule>>,
}

impl PluginResolver {
    pub(crate) fn new(dir: &Path) -> PluginResolver {
        PluginResolver {
            dir: dir.to_path_buf(),
            cache: Mutex::new(HashMap::new()),
            by_name: Mutex::new(HashMap::new()),
        }
    }

    /// Checks an import name and finds its file: `(display path, canonical path)`.
    pub(crate) fn locate(&self, name: &str) -> Result<(PathBuf, PathBuf), String> {
        const HOW: &str = "plugin names are plain names looked up in the plugins directory, e.g. \
                           `import \"arch\" as arch;` loads plugins/arch.rhai";
        let bad = if name.is_empty() {
            Some("the name is empty")
        } else if name.contains('\0') {
            Some("the name contains a NUL byte")
        } else if name.contains("..") {
            Some("the name contains `..`")
        } else if name.starts_with('/') {
            Some("the name is an absolute path")
        } else if name.contains('\\') {
            Some("the name contains `\\`")
        } else {
            None
        };
        if let Some(why) = bad {
            return Err(format!(
                "import \"{}\" refused: {why}; {HOW}",
                name.escape_debug()
            ));
        }
        let file = if name.ends_with(".rhai") {
            name.to_string()
        } else {
            format!("{name}.rhai")
        };
        let display = self.dir.join(&file);
        let root = self.dir.canonicalize().map_err(|e| {
            format!(
                "import \"{name}\": cannot open the plugins directory {}: {e}",
                self.dir.display()
            )
        })?;
        let canon = display.canonicalize().map_err(|e| {
            if e.kind() != std::io::ErrorKind::NotFound {
                return format!("import \"{name}\": cannot open {}: {e}; {HOW}", display.display());
            }
            // Say what is there, and the likely intended name.
            let names: Vec<String> = self
                .all_files()
                .iter()
                .filter_map(|p| Some(p.file_stem()?.to_string_lossy().into_owned()))
                .collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let stem = file.trim_end_matches(".rhai");
            let fix = match super::diag::nearest(stem, &refs) {
                Some(n) => format!("did you mean `import \"{n}\"`? "),
                None => String::new(),
            };
            let there = if names.is_empty() {
                format!("{} holds no plugins", self.dir.display())
            } else {
                format!("plugins in {}: {}", self.dir.display(), names.join(", "))
            };
            format!(
                "import \"{name}\": cannot open {}: no such plugin; {fix}{there}; or create {}",
                display.display(),
                display.display()
            )
        })?;
        if !canon.starts_with(&root) {
            return Err(format!(
                "import \"{name}\" refused: {} resolves to {}, outside the plugins directory {}",
                display.display(),
                canon.display(),
                root.display()
            ));
        }
        Ok((display, canon))
    }

    /// Every `*.rhai` in the plugins directory (for `check`), sorted; empty if there is none.
    pub(crate) fn all_files(&self) -> Vec<PathBuf> {
        super::rhai_files(&self.dir).unwrap_or_default()
    }
}

impl ModuleResolver for PluginResolver {
    fn resolve(
        &self,
        engine: &Engine,
        source: Option<&str>,
        path: &str,
        pos: Position,
    ) -> Result<SharedModule, Box<EvalAltResult>> {
        if let Some(m) = self.by_name.lock().expect("plugin cache poisoned").get(path) {
            return Ok(m.clone());
        }
        let (display, canon) = self.locate(path).map_err(|msg| import_error(msg, pos))?;
        let key = display.display().to_string();
        let cached = self.cache.lock().expect("plugin cache poisoned").get(&key).cloned();
        if let Some(m) = cached {
            self.by_name.lock().expect("plugin cache poisoned").insert(path.to_string(), m.clone());
            return Ok(m);
        }
        let cycle = LOADING.with(|l| l.borrow().contains(&key));
        if cycle {
            let chain = LOADING.with(|l| l.borrow().join(" → "));
            return Err(import_error(
                format!(
                    "import \"{path}\" in {} is an import cycle ({chain} → {key}); move the shared \
                     part into a third plugin",
                    source.unwrap_or("?")
                ),
                pos,
            ));
        }
        let text = std::fs::read_to_string(&canon)
            .map_err(|e| import_error(format!("import \"{path}\": cannot read {key}: {e}"), pos))?;
        let mut ast = engine.compile(&text).map_err(|e| {
            Box::new(EvalAltResult::ErrorInModule(
                key.clone(),
                Box::new(EvalAltResult::ErrorParsing(*e.0, e.1)),
                pos,
            ))
        })?;
        ast.set_source(key.as_str());

        LOADING.with(|l| l.borrow_mut().push(key.clone()));
        let result = Module::eval_ast_as_new(Scope::new(), &ast, engine);
        LOADING.with(|l| l.borrow_mut().pop());

        let mut module =
            result.map_err(|e| Box::new(EvalAltResult::ErrorInModule(key.clone(), e, pos)))?;
        module.set_id(key.as_str());
        module.build_index();
        let module: SharedModule = Arc::new(module);
        self.cache
            .lock()
            .expect("plugin cache poisoned")
            .insert(key, module.clone());
        self.by_name.lock().expect("plugin cache poisoned").insert(path.to_string(), module.clone());
        Ok(module)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver() -> (tempfile::TempDir, PluginResolver) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("plugins")).unwrap();
        std::fs::write(dir.path().join("plugins/ok.rhai"), "fn one() { 1 }").unwrap();
        std::fs::write(dir.path().join("secret.rhai"), "fn leak() { 42 }").unwrap();
        let r = PluginResolver::new(&dir.path().join("plugins"));
        (dir, r)
    }

    #[test]
    fn refuses_names_that_leave_the_plugins_dir() {
        let (_dir, r) = resolver();
        for (name, why) in [
            ("../x", "`..`"),
            ("../secret", "`..`"),
            ("a/../../b", "`..`"),
            ("/etc/passwd", "absolute"),
            ("a\\b", "`\\`"),
            ("a\0b", "NUL"),
            ("", "empty"),
        ] {
            let err = r.locate(name).unwrap_err();
            assert!(
                err.contains("refused") && err.contains(why),
                "{name:?}: {err}"
            );
        }
        assert!(r.locate("ok").is_ok());
        assert!(r.locate("ok.rhai").is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn refuses_symlinks_out_of_the_plugins_dir() {
        let (dir, r) = resolver();
        std::os::unix::fs::symlink(
            dir.path().join("secret.rhai"),
            dir.path().join("plugins/sneaky.rhai"),
        )
        .unwrap();
        let err = r.locate("sneaky").unwrap_err();
        assert!(err.contains("outside the plugins directory"), "{err}");
    }

    #[test]
    fn resolve_reports_the_import_position_and_caches() {
        let (_dir, r) = resolver();
        let engine = Engine::new();
        let pos = Position::new(2, 1);
        let err = r
            .resolve(&engine, Some("scripts/boot.rhai"), "../secret", pos)
            .unwrap_err();
        assert_eq!(err.position(), pos);
        let msg = crate::policy::rhai::diag::describe(&err);
        assert!(msg.starts_with("import \"../secret\" refused"), "{msg}");
        let a = r
            .resolve(&engine, Some("scripts/boot.rhai"), "ok", pos)
            .unwrap();
        let b = r
            .resolve(&engine, Some("scripts/boot.rhai"), "ok", pos)
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b), "second import comes from the cache");
        // Another spelling of the same plugin is the same module.
        let c = r
            .resolve(&engine, Some("scripts/boot.rhai"), "ok.rhai", pos)
            .unwrap();
        assert!(Arc::ptr_eq(&a, &c));
        // Repeated imports (every call re-runs them) do not touch the file system.
        std::fs::remove_file(r.dir.join("ok.rhai")).unwrap();
        let d = r
            .resolve(&engine, Some("scripts/boot.rhai"), "ok", pos)
            .unwrap();
        assert!(Arc::ptr_eq(&a, &d));
        assert_eq!(
            a.id(),
            Some(r.dir.join("ok.rhai").display().to_string().as_str())
        );
    }
}
