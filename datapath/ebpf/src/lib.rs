#![no_std]
// This file exists to enable the library target (as aya-template does): the programs are
// the `datapath` binary in main.rs, which the agent's build.rs builds for bpfel-unknown-none.
