//! ConnectX-3 (mlx4) hardware driver: hardware formats as typed views, the command
//! interface, EQs and the fast path, plus a software model of the device for host tests.
//!
//! Nothing lives here yet: the formats, the fast path and the model arrive with the
//! hw-mlx4 issue. The crate is `no_std` from the start because the same source will be
//! compiled into the kernel module by the kbuild glue (see the repository README).
#![no_std]
