//! "This thread is about to be slow": how code deep inside a request (a policy call that runs
//! long, a per-host store commit, a lease commit on a slow disk) tells the protocol server
//! driving it to let another thread take over the socket meanwhile.
//!
//! A DHCP worker that holds its listener's socket arms a hook on its own thread
//! ([`arm`]); [`about_to_block`] fires it at most once (the worker hands the socket to a
//! standby worker and finishes the request it is on). Elsewhere (TFTP hooks, `pixie
//! simulate`, tests) nothing is armed and [`about_to_block`] costs a thread-local read.
//! This module knows nothing of sockets or Rhai: the policy layer calls it, the DHCP layer
//! arms it.

use std::cell::RefCell;

/// What a worker does when its thread is about to block: hand its socket over.
pub trait Handoff {
    /// Called at most once per [`arm`], on the armed thread.
    fn hand_off(&self);
}

thread_local! {
    static HOOK: RefCell<Option<Box<dyn Handoff>>> = const { RefCell::new(None) };
}

/// Arms `h` on this thread, replacing any armed hook.
pub fn arm(h: Box<dyn Handoff>) {
    HOOK.with(|c| *c.borrow_mut() = Some(h));
}

/// Disarms this thread's hook without firing it.
pub fn disarm() {
    HOOK.with(|c| c.borrow_mut().take());
}

/// Whether a hook is armed on this thread.
pub fn armed() -> bool {
    HOOK.with(|c| c.borrow().is_some())
}

/// Fires and disarms this thread's hook, if one is armed.
pub fn about_to_block() {
    // Taken out first: the hook may log, and nothing it calls may find it still armed.
    if let Some(h) = HOOK.with(|c| c.borrow_mut().take()) {
        h.hand_off();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    struct Count(Arc<AtomicU32>);
    impl Handoff for Count {
        fn hand_off(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn fires_once_per_arm_and_only_on_its_thread() {
        let n = Arc::new(AtomicU32::new(0));
        about_to_block();
        arm(Box::new(Count(n.clone())));
        assert!(armed());
        std::thread::spawn(about_to_block).join().unwrap();
        assert_eq!(n.load(Ordering::Relaxed), 0, "fired on another thread");
        about_to_block();
        about_to_block();
        assert_eq!(n.load(Ordering::Relaxed), 1);
        assert!(!armed());
        arm(Box::new(Count(n.clone())));
        disarm();
        about_to_block();
        assert_eq!(n.load(Ordering::Relaxed), 1);
    }
}
