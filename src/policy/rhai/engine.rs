//! The sandboxed engine: limits, the wall-clock deadline, logging and `now()`.
//!
//! One [`Engine`] is built per compiled generation (it owns that generation's plugin resolver
//! and its cache) and shared by every thread that runs a hook; nothing in it is mutable per
//! call. Per-call state (the deadline's start) lives in a thread-local.

use std::cell::Cell;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use chrono::{DateTime, Datelike, FixedOffset, Local, Timelike};
use rhai::{Dynamic, Engine, Map, NativeCallContext};

use super::convert;
use super::resolver::PluginResolver;
use super::Limits;

/// The fixed "now" of `simulate --at`, shared by every generation (`None`: real local time).
pub(crate) type Clock = Arc<RwLock<Option<DateTime<FixedOffset>>>>;

thread_local! {
    /// When the hook running on this thread started (`None`: no deadline applies).
    static CALL_STARTED: Cell<Option<Instant>> = const { Cell::new(None) };
    /// The time `now()` returned during the hook running on this thread, if it was called.
    static NOW_USED: Cell<Option<DateTime<FixedOffset>>> = const { Cell::new(None) };
}

/// Runs `f` and reports the time `now()` returned while it ran (`None`: not called).
pub(crate) fn tracking_now<R>(f: impl FnOnce() -> R) -> (R, Option<DateTime<FixedOffset>>) {
    let outer = NOW_USED.with(|c| c.replace(None));
    let r = f();
    let used = NOW_USED.with(|c| c.replace(outer));
    (r, used)
}

/// What a generation's engine is connected to besides its plugins.
#[derive(Clone)]
pub(crate) struct Env {
    /// The fixed clock of `--at`, shared by every generation.
    pub(crate) clock: Clock,
    /// The per-host store, shared by every generation.
    pub(crate) store: super::host::StoreSlot,
}

/// Runs `f` (one hook call, or one load-time evaluation) under the engine's deadline.
pub(crate) fn with_deadline<R>(f: impl FnOnce() -> R) -> R {
    let outer = CALL_STARTED.with(|c| c.replace(Some(Instant::now())));
    // Restore even if `f` unwinds, so a later call on this thread is not cut short.
    struct Restore(Option<Instant>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CALL_STARTED.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(outer);
    f()
}

/// A hook call running longer than this tells the server its thread is busy
/// ([`crate::handoff::about_to_block`]): a DHCP worker then hands its socket to another.
const SLOW_CALL: std::time::Duration = std::time::Duration::from_millis(1);

/// How often (in operations) the deadline is checked: `Instant::now()` is cheap but not free.
const DEADLINE_CHECK_EVERY: u64 = 64;

/// Builds the engine for one generation.
pub(crate) fn build(limits: &Limits, resolver: PluginResolver, env: &Env, scripts_dir: &std::path::Path) -> Engine {
    let clock = env.clock.clone();
    let mut engine = Engine::new();

    engine.set_max_operations(limits.max_operations);
    engine.set_max_call_levels(limits.max_call_depth);
    engine.set_max_expr_depths(limits.max_expr_depth, limits.max_expr_depth);
    engine.set_max_string_size(limits.max_string_size);
    engine.set_max_array_size(limits.max_array_size);
    engine.set_max_map_size(limits.max_map_size);
    engine.set_max_modules(64);

    let deadline = limits.deadline;
    engine.on_progress(move |ops| {
        if ops % DEADLINE_CHECK_EVERY != 0 {
            return None;
        }
        let started = CALL_STARTED.with(Cell::get)?;
        let took = started.elapsed();
        if took > SLOW_CALL {
            // Whoever drives this thread's socket lets another thread take it over meanwhile
            // (once per call: the hook disarms itself).
            crate::handoff::about_to_block();
        }
        (took > deadline).then(|| {
            Dynamic::from(format!(
                "script ran past its deadline of {} ms (limits.deadline); look for slow loops",
                deadline.as_millis()
            ))
        })
    });

    // `eval` would compile code at request time, out of reach of `pixie check`.
    engine.disable_symbol("eval");

    engine.set_module_resolver(resolver);

    engine.on_print(|s| tracing::info!(target: "pixie::script", "{s}"));
    engine.on_debug(|s, src, pos| {
        tracing::debug!(target: "pixie::script", script = src.unwrap_or(""), line = pos.line(), "{s}")
    });
    engine.register_fn("log_info", |ctx: NativeCallContext<'_>, msg: Dynamic| {
        let (script, line) = (ctx.call_source().unwrap_or(""), ctx.call_position().line());
        tracing::info!(target: "pixie::script", script, line, "{msg}");
    });
    engine.register_fn("log_warn", |ctx: NativeCallContext<'_>, msg: Dynamic| {
        let (script, line) = (ctx.call_source().unwrap_or(""), ctx.call_position().line());
        tracing::warn!(target: "pixie::script", script, line, "{msg}");
    });
    engine.register_fn("log_error", |ctx: NativeCallContext<'_>, msg: Dynamic| {
        let (script, line) = (ctx.call_source().unwrap_or(""), ctx.call_position().line());
        tracing::error!(target: "pixie::script", script, line, "{msg}");
    });

    engine.register_fn("now", move || -> Map {
        let fixed = *clock.read().expect("clock lock poisoned");
        // The server's local time zone (TZ, else /etc/localtime) unless `--at` fixed the time.
        let at = fixed.unwrap_or_else(|| Local::now().fixed_offset());
        NOW_USED.with(|c| c.set(Some(at)));
        now_map(&at)
    });

    convert::register(&mut engine);
    super::host::register_store(&mut engine, env.store.clone());
    super::host::register_data(&mut engine, scripts_dir);
    engine
}

/// The map `now()` returns.
pub(crate) fn now_map(at: &DateTime<FixedOffset>) -> Map {
    const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let wd = at.weekday().number_from_monday();
    let mut m = Map::new();
    m.insert("year".into(), Dynamic::from_int(i64::from(at.year())));
    m.insert("month".into(), Dynamic::from_int(i64::from(at.month())));
    m.insert("day".into(), Dynamic::from_int(i64::from(at.day())));
    m.insert("hour".into(), Dynamic::from_int(i64::from(at.hour())));
    m.insert("minute".into(), Dynamic::from_int(i64::from(at.minute())));
    m.insert("second".into(), Dynamic::from_int(i64::from(at.second())));
    m.insert("weekday".into(), DAYS[(wd - 1) as usize].into());
    m.insert("weekday_num".into(), Dynamic::from_int(i64::from(wd)));
    m.insert("timestamp".into(), Dynamic::from_int(at.timestamp()));
    m.insert("date".into(), at.format("%Y-%m-%d").to_string().into());
    m.insert("time".into(), at.format("%H:%M:%S").to_string().into());
    m.insert("tz".into(), at.format("%:z").to_string().into());
    m
}
