#![no_std]
// Library target so twtrace can name this crate as a build-dependency (see aya-template);
// the programs are in the `twtrace` binary target, built for bpfel-unknown-none by aya-build.
