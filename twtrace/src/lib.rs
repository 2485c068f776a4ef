//! twtrace: live tracing of TCP TIME-WAIT sockets and their fate, per remote IP, with eBPF.
//!
//! Layout: `kernel/` learns about the running kernel; `signals/` lists, per signal, the hooks
//! that can observe it and decodes its records; `plan` picks hooks; `loader` and `transport`
//! move data from the kernel; `aggregate` is the kernel-agnostic core; `sinks` only read it.
//!
//! A library as well as the `twtrace` binary (src/main.rs) so that the benchmarks in
//! `benches/` measure the very code the binary runs.

pub mod aggregate;
pub mod cli;
pub mod doctor;
pub mod event;
pub mod filter;
pub mod kernel;
pub mod loader;
pub mod pipeline;
pub mod plan;
pub mod run;
pub mod shutdown;
pub mod signals;
pub mod sinks;
pub mod stderr;
pub mod transport;
