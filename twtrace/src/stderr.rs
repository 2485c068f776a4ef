//! Lines for the user on stderr. `eprintln!` panics when stderr's reader has gone
//! (`twtrace 2>&1 | head -1`): exit code 101, and no summary file written at exit. A line
//! nobody can read any more is dropped instead; tracing goes on and ends as it would have.

/// `eprintln!` that never panics: a failed write to stderr is ignored.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}
