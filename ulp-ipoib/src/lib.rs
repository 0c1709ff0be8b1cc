//! IP over InfiniBand: a sans-IO protocol core (events in, work requests out) plus thin
//! kernel glue.
//!
//! Empty until the IPoIB issue; `no_std` because the same source builds for the host tests
//! and, through the kbuild glue, for the kernel module.
#![no_std]
