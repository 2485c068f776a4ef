//! Lines for the user on stderr. `eprintln!` panics when stderr's reader has gone
//! (`twtrace 2>&1 | head -1`): exit code 101, and no summary file written at exit. A line
//! nobody can read any more is dropped instead; tracing goes on and ends as it would have.
//!
//! The latest lines are kept too: on a terminal the live table clears the screen every
//! interval, which would wipe a start-up warning or an alert a moment after it was said, so
//! the table repeats them under itself ([`recent`]).

use std::{
    collections::VecDeque,
    fmt,
    io::Write as _,
    sync::{Mutex, MutexGuard},
};

/// `eprintln!` that never panics: a failed write to stderr is ignored.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::stderr::line(format_args!($($arg)*))
    };
}

/// How many of the latest lines [`recent`] gives.
const KEEP: usize = 8;

static RECENT: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());

fn kept() -> MutexGuard<'static, VecDeque<String>> {
    // A thread that panicked holding it left whole lines: still good to read.
    RECENT.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes one line to stderr (see [`say!`]), and keeps it among the latest.
pub fn line(args: fmt::Arguments) {
    // One write with its newline: stderr is unbuffered, and writeln! would make two.
    let mut text = format!("{args}\n");
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
    text.pop();
    keep(text);
}

fn keep(text: String) {
    let mut kept = kept();
    if kept.len() == KEEP {
        kept.pop_front();
    }
    kept.push_back(text);
}

/// The latest lines said, oldest first.
pub fn recent() -> Vec<String> {
    kept().iter().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_lines_are_kept() {
        for i in 0..KEEP + 3 {
            keep(format!("stderr test line {i}"));
        }
        let kept = recent();
        assert!(kept.len() <= KEEP);
        // Other tests may speak meanwhile; ours come in order, and the first three are gone.
        let ours: Vec<&String> = kept
            .iter()
            .filter(|l| l.starts_with("stderr test"))
            .collect();
        assert!(
            ours.last()
                .is_some_and(|l| l.ends_with(&(KEEP + 2).to_string()))
        );
        assert!(!ours.iter().any(|l| l.ends_with(" 2")), "{kept:?}");
    }
}
