//! Sinks read decoded records or the aggregate; none of them changes either.

pub mod alerts;
pub mod ndjson;
pub mod paws_table;
pub mod summary;
pub mod table;
mod text;

pub use text::write_line as write_text_line;
