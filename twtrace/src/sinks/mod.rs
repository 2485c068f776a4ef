//! Sinks read decoded records or the aggregate; none of them changes either.

pub mod ndjson;
pub mod table;
mod text;

pub use text::text_line;
