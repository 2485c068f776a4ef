//! Sinks read decoded records or the aggregate; none of them changes either.

pub mod alerts;
pub mod ndjson;
pub mod paws_table;
pub mod screen;
pub mod summary;
pub mod table;
mod text;

pub use text::write_line as write_text_line;

use std::io;

/// A write to an output whose reader may go away (`twtrace ... | head`): `Ok(true)` when it
/// has gone, which is no error but a normal way to stop reading; `Ok(false)` when written.
pub fn reader_gone(written: io::Result<()>) -> io::Result<bool> {
    match written {
        Ok(()) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(true),
        // A terminal hung up (the ssh session ended): EIO, and ENXIO on some drivers.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EIO | libc::ENXIO)) => Ok(true),
        Err(e) => Err(e),
    }
}

/// `1 reject`, `2 rejects`: a count and its word, in the singular for one.
pub fn plural(n: u64, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}
