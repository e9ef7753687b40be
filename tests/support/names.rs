//! Unique names: tests share one broker and run in parallel, and earlier runs may have left topics behind.

use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `<prefix>_<pid>_<n>_<random>`: lower-case ASCII, valid as a database, slot, topic prefix and group name.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let random: u32 = rand::random();
    format!("{prefix}_{}_{n}_{random:08x}", std::process::id())
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_differ() {
        assert_ne!(super::unique("t"), super::unique("t"));
    }
}
