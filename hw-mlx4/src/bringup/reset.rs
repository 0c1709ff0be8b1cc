//! The function reset a probe begins with (`mlx4_reset`).
//!
//! Upstream resets the HCA before its first command whatever state a previous driver
//! left it in: the hardware semaphore of the reset page is taken (it locks out flash
//! updates), the reset register written, and after the second the hardware asks for,
//! the function must answer config reads again. The reset takes the configuration space
//! with it, so the driver saves it before and restores it after; only the platform can
//! touch config space (`pci_save_state`, `pci_restore_state` in the kernel), hence
//! [`ResetEdge`].

use super::cmd::CommandEdge;
use crate::wire::cmd::{RESET_BASE, RESET_OFFSET, RESET_SEMAPHORE_OFFSET, RESET_VALUE};

/// The configuration-space side of a reset, which the platform does.
pub trait ResetEdge {
    /// Saves the function's configuration space; false if it could not.
    fn save_config(&mut self) -> bool;
    /// The vendor ID, read from configuration space (all ones while the function is
    /// away).
    fn read_vendor_id(&mut self) -> u16;
    /// Restores what [`ResetEdge::save_config`] saved; false if it could not.
    fn restore_config(&mut self) -> bool;
}

/// How long the hardware semaphore may stay taken (`MLX4_SEM_TIMEOUT_JIFFIES`), in
/// microseconds.
pub const SEMAPHORE_TIMEOUT_US: u64 = 10_000_000;
/// How long the function is left alone after the reset ("Docs say to wait one second
/// before accessing device").
pub const RESET_SETTLE_MS: u32 = 1000;
/// How long it may then take to answer config reads (`MLX4_RESET_TIMEOUT_JIFFIES`), in
/// microseconds.
pub const COME_BACK_TIMEOUT_US: u64 = 2_000_000;

/// Why a reset failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetError {
    /// The configuration space could not be saved.
    SaveConfig,
    /// The hardware semaphore stayed taken ("Failed to obtain HW semaphore").
    SemaphoreBusy,
    /// Config reads still answered all ones ("PCI device did not come back after
    /// reset").
    NoComeBack,
    /// The saved configuration space could not be restored.
    RestoreConfig,
}

/// Resets the function as `mlx4_reset` does (see the module's doc).
pub fn reset_function<P: CommandEdge + ResetEdge>(p: &mut P) -> Result<(), ResetError> {
    if !p.save_config() {
        return Err(ResetError::SaveConfig);
    }
    let start = p.now_us();
    while p.bar0_read_be32(RESET_BASE + RESET_SEMAPHORE_OFFSET) != 0 {
        if p.now_us().saturating_sub(start) >= SEMAPHORE_TIMEOUT_US {
            return Err(ResetError::SemaphoreBusy);
        }
        p.sleep_ms(1);
    }
    p.bar0_write_be32(RESET_BASE + RESET_OFFSET, RESET_VALUE);
    p.sleep_ms(RESET_SETTLE_MS);
    let start = p.now_us();
    while p.read_vendor_id() == u16::MAX {
        if p.now_us().saturating_sub(start) >= COME_BACK_TIMEOUT_US {
            return Err(ResetError::NoComeBack);
        }
        p.sleep_ms(1);
    }
    if !p.restore_config() {
        return Err(ResetError::RestoreConfig);
    }
    Ok(())
}
